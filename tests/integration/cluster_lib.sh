# Cluster harness, sourced after lib.sh by the cluster suites: a redis-server on a loopback port, nodes by name,
# and waits on what a node serves.
#
#   start_redis / stop_redis    the store on $REDIS_PORT (chosen here), no persistence: a restart empties it
#   rcli ARGS...                redis-cli against it; key_of NAME the key of the one CertID's lease/status/sched
#   REDIS_ARGS=(...)            extra redis-server options (a later --port or --tls-port wins), REDIS_CLI_ARGS=(...)
#                               extra redis-cli options, for a store with TLS or a password
#   start_node NAME [ARGS...]   an agent in cluster mode (--cluster $CLUSTER, --time-scale $TIME_SCALE, its own
#                               data dir, node id NAME; --cluster ${NODE_CLUSTER:-$CLUSTER}); on NAME points
#                               req/put_json/wait_log at it
#   wait_conf / wait_status_on / wait_http   poll a node until what it serves matches (now_ms and the generic
#                               wait_until / assert_wait_eq are in lib.sh)
#   scheduled_queries SINCE_MS  the scheduled and recovery queries of every node, "epoch_ms node" lines by time
#   query_started_since MS      0 once a node has logged a scheduled or recovery query that started at MS or later

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "skipped: redis-server and redis-cli are needed (Debian: redis-server, redis-tools)"
    exit 0
fi

REDIS_PORT=$(free_port) || bail "no free port for redis"
REDIS_PID=
CLUSTER="redis://127.0.0.1:$REDIS_PORT"
TIME_SCALE=${TIME_SCALE:-0.02}
REDIS_ARGS=()
REDIS_CLI_ARGS=()
start_redis() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no "${REDIS_ARGS[@]}" \
        >>"$T_DIR/redis.log" 2>&1 &
    REDIS_PID=$!
    T_PIDS+=("$REDIS_PID")
    wait_port "$REDIS_PORT" "$REDIS_PID" 10 || bail "redis-server starts on port $REDIS_PORT" "$(tail "$T_DIR/redis.log")"
}
stop_redis() {
    kill -TERM "$REDIS_PID" 2>/dev/null
    wait_exit "$REDIS_PID" 5 || kill -KILL "$REDIS_PID"
    wait "$REDIS_PID" 2>/dev/null
    forget_pid "$REDIS_PID"
}
rcli() { redis-cli -p "$REDIS_PORT" "${REDIS_CLI_ARGS[@]}" --raw "$@" 2>/dev/null; }
# key_of lease|status|sched: the store's key of that record for the one CertID the nodes hold ("" when none is
# stored); the records are kept per CertID (ocsp-agent:status:<certid>).
key_of() { rcli --scan --pattern "ocsp-agent:$1:*" | head -n 1; }
lease_holder() { rcli GET "$(key_of lease)"; }

# The store of the suites written for either (OA_CLUSTER_STORE=redis, the default, or etcd: a three-member etcd
# cluster; test_*_etcd.sh run a suite that way). What they read from it goes through these:
#   start_store                 the store, and CLUSTER pointed at it
#   store_record KIND [CERTID]  the text of a record (lease: the holder's id; status, sched), of CERTID or of the one
#                               CertID the nodes hold
#   store_node_entry NODE       NODE's registry entry (JSON)
#   store_keys_naming CERTID    every key of the store that names CERTID, one a line
#   store_certids               the CertIDs the store keeps records or entries for, one a line
#   store_ttl_ms KIND|node NAME how long the lease record (KIND lease) or NAME's registry entry has left to live, in ms
#   store_ttl_max_ms MS         the longest that is with --cluster-lease MS; lease_holder the lease record
STORE=${OA_CLUSTER_STORE:-redis}
lease_holder() { store_record lease; }
# The longest a lease or registry entry of --cluster-lease MS lives: MS on Redis; on etcd, the node's session lease,
# MS in whole seconds.
store_ttl_max_ms() { if [ "$STORE" = etcd ]; then echo $((($1 + 999) / 1000 * 1000)); else echo "$1"; fi; }
start_store() {
    if [ "$STORE" = etcd ]; then
        start_etcd_cluster 3
        CLUSTER=$ETCD_URL
    else
        start_redis
    fi
}
_first_key() { ectl get --prefix --keys-only "$1" 2>/dev/null | grep . | head -n 1; }
store_record() {
    if [ "$STORE" = etcd ]; then
        etcd_value "$(if [ -n "${2:-}" ]; then echo "/ocsp-agent/$1/$2"; else _first_key "/ocsp-agent/$1/"; fi)"
    else
        rcli GET "$(if [ -n "${2:-}" ]; then echo "ocsp-agent:$1:$2"; else key_of "$1"; fi)"
    fi
}
store_node_entry() {
    if [ "$STORE" = etcd ]; then
        ectl get --prefix --print-value-only /ocsp-agent/node/ 2>/dev/null | jq -c --arg n "$1" 'select(.node_id == $n)'
    else
        rcli GET "ocsp-agent:node:$1"
    fi
}
store_keys_naming() {
    if [ "$STORE" = etcd ]; then
        ectl get --prefix --keys-only /ocsp-agent/ 2>/dev/null | grep -F -- "$1"
    else
        rcli --scan --pattern "ocsp-agent:*$1*"
    fi
}
store_certids() {
    if [ "$STORE" = etcd ]; then
        ectl get --prefix --keys-only /ocsp-agent/ 2>/dev/null | grep -oE '[0-9a-f]{40}' | sort -u
    else
        rcli SMEMBERS ocsp-agent:certids
    fi
}
store_ttl_ms() {
    local key id
    if [ "$STORE" != etcd ]; then
        if [ "$1" = node ]; then rcli PTTL "ocsp-agent:node:$2"; else rcli PTTL "$(key_of "$1")"; fi
        return
    fi
    if [ "$1" = node ]; then
        key=$(ectl get --prefix --keys-only /ocsp-agent/node/ 2>/dev/null | grep "/$2\$" | head -n 1)
    else
        key=$(_first_key "/ocsp-agent/$1/")
    fi
    # The key's etcd lease (a decimal 64-bit id in the JSON answer, read as text: jq would round it), then that
    # lease's remaining time in whole seconds.
    id=$(ectl get "$key" -w json 2>/dev/null | grep -oE '"lease":[0-9]+' | head -n 1 | cut -d: -f2)
    [ -n "$id" ] || return 1
    ectl lease timetolive "$(printf '%x' "$id")" 2>/dev/null | sed -n 's/.*remaining(\(-\{0,1\}[0-9]*\)s).*/\1/p' |
        awk '{ print $1 * 1000 }'
}

