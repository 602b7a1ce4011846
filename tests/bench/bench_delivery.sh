#!/usr/bin/env bash
# Staple delivery to HAProxy: how soon a client sees a new response, and what keeping HAProxy reconciled costs.
#
#   tests/bench/bench_delivery.sh [--flips N] [--time-scale F] [--idle-seconds S] [--no-build]
#
# --flips         status flips measured in (a), GOOD and REVOKED alternating (default 100)
# --time-scale    the agent's time scale in (a): query_frequency 60 lasts 60 x F s (default 0.01: 0.6 s)
# --idle-seconds  length of the idle window in (b) (default 60)
# --no-build      use build-bench/ocsp-agent as it is
#
# (a) Latency. The responder (scripts/ocsp-responder.py, re-reading the PKI's index.txt on every request) flips
#     between GOOD and REVOKED; the agent queries every 60 x F s and delivers to HAProxy (Debian's haproxy,
#     master-worker, TLS in mode tcp) over its runtime socket. Per flip: from the agent's `ocsp_query` log line for
#     the new status (written once the response is verified) to (1) the agent's own `staple_delivered` line for
#     the socket (HAProxy answered "OCSP Response updated!") and (2) the end of the first TLS handshake asking for
#     the status that gets the new one: a client (Python's pyOpenSSL, the library redis-py uses) handshakes every
#     5 ms for the whole run; its handshake time plus that pause is the resolution, printed. Both the agent's log
#     and the client read the same wall clock. `openssl s_client -status` checks the first and last flip (a new
#     process per handshake is too slow to time with). Median and p99 (nearest rank) of each, next to the usual
#     alternative, a cron job that
#     fetches and pushes a response every minute: its latency after a change at the responder is uniform on
#     0-60 s, mean 30 s, max 60 s (computed, not measured; the agent's own figure starts at its verification, so
#     add the agent's query period to compare end to end).
# (b) Idle cost of reconciliation: the agent at time-scale 1 with one --haproxy-socket, OCSP on with
#     query_frequency 3600 (no query in the window), HAProxy holding the current staple; the agent checks the
#     socket every 5 s. Its utime+stime ticks (/proc/PID/stat) and CPU time (schedstat) over S s, as a share of
#     one CPU; HAProxy's ticks in the same window too.
# The agent is the Release build in build-bench/ (shared with the other benchmarks). Nothing is asserted: the
# script prints figures. Everything it starts is stopped when it ends (OA_KEEP_TMP=1 keeps its directory).
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

flips=100
scale=0.01
idle=60

usage() { bench_usage 24; }

while [ $# -gt 0 ]; do
  case "$1" in
    --flips) flips=${2:?--flips needs a number}; shift ;;
    --flips=*) flips=${1#--flips=} ;;
    --time-scale) scale=${2:?--time-scale needs a number}; shift ;;
    --time-scale=*) scale=${1#--time-scale=} ;;
    --idle-seconds) idle=${2:?--idle-seconds needs seconds}; shift ;;
    --idle-seconds=*) idle=${1#--idle-seconds=} ;;
    --no-build) build=0 ;;
    -h|--help) usage; exit 0 ;;
    *) bench_bad_option "$1" ;;
  esac
  shift
