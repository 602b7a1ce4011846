#!/usr/bin/env bash
# The demo: the whole chain on loopback. A throw-away PKI and a real OCSP responder; the agent watching the PKI's
# proxy certificate and delivering its staple to HAProxy; HAProxy terminating TLS in front of redis-server (and an
# HTTPS frontend), stapling what the agent gives it; and the client commands that show what a client sees.
#
#   ./scripts/demo.sh [--port PORT] [--responder-port PORT] [--tls-port PORT] [--https-port PORT]
#                     [--redis-port PORT] [--no-build]
#
# --port            the agent's API port on 127.0.0.1 (default 9443)
# --responder-port  the OCSP responder's port on 127.0.0.1 (default 9080)
# --tls-port        HAProxy's TLS port in front of redis-server, on 127.0.0.1 (default 6380)
# --https-port      HAProxy's HTTPS port (a fixed answer, for curl), on 127.0.0.1 (default 8443)
# --redis-port      redis-server's own plain port on 127.0.0.1 (default 16379)
# --no-build        use build/ocsp-agent as it is (or the binary $OA_AGENT_BIN names)
#
# Everything is made fresh under demo/ (git-ignored): the PKI, an admin with a random password, the data dir (OCSP
# enabled from the start), HAProxy's configuration and certificate. The agent runs in the foreground with its log on
# the terminal; Ctrl-C stops it, HAProxy, redis-server and the responder.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=9443
rport=9080
tls_port=6380
https_port=8443
redis_port=16379
build=1

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=${2:?--port needs a number}; shift ;;
    --port=*) port=${1#--port=} ;;
    --responder-port) rport=${2:?--responder-port needs a number}; shift ;;
    --responder-port=*) rport=${1#--responder-port=} ;;
    --tls-port) tls_port=${2:?--tls-port needs a number}; shift ;;
    --tls-port=*) tls_port=${1#--tls-port=} ;;
    --https-port) https_port=${2:?--https-port needs a number}; shift ;;
    --https-port=*) https_port=${1#--https-port=} ;;
    --redis-port) redis_port=${2:?--redis-port needs a number}; shift ;;
    --redis-port=*) redis_port=${1#--redis-port=} ;;
    --no-build) build=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
