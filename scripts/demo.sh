#!/usr/bin/env bash
# The demo: a throw-away PKI, a real OCSP responder and the agent watching the PKI's proxy certificate.
#
#   ./scripts/demo.sh [--port PORT] [--responder-port PORT] [--no-build]
#
# --port            the agent's API port on 127.0.0.1 (default 9443)
# --responder-port  the OCSP responder's port on 127.0.0.1 (default 9080)
# --no-build        use build/ocsp-agent as it is (or the binary $OA_AGENT_BIN names)
#
# Everything is made fresh under demo/ (git-ignored): the PKI, an admin with a random password, the data dir.
# The agent runs in the foreground with its log on the terminal; Ctrl-C stops the agent and the responder.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=9443
rport=9080
build=1

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=${2:?--port needs a number}; shift ;;
    --port=*) port=${1#--port=} ;;
    --responder-port) rport=${2:?--responder-port needs a number}; shift ;;
    --responder-port=*) rport=${1#--responder-port=} ;;
    --no-build) build=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for p in "$port" "$rport"; do
  if ! [[ $p =~ ^[0-9]+$ ]] || [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then
    echo "demo.sh: bad port $p" >&2
    exit 2
  fi
done
[ "$port" != "$rport" ] || { echo "demo.sh: the agent and the responder need different ports" >&2; exit 2; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$port" "$rport"; do
  if port_busy "$p"; then
    echo "demo.sh: 127.0.0.1:$p is already in use (choose another with --port / --responder-port)" >&2
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

demo=$root/demo
url="http://127.0.0.1:$rport/"
rm -rf "$demo/data" "$demo/users.json"
mkdir -p "$demo/data"
chmod 700 "$demo" "$demo/data"
bash "$root/tests/support/make-pki.sh" "$demo/pki" "$url"

# The OCSP responder: answers from demo/pki/index.txt, signed by the delegated responder certificate.
responder_pid=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ -n "$responder_pid" ]; then
    kill -TERM "$responder_pid" 2>/dev/null || true
    wait "$responder_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
python3 "$root/scripts/ocsp-responder.py" --pki "$demo/pki" --port "$rport" --nmin 10 \
  </dev/null 2>"$demo/responder.log" &
responder_pid=$!
for _ in $(seq 1 100); do
  port_busy "$rport" && break
  kill -0 "$responder_pid" 2>/dev/null || { cat "$demo/responder.log" >&2; exit 1; }
  sleep 0.1
done

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
cat <<EOF

================================================================================================================
 ocsp-agent demo
   API             http://127.0.0.1:$port   users admin@example.com / $admin_pw
                                          viewer@example.com / $viewer_pw (role db_viewer)
   OCSP responder  $url   (log: $top/demo/responder.log)
   certificate     $top/demo/pki/proxy-chain.pem (its AIA names the responder)
   time scale      0.02: query_frequency 3600 s -> 72 s, recovery_frequency 60 s -> 1.2 s

 Try, in another terminal:
   API=http://127.0.0.1:$port; ADMIN='admin@example.com:$admin_pw'
   # the configuration
   curl -s -u "\$ADMIN" \$API/v1/ocsp | jq
   # enable OCSP, querying every 60 s (1.2 s at this time scale)
   curl -s -u "\$ADMIN" -X PUT -H 'Content-Type: application/json' \\
        -d '{"ocsp_functionality": true, "query_frequency": 60}' \$API/v1/ocsp | jq
   # the cached status (GOOD), and a query made right now
   curl -s -u "\$ADMIN" \$API/v1/ocsp/status | jq
   curl -s -u "\$ADMIN" -X POST \$API/v1/ocsp/test | jq
   # Prometheus metrics
   curl -s -u "\$ADMIN" \$API/metrics
   # another role (403), no credentials (401)
   curl -s -u 'viewer@example.com:$viewer_pw' \$API/v1/ocsp | jq
   curl -s \$API/v1/ocsp | jq
   # revoke the certificate: the responder reads its index on every request, so no restart is needed
   bash $top/tests/support/make-pki.sh revoke $top/demo/pki
   curl -s -u "\$ADMIN" -X POST \$API/v1/ocsp/test | jq      # REVOKED, with revocation_time
   curl -s -u "\$ADMIN" \$API/v1/ocsp/status | jq           # REVOKED after the next scheduled query
   bash $top/tests/support/make-pki.sh unrevoke $top/demo/pki

 Ctrl-C stops the agent and the responder. The agent's log follows.
================================================================================================================

EOF

# In the foreground: Ctrl-C reaches the agent, which closes its listeners and exits 0; the EXIT trap then stops
# the responder.
status=0
"$bin" --cert "$demo/pki/proxy-chain.pem" --users "$demo/users.json" --data-dir "$demo/data" \
  --listen "127.0.0.1:$port" --time-scale 0.02 || status=$?
exit "$status"