done
bench_positive "$flips" "$idle"
[[ $scale =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "$bench: --time-scale: expected a number, got '$scale'" >&2; exit 2; }
bench_need curl jq openssl ss awk /usr/sbin/haproxy /usr/bin/python3
bench_build
bench_tmp oa-bench-delivery

# --- the PKI, the responder (60-minute responses: HAProxy staples nothing within 300 s of a nextUpdate)
pki=$tmp/pki
resp_port=$(free_port) || die "no free port"
bash "$root/tests/support/make-pki.sh" "$pki" "http://127.0.0.1:$resp_port/" >/dev/null 2>"$tmp/pki.err" ||
  { cat "$tmp/pki.err" >&2; die "make-pki.sh failed"; }
python3 "$root/scripts/ocsp-responder.py" --pki "$pki" --port "$resp_port" --nmin 60 </dev/null \
  2>"$tmp/responder.log" &
pids+=($!)
wait_port "$resp_port" "${pids[-1]}" || { cat "$tmp/responder.log" >&2; die "the responder did not start"; }

# --- HAProxy: TLS in mode tcp in front of a backend nobody needs (the handshake is what is measured)
tls_port=$(free_port) || die "no free port"
while [ "$tls_port" = "$resp_port" ]; do tls_port=$(free_port); done
crt=$tmp/proxy.pem
cat "$pki/proxy.pem" "$pki/proxy.key" "$pki/ca.pem" >"$crt"
: >"$crt.ocsp"
sock=$tmp/admin.sock
cat >"$tmp/haproxy.cfg" <<EOF
global
    stats socket $sock mode 600 level admin
defaults
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend tls
    mode tcp
    bind 127.0.0.1:$tls_port ssl crt $crt
    default_backend none
backend none
    mode tcp
    server s1 127.0.0.1:9 disabled
EOF
/usr/sbin/haproxy -W -db -f "$tmp/haproxy.cfg" </dev/null >"$tmp/haproxy.log" 2>&1 &
haproxy_pid=$!
pids+=("$haproxy_pid")
wait_port "$tls_port" "$haproxy_pid" || { cat "$tmp/haproxy.log" >&2; die "HAProxy did not start"; }

# --- the agent (started per part)
password=$(openssl rand -hex 16)
hash=$(printf '%s\n' "$password" | "$bin" passwd)
(umask 077 && jq -n --arg h "$hash" '{users: [{name: "bench@example.com", role: "admin", password: $h}]}' \
  >"$tmp/users.json")
agent_pid=
agent_log=
# start_agent NAME TIME_SCALE LOG_LEVEL CONF_JSON: a fresh data dir whose persisted configuration is CONF_JSON.
start_agent() {
  local port
  mkdir -p "$tmp/data-$1"
  printf '%s\n' "$4" >"$tmp/data-$1/ocsp.json"
  port=$(free_port) || die "no free port"
  agent_log=$tmp/agent-$1.log
  "$bin" --listen "127.0.0.1:$port" --users "$tmp/users.json" --data-dir "$tmp/data-$1" \
    --cert "$pki/proxy-chain.pem" --haproxy-socket "$sock" --time-scale "$2" --log-level "$3" \
    </dev/null >/dev/null 2>"$agent_log" &
  agent_pid=$!
  pids+=("$agent_pid")
  wait_port "$port" "$agent_pid" || { cat "$agent_log" >&2; die "the agent did not start"; }
}
stop_agent() {
  kill -TERM "$agent_pid"
  for _ in $(seq 1 100); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
  wait "$agent_pid" 2>/dev/null || true
}

# stapled: the status HAProxy staples ("good", "revoked", "none" or "error").
stapled() {
  local out
  out=$(timeout 10 openssl s_client -connect "127.0.0.1:$tls_port" -servername localhost -status \
    -CAfile "$pki/ca.pem" </dev/null 2>&1) || { echo error; return; }
  if grep -q 'OCSP response: no response sent' <<<"$out"; then echo none; return; fi
  sed -n 's/^ *Cert Status: \([a-z]*\).*/\1/p' <<<"$out" | head -n 1 | grep . || echo error
}
ms_now() { date +%s%3N; }
ms_of_ts() { date -u -d "$(sed -n 's/^ts=\([^ ]*\).*/\1/p' <<<"$1")" +%s%3N; }
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
p99() { sort -n "$1" | awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < NR * 0.99) i++; print v[i] }'; }
maxof() { sort -n "$1" | tail -n 1; }

# The client of (a): handshakes every 5 ms asking for the status, and prints "<epoch ms at the handshake's end>
# <status>" whenever the stapled status changes (good, revoked, none); its handshake times go to a file at exit.
cat >"$tmp/probe.py" <<'PY'
import signal, socket, statistics, struct, sys, time
import OpenSSL.SSL as S
from cryptography.x509 import ocsp

port, out_durations = int(sys.argv[1]), sys.argv[2]
ctx = S.Context(S.TLS_CLIENT_METHOD)
got = {}
def on_status(conn, data, _):
    got["der"] = data
    return True
