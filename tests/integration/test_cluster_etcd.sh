#!/usr/bin/env bash
# Cluster mode on etcd: three agents on loopback share one configuration and one OCSP status through a real
# three-member etcd cluster (--cluster etcd://m1,m2,m3), the checks of test_cluster.sh on the other store:
#
#   - a PUT on one node is served by GET on the others within a bounded time, and is in the store
#     (/ocsp-agent/conf) when answered; each node caches it and records its version;
#   - every node serves the poller's response and writes its own staple file; the store's status record
#     (/ocsp-agent/status/<certid>) names the poller, which holds the lease (/ocsp-agent/lease/<certid>), and carries
#     the poller's staple;
#   - one poller per cluster: the responder is asked by one node at a time, at the query period; when the poller is
#     killed another node takes over within the lease;
#   - a node that advertises no capability makes the OCSP endpoints answer 406 on every node, naming it, until it
#     is killed and its registry key (/ocsp-agent/node/<certid>/<node>) expires with its lease;
#   - every member stopped: PUT answers 503 cluster_store_unavailable (an invalid body still 400, one that changes
#     nothing still 200), GET still answers 200 with the last configuration and status, the logs say so once;
#     the members started again on their data: every node reconnects, the configuration is still the stored one
#     (etcd keeps it) and PUT works again;
#   - a node restarted after a change it missed resynchronises by version; an orderly stop removes its registry key
#     at once;
#   - a node with --cluster-tls against these plain-HTTP members never connects: it logs store_unavailable.
source "$(dirname "$0")/lib.sh"

TIME_SCALE=0.02 # query_frequency 60 s -> a period of 1.2 s
PERIOD_MS=1200
LEASE_MS=3000   # the agent's default lease
# etcd expires a lease when its leader's lessor next looks, every 500 ms, and a lease's time to live is whole
# seconds: a takeover or an expiry may come up to this much later than on Redis.
ETCD_SLACK_MS=1000

make_users admin
start_pki_responder

source "$(dirname "$0")/cluster_etcd_lib.sh"

# ---------------------------------------------------------------------------------------------------------------
echo "# start-up refusals"
assert_start_fails "--cluster with a bad etcd URL" '^ocsp-agent: --cluster: ' --users "$USERS_FILE" \
    --cluster "etcd://127.0.0.1:1,127.0.0.1:1"
assert_start_fails "--cluster-user without its password" '^ocsp-agent: --cluster-user: needs --cluster-password' \
    --users "$USERS_FILE" --cluster "$ETCD_URL" --cluster-user agent

echo "# --cluster-tls against plain members"
n=tls-on-plain
start_node "$n" --cluster-tls
# A TLS handshake with a member that speaks plain HTTP fails on every member in turn.
assert_wait_until "$n: store_unavailable is logged" 10 grep -q 'event=store_unavailable' "$AGENT_LOG"
assert_file_lacks "$n never connects" "$AGENT_LOG" 'event=store_connected'
stop_checked "$n stops cleanly"
# Forgotten, so that the checks that read every node's log see only n1..n3.
unset "N_PID[$n]" "N_PORT[$n]" "N_LOG[$n]"

echo "# three nodes"
for n in n1 n2 n3; do start_connected "$n"; done
for n in n1 n2 n3; do assert_wait_until "$n is in the registry" 5 registered "$n"; done

echo "# a PUT on one node is on the others within a bounded time"
on n1
t0=$(now_ms)
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60}'
PUT_STATUS=$STATUS PUT_BODY=$BODY
# Read first: the answer came after the store confirmed the write, so the store holds it already.
stored=$(stored_conf)
assert_conf_on "GET shows the change" 2 '.ocsp_functionality == true and .query_frequency == 60' n2 n3
echo "# the others served it $(($(now_ms) - t0)) ms after the PUT was sent"
STATUS=$PUT_STATUS BODY=$PUT_BODY
assert_status "PUT on n1" 200
assert_json "PUT answers the new configuration" '.ocsp_functionality' true
assert_jq "the store held the change when the PUT was answered" \
    '.ocsp_functionality == true and .query_frequency == 60 and .recovery_frequency == 60' "$stored"
assert_file_contains "n2 caches the cluster configuration in its data dir" "$T_DIR/data-n2/ocsp.json" \
    '"ocsp_functionality": true'