# Nodes by name: their pid, port, log and data dir.
declare -A N_PID=() N_PORT=() N_LOG=()
start_node() { # NAME [EXTRA ARGS...]
    local name=$1
    shift
    mkdir -p "$T_DIR/data-$name"
    start_agent --users "$USERS_FILE" --cert "$T_DIR/pki/proxy-chain.pem" --data-dir "$T_DIR/data-$name" \
        --node-id "$name" --time-scale "$TIME_SCALE" --cluster "${NODE_CLUSTER:-$CLUSTER}" "$@" || bail "node $name starts"
    N_PID[$name]=$AGENT_PID
    N_PORT[$name]=$AGENT_PORT
    N_LOG[$name]=$AGENT_LOG
}
on() { # NAME: later req/put_json go to that node
    AGENT_URL="http://127.0.0.1:${N_PORT[$1]}"
    AGENT_PID=${N_PID[$1]}
    AGENT_LOG=${N_LOG[$1]}
}
stop_node() { on "$1"; stop_agent; }

# wait_conf NODE JQ_EXPR TIMEOUT_S: polls GET /v1/ocsp on NODE until JQ_EXPR holds.
wait_conf() {
    local deadline=$((SECONDS + $3))
    on "$1"
    while :; do
        req GET /v1/ocsp
        [ "$STATUS" = 200 ] && printf '%s' "$BODY" | jq -e "$2" >/dev/null 2>&1 && return 0
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.02
    done
}
wait_status_on() { on "$1"; wait_status "$2" "$3"; } # NODE JQ_EXPR TIMEOUT_S
wait_http() { # NODE METHOD PATH STATUS TIMEOUT_S
    local deadline=$((SECONDS + $5))
    on "$1"
    while :; do
        req "$2" "$3"
        [ "$STATUS" = "$4" ] && return 0
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
assert_between() { # NAME LO HI VALUE (integers)
    if [[ $4 =~ ^-?[0-9]+$ ]] && [ "$4" -ge "$2" ] && [ "$4" -le "$3" ]; then pass "$1 ($4)"; else
        fail "$1" "expected a number in [$2, $3], got '$4'"; fi
}

# The scheduled queries of every node, as "epoch_ms node" lines sorted by time, since epoch ms $1.
field() { printf '%s\n' "$1" | sed -nE "s/(^|.* )$2=(\"([^\"]*)\"|([^ \"]*)).*/\3\4/p"; }
scheduled_queries() {
    local since=$1 name line ts d start
    for name in "${!N_LOG[@]}"; do
        grep -E ' event=ocsp_query ' "${N_LOG[$name]}" | grep -E 'trigger=(schedule|recovery)' |
            while IFS= read -r line; do
                ts=$(field "$line" ts)
                d=$(field "$line" duration_ms)
                start=$(($(date -u -d "$ts" +%s%3N) - ${d:-0}))
                [ "$start" -ge "$since" ] && echo "$start $name"
            done
    done | sort -n
}
# query_started_since MS: 0 when some node has logged a scheduled or recovery query that started at or after epoch
# ms MS (only each node's last such query is read: cheap enough to poll).
query_started_since() {
    local name line d
    for name in "${!N_LOG[@]}"; do
        line=$(grep -E ' event=ocsp_query ' "${N_LOG[$name]}" | grep -E 'trigger=(schedule|recovery)' | tail -n 1)
        [ -n "$line" ] || continue
        d=$(field "$line" duration_ms)
        [ $(($(date -u -d "$(field "$line" ts)" +%s%3N) - ${d:-0})) -ge "$1" ] && return 0
    done
    return 1
}
# gaps between consecutive lines of scheduled_queries output, in ms
gaps_of() { awk 'NR > 1 { printf "%d ", $1 - prev } { prev = $1 }'; }
