#!/usr/bin/env bash
# Cluster mode's two figures, with a real redis-server and a real `openssl ocsp` responder on loopback.
#
#   tests/bench/bench_cluster.sh [--puts N] [--periods P] [--no-build]
#
# --puts      PUTs in (a) (default 100)
# --periods   query periods observed per cluster size in (b) (default 10)
# --no-build  use build-bench/ocsp-agent as it is
#
# (a) Propagation: three nodes; N sequential PUTs on node 1, each changing query_frequency. For each PUT, the time
#     from just before curl sends it to the `cluster_conf_applied` log line of the last of the two other nodes (the
#     agents' log timestamps and the script's clock are the same wall clock): median, p99 and max.
# (b) Queries per period: clusters of 1, 3 and 10 nodes with OCSP enabled, --time-scale 0.02 (query_frequency 60 s
#     -> a 1.2 s period); the responder's requests over P periods once the first answer is in, divided by P
#     (target: exactly 1), and how many distinct nodes queried.
# The agent is built in Release mode without sanitizers into build-bench/ (shared with the other benchmarks).
# Everything the script starts is stopped when it ends (OA_KEEP_TMP=1 keeps its temporary directory).
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

puts=100
periods=10

usage() { bench_usage 17; }

while [ $# -gt 0 ]; do
    case "$1" in
    --puts) puts=${2:?--puts needs a number}; shift ;;
    --periods) periods=${2:?--periods needs a number}; shift ;;
    --no-build) build=0 ;;
    -h | --help) usage; exit 0 ;;
    *) bench_bad_option "$1" ;;
    esac
    shift
done
bench_positive "$puts" "$periods"
bench_need redis-server curl python3 openssl ss awk
bench_build
bench_tmp oa-bench-cluster

now_ms() { date +%s%3N; }
ts_ms() { date -u -d "$1" +%s%3N; }

resp_port=$(free_port)
bash "$root/tests/support/make-pki.sh" "$tmp/pki" "http://127.0.0.1:$resp_port/" >/dev/null 2>&1
python3 "$root/scripts/ocsp-responder.py" --pki "$tmp/pki" --port "$resp_port" </dev/null 2>"$tmp/responder.log" &
resp_pid=$!
pids+=("$resp_pid")
wait_port "$resp_port" "$resp_pid" || { echo "the responder did not start" >&2; exit 1; }

redis_port=
start_redis() {
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$tmp/redis.log" 2>&1 &
    REDIS_PID=$!
    pids+=("$REDIS_PID")
    wait_port "$redis_port" "$REDIS_PID" || { echo "redis-server did not start" >&2; exit 1; }
}

# start_cluster N: N nodes on the current store; fills NODE_PORTS and NODE_PIDS.
start_cluster() {
    local i port k
    NODE_PORTS=()
    NODE_PIDS=()
    for i in $(seq 1 "$1"); do
        port=$(free_port)
        mkdir -p "$tmp/c$1/d$i"
        "$bin" --no-auth --listen "127.0.0.1:$port" --data-dir "$tmp/c$1/d$i" --node-id "n$i" --time-scale 0.02 \
            --cert "$tmp/pki/proxy-chain.pem" --cluster "redis://127.0.0.1:$redis_port" </dev/null \
            2>"$tmp/c$1/n$i.log" &
        NODE_PIDS+=($!)
        pids+=($!)
        NODE_PORTS+=("$port")
    done
    for k in "${!NODE_PORTS[@]}"; do
        wait_port "${NODE_PORTS[$k]}" "${NODE_PIDS[$k]}" || { echo "a node did not start" >&2; exit 1; }
    done
    sleep 0.5
}
stop_cluster() {
    local p
    for p in "${NODE_PIDS[@]}"; do kill -TERM "$p"; done
    for p in "${NODE_PIDS[@]}"; do wait "$p" || true; done
}
put() { curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' -d "$2" \
    "http://127.0.0.1:$1/v1/ocsp"; }

# percentile P over the numbers on stdin (nearest rank)
pct() { sort -n | awk -v p="$1" '{ a[NR] = $1 } END { i = int((p * NR + 99) / 100); if (i < 1) i = 1; print a[i] }'; }

echo "# (a) propagation of a PUT to the two other nodes of three ($puts PUTs)"
start_redis
start_cluster 3
: >"$tmp/prop.txt"
for k in $(seq 1 "$puts"); do
    qf=$((60 + k))
    t0=$(now_ms)
    code=$(put "${NODE_PORTS[0]}" "{\"query_frequency\": $qf}")
    [ "$code" = 200 ] || { echo "PUT $k answered $code" >&2; exit 1; }
    v=$k
    last=0
    for i in 2 3; do
        line=
        for _ in $(seq 1 200); do
            line=$(grep -m1 "event=cluster_conf_applied version=$v " "$tmp/c3/n$i.log" || true)
            [ -n "$line" ] && break
            sleep 0.01
        done
        [ -n "$line" ] || { echo "node $i never applied version $v" >&2; exit 1; }
        t=$(ts_ms "$(sed -E 's/^ts=([^ ]+) .*/\1/' <<<"$line")")
        [ "$t" -gt "$last" ] && last=$t
    done
    echo $((last - t0)) >>"$tmp/prop.txt"
done
echo "propagation ms: median $(pct 50 <"$tmp/prop.txt"), p99 $(pct 99 <"$tmp/prop.txt"), max $(pct 100 <"$tmp/prop.txt")" \
    "(from before curl sends the PUT to the apply log line of the slower of the other two nodes)"
stop_cluster
kill -TERM "$REDIS_PID"; wait "$REDIS_PID" || true

echo "# (b) responder queries per period (1.2 s), over $periods periods"
for n in 1 3 10; do
    start_redis
    start_cluster "$n"
    code=$(put "${NODE_PORTS[0]}" '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60}')
    [ "$code" = 200 ] || { echo "enabling answered $code" >&2; exit 1; }
    for _ in $(seq 1 100); do
        grep -q 'event=ocsp_query ' "$tmp"/c$n/n*.log && break
        sleep 0.05
    done
    sleep 0.6 # into the middle of a period, so that the window holds whole periods
    before=$(grep -c '' "$tmp/responder.log")
    sleep "$(awk -v p="$periods" 'BEGIN { print p * 1.2 }')"
    after=$(grep -c '' "$tmp/responder.log")
    pollers=$(grep -l 'trigger=schedule' "$tmp"/c$n/n*.log | wc -l)
    echo "$n node(s): $((after - before)) queries in $periods periods =" \
        "$(awk -v q=$((after - before)) -v p="$periods" 'BEGIN { printf "%.2f", q / p }') per period;" \
        "nodes that ever queried on schedule: $pollers"
    stop_cluster
    kill -TERM "$REDIS_PID"; wait "$REDIS_PID" || true
done
