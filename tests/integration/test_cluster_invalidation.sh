#!/usr/bin/env bash
# Cluster mode: every node shows what the poller knows, failures included.
#
#   - --cluster-lease sets the lease and the node TTL (PTTL in the store) and refuses bad values with one line;
#   - the responder fails: while the poller retries, the followers show "recovering" and keep serving the response;
#   - the retries run out: every node shows "invalidated" with the poller's last_error_code, cert_status UNKNOWN,
#     and every node's staple file is gone; only the poller ever queried;
#   - a follower that was stopped before the failure, its staple still on disk, comes back and drops it too;
#   - the responder recovers: every node is "valid" again with the same produced_at and next_update, and the same
#     staple bytes;
#   - /metrics: exactly one node reports itself the poller (the lease holder), every node sees three live nodes.
source "$(dirname "$0")/lib.sh"

TIME_SCALE=0.02 # query_frequency and recovery_frequency 60 s -> 1.2 s
LEASE_MS=1500
MAX_TRIES=3

make_users admin
start_pki_responder

source "$(dirname "$0")/cluster_lib.sh"
start_store

# ---------------------------------------------------------------------------------------------------------------
# Helpers of this suite

NODES=(n1 n2 n3)
declare -A SNAP=()

# status_of NODE: GET /v1/ocsp/status on NODE; sets STATUS and BODY.
status_of() {
    on "$1"
    req GET /v1/ocsp/status
}

