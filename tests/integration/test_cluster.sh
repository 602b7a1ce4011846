#!/usr/bin/env bash
# Cluster mode: three agents on loopback share one configuration and one OCSP status through a real redis-server.
#
#   - a PUT on one node is served by GET on the others within a bounded time, and is in the store when answered;
#   - one poller per cluster: the responder is asked by one node at a time, at the query period; when the poller
#     is killed another node takes over within the lease, with no gap longer than lease + one period;
#   - every node serves the poller's response and writes its own staple file;
#   - a node that advertises no capability makes all four OCSP endpoints answer 406 on every node, naming it,
#     until it stops and its key expires;
#   - the store stopped: PUT answers 503 cluster_store_unavailable (an invalid body still 400, one that changes
#     nothing still 200), GET still answers, the logs say so once;
#     restarted (empty): every node reconnects, the configuration is seeded back and PUT works again;
#   - a node restarted after a change it missed resynchronises by version;
#   - a node with --cluster-tls against this plain-TCP store never connects: it logs store_unavailable.
source "$(dirname "$0")/lib.sh"

TIME_SCALE=0.02 # query_frequency 60 s -> a period of 1.2 s
PERIOD_MS=1200
LEASE_MS=3000   # the agent's lease

make_users admin
start_pki_responder

source "$(dirname "$0")/cluster_lib.sh"
start_redis

# ---------------------------------------------------------------------------------------------------------------
echo "# start-up refusals"
assert_start_fails "--cluster with a bad URL" '^ocsp-agent: --cluster: ' --users "$USERS_FILE" --cluster "http://x"
assert_start_fails "--capabilities without --cluster" '^ocsp-agent: --capabilities: needs --cluster' \
    --users "$USERS_FILE" --capabilities ocsp

echo "# --cluster-tls against a plain store"
start_node tls-on-plain --cluster-tls
if wait_log 'event=store_unavailable' 10; then
    pass "--cluster-tls against a plain store: store_unavailable is logged"
else
    fail "--cluster-tls against a plain store: store_unavailable is logged" "$(tail -n 5 "$AGENT_LOG")"
fi
assert_no_match "--cluster-tls against a plain store never connects" 'event=store_connected' "$(cat "$AGENT_LOG")"
stop_checked "--cluster-tls node stops cleanly"
# Forgotten, so that the checks below that go through every node's log see only n1..n3.
unset 'N_PID[tls-on-plain]' 'N_PORT[tls-on-plain]' 'N_LOG[tls-on-plain]'

echo "# three nodes"
start_node n1
start_node n2
start_node n3
for n in n1 n2 n3; do
    on "$n"
    wait_log 'event=store_connected' 5 && pass "$n connects to the store" || fail "$n connects to the store"
done

echo "# a PUT on one node is on the others within a bounded time"
on n1
t0=$(now_ms)
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60}'
PUT_STATUS=$STATUS PUT_BODY=$BODY
# The store first, before anything else can have written it: the answer came after the store confirmed.
stored_version=$(rcli HGET ocsp-agent:conf version)
for n in n2 n3; do
    if wait_conf "$n" '.ocsp_functionality == true and .query_frequency == 60' 2; then
        pass "GET on $n shows the change ($(($(now_ms) - t0)) ms after the PUT was sent)"
    else
        fail "GET on $n shows the change within 2 s" "$BODY"
    fi
done
STATUS=$PUT_STATUS BODY=$PUT_BODY
assert_status "PUT on n1" 200
assert_json "PUT answers the new configuration" '.ocsp_functionality' true
assert_eq "the acknowledged change is in the store" "1" "$stored_version"
assert_json "the store holds the new configuration" '.ocsp_functionality' true "$(rcli HGET ocsp-agent:conf conf)"
assert_file_contains "n2 caches the cluster configuration in its data dir" "$T_DIR/data-n2/ocsp.json" \
    '"ocsp_functionality": true'
assert_file_contains "n2 records the configuration version" "$T_DIR/data-n2/cluster.json" '"conf_version":1'

