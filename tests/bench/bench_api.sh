#!/usr/bin/env bash
# API throughput and latency of ocsp-agent next to nginx serving the same bytes as a static file.
#
#   tests/bench/bench_api.sh [--duration SECONDS] [--connections N] [--no-build]
#
# --duration     seconds of each measured wrk run (default 10)
# --connections  concurrent keep-alive connections (default 50)
# --no-build     use build-bench/ocsp-agent as it is
#
# The agent is built in Release mode without sanitizers into build-bench/ and started with a users file and
# --log-level warn. nginx runs from a private configuration in a temporary directory with one worker process (the
# agent serves from one thread, so one nginx worker is the fair peer), access_log off, serving the exact body of
# GET /v1/ocsp. Requests to the agent carry HTTP Basic credentials (verified once, then remembered by the agent),
# requests to nginx carry none. Each target is measured twice, after a short warm-up:
#
#   saturating  `wrk -t1 -cN -dDs --latency`: every connection sends its next request as soon as the answer is in.
#               Gives the throughput (the ratio target). Its p99 is printed too, with the share of a CPU wrk itself
#               used: near 100 % the client is the bottleneck and its own queueing is part of that p99.
#   paced       the same with a 1 ms pause between a connection's requests (a wrk script), so the offered load is
#               fixed (about 35,000 requests/s with 50 connections here), well below either server's capacity:
#               its p50 and p99 are the servers' own latency.
#
# Everything the script starts is stopped when it ends.
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

duration=10
connections=50
warmup=2

usage() { bench_usage 9; }

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=${2:?--duration needs seconds}; shift ;;
    --duration=*) duration=${1#--duration=} ;;
    --connections) connections=${2:?--connections needs a number}; shift ;;
    --connections=*) connections=${1#--connections=} ;;
    --no-build) build=0 ;;
    -h|--help) usage; exit 0 ;;
    *) bench_bad_option "$1" ;;
  esac
  shift
done
bench_positive "$duration" "$connections"
bench_need wrk nginx curl jq openssl ss
bench_build
bench_tmp oa-bench

# With two or more CPUs the server gets CPU 0 and wrk CPU 1, so the two never compete for one core.
bench_pin

# --- the agent
password=$(openssl rand -hex 16)
hash=$(printf '%s\n' "$password" | "$bin" passwd)
(umask 077 && jq -n --arg h "$hash" '{users: [{name: "bench@example.com", role: "admin", password: $h}]}' >"$tmp/users.json")
mkdir -p "$tmp/data"
agent_port=$(free_port) || die "no free port"
"${server_cpu[@]}" "$bin" --listen "127.0.0.1:$agent_port" --users "$tmp/users.json" --data-dir "$tmp/data" \
  --log-level warn </dev/null >/dev/null 2>"$tmp/agent.log" &
agent_pid=$!
pids+=("$agent_pid")
wait_port "$agent_port" "$agent_pid" || { echo "$bench: the agent did not start:" >&2; cat "$tmp/agent.log" >&2; exit 1; }
auth="Authorization: Basic $(printf 'bench@example.com:%s' "$password" | base64 -w0)"
curl -sf --max-time 10 -H "$auth" -o "$tmp/ocsp.json" "http://127.0.0.1:$agent_port/v1/ocsp" ||
  die "GET /v1/ocsp on the agent failed"

# --- nginx, serving the same body
nginx_port=$(free_port) || die "no free port"
while [ "$nginx_port" = "$agent_port" ]; do nginx_port=$(free_port); done
mkdir -p "$tmp/nginx/logs" "$tmp/nginx/temp" "$tmp/www/v1"
cp "$tmp/ocsp.json" "$tmp/www/v1/ocsp"
# Started by root, nginx's worker runs as an unprivileged user: it must be able to reach the public body, and only it.
chmod 711 "$tmp"
chmod 755 "$tmp/www" "$tmp/www/v1"
chmod 644 "$tmp/www/v1/ocsp"
cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/temp/body;
    proxy_temp_path $tmp/nginx/temp/proxy;
    fastcgi_temp_path $tmp/nginx/temp/fastcgi;
    uwsgi_temp_path $tmp/nginx/temp/uwsgi;
    scgi_temp_path $tmp/nginx/temp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    server {
        listen 127.0.0.1:$nginx_port;
        root $tmp/www;
        location = /v1/ocsp { default_type application/json; }
    }
}
EOF
"${server_cpu[@]}" nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/logs/error.log" \
  </dev/null >/dev/null 2>&1 &
nginx_pid=$!
pids+=("$nginx_pid")
wait_port "$nginx_port" "$nginx_pid" ||
  { echo "$bench: nginx did not start:" >&2; cat "$tmp/nginx/logs/error.log" >&2; exit 1; }