# all_status JQ_EXPR TIMEOUT_S: polls every node of NODES until JQ_EXPR holds on each at once; 0 when it did.
all_status() {
    local deadline=$((SECONDS + $2)) n ok
    while :; do
        ok=1
        for n in "${NODES[@]}"; do
            status_of "$n"
            if [ "$STATUS" != 200 ] || ! printf '%s' "$BODY" | jq -e "$1" >/dev/null 2>&1; then
                ok=0
                break
            fi
        done
        [ "$ok" = 1 ] && return 0
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# metric_of NODE NAME: the value of the /metrics line that starts with NAME (labels included) on NODE.
metric_of() {
    on "$1"
    req GET /metrics
    printf '%s\n' "$BODY" | awk -v n="$2" '$1 == n { print $2 }'
}

staple() { printf '%s' "$T_DIR/data-$1/ocsp.der"; }

# ---------------------------------------------------------------------------------------------------------------
echo "# --cluster-lease start-up refusals"
assert_start_fails "--cluster-lease below the range" \
    '^ocsp-agent: --cluster-lease: expected milliseconds from 1000 to 60000, got "999"$' \
    --users "$USERS_FILE" --data-dir "$T_DIR/x" --cluster "$CLUSTER" --cluster-lease 999
assert_start_fails "--cluster-lease that is not a number" \
    '^ocsp-agent: --cluster-lease: expected milliseconds from 1000 to 60000, got "2s"$' \
    --users "$USERS_FILE" --data-dir "$T_DIR/x" --cluster "$CLUSTER" --cluster-lease 2s
assert_start_fails "--cluster-lease without --cluster" '^ocsp-agent: --cluster-lease: needs --cluster$' \
    --users "$USERS_FILE" --data-dir "$T_DIR/x" --cluster-lease 1500

echo "# three nodes with a ${LEASE_MS} ms lease"
for n in "${NODES[@]}"; do start_node "$n" --cluster-lease "$LEASE_MS"; done
for n in "${NODES[@]}"; do
    on "$n"
    wait_log 'event=store_connected' 5 && pass "$n connects to the store" || fail "$n connects to the store"
done
lease_held() { [ -n "$(lease_holder)" ]; }
wait_until 5 lease_held || fail "a node takes the lease within 5 s"
assert_between "the lease lives at most --cluster-lease ms ($STORE)" 1 "$(store_ttl_max_ms "$LEASE_MS")" \
    "$(store_ttl_ms lease)"
assert_between "a node's registry entry too ($STORE)" 1 "$(store_ttl_max_ms "$LEASE_MS")" "$(store_ttl_ms node n1)"

on n1
put_json /v1/ocsp "{\"ocsp_functionality\": true, \"query_frequency\": 60, \"recovery_frequency\": 60,
                    \"recovery_max_tries\": $MAX_TRIES}"
assert_status "PUT enables OCSP on the cluster" 200
if all_status '.state == "valid" and .cert_status == "GOOD"' 10; then pass "every node serves GOOD (valid)"; else
    fail "every node serves GOOD (valid)" "$BODY"; fi
POLLER=$(lease_holder)
assert_match "one node holds the lease" '^n[123]$' "$POLLER"
FOLLOWERS=()
for n in "${NODES[@]}"; do [ "$n" != "$POLLER" ] && FOLLOWERS+=("$n"); done
for n in "${NODES[@]}"; do
    [ -s "$(staple "$n")" ] && pass "$n wrote its staple file" || fail "$n wrote its staple file"
done

echo "# metrics: one poller, three live nodes"
pollers=0
for n in "${NODES[@]}"; do
    v=$(metric_of "$n" ocsp_agent_cluster_poller)
    [ "$v" = 1 ] && pollers=$((pollers + 1)) && assert_eq "the node reporting poller 1 holds the lease" "$POLLER" "$n"
    assert_eq "$n: ocsp_agent_cluster_store_up" 1 "$(metric_of "$n" ocsp_agent_cluster_store_up)"
    assert_eq "$n: ocsp_agent_cluster_nodes" 3 "$(metric_of "$n" ocsp_agent_cluster_nodes)"
    assert_eq "$n: ocsp_agent_cluster_conf_version" 1 "$(metric_of "$n" ocsp_agent_cluster_conf_version)"
done
assert_eq "exactly one node reports ocsp_agent_cluster_poller 1" 1 "$pollers"

# A follower leaves while the response is valid: its staple stays on disk, and it misses what follows.
AWAY=${FOLLOWERS[1]}
stop_node "$AWAY"
[ -s "$(staple "$AWAY")" ] && pass "$AWAY left its staple file behind" || fail "$AWAY left its staple file behind"
NODES=("$POLLER" "${FOLLOWERS[0]}")
FOLLOWER=${FOLLOWERS[0]}

echo "# the responder fails: the followers show the poller's recovery"
t_fail=$(now_ms)
echo "http 500" >"$RESP_CONTROL"
deadline=$((SECONDS + 6))
seen_poller=0 seen_follower=0
while [ $SECONDS -lt $deadline ] && { [ $seen_poller = 0 ] || [ $seen_follower = 0 ]; }; do
    status_of "$POLLER"
    [ "$(jq -r .state <<<"$BODY")" = recovering ] && seen_poller=1
    status_of "$FOLLOWER"
    if [ "$(jq -r .state <<<"$BODY")" = recovering ] && [ $seen_follower = 0 ]; then
        seen_follower=1
        FOLLOWER_RECOVERING=$BODY
    fi
    sleep 0.05
done
assert_eq "the poller shows recovering" 1 "$seen_poller"
assert_eq "the follower $FOLLOWER shows recovering" 1 "$seen_follower"
if [ $seen_follower = 1 ]; then
    assert_json "while recovering the follower keeps serving GOOD" .cert_status GOOD "$FOLLOWER_RECOVERING"
    assert_json "... with the poller's last_error_code" .last_error_code ocsp_responder_http_status \
        "$FOLLOWER_RECOVERING"
    assert_jq "... and its failure count" '.consecutive_failures >= 1' "$FOLLOWER_RECOVERING"
fi
[ -s "$(staple "$FOLLOWER")" ] && pass "the follower's staple stays while recovering" ||
    fail "the follower's staple stays while recovering"

echo "# the retries run out: every node shows invalidated"
# One failure starts recovery, MAX_TRIES retries follow at 1.2 s: about 4.8 s after the responder failed.
if all_status '.state == "invalidated"' 12; then
    pass "every node shows invalidated ($(($(now_ms) - t_fail)) ms after the responder failed)"
else
    fail "every node shows invalidated within 12 s" "$BODY"
fi
status_of "$POLLER"
P_BODY=$BODY
assert_json "the poller: cert_status UNKNOWN" .cert_status UNKNOWN "$P_BODY"
assert_json "the poller: last_error_code" .last_error_code ocsp_responder_http_status "$P_BODY"
assert_json "the poller: recovery_tries" .recovery_tries "$MAX_TRIES" "$P_BODY"
status_of "$FOLLOWER"
assert_json "the follower: cert_status UNKNOWN" .cert_status UNKNOWN
assert_json "the follower: the poller's last_error_code" .last_error_code "$(jq -r .last_error_code <<<"$P_BODY")"
assert_json "the follower: the poller's last_error" .last_error "$(jq -r .last_error <<<"$P_BODY")"
assert_json "the follower: the poller's recovery_tries" .recovery_tries "$MAX_TRIES"
assert_jq "the follower: no produced_at or next_update" 'has("produced_at") or has("next_update") | not'
for n in "${NODES[@]}"; do
    [ -e "$(staple "$n")" ] && fail "$n removed its staple file" || pass "$n removed its staple file"
done
on "$FOLLOWER"
assert_file_contains "the follower logs the invalidation" "$AGENT_LOG" 'event=cluster_status_invalidated'
on "$POLLER"
assert_file_contains "the poller raised the alert" "$AGENT_LOG" 'event=ocsp_query_failed'
assert_match "the store holds the invalidation" '"state":"invalidated"' "$(store_record status)"
nodes=$(scheduled_queries "$t_fail" | awk '{print $2}' | sort -u | tr '\n' ' ')
assert_eq "only the poller queried" "$POLLER " "$nodes"
on "$FOLLOWER"
assert_between "the follower received state messages" 1 1000 \
    "$(metric_of "$FOLLOWER" 'ocsp_agent_cluster_messages_received_total{type="state"}')"

echo "# the follower that was away comes back and drops its stale staple"
start_node "$AWAY" --cluster-lease "$LEASE_MS"
on "$AWAY"
assert_file_contains "$AWAY reloaded its staple at start-up" "$AGENT_LOG" 'event=staple_loaded'
if wait_status_on "$AWAY" '.state == "invalidated" and .cert_status == "UNKNOWN"' 4; then
    pass "$AWAY shows invalidated once synchronised"
else
    fail "$AWAY shows invalidated once synchronised" "$BODY"
fi
assert_json "$AWAY: the poller's last_error_code" .last_error_code "$(jq -r .last_error_code <<<"$P_BODY")"
[ -e "$(staple "$AWAY")" ] && fail "$AWAY removed its staple file" || pass "$AWAY removed its staple file"
NODES=(n1 n2 n3)

echo "# the responder recovers: every node is valid again"
t_ok=$(now_ms)
echo ok >"$RESP_CONTROL"
if all_status '.state == "valid" and .cert_status == "GOOD" and .consecutive_failures == 0' 8; then
    pass "every node is valid again ($(($(now_ms) - t_ok)) ms after the responder recovered)"
else
    fail "every node is valid again within 8 s" "$BODY"
fi
# The poller queries every 1.2 s and each answer is freshly produced, and a follower applies it a moment after the
# poller: compare one consistent round. A round reads the staple files, then the status of the poller, of every node
# and of the poller again (one curl), then the poller's staple again: it is a consistent moment when the poller's
# status and staple did not change meanwhile. Rounds are repeated (at most 10 s) until one is consistent and every
# node serves the poller's response with its staple bytes; the assertions below are on the last round. One curl and
# one jq a round keep a round short next to the period, also on a loaded machine.
POLLER=$(lease_holder)
R=$T_DIR/round
ROUNDS=0
compare_round() {
    local n i=0 args=() times=() ok=1
    ROUNDS=$((ROUNDS + 1))
    rm -rf "$R"
    mkdir -p "$R"
    cp "$(staple "$POLLER")" "$R/poller-before.der" 2>/dev/null
    for n in "${NODES[@]}"; do cp "$(staple "$n")" "$R/$n.der" 2>/dev/null; done
    for n in "$POLLER" "${NODES[@]}" "$POLLER"; do
        i=$((i + 1))
        args+=(-o "$R/status-$i.json" "http://127.0.0.1:${N_PORT[$n]}/v1/ocsp/status")
    done
    curl -sS --max-time "$OA_CURL_TIMEOUT" -u "admin@example.com:${USER_PASS[admin]}" "${args[@]}" 2>"$R/curl.err"
    cp "$(staple "$POLLER")" "$R/poller-after.der" 2>/dev/null
    P_BODY=$(cat "$R/status-1.json" 2>/dev/null)
    i=1
    for n in "${NODES[@]}"; do
        i=$((i + 1))
        SNAP[$n]=$(cat "$R/status-$i.json" 2>/dev/null)
    done
    mapfile -t times < <(for i in $(seq 1 $((${#NODES[@]} + 2))); do
        jq -r '(.produced_at // "-") + "|" + (.next_update // "-")' "$R/status-$i.json" 2>/dev/null || echo "?"
    done)
    # Consistent: the poller's answer and staple the same at both ends.
    [[ ${times[0]} == *GMT\|*GMT ]] && [ "${times[0]}" = "${times[-1]}" ] && [ -s "$R/poller-before.der" ] &&
        cmp -s "$R/poller-before.der" "$R/poller-after.der" || return 1
    for ((i = 1; i <= ${#NODES[@]}; i++)); do [ "${times[i]}" = "${times[0]}" ] || ok=0; done
    for n in "${NODES[@]}"; do cmp -s "$R/$n.der" "$R/poller-before.der" || ok=0; done
    [ $ok = 1 ]
}
wait_until 10 compare_round || fail "a consistent round in which every node serves the poller's response (10 s)"
echo "# compared in round $ROUNDS"
for n in "${NODES[@]}"; do
    assert_json "$n: produced_at as on the poller" .produced_at "$(jq -r .produced_at <<<"$P_BODY")" "${SNAP[$n]}"
    assert_json "$n: next_update as on the poller" .next_update "$(jq -r .next_update <<<"$P_BODY")" "${SNAP[$n]}"
    if [ -s "$R/$n.der" ] && cmp -s "$R/$n.der" "$R/poller-before.der"; then
        pass "$n: the staple file is back, the poller's bytes"
    else
        fail "$n: the staple file is back, the poller's bytes"
    fi
done
pollers=0
for n in "${NODES[@]}"; do
    [ "$(metric_of "$n" ocsp_agent_cluster_poller)" = 1 ] && pollers=$((pollers + 1))
done
assert_eq "still exactly one node reports ocsp_agent_cluster_poller 1" 1 "$pollers"

for n in "${NODES[@]}"; do stop_node "$n"; done