ports=("$port" "$rport" "$tls_port" "$https_port" "$redis_port")
for p in "${ports[@]}"; do
  if ! [[ $p =~ ^[0-9]+$ ]] || [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then
    echo "demo.sh: bad port $p" >&2
    exit 2
  fi
done
if [ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" -ne ${#ports[@]} ]; then
  echo "demo.sh: the five ports must differ (${ports[*]})" >&2
  exit 2
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "${ports[@]}"; do
  if port_busy "$p"; then
    echo "demo.sh: 127.0.0.1:$p is already in use (choose others with --port, --responder-port, --tls-port," \
      "--https-port, --redis-port)" >&2
    exit 1
  fi
done

bash "$root/scripts/setup.sh"
if [ "$build" = 1 ]; then
  bash "$root/scripts/build.sh" --dir build
fi
bin=$root/build/ocsp-agent
[ "$build" = 1 ] || bin=${OA_AGENT_BIN:-$bin}
[ -x "$bin" ] || { echo "demo.sh: $bin is missing: run without --no-build" >&2; exit 1; }
haproxy=/usr/sbin/haproxy
# Debian's python3, with python3-redis and python3-openssl (a python3 earlier on PATH may lack them).
py=/usr/bin/python3
for tool in "$haproxy" "$(command -v redis-server || echo redis-server)" "$py"; do
  [ -x "$tool" ] || { echo "demo.sh: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

demo=$root/demo
url="http://127.0.0.1:$rport/"
rm -rf "$demo/data" "$demo/users.json" "$demo/haproxy"
mkdir -p "$demo/data" "$demo/haproxy"
chmod 700 "$demo" "$demo/data" "$demo/haproxy"
bash "$root/tests/support/make-pki.sh" "$demo/pki" "$url"
bash "$root/tests/support/make-pki.sh" unrevoke "$demo/pki" # a previous run may have left it revoked

# HAProxy's certificate file: the leaf, its key and the CA (HAProxy matches a response to the certificate through
# its issuer). The .ocsp file must exist, empty, when HAProxy loads, or HAProxy refuses every runtime update.
crt=$demo/haproxy/proxy.pem
(umask 077 && cat "$demo/pki/proxy.pem" "$demo/pki/proxy.key" "$demo/pki/ca.pem" >"$crt")
: >"$crt.ocsp"
sock=$demo/haproxy/admin.sock
if [ ${#sock} -gt 100 ]; then # a UNIX socket path has room for 107 bytes
  sock_dir=$(mktemp -d /tmp/ocsp-agent-demo.XXXXXX)
  sock=$sock_dir/admin.sock
fi
cat >"$demo/haproxy/haproxy.cfg" <<EOF
# Written by scripts/demo.sh; deploy/haproxy/haproxy.cfg is the production example.
global
    stats socket $sock mode 600 level admin
    log stderr format short local0 notice

defaults
    log global
    timeout connect 2s
    timeout client 1h
    timeout server 1h

frontend redis_tls
    mode tcp
    bind 127.0.0.1:$tls_port ssl crt $crt
    default_backend redis

backend redis
    mode tcp
    server redis1 127.0.0.1:$redis_port

frontend https
    mode http
    bind 127.0.0.1:$https_port ssl crt $crt
    http-request return status 200 content-type text/plain string "hello from behind HAProxy\n"
EOF

# OCSP enabled from the start, querying every 300 s (6 s at this time scale): the persisted configuration the agent
# reads at start-up.
printf '{"ocsp_functionality": true, "query_frequency": 300}\n' >"$demo/data/ocsp.json"

pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -z "${sock_dir:-}" ] || rm -rf "$sock_dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_listen PORT PID LOG: waits (10 s at most) until PORT accepts connections; shows LOG and exits if PID died.
wait_listen() {
  for _ in $(seq 1 100); do
    port_busy "$1" && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.1
  done
  echo "demo.sh: nothing listens on 127.0.0.1:$1 after 10 s" >&2
  cat "$3" >&2
  exit 1
}

# The OCSP responder: answers from demo/pki/index.txt, signed by the delegated responder certificate. Its answers
# last 60 minutes: HAProxy staples nothing within 300 s of a response's nextUpdate.
python3 "$root/scripts/ocsp-responder.py" --pki "$demo/pki" --port "$rport" --nmin 60 \
  </dev/null 2>"$demo/responder.log" &
pids+=($!)
wait_listen "$rport" "${pids[-1]}" "$demo/responder.log"

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  </dev/null >"$demo/redis.log" 2>&1 &
pids+=($!)
wait_listen "$redis_port" "${pids[-1]}" "$demo/redis.log"

# HAProxy in master-worker mode, in the foreground of its own log: SIGUSR2 to the master reloads it.
"$haproxy" -W -db -f "$demo/haproxy/haproxy.cfg" </dev/null >"$demo/haproxy.log" 2>&1 &
haproxy_pid=$!
pids+=("$haproxy_pid")
wait_listen "$tls_port" "$haproxy_pid" "$demo/haproxy.log"
wait_listen "$https_port" "$haproxy_pid" "$demo/haproxy.log"

# Users: an admin and a viewer, with random passwords hashed by the agent itself.
admin_pw=$(openssl rand -base64 12 | tr -d '/+=')
viewer_pw=$(openssl rand -base64 12 | tr -d '/+=')
admin_hash=$(printf '%s\n' "$admin_pw" | "$bin" passwd)
viewer_hash=$(printf '%s\n' "$viewer_pw" | "$bin" passwd)
(umask 077 && jq -n --arg a "$admin_hash" --arg v "$viewer_hash" '{users: [
    {name: "admin@example.com", role: "admin", password: $a},
    {name: "viewer@example.com", role: "db_viewer", password: $v}]}' >"$demo/users.json")

# Paths in the printed commands are relative when the demo was started from the repository root.
if [ "$PWD" = "$root" ]; then top=.; else top=$root; fi
ca=$top/demo/pki/ca.pem
requests_note=
if ! "$py" -c 'import requests' 2>/dev/null; then
  requests_note="   # redis-py's OCSP module imports requests: apt-get install python3-requests first"
fi
cat <<EOF

================================================================================================================
 ocsp-agent demo: responder -> agent -> HAProxy -> clients
   API             http://127.0.0.1:$port   users admin@example.com / $admin_pw
                                          viewer@example.com / $viewer_pw (role db_viewer)
   OCSP responder  $url   (log: $top/demo/responder.log)
   certificate     $top/demo/pki/proxy-chain.pem (CN localhost; its AIA names the responder)
   HAProxy         TLS 127.0.0.1:$tls_port -> redis-server 127.0.0.1:$redis_port, HTTPS 127.0.0.1:$https_port
                   master pid $haproxy_pid, runtime socket $sock (log: $top/demo/haproxy.log)
   agent           --haproxy-socket $sock --haproxy-crt $top/demo/haproxy/proxy.pem
   time scale      0.02: OCSP is on with query_frequency 300 s -> 6 s; recovery_frequency 60 s -> 1.2 s

 Try, in another terminal:
   API=http://127.0.0.1:$port; ADMIN='admin@example.com:$admin_pw'
   # the status, with the delivery to HAProxy's socket and file
   curl -s -u "\$ADMIN" \$API/v1/ocsp/status | jq '{cert_status, state, next_query, delivery}'
   curl -s -u "\$ADMIN" \$API/metrics | grep staple

 What a client sees (HAProxy staples GOOD about a second after the agent's first answer):
   # openssl: the stapled response
   openssl s_client -connect 127.0.0.1:$tls_port -servername localhost -status -CAfile $ca </dev/null 2>/dev/null \\
     | grep -E 'OCSP response:|Cert Status|Produced At'
   # redis-py through HAProxy, refusing a connection whose staple is missing or not GOOD (TZ=UTC: redis-py 4.3
   # compares the response's UTC times with the local clock)
   TZ=UTC $py -c 'import redis, OpenSSL.SSL as S; c = S.Context(S.TLS_CLIENT_METHOD); c.load_verify_locations("$ca"); c.set_verify(S.VERIFY_PEER); print(redis.Redis(host="localhost", port=$tls_port, ssl=True, ssl_ca_certs="$ca", ssl_validate_ocsp_stapled=True, ssl_ocsp_context=c).ping())'$requests_note
   # curl, requiring a good staple (exit status 91 when it is not)
   curl -sS --cert-status --cacert $ca https://localhost:$https_port/; echo "curl exit status \$?"

 Revoke the certificate at the responder; within 6 s (one query period) HAProxy staples REVOKED, redis-py raises
 "Received an REVOKED ocsp certificate status" and curl exits 91. Then make it valid again:
   bash $top/tests/support/make-pki.sh revoke $top/demo/pki
   bash $top/tests/support/make-pki.sh unrevoke $top/demo/pki

 HAProxy reloaded, or someone pushing another response: the agent puts the current one back within 10 s:
   kill -USR2 $haproxy_pid       # reload: the new worker staples demo/haproxy/proxy.pem.ocsp, kept current
   # (HAProxy stopped: the status shows the socket failed; started again, it staples within 10 s)

 The API itself:
   curl -s -u "\$ADMIN" \$API/v1/ocsp | jq
   curl -s -u "\$ADMIN" -X PUT -H 'Content-Type: application/json' -d '{"query_frequency": 60}' \$API/v1/ocsp | jq
   curl -s -u "\$ADMIN" -X POST \$API/v1/ocsp/test | jq
   curl -s -u 'viewer@example.com:$viewer_pw' \$API/v1/ocsp | jq      # 403
   curl -s \$API/v1/ocsp | jq                                          # 401

 Ctrl-C stops the agent, HAProxy, redis-server and the responder. The agent's log follows.
================================================================================================================

EOF

# In the foreground: Ctrl-C reaches the agent, which closes its listeners and exits 0; the EXIT trap then stops
# the rest (started in the background, they ignore the terminal's SIGINT).
status=0
"$bin" --cert "$demo/pki/proxy-chain.pem" --users "$demo/users.json" --data-dir "$demo/data" \
  --listen "127.0.0.1:$port" --time-scale 0.02 --haproxy-socket "$sock" --haproxy-crt "$crt" || status=$?
exit "$status"