echo "# every node serves the poller's response and writes its own staple"
for n in n1 n2 n3; do
    if wait_status_on "$n" '.cert_status == "GOOD" and .state == "valid"' 8; then
        pass "$n serves GOOD (valid)"
    else
        fail "$n serves GOOD (valid)" "$BODY"
    fi
    [ -s "$T_DIR/data-$n/ocsp.der" ] && pass "$n wrote its staple file" || fail "$n wrote its staple file"
done
POLLER=$(rcli GET "$(key_of lease)")
assert_match "one node holds the lease" '^n[123]$' "$POLLER"
# The store's record carries the parsed status next to the DER, equal to what the poller serves and its staple file,
# compared at one consistent moment. The poller queries every 1.2 s and, for each answer, updates what it serves,
# then writes its staple file, then publishes the record: a reading can land between two of these steps. So each
# round reads the store, the staple, the served status, and the store again:
#   - the store changed in between: a record was published meanwhile, read again;
#   - it did not, and the three agree: that is the moment compared;
#   - it did not, but the staple or the served status is not the store's: the poller may be one query ahead of its
#     publication, and only that excuses it: the store's next record must then hold exactly what was read (whatever
#     was not ahead still being the previous record's), and the reading is taken again. Anything else ends the
#     rounds, and the assertions below fail on that reading.
# The seq of a record is the store's counter at its publication (see lua_publish in agent/cluster.c).
store_seq_after() { [ "$(rcli GET "$(key_of status)" | jq -r '.seq // 0')" -gt "$1" ] 2>/dev/null; }
on "$POLLER"
for round in 1 2 3 4 5 6 7 8 9 10; do
    stored=$(rcli GET "$(key_of status)")
    staple=$(base64 -w0 <"$T_DIR/data-$POLLER/ocsp.der")
    req GET /v1/ocsp/status
    served_next=$(epoch_of "$(printf '%s' "$BODY" | jq -r .next_update)")
    stored_again=$(rcli GET "$(key_of status)")
    stored_der=$(jq -r .der <<<"$stored")
    stored_next=$(jq -r .next_update <<<"$stored")
    [ "$stored" = "$stored_again" ] || continue
    [ "$staple" = "$stored_der" ] && [ "$served_next" = "$stored_next" ] && break
    wait_until 5 store_seq_after "$(jq -r .seq <<<"$stored")" || break
    next=$(rcli GET "$(key_of status)")
    { [ "$staple" = "$stored_der" ] || [ "$staple" = "$(jq -r .der <<<"$next")" ]; } &&
        { [ "$served_next" = "$stored_next" ] || [ "$served_next" = "$(jq -r .next_update <<<"$next")" ]; } || break
    echo "# round $round: the poller was one query ahead of the store, read again"
done
echo "# the store, the staple and the served status compared in round $round"
assert_jq "the stored status names the poller and GOOD" ".node == \"$POLLER\" and .cert_status == \"GOOD\"" "$stored"
assert_eq "the stored next_update is the one served" "$served_next" "$stored_next"
assert_eq "the stored DER is the poller's staple" "$staple" "$stored_der"

echo "# one poller: one query per period"
# The queries that start in a 6 s window. A query is logged when it ends, so the window is complete in the logs
# once a query that started after it has been logged: that is waited for (at most 10 s, the window and more than
# three periods), rather than reading the logs at the end of the window while a query may be in flight.
t_start=$(now_ms)
t_end=$((t_start + 6000))
if ! wait_until 10 query_started_since "$t_end"; then
    fail "a scheduled query starts after the 6 s window (within 10 s of its start)"
fi
q=$(scheduled_queries "$t_start")
count=$(awk -v e="$t_end" '$1 < e' <<<"$q" | grep -c .)
nodes=$(printf '%s\n' "$q" | awk '{print $2}' | sort -u | tr '\n' ' ')
assert_between "scheduled queries in 6 s at a 1.2 s period (4 to 6)" 4 6 "$count"
assert_eq "only the poller queried" "$POLLER " "$nodes"
gaps=$(printf '%s\n' "$q" | gaps_of)
if awk -v lo=$((PERIOD_MS - 300)) -v hi=$((PERIOD_MS + 400)) \
    '{ for (i = 1; i <= NF; i++) if ($i < lo || $i > hi) exit 1 }' <<<"$gaps"; then
    pass "queries are one period apart (gaps ms: $gaps)"