v1=$(conf_version_of n1)
assert_match "n1 records a configuration version" '^[0-9]+$' "$v1"
for n in n2 n3; do assert_wait_eq "$n records the version of n1" 2 "$v1" conf_version_of "$n"; done

echo "# every node serves the poller's response and writes its own staple"
assert_status_on "serves GOOD (valid)" 8 '.cert_status == "GOOD" and .state == "valid"' n1 n2 n3
for n in n1 n2 n3; do assert_eq "$n wrote its staple file" yes "$([ -s "$T_DIR/data-$n/ocsp.der" ] && echo yes)"; done
POLLER=$(etcd_lease_holder)
assert_match "one node holds the lease" '^n[123]$' "$POLLER"
assert_wait_eq "the stored status names the poller" 3 "$POLLER" etcd_status_node
assert_jq "the stored status is GOOD" '.type == "status" and .cert_status == "GOOD"' "$(stored_status)"
# The poller queries every 1.2 s and writes its staple before it stores the record: the two agree once the record of
# the staple's response is stored, and the staple does not change for a period.
staple_is_stored() {
    local staple
    staple=$(base64 -w0 <"$T_DIR/data-$POLLER/ocsp.der")
    WAIT_DETAIL="stored: $(short "$(stored_status)")"
    [ "$(stored_status | jq -r .der)" = "$staple" ]
}
assert_wait_until "the stored DER is the poller's staple" 5 staple_is_stored
on "$POLLER"
req GET /metrics
assert_match "the poller's metrics say it is the poller" $'(^|\n)ocsp_agent_cluster_poller 1' "$BODY"
assert_match "the poller's metrics count three nodes" $'(^|\n)ocsp_agent_cluster_nodes 3' "$BODY"

echo "# one poller: one query per period"
# The queries that start in a 6 s window, read once a query that started after it has been logged (a query is
# logged when it ends).
t_start=$(now_ms)
t_end=$((t_start + 6000))
wait_until 10 query_started_since "$t_end" || fail "a scheduled query starts after the 6 s window (within 10 s)"
q=$(scheduled_queries "$t_start")
count=$(awk -v e="$t_end" '$1 < e' <<<"$q" | grep -c .)
assert_between "scheduled queries in 6 s at a 1.2 s period (4 to 6)" 4 6 "$count"
assert_eq "only the poller queried" "$POLLER " "$(printf '%s\n' "$q" | awk '{print $2}' | sort -u | tr '\n' ' ')"

echo "# the poller dies: another node takes over within the lease"
t_kill=$(now_ms)
DEAD=$POLLER
# Its log stays readable for the query counts below; the rest of it is forgotten.
DEAD_LOG=${N_LOG[$DEAD]}
kill_node "$DEAD"
N_LOG[$DEAD]=$DEAD_LOG
NEW=
took_over() { # two scheduled queries of a live node since the kill
    NEW=$(etcd_lease_holder)
    [[ $NEW =~ ^n[123]$ ]] && [ "$NEW" != "$DEAD" ] &&
        [ "$(scheduled_queries "$t_kill" | awk -v n="$NEW" '$2 == n' | grep -c .)" -ge 2 ]
}
# Bounded generously: on a loaded machine (the sanitizer build beside other suites) the second query can come late;
# when the first one came is checked on its own below.
wait_until $(((LEASE_MS + ETCD_SLACK_MS + 3 * PERIOD_MS) / 1000 + 8)) took_over ||
    fail "another node takes the lease and queries twice" "lease: ${NEW:-none}"
assert_ne "the lease moved away from the dead node" "$DEAD" "$NEW"
first=$(scheduled_queries "$t_kill" | awk -v n="$NEW" '$2 == n { print $1; exit }')
assert_between "the new poller's first query comes within lease + one period of the kill (ms)" 0 \
    $((LEASE_MS + ETCD_SLACK_MS + PERIOD_MS + 500)) $((${first:-999999999999} - t_kill))
on "$NEW"
assert_file_contains "the new poller logs the takeover" "$AGENT_LOG" 'event=cluster_poller_acquired'
assert_wait_eq "the stored status is the new poller's" 3 "$NEW" etcd_status_node
unset "N_LOG[$DEAD]" "N_PORT[$DEAD]"
read -r A B <<<"$(for n in n1 n2 n3; do [ "$n" != "$DEAD" ] && echo "$n"; done | tr '\n' ' ')"
LIVE=("$A" "$B")