curl -sf --max-time 10 -o "$tmp/nginx.json" "http://127.0.0.1:$nginx_port/v1/ocsp" || die "GET /v1/ocsp on nginx failed"
cmp -s "$tmp/ocsp.json" "$tmp/nginx.json" || die "nginx does not serve the same body"

# run_wrk NAME URL [wrk args...]: a warm-up, then the measured run into $tmp/NAME.wrk, and the share of one CPU wrk
# used during it (user + system time over wall time, from bash's time) into $tmp/NAME.cpu.
run_wrk() {
  local name=$1 url=$2 TIMEFORMAT='%U %S %R'
  shift 2
  timeout $((warmup + 30)) "${client_cpu[@]}" wrk -t1 -c"$connections" -d"${warmup}s" "$@" "$url" >/dev/null
  { time timeout $((duration + 60)) "${client_cpu[@]}" wrk -t1 -c"$connections" -d"${duration}s" --latency "$@" \
      "$url" >"$tmp/$name.wrk"; } 2>"$tmp/$name.time"
  awk '{printf "%.0f", ($3 > 0 ? 100 * ($1 + $2) / $3 : 0)}' "$tmp/$name.time" >"$tmp/$name.cpu"
}
printf 'function delay()\n  return 1\nend\n' >"$tmp/paced.lua"

# The p99 latency in ms, requests/s and the failed requests (socket errors + non-2xx) of a wrk report.
wrk_rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
# wrk_pct_ms FILE PERCENT: that percentile of a wrk --latency report, in ms.
wrk_pct_ms() {
  awk -v p="$2%" '$1 == p {
      v = $2; unit = v; sub(/^[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v);
      if (unit == "us") v /= 1000; else if (unit == "s") v *= 1000; else if (unit == "m") v *= 60000;
      printf "%.2f", v }' "$1"
}
wrk_errors() {
  awk '/Non-2xx or 3xx responses:/ {n += $NF}
       /Socket errors:/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) {gsub(",", "", $i); n += $i}}
       END {print n + 0}' "$1"
}

bytes=$(wc -c <"$tmp/ocsp.json")
echo "GET /v1/ocsp ($bytes bytes of JSON), wrk -t1 -c$connections -d${duration}s after a ${warmup}s warm-up"
echo "nginx: worker_processes 1 (the agent runs on one thread, so one nginx worker is the fair peer), access_log off"
[ ${#server_cpu[@]} -eq 0 ] || echo "CPU: servers pinned to CPU 0, wrk to CPU 1"
echo "running (about $((4 * (duration + warmup))) s)..."
agent_url="http://127.0.0.1:$agent_port/v1/ocsp"
nginx_url="http://127.0.0.1:$nginx_port/v1/ocsp"
run_wrk agent "$agent_url" -H "$auth"
run_wrk nginx "$nginx_url"
run_wrk agent-paced "$agent_url" -H "$auth" -s "$tmp/paced.lua"
run_wrk nginx-paced "$nginx_url" -s "$tmp/paced.lua"

for f in agent nginx agent-paced nginx-paced; do
  [ -n "$(wrk_rps "$tmp/$f.wrk")" ] || { cat "$tmp/$f.wrk" >&2; die "could not read wrk's report of the $f run"; }
done
a_rps=$(wrk_rps "$tmp/agent.wrk")
n_rps=$(wrk_rps "$tmp/nginx.wrk")
ratio=$(awk -v a="$a_rps" -v n="$n_rps" 'BEGIN {printf "%.2f", (n > 0 ? a / n : 0)}')
errors=0
row() { # LABEL NAME
  local e
  e=$(wrk_errors "$tmp/$2.wrk")
  errors=$((errors + e))
  printf '%-22s %12s %9s %9s %8s %7s\n' "$1" "$(wrk_rps "$tmp/$2.wrk")" "$(wrk_pct_ms "$tmp/$2.wrk" 50)" \
    "$(wrk_pct_ms "$tmp/$2.wrk" 99)" "$(cat "$tmp/$2.cpu")%" "$e"
}

echo
printf '%-22s %12s %9s %9s %8s %7s\n' target "requests/s" "p50 (ms)" "p99 (ms)" "wrk CPU" errors
row "ocsp-agent saturating" agent
row "nginx saturating" nginx
row "ocsp-agent paced" agent-paced
row "nginx paced" nginx-paced
echo "ratio agent/nginx (requests/s, saturating): $ratio"
if [ "$errors" != 0 ]; then
  echo "warning: some requests failed (socket errors or non-2xx answers); the numbers above are not comparable"
  exit 1
fi
