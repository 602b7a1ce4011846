#!/usr/bin/env bash
# Cluster mode's figures on both stores, with a real redis-server, a real 3-member etcd cluster and a real
# `openssl ocsp` responder on loopback.
#
#   tests/bench/bench_cluster.sh [--puts N] [--periods P] [--kills K] [--store redis|etcd|both] [--no-build]
#
# --puts      PUTs in (a) (default 100)
# --periods   query periods observed per cluster size in (b) (default 10)
# --kills     leader kills in (c) (default 5)
# --store     which store(s) to measure (default both, in the same run)
# --no-build  use build-bench/ocsp-agent as it is
#
# (a) PUT latency and propagation: three nodes; N sequential PUTs on node 1, each changing query_frequency. The
#     PUT's latency is curl's total time (median, p99); its propagation is the time from just before curl sends it
#     to the `cluster_conf_applied` log line of the last of the two other nodes (the agents' log timestamps and the
#     script's clock are the same wall clock): median, p99 and max.
# (b) Queries per period: clusters of 1, 3 and 10 nodes with OCSP enabled, --time-scale 0.02 (query_frequency 60 s
#     -> a 1.2 s period); the responder's requests over P periods once the first answer is in, divided by P
#     (target: exactly 1), and how many distinct nodes queried.
# (c) etcd only: PUT unavailability after the leader is killed. Three nodes, sequential PUTs on node 1; the etcd
#     leader is SIGKILLed (election timeout 1 s); the time from the kill to the first acknowledged PUT sent after it
#     (target: under 5 s), K times, the killed member started again in between.
# The agent is built in Release mode without sanitizers into build-bench/ (shared with the other benchmarks).
# Everything the script starts is stopped when it ends (OA_KEEP_TMP=1 keeps its temporary directory).
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

puts=100
periods=10
kills=5
stores=(redis etcd)

usage() { bench_usage 25; }

while [ $# -gt 0 ]; do
    case "$1" in
    --puts) puts=${2:?--puts needs a number}; shift ;;
    --periods) periods=${2:?--periods needs a number}; shift ;;
    --kills) kills=${2:?--kills needs a number}; shift ;;
    --store)
        case "${2:-}" in
        redis | etcd) stores=("$2") ;;
        both) stores=(redis etcd) ;;
        *) bench_bad_option "--store ${2:-}" ;;
        esac
        shift ;;
    --no-build) build=0 ;;
    -h | --help) usage; exit 0 ;;
    *) bench_bad_option "$1" ;;
    esac
    shift
done
bench_positive "$puts" "$periods" "$kills"
bench_need redis-server etcd etcdctl curl python3 openssl ss awk
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

# The etcd members, through the integration suites' helpers, which expect these from their caller.
T_DIR=$tmp
T_NAME=bench
T_PIDS=()
bail() { die "$*"; }
proc_alive() { kill -0 "$1" 2>/dev/null; }
forget_pid() { :; }
wait_exit() {
    local deadline=$((SECONDS + $2))
    while proc_alive "$1"; do [ $SECONDS -lt "$deadline" ] || return 1; sleep 0.05; done
}
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do [ $SECONDS -lt "$deadline" ] || return 1; sleep 0.1; done
}
# shellcheck source=tests/support/etcd_cluster.sh
source "$root/tests/support/etcd_cluster.sh"
# The helpers are written for the suites, which do not run under set -eu: each call here runs without it.
etcd_do() {
    local rc
    set +eu
    "$@"
    rc=$?
    set -eu
    return $rc
}

redis_port=
start_redis() {
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$tmp/redis.log" 2>&1 &
    REDIS_PID=$!
    pids+=("$REDIS_PID")
    wait_port "$redis_port" "$REDIS_PID" || { echo "redis-server did not start" >&2; exit 1; }
}

# start_store redis|etcd / stop_store: the store of the next clusters; sets store_url.
store_url=
start_store() {
    store=$1
    if [ "$store" = redis ]; then
        start_redis
        store_url="redis://127.0.0.1:$redis_port"
    else
        etcd_do start_etcd_cluster 3 >/dev/null
        pids+=("${T_PIDS[@]}")
        store_url=$ETCD_URL
    fi
}
stop_store() {
    if [ "$store" = redis ]; then
        kill -TERM "$REDIS_PID"; wait "$REDIS_PID" || true
    else
        etcd_do stop_etcd_cluster
    fi
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
            --cert "$tmp/pki/proxy-chain.pem" --cluster "$store_url" </dev/null \
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
put() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X PUT -H 'Content-Type: application/json' -d "$2" \
    "http://127.0.0.1:$1/v1/ocsp"; }