echo "# a node without the ocsp capability: 406 everywhere, naming it"
start_node old --capabilities ""
assert_http_on "GET /v1/ocsp answers 406" 4 GET /v1/ocsp 406 "${LIVE[@]}"
on "$A"
for call in "GET /v1/ocsp" "GET /v1/ocsp/status" "PUT /v1/ocsp" "POST /v1/ocsp/test"; do
    if [ "${call% *}" = PUT ]; then put_json /v1/ocsp '{"query_frequency": 61}'; else req "${call% *}" "${call#* }"; fi
    assert_error "$A: $call" 406 ocsp_unsupported_by_capability
    assert_match "$A: $call: the description names the node" '\bold\b' "$(jq -r .description <<<"$BODY")"
done
# Killed, not stopped: only the expiry of its registry key can tell the others.
kill_node old
t0=$(now_ms)
assert_http_on "200 again once the old node's key expired" 8 GET /v1/ocsp 200 "${LIVE[@]}"
assert_between "the key expired within its 3 s lifetime + one heartbeat + etcd's slack (ms)" 0 \
    $((LEASE_MS + 1000 + ETCD_SLACK_MS + 1000)) $(($(now_ms) - t0))
assert_eq "the old node's registry key is gone" 1 "$(not_registered old && echo 1)"

echo "# every member stops"
for i in 1 2 3; do etcd_member_kill "$i"; done
for n in "${LIVE[@]}"; do
    assert_wait_until "$n notices the outage" 8 grep -q 'event=store_unavailable' "${N_LOG[$n]}"
done
# A node judges a body before it asks the store: an invalid one is the client's error whatever the store's state,
# and one that changes nothing needs no store. Each line: query_frequency, then the expected status and error code.
on "$A"
while read -r qf want code; do
    put_json /v1/ocsp "{\"query_frequency\": $qf}"
    if [ "$code" = - ]; then assert_status "PUT query_frequency=$qf while the store is down" "$want"; else
        assert_error "PUT query_frequency=$qf while the store is down" "$want" "$code"; fi
done <<'CASES'
90 503 cluster_store_unavailable
1 400 invalid_schema
60 200 -
CASES
# Asked once each (no waiting): a node answers from what it holds.
assert_conf_on "GET serves the last known configuration while the store is down" 0 '.query_frequency == 60' \
    "${LIVE[@]}"
assert_status_on "GET /v1/ocsp/status serves GOOD while the store is down" 0 '.cert_status == "GOOD"' "${LIVE[@]}"
# Deliberate: 2 s more of the outage pass, to show that no node logs it a second time while it keeps retrying.
sleep 2
for n in "${LIVE[@]}"; do
    assert_eq "$n logs store_unavailable once" 1 "$(grep -c 'event=store_unavailable' "${N_LOG[$n]}")"
done

echo "# the members start again on their data: everything resynchronises"
for i in 1 2 3; do etcd_member_start "$i"; done
etcd_wait_healthy "the members after the outage"
for n in "${LIVE[@]}"; do
    on "$n"
    if wait_log 'event=store_reconnected' 10; then pass "$n logs store_reconnected"; else
        fail "$n logs store_reconnected"; fi
done
assert_jq "the store kept the configuration" '.query_frequency == 60 and .ocsp_functionality == true' \
    "$(stored_conf)"
on "$B"
put_json /v1/ocsp '{"query_frequency": 90}'
assert_status "PUT after the store is back" 200
assert_conf_on "the change arrives" 2 '.query_frequency == 90' "$A"
assert_jq "the store holds the change" '.query_frequency == 90' "$(stored_conf)"
assert_status_on "the status is served after the outage" 2 '.cert_status == "GOOD"' "$A"
assert_wait_match "a poller holds the lease again (within 5 s)" 5 '^n[123]$' etcd_lease_holder

echo "# a node that was away resynchronises by version"
stop_node "$B"
on "$A"
put_json /v1/ocsp '{"recovery_max_tries": 9}'
assert_status "PUT while $B is down" 200
v=$(conf_version_of "$A")
start_node "$B"
assert_conf_on "resynchronised" 3 '.recovery_max_tries == 9 and .query_frequency == 90' "$B"
assert_wait_eq "$B records version $v" 3 "$v" conf_version_of "$B"

echo "# orderly stop leaves the registry at once"
stop_node "$B"
# Well before its registry key could expire by itself (3 s, renewed every second).
assert_wait_until "the stopped node's registry key is gone" 1.2 not_registered "$B"
stop_node "$A"