ctx.set_ocsp_client_callback(on_status)
durations = []
def finish(*_):
    with open(out_durations, "w") as f:
        f.write("%.3f\n" % statistics.median(durations) if durations else "0\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
last = None
while True:
    got.clear()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    # Blocking (pyOpenSSL takes a socket with a Python timeout for a non-blocking one: WantReadError), bounded by
    # the kernel's own receive and send timeouts so that a stalled handshake fails instead of hanging the run.
    s.settimeout(None)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 5, 0))
    c = S.Connection(ctx, s)
    c.set_tlsext_host_name(b"localhost")
    c.request_ocsp()
    c.set_connect_state()
    t0 = time.time()
    try:
        c.do_handshake()
        der = got.get("der")
        status = ocsp.load_der_ocsp_response(der).certificate_status.name.lower() if der else "none"
    except Exception as e:
        status = "error"
        if last != "error":
            print("handshake failed: %r" % (e,), file=sys.stderr, flush=True)
    t1 = time.time()
    s.close()
    durations.append((t1 - t0) * 1000)
    if status != last:
        print(int(t1 * 1000), status, flush=True)
        last = status
    time.sleep(0.005)
PY

# --- (a) latency over status flips
period_ms=$(awk -v s="$scale" 'BEGIN { printf "%.0f", 60 * s * 1000 }')
echo "(a) $flips status flips (GOOD <-> REVOKED at the responder), agent query period ${period_ms} ms"
start_agent flips "$scale" debug '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60}'
for _ in $(seq 1 200); do [ "$(stapled)" = good ] && break; sleep 0.1; done
[ "$(stapled)" = good ] || die "HAProxy does not staple GOOD 20 s after the agent started: $(tail -n 3 "$agent_log")"
/usr/bin/python3 "$tmp/probe.py" "$tls_port" "$tmp/probe.median" >"$tmp/probe.log" 2>"$tmp/probe.err" &
probe_pid=$!
pids+=("$probe_pid")
for _ in $(seq 1 100); do grep -q ' good$' "$tmp/probe.log" && break; sleep 0.1; done
grep -q ' good$' "$tmp/probe.log" || die "the TLS client does not see GOOD: $(cat "$tmp/probe.err")"
: >"$tmp/ack.ms"
: >"$tmp/seen.ms"
s_client_checks=()
for i in $(seq 1 "$flips"); do
  if [ $((i % 2)) = 1 ]; then want=revoked; cmd=revoke; else want=good; cmd=unrevoke; fi
  upper=${want^^}
  lines=$(wc -l <"$agent_log")
  plines=$(wc -l <"$tmp/probe.log")
  bash "$root/tests/support/make-pki.sh" "$cmd" "$pki"
  deadline=$(($(ms_now) + 30000))
  until seen=$(tail -n +$((plines + 1)) "$tmp/probe.log" | grep -m1 " $want\$"); do
    [ "$(ms_now)" -lt "$deadline" ] || die "flip $i: the client does not see $want after 30 s"
    sleep 0.05
  done
  t_end=${seen%% *}
  if [ "$i" = 1 ] || [ "$i" = "$flips" ]; then s_client_checks+=("flip $i: openssl s_client sees $(stapled)"); fi
  # The first verified answer with the new status after the flip, and the socket's delivery of it.
  query=$(tail -n +$((lines + 1)) "$agent_log" | grep -m1 -E "event=ocsp_query .*result=ok cert_status=$upper" || true)
  [ -n "$query" ] || die "flip $i: no ocsp_query line with cert_status=$upper in the log"
  t_query=$(ms_of_ts "$query")
  ack=$(tail -n +$((lines + 1)) "$agent_log" |
    grep -m1 -E "event=staple_delivered target=haproxy:.* staple=$upper" || true)
  [ -n "$ack" ] || die "flip $i: no staple_delivered line for $upper (is --log-level debug in force?)"
  echo $(($(ms_of_ts "$ack") - t_query)) >>"$tmp/ack.ms"
  echo $((t_end - t_query)) >>"$tmp/seen.ms"