put_timed() { curl -s -o /dev/null -w '%{http_code} %{time_total}' -X PUT -H 'Content-Type: application/json' \
    -d "$2" "http://127.0.0.1:$1/v1/ocsp"; }
# version_of PORT: the configuration version a node has in force, from its metrics.
version_of() { curl -s "http://127.0.0.1:$1/metrics" | awk '$1 == "ocsp_agent_cluster_conf_version" { print $2 }'; }

# percentile P over the numbers on stdin (nearest rank)
pct() { sort -n | awk -v p="$1" '{ a[NR] = $1 } END { i = int((p * NR + 99) / 100); if (i < 1) i = 1; print a[i] }'; }

for store in "${stores[@]}"; do
echo "# (a) $store: latency of a PUT, and its propagation to the two other nodes of three ($puts PUTs)"
start_store "$store"
start_cluster 3
: >"$tmp/prop.txt"
: >"$tmp/lat.txt"
for k in $(seq 1 "$puts"); do
    qf=$((60 + k))
    t0=$(now_ms)
    out=$(put_timed "${NODE_PORTS[0]}" "{\"query_frequency\": $qf}")
    [ "${out%% *}" = 200 ] || { echo "PUT $k answered ${out%% *}" >&2; exit 1; }
    awk -v s="${out#* }" 'BEGIN { printf "%.1f\n", s * 1000 }' >>"$tmp/lat.txt"
    v=$(version_of "${NODE_PORTS[0]}")
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
echo "$store: PUT latency ms: median $(pct 50 <"$tmp/lat.txt"), p99 $(pct 99 <"$tmp/lat.txt")" \
    "(curl's total time, the store's confirmation included)"
echo "$store: propagation ms: median $(pct 50 <"$tmp/prop.txt"), p99 $(pct 99 <"$tmp/prop.txt"), max $(pct 100 <"$tmp/prop.txt")" \
    "(from before curl sends the PUT to the apply log line of the slower of the other two nodes)"
stop_cluster
stop_store
done

for store in "${stores[@]}"; do
echo "# (b) $store: responder queries per period (1.2 s), over $periods periods"
for n in 1 3 10; do
    start_store "$store"
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
    echo "$store, $n node(s): $((after - before)) queries in $periods periods =" \
        "$(awk -v q=$((after - before)) -v p="$periods" 'BEGIN { printf "%.2f", q / p }') per period;" \
        "nodes that ever queried on schedule: $pollers"
    stop_cluster
    stop_store
done
done

case " ${stores[*]} " in *" etcd "*) ;; *) exit 0 ;; esac
echo "# (c) etcd: PUT unavailability after the leader is killed ($kills kills, election timeout 1 s)"
start_store etcd
start_cluster 3
: >"$tmp/unavail.txt"
for k in $(seq 1 "$kills"); do
    put "${NODE_PORTS[0]}" "{\"query_frequency\": $((200 + k))}" >/dev/null
    leader=$(etcd_do etcd_leader)
    t_kill=$(now_ms)
    etcd_do etcd_member_kill "$leader" 2>/dev/null
    n=0
    while :; do
        n=$((n + 1))
        code=$(put "${NODE_PORTS[0]}" "{\"query_frequency\": $((1000 + k * 100 + n % 100))}")
        [ "$code" = 200 ] && break
        [ $(($(now_ms) - t_kill)) -lt 30000 ] || die "no PUT succeeded within 30 s of the kill"
    done
    echo $(($(now_ms) - t_kill)) >>"$tmp/unavail.txt"
    echo "kill $k: member $leader; first PUT acknowledged $(tail -n 1 "$tmp/unavail.txt") ms after the kill, $n PUT(s)"
    etcd_do etcd_member_restart "$leader"
    pids+=("${T_PIDS[@]}")
done
echo "etcd: PUT unavailability after a leader kill, ms: median $(pct 50 <"$tmp/unavail.txt"), max $(pct 100 <"$tmp/unavail.txt")"
stop_cluster
stop_store
