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
