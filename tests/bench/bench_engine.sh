#!/usr/bin/env bash
# The querying engine's cost, against a real `openssl ocsp` responder on loopback.
#
#   tests/bench/bench_engine.sh [--rounds N] [--idle-seconds S] [--pin] [--no-build]
#
# --rounds        round trips of each kind in (a) (default 50)
# --idle-seconds  length of the idle window in (b) (default 60)
# --pin           servers (agent, responder) on CPU 0, clients on CPU 1 (default: the kernel places them all;
#                 pinned, the agent, its worker threads and the responder share CPU 0 and the round trip grows
#                 by several ms)
# --no-build      use build-bench/ocsp-agent as it is
#
# (a) N x `POST /v1/ocsp/test` through the agent (curl's time_total) next to N x the `openssl ocsp` client against
#     the same responder (wall time of the whole command): median and p95 of each, and the ratio of the medians.
#     OCSP is still disabled then, so a test answer is not cached and no staple is written (no fsync in the figure).
# (b) Idle CPU: OCSP enabled with query_frequency 60 at time-scale 1; from 0.5 s after the first query, the agent's
#     utime+stime ticks (and, from schedstat, its CPU time and wake-ups) over the first min(S, 55) s, which lie
#     between two queries (target: 0 ticks), and over the whole S s window with the queries made meanwhile.
# (c) Memory: VmRSS and VmHWM of the agent after (a) and (b).
# The agent is built in Release mode without sanitizers into build-bench/ (shared with bench_api.sh). Everything
# the script starts is stopped when it ends (OA_KEEP_TMP=1 keeps its temporary directory). Exit status 0 when every
# figure was measured (a MISS is a figure, not an error); 1 when something could not be measured.
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rounds=50
idle=60
pin=0

usage() { bench_usage 11; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=${2:?--rounds needs a number}; shift ;;
    --rounds=*) rounds=${1#--rounds=} ;;
    --idle-seconds) idle=${2:?--idle-seconds needs seconds}; shift ;;
    --idle-seconds=*) idle=${1#--idle-seconds=} ;;
    --no-build) build=0 ;;
    --pin) pin=1 ;;
    -h|--help) usage; exit 0 ;;
    *) bench_bad_option "$1" ;;
  esac
  shift
done
bench_positive "$rounds" "$idle"
bench_need curl jq openssl ss awk
bench_build
bench_tmp oa-bench-engine

# With --pin: servers on CPU 0, clients (curl, the openssl client) on CPU 1.
if [ "$pin" = 1 ]; then bench_pin; fi

# --- the PKI and the responder
resp_port=$(free_port) || die "no free port"
resp_url="http://127.0.0.1:$resp_port"
bash "$root/tests/support/make-pki.sh" "$tmp/pki" "$resp_url" >/dev/null 2>"$tmp/pki.err" ||
  { cat "$tmp/pki.err" >&2; die "make-pki.sh failed"; }
pki=$tmp/pki
"${server_cpu[@]}" openssl ocsp -index "$pki/index.txt" -port "$resp_port" -rsigner "$pki/ocsp.pem" \
  -rkey "$pki/ocsp.key" -CA "$pki/ca.pem" -nmin 5 -ignore_err </dev/null >"$tmp/responder.log" 2>&1 &
resp_pid=$!
pids+=("$resp_pid")
wait_port "$resp_port" "$resp_pid" || { cat "$tmp/responder.log" >&2; die "openssl ocsp did not start"; }

# --- the agent
password=$(openssl rand -hex 16)
hash=$(printf '%s\n' "$password" | "$bin" passwd)
(umask 077 && jq -n --arg h "$hash" '{users: [{name: "bench@example.com", role: "admin", password: $h}]}' \
  >"$tmp/users.json")
mkdir -p "$tmp/data"
agent_port=$(free_port) || die "no free port"
while [ "$agent_port" = "$resp_port" ]; do agent_port=$(free_port); done
"${server_cpu[@]}" "$bin" --listen "127.0.0.1:$agent_port" --users "$tmp/users.json" --data-dir "$tmp/data" \
  --cert "$pki/proxy-chain.pem" --log-level info </dev/null >/dev/null 2>"$tmp/agent.log" &