else
    fail "queries are one period apart" "gaps ms: $gaps"
fi

echo "# the poller dies: another node takes over within the lease"
t_kill=$(now_ms)
kill -KILL "${N_PID[$POLLER]}"
wait "${N_PID[$POLLER]}" 2>/dev/null
forget_pid "${N_PID[$POLLER]}"
DEAD=$POLLER
unset "N_PID[$DEAD]"
# Until another node holds the lease and has made four scheduled queries since the kill: the takeover gap is then in
# the logs, followed by three periods of the new poller, as long as a fixed wait of lease + 2 periods + 3 s showed.
# Bounded by lease + one heartbeat + five periods + 3 s.
NEW=
new_poller_queried() { # COUNT
    NEW=$(rcli GET "$(key_of lease)")
    [[ $NEW =~ ^n[123]$ ]] && [ "$NEW" != "$DEAD" ] &&
        [ "$(scheduled_queries "$t_kill" | awk -v n="$NEW" '$2 == n' | grep -c .)" -ge "$1" ]
}
wait_until $(((LEASE_MS + 1000 + 5 * PERIOD_MS) / 1000 + 3)) new_poller_queried 4 ||
    fail "another node takes the lease and queries four times" "lease: ${NEW:-none}"
assert_match "another node holds the lease" '^n[123]$' "$NEW"
assert_ne "the lease moved away from the dead node" "$DEAD" "$NEW"
q=$(scheduled_queries $((t_kill - 3 * PERIOD_MS)))
gaps=$(printf '%s\n' "$q" | gaps_of)
maxgap=$(tr ' ' '\n' <<<"$gaps" | grep . | sort -n | tail -n 1)
mingap=$(tr ' ' '\n' <<<"$gaps" | grep . | sort -n | head -n 1)
assert_between "the longest gap is at most lease + one period (+0.5 s)" 0 $((LEASE_MS + PERIOD_MS + 500)) "${maxgap:-999999}"
assert_between "never two pollers: no two queries closer than 0.9 period" $((PERIOD_MS * 9 / 10)) 999999 "${mingap:-0}"
assert_match "the new poller queried after the takeover" " $NEW\$" "$(printf '%s\n' "$q" | tail -n 1)"
on "$NEW"
assert_file_contains "the new poller logs the takeover" "$AGENT_LOG" 'event=cluster_poller_acquired'
unset "N_LOG[$DEAD]"
unset "N_PORT[$DEAD]"
LIVE=$(for n in n1 n2 n3; do [ "$n" != "$DEAD" ] && echo "$n"; done | tr '\n' ' ')
read -r A B <<<"$LIVE"

echo "# POST /v1/ocsp/test on a follower"
FOLLOWER=$A
[ "$FOLLOWER" = "$NEW" ] && FOLLOWER=$B
on "$FOLLOWER"
req POST /v1/ocsp/test
assert_status "POST /v1/ocsp/test on follower $FOLLOWER" 200
assert_json "the test answers GOOD" '.cert_status' GOOD

echo "# a node without the ocsp capability: 406 everywhere, naming it"
start_node old --capabilities ""
for n in $LIVE; do
    if wait_http "$n" GET /v1/ocsp 406 4; then pass "$n: GET /v1/ocsp answers 406"; else
        fail "$n: GET /v1/ocsp answers 406" "$STATUS $BODY"; fi
    assert_error "$n: 406 body" 406 ocsp_unsupported_by_capability
    assert_match "$n: the description names the node" '\bold\b' "$(jq -r .description <<<"$BODY")"