done
stop_agent
kill -TERM "$probe_pid"
wait "$probe_pid" 2>/dev/null || true
ack_med=$(median "$tmp/ack.ms"); ack_p99=$(p99 "$tmp/ack.ms"); ack_max=$(maxof "$tmp/ack.ms")
seen_med=$(median "$tmp/seen.ms"); seen_p99=$(p99 "$tmp/seen.ms"); seen_max=$(maxof "$tmp/seen.ms")
probe_med=$(cat "$tmp/probe.median" 2>/dev/null || echo "?")

# --- (b) idle cost of the reconciliation
echo "(b) idle: one --haproxy-socket, OCSP on, query_frequency 3600 at time-scale 1, ${idle} s"
start_agent idle 1 info '{"ocsp_functionality": true, "query_frequency": 3600}'
for _ in $(seq 1 200); do [ "$(stapled)" = good ] && grep -q 'event=ocsp_query' "$agent_log" && break; sleep 0.1; done
[ "$(stapled)" = good ] || die "HAProxy does not staple GOOD after the idle agent started"
sleep 1 # let the first query's writes settle
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
cpu_ns() {
  local ns=0 a f
  for f in /proc/"$1"/task/*/schedstat; do
    read -r a _ <"$f" 2>/dev/null || continue
    ns=$((ns + a))
  done
  echo "$ns"
}
hap_worker=$(pgrep -P "$haproxy_pid" | head -n 1)
q0=$(grep -c 'event=ocsp_query' "$agent_log" || true)
a_t0=$(ticks "$agent_pid"); a_ns0=$(cpu_ns "$agent_pid"); h_t0=$(ticks "$hap_worker")
sleep "$idle"
a_t1=$(ticks "$agent_pid"); a_ns1=$(cpu_ns "$agent_pid"); h_t1=$(ticks "$hap_worker")
q1=$(grep -c 'event=ocsp_query' "$agent_log" || true)
stop_agent
hz=$(getconf CLK_TCK)
a_ticks=$((a_t1 - a_t0)); h_ticks=$((h_t1 - h_t0))
a_pct=$(awk -v t="$a_ticks" -v hz="$hz" -v s="$idle" 'BEGIN { printf "%.3f", t / hz / s * 100 }')
a_ms=$(awk -v n=$((a_ns1 - a_ns0)) 'BEGIN { printf "%.1f", n / 1e6 }')
a_ns_pct=$(awk -v n=$((a_ns1 - a_ns0)) -v s="$idle" 'BEGIN { printf "%.4f", n / 1e9 / s * 100 }')
h_pct=$(awk -v t="$h_ticks" -v hz="$hz" -v s="$idle" 'BEGIN { printf "%.3f", t / hz / s * 100 }')
checks=$((idle / 5))

echo
printf '%-62s %s\n' figure measured
printf '%-62s %s\n' "(a) verified -> HAProxy acknowledged (agent log), median/p99/max" \
  "$ack_med / $ack_p99 / $ack_max ms"
printf '%-62s %s\n' "(a) verified -> stapled, seen by a TLS client, median/p99/max" \
  "$seen_med / $seen_p99 / $seen_max ms"
printf '%-62s %s\n' "    resolution: one handshake (median) + 5 ms pause" "$probe_med ms + 5 ms"
printf '%-62s %s\n' "    flips measured" "$flips"
printf '%-62s %s\n' "cron job every minute (computed): change -> stapled, mean/max" "30000 / 60000 ms (+ its fetch)"
printf '%-62s %s\n' "(b) agent CPU ticks ($((1000 / hz)) ms) over ${idle} s idle, ~$checks socket checks" \
  "$a_ticks ($a_pct % of a CPU)"
printf '%-62s %s\n' "    same window, CPU time from schedstat" "$a_ms ms ($a_ns_pct % of a CPU)"
printf '%-62s %s\n' "    queries in the window" "$((q1 - q0))"
printf '%-62s %s\n' "(b) HAProxy worker CPU ticks in the same window" "$h_ticks ($h_pct % of a CPU)"
printf '%s\n' "${s_client_checks[@]}"