agent_pid=$!
pids+=("$agent_pid")
wait_port "$agent_port" "$agent_pid" || { cat "$tmp/agent.log" >&2; die "the agent did not start"; }
agent_url="http://127.0.0.1:$agent_port"
auth="Authorization: Basic $(printf 'bench@example.com:%s' "$password" | base64 -w0)"

# median and p95 (nearest rank) of the numbers in a file, in the unit they are in.
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
p95() { sort -n "$1" | awk '{ v[NR] = $1 } END { i = int(NR * 0.95); if (i < NR * 0.95) i++; print v[i] }'; }

# --- (a) round trips
post_test() { # prints "HTTP_CODE SECONDS"
  "${client_cpu[@]}" curl -s --max-time 10 -o "$tmp/test.json" -w '%{http_code} %{time_total}\n' -X POST \
    -H "$auth" "$agent_url/v1/ocsp/test"
}
client_query() {
  "${client_cpu[@]}" openssl ocsp -issuer "$pki/ca.pem" -cert "$pki/proxy.pem" -url "$resp_url" \
    -CAfile "$pki/ca.pem" >"$tmp/client.out" 2>&1
}

echo "(a) $rounds x POST /v1/ocsp/test through the agent, $rounds x the openssl ocsp client, same responder"
# One of each first: the agent verifies the password once (a slow KDF) and remembers it.
read -r code _ < <(post_test)
[ "$code" = 200 ] || die "POST /v1/ocsp/test answered $code: $(cat "$tmp/test.json")"
jq -e '.cert_status == "GOOD"' "$tmp/test.json" >/dev/null || die "the test did not answer GOOD: $(cat "$tmp/test.json")"
client_query || die "openssl ocsp client failed: $(cat "$tmp/client.out")"
: >"$tmp/agent.ms"
: >"$tmp/client.ms"
# The two kinds alternate, so both see the same background load on a shared machine.
for _ in $(seq 1 "$rounds"); do
  read -r code secs < <(post_test)
  [ "$code" = 200 ] || die "POST /v1/ocsp/test answered $code: $(cat "$tmp/test.json")"
  awk -v s="$secs" 'BEGIN { printf "%.3f\n", s * 1000 }' >>"$tmp/agent.ms"
  t0=$(date +%s%N)
  client_query || die "openssl ocsp client failed: $(cat "$tmp/client.out")"
  t1=$(date +%s%N)
  grep -q ': good$' "$tmp/client.out" || die "the openssl client did not read good: $(cat "$tmp/client.out")"
  awk -v d=$((t1 - t0)) 'BEGIN { printf "%.3f\n", d / 1e6 }' >>"$tmp/client.ms"
done
a_med=$(median "$tmp/agent.ms"); a_p95=$(p95 "$tmp/agent.ms")
c_med=$(median "$tmp/client.ms"); c_p95=$(p95 "$tmp/client.ms")
ratio=$(awk -v a="$a_med" -v c="$c_med" 'BEGIN { printf "%.3f", (c > 0 ? a / c : 0) }')
test_lines=$(grep -c ' event=ocsp_query .*result=ok .*trigger=test' "$tmp/agent.log" || true)
[ "$test_lines" -eq $((rounds + 1)) ] ||
  die "expected $((rounds + 1)) test queries in the agent log, found $test_lines"

