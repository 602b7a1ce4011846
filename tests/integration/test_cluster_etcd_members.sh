#!/usr/bin/env bash
# Cluster mode on etcd: the members change under three running agents, and the agents never notice an outage.
#
# Three agents on a three-member etcd cluster. While every agent is asked GET /v1/ocsp and GET /v1/ocsp/status
# without pause (a background loop, each answer recorded):
#   1. the leader is restarted on its data (SIGTERM, then started again; a new leader is elected meanwhile);
#   2. a follower is wiped and added back: killed, removed from the cluster (etcdctl member remove), added again
#      (member add) and started on an empty data dir, from which it catches up with the others.
# After each step a PUT on every node in turn answers 200 and its value is served by all three nodes. Throughout,
# every GET answered 200 (the status GOOD), and no agent logged store_unavailable: a majority of members was there
# all along, and the agents move between members by themselves.
source "$(dirname "$0")/lib.sh"

TIME_SCALE=0.02 # query_frequency 60 s -> a period of 1.2 s
NODES=(n1 n2 n3)

make_users admin
start_pki_responder

source "$(dirname "$0")/cluster_etcd_lib.sh"

# The GET loop: "node path status cert_status" per answer in $GETS_LOG, until $GETS_STOP exists. Plain curl, so that
# it shares no file with req in the foreground.
GETS_LOG=$T_DIR/gets.log
GETS_STOP=$T_DIR/gets.stop
get_loop() {
    local n path out code
    while [ ! -e "$GETS_STOP" ]; do
        for n in "${NODES[@]}"; do
            for path in /v1/ocsp /v1/ocsp/status; do
                out=$(curl -sS --max-time 5 -u "admin@example.com:${USER_PASS[admin]}" -w '\n%{http_code}' \
                    "http://127.0.0.1:${N_PORT[$n]}$path" 2>/dev/null)
                code=${out##*$'\n'}
                echo "$n $path ${code:-000} $(printf '%s' "${out%$'\n'*}" | jq -r '.cert_status // "-"' 2>/dev/null)"
            done
        done >>"$GETS_LOG"
    done
}
gets_of() { grep -c "^$1 " "$GETS_LOG" 2>/dev/null; } # NODE: how many answers were recorded for it
gets_since() { # COUNT...: 0 once every node has more answers recorded than the count given for it
    local n i=1
    for n in "${NODES[@]}"; do
        [ "$(gets_of "$n")" -gt "${!i}" ] || return 1
        i=$((i + 1))
    done
}
# gets_flow WHAT: waits until every node answered at least two more GETs (the loop is running through the step).
gets_flow() {
    local before=() n
    for n in "${NODES[@]}"; do before+=($(($(gets_of "$n") + 1))); done
    assert_wait_until "GETs flow on every node $1" 10 gets_since "${before[@]}"
}

# put_everywhere STEP BASE: a PUT on each node in turn (query_frequency BASE, BASE+1, BASE+2), each answered 200 and
# then served by all three nodes.
put_everywhere() {
    local step=$1 value=$2 n
    for n in "${NODES[@]}"; do
        on "$n"
        put_json /v1/ocsp "{\"query_frequency\": $value}"
        assert_status "$step: PUT query_frequency=$value on $n" 200
        assert_conf_on "$step: serves $value" 2 ".query_frequency == $value" "${NODES[@]}"
        value=$((value + 1))
    done
}

# ---------------------------------------------------------------------------------------------------------------
echo "# three nodes"
for n in "${NODES[@]}"; do start_connected "$n"; done
querying_on "${NODES[@]}"

get_loop &
GETS_PID=$!
T_PIDS+=("$GETS_PID")
gets_flow "before the members change"

echo "# 1. the leader restarts on its data"
L=$(etcd_leader) || bail "etcd has a leader"
echo "# the leader is ${ETCD_NAME[$L]}"
etcd_member_restart "$L"
gets_flow "after the restart"
put_everywhere "after the restart" 100

echo "# 2. a follower is wiped and added back"
L=$(etcd_leader) || bail "etcd has a leader after the restart"
F=$((L % 3 + 1))
echo "# the leader is ${ETCD_NAME[$L]}; ${ETCD_NAME[$F]} is wiped"
etcd_member_wipe_readd "$F"
gets_flow "after the wipe and re-add"
put_everywhere "after the wipe and re-add" 200
assert_eq "the re-added member holds the configuration" 202 \
    "$(etcdctl --endpoints "127.0.0.1:${ETCD_CLIENT_PORT[$F]}" get --print-value-only /ocsp-agent/conf 2>/dev/null |
        jq -r '(.conf // .) | if type == "string" then fromjson else . end | .query_frequency' 2>/dev/null)"

touch "$GETS_STOP"
wait_exit "$GETS_PID" 10 || kill -KILL "$GETS_PID" 2>/dev/null
wait "$GETS_PID" 2>/dev/null
forget_pid "$GETS_PID"

echo "# every GET answered 200 throughout"
total=$(grep -c . "$GETS_LOG")
bad=$(awk '$3 != 200 || ($2 == "/v1/ocsp/status" && $4 != "GOOD")' "$GETS_LOG")
assert_eq "all $total GETs answered 200 (GOOD for the status)" "" "$bad"
for n in "${NODES[@]}"; do
    assert_between "$n answered GETs of both kinds (status answers)" 2 999999 \
        "$(grep -c "^$n /v1/ocsp/status 200 GOOD\$" "$GETS_LOG")"
done

echo "# no agent saw the store go away"
for n in "${NODES[@]}"; do
    assert_file_lacks "$n logs no store_unavailable" "${N_LOG[$n]}" 'event=store_unavailable'
done

for n in "${NODES[@]}"; do stop_node "$n"; done
