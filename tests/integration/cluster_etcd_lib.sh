# shellcheck shell=bash
# The harness of the cluster suites on etcd, sourced after lib.sh (and after the suite has made its users and PKI):
# the nodes of cluster_lib.sh pointed at a real three-member etcd cluster (start_etcd_cluster in lib.sh), the readers
# of what the agents store there, and the checks the suites repeat on several nodes.
#
#   stored_conf                 the configuration in /ocsp-agent/conf, as a JSON object
#   stored_status               the status record under /ocsp-agent/status/ (the one CertID)
#   conf_version_of NODE        the configuration version NODE recorded in its data dir
#   registered NODE             0 while NODE has a registry key under /ocsp-agent/node/ (not_registered: the reverse)
#   kill_node NODE              SIGKILL, and NODE forgotten by the harness
#   assert_conf_on NAME TIMEOUT_S JQ NODE...    each NODE serves a configuration for which JQ holds
#   assert_status_on NAME TIMEOUT_S JQ NODE...  each NODE serves a status for which JQ holds
#   assert_http_on NAME TIMEOUT_S METHOD PATH STATUS NODE...  each NODE answers METHOD PATH with STATUS
#   start_connected NODE [ARGS...]  start_node, and the node connects to the store
#   querying_on NODE...         a PUT on the first turns querying on; every NODE serves GOOD

# The nodes (start_node, on, the waits and the query log readers) are those of the Redis suites; only their store
# differs.
source "$(dirname "$0")/cluster_lib.sh"
start_etcd_cluster 3
CLUSTER=$ETCD_URL

# The record may hold the configuration as an object or as its text, beside its epoch and version.
stored_conf() {
    etcd_value /ocsp-agent/conf | jq -c '(.conf // .) | if type == "string" then fromjson else . end' 2>/dev/null
}
stored_status() { ectl get --prefix --print-value-only /ocsp-agent/status/ 2>/dev/null | head -n 1; }
conf_version_of() { jq -r '.conf_version // empty' "$T_DIR/data-$1/cluster.json" 2>/dev/null; }
registered() { etcd_keys /ocsp-agent/node/ | grep -q "/$1\$"; }
not_registered() { ! registered "$1"; }

kill_node() {
    kill -KILL "${N_PID[$1]}"
    wait "${N_PID[$1]}" 2>/dev/null
    forget_pid "${N_PID[$1]}"
    unset "N_PID[$1]" "N_LOG[$1]" "N_PORT[$1]"
}

# Each of these checks every node in turn, each within TIMEOUT_S, and names the node in its result.
assert_conf_on() {
    local name=$1 timeout=$2 expr=$3 n
    for n in "${@:4}"; do
        if wait_conf "$n" "$expr" "$timeout"; then pass "$n: $name"; else fail "$n: $name (within $timeout s)" "$BODY"; fi
    done
}
assert_status_on() {
    local name=$1 timeout=$2 expr=$3 n
    for n in "${@:4}"; do
        if wait_status_on "$n" "$expr" "$timeout"; then pass "$n: $name"; else
            fail "$n: $name (within $timeout s)" "$BODY"; fi
    done
}
assert_http_on() {
    local name=$1 timeout=$2 method=$3 path=$4 want=$5 n
    for n in "${@:6}"; do
        if wait_http "$n" "$method" "$path" "$want" "$timeout"; then pass "$n: $name"; else
            fail "$n: $name (within $timeout s)" "$STATUS $BODY"; fi
    done
}

# start_connected NODE [ARGS...]: start_node, then NODE must log store_connected within 10 s.
start_connected() {
    start_node "$@"
    if wait_log 'event=store_connected' 10; then pass "$1 connects to the store"; else
        fail "$1 connects to the store" "$(tail -n 5 "$AGENT_LOG")"; fi
}

# querying_on NODE...: a PUT on the first node turns querying on at a 60 s period; every node then serves GOOD.
querying_on() {
    on "$1"
    put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60}'
    assert_status "PUT on $1 turns querying on" 200
    assert_status_on "serves GOOD (valid)" 8 '.cert_status == "GOOD" and .state == "valid"' "$@"
}