# --- (b) idle CPU
# snap: "ticks cpu_ns runs" of the agent: utime+stime in clock ticks (fields 14 and 15 of /proc/PID/stat), and from
# every thread's schedstat the nanoseconds on a CPU and the number of times it was scheduled in (its wake-ups).
snap() {
  local ticks ns=0 runs=0 a c f
  ticks=$(sed 's/^.*) //' "/proc/$agent_pid/stat" | awk '{ print $12 + $13 }')
  for f in /proc/"$agent_pid"/task/*/schedstat; do
    read -r a _ c <"$f" 2>/dev/null || continue
    ns=$((ns + a))
    runs=$((runs + c))
  done
  echo "$ticks $ns $runs"
}
sched_queries() { grep -c ' event=ocsp_query .*trigger=schedule' "$tmp/agent.log" || true; }
# The first query comes at once, the next 60 s after it: a window that starts 0.5 s after the first and lasts at
# most 55 s has no query in it ("between queries"); the rest of the idle window, if any, holds the next one.
quiet=$((idle < 55 ? idle : 55))
echo "(b) idle CPU: OCSP enabled, query_frequency 60, time-scale 1; ${idle} s after the first query," \
  "the first ${quiet} s of which lie between two queries"
code=$(curl -s --max-time 10 -o "$tmp/put.json" -w '%{http_code}' -X PUT -H "$auth" \
  -H 'Content-Type: application/json' --data '{"ocsp_functionality": true, "query_frequency": 60}' "$agent_url/v1/ocsp")
[ "$code" = 200 ] || die "PUT /v1/ocsp answered $code: $(cat "$tmp/put.json")"
for _ in $(seq 1 100); do [ "$(sched_queries)" -ge 1 ] && break; sleep 0.1; done
[ "$(sched_queries)" -ge 1 ] || die "no scheduled query after enabling: $(tail -n 3 "$tmp/agent.log")"
sleep 0.5 # let the first query's logging and staple write settle
q0=$(sched_queries)
read -r t0 ns0 r0 < <(snap)
sleep "$quiet"
q1=$(sched_queries)
read -r t1 ns1 r1 < <(snap)
if [ "$idle" -gt "$quiet" ]; then sleep $((idle - quiet)); fi
q2=$(sched_queries)
read -r t2 ns2 r2 < <(snap)
hz=$(getconf CLK_TCK)
quiet_ticks=$((t1 - t0)); quiet_runs=$((r1 - r0)); quiet_queries=$((q1 - q0))
quiet_cpu=$(awk -v n=$((ns1 - ns0)) 'BEGIN { printf "%.3f", n / 1e6 }')
idle_ticks=$((t2 - t0)); idle_runs=$((r2 - r0)); idle_queries=$((q2 - q0))
idle_cpu=$(awk -v n=$((ns2 - ns0)) 'BEGIN { printf "%.3f", n / 1e6 }')
[ "$quiet_queries" -eq 0 ] || die "a query came within ${quiet} s of the first: the window is not between queries"

# --- (c) memory
rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$agent_pid/status")
hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$agent_pid/status")
if [ -z "$rss" ] || [ -z "$hwm" ]; then die "cannot read the agent's memory figures"; fi

verdict() { if [ "$1" = 1 ]; then echo PASS; else echo MISS; fi; }
ratio_ok=$(awk -v r="$ratio" 'BEGIN { print (r <= 0.5) ? 1 : 0 }')
idle_ok=$((quiet_ticks == 0 ? 1 : 0))
rss_ok=$((rss <= 8192 ? 1 : 0))
hwm_ok=$((hwm <= 8192 ? 1 : 0))

echo
[ ${#server_cpu[@]} -eq 0 ] || echo "CPU: agent and responder pinned to CPU 0, curl and the openssl client to CPU 1"
printf '%-44s %-22s %-24s %s\n' figure measured target result
printf '%-44s %-22s %-24s %s\n' "POST /v1/ocsp/test via agent, median/p95" "$a_med / $a_p95 ms" "-" "-"
printf '%-44s %-22s %-24s %s\n' "openssl ocsp client, median/p95" "$c_med / $c_p95 ms" "-" "-"
printf '%-44s %-22s %-24s %s\n' "ratio agent/client (medians)" "$ratio" "<= 0.5" "$(verdict "$ratio_ok")"
printf '%-44s %-22s %-24s %s\n' "CPU ticks ($((1000 / hz)) ms), ${quiet} s between queries" "$quiet_ticks" "0" "$(verdict "$idle_ok")"
printf '%-44s %-22s %-24s %s\n' "  same window: CPU time, wake-ups" "$quiet_cpu ms, $quiet_runs" "-" "-"
printf '%-44s %-22s %-24s %s\n' "CPU ticks, whole ${idle} s window" "$idle_ticks ($idle_queries queries)" "-" "-"
printf '%-44s %-22s %-24s %s\n' "  same window: CPU time, wake-ups" "$idle_cpu ms, $idle_runs" "-" "-"
printf '%-44s %-22s %-24s %s\n' "VmRSS after the runs" "$rss kB" "<= 8192 kB" "$(verdict "$rss_ok")"
printf '%-44s %-22s %-24s %s\n' "VmHWM (peak RSS)" "$hwm kB" "<= 8192 kB" "$(verdict "$hwm_ok")"