done
on "$A"
req GET /v1/ocsp/status
assert_error "GET /v1/ocsp/status" 406 ocsp_unsupported_by_capability
put_json /v1/ocsp '{"query_frequency": 61}'
assert_error "PUT /v1/ocsp" 406 ocsp_unsupported_by_capability
req POST /v1/ocsp/test
assert_error "POST /v1/ocsp/test" 406 ocsp_unsupported_by_capability
on old
req GET /v1/ocsp
assert_error "the old node itself" 406 ocsp_unsupported_by_capability
req GET /metrics
assert_status "/metrics is not an OCSP endpoint: 200" 200
# Killed, not stopped: only the key's expiry can tell the others.
kill -KILL "${N_PID[old]}"
wait "${N_PID[old]}" 2>/dev/null
forget_pid "${N_PID[old]}"
unset "N_PID[old]" "N_LOG[old]" "N_PORT[old]"
t0=$(now_ms)
for n in $LIVE; do
    if wait_http "$n" GET /v1/ocsp 200 6; then pass "$n: 200 again once the old node's key expired"; else
        fail "$n: 200 again once the old node's key expired" "$STATUS $BODY"; fi
done
assert_between "the key expired within its 3 s TTL + one heartbeat (ms)" 0 5000 $(($(now_ms) - t0))

echo "# the store goes away"
stop_redis
for n in $LIVE; do
    on "$n"
    if wait_log 'event=store_unavailable' 5; then pass "$n notices the outage"; else fail "$n notices the outage"; fi
done
on "$A"
put_json /v1/ocsp '{"query_frequency": 90}'
assert_error "PUT while the store is down" 503 cluster_store_unavailable
# The node judges a body before it asks the store: an invalid one is the client's error whatever the store's state,
# and one that changes nothing needs no store.
put_json /v1/ocsp '{"query_frequency": 1}'
assert_error "an invalid PUT while the store is down" 400 invalid_schema
put_json /v1/ocsp '{"query_frequency": 60}'
assert_status "a PUT that changes nothing while the store is down" 200
req GET /v1/ocsp
assert_status "GET while the store is down" 200
assert_json "GET serves the last known configuration" '.query_frequency' 60
req GET /v1/ocsp/status
assert_json "the status is still served" '.cert_status' GOOD
# Deliberate: 2 s more of the outage pass, to show that no node logs it a second time. A node retries the store
# 0.1, 0.3, 0.7, 1.5 s after losing it (the delay doubles, up to 2 s): four retries fail by then, each of which would
# log a line.
sleep 2
for n in $LIVE; do
    c=$(grep -c 'event=store_unavailable' "${N_LOG[$n]}")
    assert_eq "$n logs store_unavailable once" 1 "$c"
done

echo "# the store comes back empty: everything resynchronises"
start_redis
for n in $LIVE; do
    on "$n"
    if wait_log 'event=store_reconnected' 6; then pass "$n logs store_reconnected"; else
        fail "$n logs store_reconnected"; fi
done
assert_wait_eq "the configuration was seeded back into the empty store" 2 1 rcli HGET ocsp-agent:conf version
on "$B"
put_json /v1/ocsp '{"query_frequency": 90}'
assert_status "PUT after the store is back" 200
wait_conf "$A" '.query_frequency == 90' 2 && pass "the change reaches $A" || fail "the change reaches $A" "$BODY"
if wait_status_on "$A" '.cert_status == "GOOD"' 1; then pass "the status is served after the outage"; else
    fail "the status is served after the outage" "$BODY"; fi
assert_wait_match "a poller holds the lease again (within 4 s)" 4 '^n[123]$' lease_holder

echo "# a node that was away resynchronises by version"
stop_node "$B"
on "$A"
put_json /v1/ocsp '{"recovery_max_tries": 9}'
assert_status "PUT while $B is down" 200
v=$(rcli HGET ocsp-agent:conf version)
start_node "$B"
if wait_conf "$B" '.recovery_max_tries == 9 and .query_frequency == 90' 3; then pass "$B resynchronised"; else
    fail "$B resynchronised" "$BODY"; fi
assert_file_contains "$B records version $v" "$T_DIR/data-$B/cluster.json" "\"conf_version\":$v"

echo "# orderly stop leaves the registry at once"
stop_node "$B"
# Within 1.2 s, well before the key could expire: its 3 s TTL is renewed every 1 s heartbeat, so at least about 2 s
# of it are left when the node stops.
assert_wait_eq "the stopped node's key is gone" 1.2 0 rcli EXISTS "ocsp-agent:node:$B"
stop_node "$A"
