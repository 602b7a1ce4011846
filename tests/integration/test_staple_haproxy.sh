#!/usr/bin/env bash
# shellcheck disable=SC2034 # WAIT_DETAIL is read by assert_wait_until in lib.sh
# The whole delivery chain with real processes (API.md section 6): a responder over a test PKI, the agent, HAProxy
# (Debian's /usr/sbin/haproxy, master-worker, in the foreground) terminating TLS in `mode tcp` in front of
# redis-server and serving an HTTPS frontend, and real clients asking for the stapled status: `openssl s_client
# -status`, redis-py with ssl_validate_ocsp_stapled=True, `curl --cert-status`.
#
#   - nothing is stapled before the agent runs; GOOD within about a second of the agent's first valid answer
#   - redis-py PINGs and curl accepts; revoked at the responder: within a query period both refuse; GOOD again
#   - quiet period (no new answer): a foreign `set ssl ocsp-response` of an older response, an HAProxy reload and
#     an HAProxy restart are each corrected (stapling the current response) within 10 s, with --haproxy-crt and
#     without it (the .ocsp file emptied, only the runtime socket left to fix it)
#   - HAProxy stopped: the agent keeps serving, the status says failed for the socket, and it delivers again when
#     HAProxy returns; the agent restarted: HAProxy keeps stapling throughout
#   - invalidation: the .ocsp file is emptied, so a reload staples nothing; valid again: stapled again
#   - the status's `delivery` and the two delivery metrics along the way
source "$(dirname "$0")/lib.sh"

HAPROXY_BIN=${OA_HAPROXY_BIN:-/usr/sbin/haproxy}
# Debian's python3 with python3-redis and python3-openssl (a python3 earlier on PATH may lack them).
SYS_PYTHON=${OA_SYS_PYTHON:-/usr/bin/python3}
[ -x "$HAPROXY_BIN" ] || bail "$HAPROXY_BIN is missing (scripts/setup.sh installs haproxy)"
command -v redis-server >/dev/null || bail "redis-server is missing (scripts/setup.sh installs it)"
"$SYS_PYTHON" -c 'import redis, OpenSSL' 2>/dev/null ||
    bail "$SYS_PYTHON lacks redis or OpenSSL (scripts/setup.sh installs python3-redis and python3-openssl)"

# --- the PKI and a responder whose answers last 60 min (HAProxy staples nothing within 300 s of a nextUpdate)
make_resp_pki
start_responder_nmin "$PKI" "$RESP_PORT" 60
make_users admin

# HAProxy's certificate file: leaf, key and the CA (HAProxy needs the issuer to match an OCSP response to it).
HAP_DIR=$T_DIR/haproxy
mkdir -p "$HAP_DIR"
CRT=$HAP_DIR/proxy.pem
cat "$PKI/proxy.pem" "$PKI/proxy.key" "$PKI/ca.pem" >"$CRT"
: >"$CRT.ocsp" # must exist when HAProxy loads, or it refuses every runtime update for this certificate
SOCK=$HAP_DIR/admin.sock
SOCK_TARGET="haproxy:$SOCK"
FILE_TARGET="file:$CRT.ocsp"

# --- redis-server, plain, on loopback: HAProxy terminates TLS in front of it
REDIS_PORT=$(free_port) || bail "no free port"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    </dev/null >"$T_DIR/redis.log" 2>&1 &
REDIS_PID=$!
T_PIDS+=("$REDIS_PID")
wait_port "$REDIS_PORT" "$REDIS_PID" 10 || bail "redis-server starts" "$(tail -n 5 "$T_DIR/redis.log")"

# --- HAProxy
TLS_PORT=$(free_port) || bail "no free port"
HTTPS_PORT=$(free_port) || bail "no free port"
while [ "$HTTPS_PORT" = "$TLS_PORT" ]; do HTTPS_PORT=$(free_port); done
HAP_CFG=$HAP_DIR/haproxy.cfg
cat >"$HAP_CFG" <<EOF
global
    stats socket $SOCK mode 600 level admin
    log stderr format short local0 notice

defaults
    log global
    timeout connect 2s
    timeout client 30s
    timeout server 30s

# TLS terminated by HAProxy, in front of redis-server
frontend redis_tls
    mode tcp
    bind 127.0.0.1:$TLS_PORT ssl crt $CRT
    default_backend redis

backend redis
    mode tcp
    server redis1 127.0.0.1:$REDIS_PORT

# HTTPS for curl: a fixed answer
frontend https
    mode http
    bind 127.0.0.1:$HTTPS_PORT ssl crt $CRT
    http-request return status 200 content-type text/plain string "ok"
EOF
"$HAPROXY_BIN" -c -f "$HAP_CFG" >"$T_DIR/haproxy-check.log" 2>&1 ||
    bail "haproxy -c accepts the configuration" "$(cat "$T_DIR/haproxy-check.log")"

HAP_PID=
HAP_RUNS=0
HAP_LOG=

# hap_loaded: how many times the running HAProxy said it loaded its configuration (once at start, once per reload).
hap_loaded() { grep -c 'Loading success' "$HAP_LOG" 2>/dev/null || true; }
hap_loaded_more_than() { [ "$(hap_loaded)" -gt "$1" ]; }

# hap_start: HAProxy in master-worker mode in the foreground; waits until both frontends and the socket answer.
hap_start() {
    HAP_RUNS=$((HAP_RUNS + 1))
    HAP_LOG=$T_DIR/haproxy-$HAP_RUNS.log
    "$HAPROXY_BIN" -W -db -f "$HAP_CFG" </dev/null >"$HAP_LOG" 2>&1 &
    HAP_PID=$!
    T_PIDS+=("$HAP_PID")
    if ! { wait_port "$TLS_PORT" "$HAP_PID" 10 && wait_port "$HTTPS_PORT" "$HAP_PID" 10 &&
        wait_until 10 test -S "$SOCK"; }; then
        bail "HAProxy starts" "$(tail -n 10 "$HAP_LOG")"
    fi
}

# hap_stop: stops HAProxy (master and worker) and waits until its ports are closed.
hap_stop() {
    kill -TERM "$HAP_PID" 2>/dev/null
    wait_exit "$HAP_PID" 10 || kill -KILL "$HAP_PID" 2>/dev/null
    wait "$HAP_PID" 2>/dev/null
    forget_pid "$HAP_PID"
    HAP_PID=
    wait_until 10 bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$TLS_PORT) 2>/dev/null" ||
        bail "HAProxy's port $TLS_PORT is closed after it stopped"
}

# hap_reload: SIGUSR2 to the master: a new worker loads the configuration and the files again.
hap_reload() {
    local before
    before=$(hap_loaded)
    kill -USR2 "$HAP_PID"
    wait_until 10 hap_loaded_more_than "$before" ||
        bail "HAProxy reloads after SIGUSR2" "$(tail -n 10 "$HAP_LOG")"
}

# hap_cmd COMMAND: one command on HAProxy's runtime API; prints the reply.
hap_cmd() { unix_cmd "$SOCK" "$1"; }

# stapled_status [PORT]: what a client asking for the status gets from HAProxy (default: the redis frontend):
# "none", or the Cert Status openssl prints ("good", "revoked"); "error" when the handshake itself fails.
stapled_status() {
    local out
    out=$(timeout 10 openssl s_client -connect "127.0.0.1:${1:-$TLS_PORT}" -servername localhost -status \
        -CAfile "$PKI/ca.pem" </dev/null 2>&1) || { echo error; return; }
    if grep -q 'OCSP response: no response sent' <<<"$out"; then
        echo none
    elif grep -q 'OCSP Response Status: successful' <<<"$out"; then
        sed -n 's/^ *Cert Status: \([a-z]*\).*/\1/p' <<<"$out" | head -n 1
    else
        echo error
    fi
}

# stapled_is EXPECTED [PORT]: for wait_until; WAIT_DETAIL says what was stapled last.
stapled_is() {
    local got
    got=$(stapled_status "${2:-}")
    WAIT_DETAIL="stapled: $got"
    [ "$got" = "$1" ]
}

# stapled_produced_at: the Produced At of the response HAProxy staples, or nothing.
stapled_produced_at() {
    timeout 10 openssl s_client -connect "127.0.0.1:$TLS_PORT" -servername localhost -status \
        -CAfile "$PKI/ca.pem" </dev/null 2>/dev/null | sed -n 's/^ *Produced At: //p' | head -n 1
}

# current_produced_at: the Produced At of the agent's staple file.
current_produced_at() {
    openssl ocsp -respin "$T_DIR/data/ocsp.der" -resp_text -noverify 2>/dev/null | sed -n 's/^ *Produced At: //p' |
        head -n 1
}

# stapled_current: HAProxy staples the agent's current response (the same Produced At as the staple file).
stapled_current() {
    local want got
    want=$(current_produced_at)
    got=$(stapled_produced_at)
    WAIT_DETAIL="agent's staple produced at '$want', HAProxy staples one produced at '$got' ($(stapled_status))"
    [ -n "$want" ] && [ "$want" = "$got" ]
}

# redis-py with ssl_validate_ocsp_stapled=True (redis-py 4.3: the staple is checked on a second connection made
# with the pyOpenSSL context given as ssl_ocsp_context; without one it would need a client certificate). Prints
# "PONG", or "ERROR: <exception>".
# redis.ocsp imports requests, which only its non-stapled verifier uses; Debian's python3-redis does not pull in
# python3-requests, so an empty stand-in is put in its place when it is missing.
cat >"$T_DIR/redis_ping.py" <<'PY'
import sys
import types
try:
    import requests  # noqa: F401
except ImportError:
    sys.modules["requests"] = types.ModuleType("requests")
import OpenSSL
import redis

host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = OpenSSL.SSL.Context(OpenSSL.SSL.TLS_CLIENT_METHOD)
ctx.load_verify_locations(ca)
ctx.set_verify(OpenSSL.SSL.VERIFY_PEER, lambda conn, cert, errnum, depth, ok: bool(ok))
r = redis.Redis(host=host, port=port, ssl=True, ssl_ca_certs=ca, ssl_cert_reqs="required",
                ssl_validate_ocsp_stapled=True, ssl_ocsp_context=ctx,
                socket_timeout=5, socket_connect_timeout=5)
try:
    print("PONG" if r.ping() else "ERROR: PING answered false")
except Exception as e:  # the client's refusal is what is checked
    print("ERROR: %s: %s" % (type(e).__name__, e))
PY
redis_ping() { TZ=UTC timeout 20 "$SYS_PYTHON" "$T_DIR/redis_ping.py" localhost "$TLS_PORT" "$PKI/ca.pem" 2>&1 | tail -n 1; }

redis_refuses_revoked() {
    REDIS_OUT=$(redis_ping)
    WAIT_DETAIL="redis-py: $REDIS_OUT"
    [[ $REDIS_OUT == ERROR:* ]] && grep -qi revoked <<<"$REDIS_OUT"
}
redis_refuses_no_staple() {
    REDIS_OUT=$(redis_ping)
    WAIT_DETAIL="redis-py: $REDIS_OUT"
    [[ $REDIS_OUT == ERROR:* ]] && grep -qi 'no ocsp response' <<<"$REDIS_OUT"
}
redis_pongs() {
    REDIS_OUT=$(redis_ping)
    WAIT_DETAIL="redis-py: $REDIS_OUT"
    [ "$REDIS_OUT" = PONG ]
}

# curl_cert_status: curl's exit status for GET https://localhost:HTTPS_PORT/ requiring a good stapled status.
curl_cert_status() {
    curl -sS --max-time 10 --cert-status --cacert "$PKI/ca.pem" --resolve "localhost:$HTTPS_PORT:127.0.0.1" \
        -o /dev/null "https://localhost:$HTTPS_PORT/" 2>/dev/null
    echo $?
}
curl_exits() {
    local rc
    rc=$(curl_cert_status)
    WAIT_DETAIL="curl --cert-status exit status $rc"
    [ "$rc" = "$1" ]
}

# delivery_is TARGET STATE: the status's delivery entry for TARGET is in STATE.
delivery_is() {
    req GET /v1/ocsp/status
    WAIT_DETAIL="status: $(short "$BODY")"
    [ "$STATUS" = 200 ] &&
        printf '%s' "$BODY" | jq -e --arg t "$1" --arg s "$2" '.delivery[] | select(.target == $t) | .state == $s' \
            >/dev/null 2>&1
}

# metric NAME LABELS: the value of one sample in /metrics, or nothing.
metric() {
    req GET /metrics
    printf '%s\n' "$BODY" | grep -F "$1{$2}" | head -n 1 | awk '{ print $2 }'
}

# ms_of_log_ts LINE: the ts= of a text log line in epoch milliseconds.
ms_of_log_ts() { date -u -d "$(sed -n 's/^ts=\([^ ]*\).*/\1/p' <<<"$1")" +%s%3N; }

# =============================================================================================================
# Before the agent: HAProxy loads the empty .ocsp and staples nothing; the clients refuse.
hap_start
assert_eq "before the agent: HAProxy staples nothing (OCSP response: no response sent)" none "$(stapled_status)"
assert_eq "before the agent: the HTTPS frontend staples nothing" none "$(stapled_status "$HTTPS_PORT")"
out=$(redis_ping)
assert_match "before the agent: redis-py refuses a handshake without a staple" '^ERROR: .*no ocsp response' "$out"
assert_ne "before the agent: curl --cert-status refuses" 0 "$(curl_cert_status)"
assert_eq "plain redis-server answers behind HAProxy (sanity)" PONG "$(redis-cli -p "$REDIS_PORT" ping 2>&1)"

# =============================================================================================================
# Agent 1: the socket and the .ocsp file, a 1.2 s query period (query_frequency 60 at time-scale 0.02).
start_agent --users "$USERS_FILE" --cert "$PKI/proxy-chain.pem" --haproxy-socket "$SOCK" --haproxy-crt "$CRT" \
    --time-scale 0.02 || bail "the agent starts with --haproxy-socket and --haproxy-crt"
req GET /v1/ocsp/status
assert_json "delivery lists the socket and the file" '[.delivery[].target] | sort | @csv' \
    "$(jq -rn --arg a "$FILE_TARGET" --arg b "$SOCK_TARGET" '[$a, $b] | sort | @csv')"

put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60,
                    "recovery_max_tries": 1}'
assert_status "PUT enables OCSP with a 1.2 s period" 200
wait_log 'event=ocsp_query .*result=ok' 10 || bail "the agent's first valid answer" "$(tail -n 5 "$AGENT_LOG")"
first_ok=$(grep -m1 -E 'event=ocsp_query .*result=ok' "$AGENT_LOG")
assert_wait_until "GOOD is stapled by HAProxy within 2 s of the agent's first valid answer" 2 stapled_is good
stapled_ms=$(date +%s%3N)
echo "# first valid answer to GOOD seen by openssl s_client: $((stapled_ms - $(ms_of_log_ts "$first_ok"))) ms" \
    "(including the client's own handshake)"
assert_wait_until "the HTTPS frontend staples GOOD too" 5 stapled_is good "$HTTPS_PORT"
assert_wait_until "redis-py (ssl_validate_ocsp_stapled=True) connects and PINGs" 10 redis_pongs
assert_wait_until "curl --cert-status exits 0" 5 curl_exits 0
assert_wait_until "delivery: the socket is delivered" 5 delivery_is "$SOCK_TARGET" delivered
assert_wait_until "delivery: the file is delivered" 5 delivery_is "$FILE_TARGET" delivered
assert_jq "delivery: last_delivery set and no last_error on both" \
    '[.delivery[] | has("last_delivery") and (has("last_error") | not)] | all'
assert_jq "delivery: last_delivery is an RFC 1123 date" \
    '[.delivery[].last_delivery | test("^[A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9:]{8} GMT$")] | all'

# --- revoked at the responder: within a query period the clients refuse
bash "$OA_SOURCE_DIR/tests/support/make-pki.sh" revoke "$PKI" >/dev/null
t0=$(date +%s%3N)
assert_wait_until "revoked: redis-py refuses within a query period (bound 5 s), naming the revocation" 5 \
    redis_refuses_revoked
echo "# revoked at the responder to redis-py refusing: $(($(date +%s%3N) - t0)) ms (query period 1200 ms)"
echo "# redis-py says: $REDIS_OUT"
assert_wait_until "revoked: curl --cert-status exits 91 (invalid certificate status)" 5 curl_exits 91
assert_wait_until "revoked: openssl s_client sees revoked" 5 stapled_is revoked
wait_status '.cert_status == "REVOKED"' 5 || fail "revoked: the agent's status is REVOKED" "$(short "$BODY")"
cp "$T_DIR/data/ocsp.der" "$T_DIR/revoked.der" || bail "no staple file while REVOKED"
openssl ocsp -respin "$T_DIR/revoked.der" -resp_text -noverify 2>/dev/null | grep -q 'Cert Status: revoked' ||
    bail "the saved staple is a REVOKED response"

# --- GOOD again
bash "$OA_SOURCE_DIR/tests/support/make-pki.sh" unrevoke "$PKI" >/dev/null
assert_wait_until "valid again: HAProxy staples GOOD within a query period (bound 5 s)" 5 stapled_is good
assert_wait_until "valid again: redis-py PINGs" 10 redis_pongs
assert_wait_until "valid again: curl --cert-status exits 0" 5 curl_exits 0

# =============================================================================================================
# A quiet period: no new answer for 28 min (query_frequency 86400 at 0.02), so whatever puts HAProxy right from
# here on is the agent's reconciliation, not a fresh response.
put_json /v1/ocsp '{"query_frequency": 86400}'
assert_status "PUT: a quiet period (query_frequency 86400, 28.8 min at 0.02)" 200
# A query may have been in flight: wait until its answer is stapled and no newer one comes.
assert_wait_until "quiet: HAProxy staples the agent's current response" 10 stapled_current
sleep 1.5 # one period of the old schedule, so that an answer already in flight has landed (checked just below)
assert_wait_until "quiet: HAProxy staples the agent's current response (settled)" 10 stapled_current
QUIET_PRODUCED=$(current_produced_at)
assert_wait_until "quiet: every target delivered" 5 delivery_is "$SOCK_TARGET" delivered
assert_jq "quiet: both targets delivered" '[.delivery[].state] == ["delivered", "delivered"]'
assert_eq "the .ocsp file is byte for byte the staple file" "$(sha256sum <"$T_DIR/data/ocsp.der")" \
    "$(sha256sum <"$CRT.ocsp")"
req GET /metrics
assert_match "metrics: the socket holds the current staple" \
    "ocsp_agent_staple_delivered\\{target=\"$SOCK_TARGET\"\\} 1" "$BODY"
assert_match "metrics: the file holds the current staple" \
    "ocsp_agent_staple_delivered\\{target=\"$FILE_TARGET\"\\} 1" "$BODY"
assert_match "metrics: deliveries to the socket counted ok" \
    "ocsp_agent_staple_deliveries_total\\{target=\"$SOCK_TARGET\",result=\"ok\"\\} [1-9]" "$BODY"
assert_match "metrics: deliveries to the file counted ok" \
    "ocsp_agent_staple_deliveries_total\\{target=\"$FILE_TARGET\",result=\"ok\"\\} [1-9]" "$BODY"

# --- a foreign push of an older (REVOKED) response is corrected within 10 s
# The agent is paused while the push is checked, so that its correction (every 5 s) cannot come first on a slow
# machine; the 10 s are counted from its resumption.
kill -STOP "$AGENT_PID"
reply=$(hap_cmd "set ssl ocsp-response $(base64 -w0 <"$T_DIR/revoked.der")")
assert_match "foreign push: HAProxy takes the older response" 'OCSP Response updated' "$reply"
assert_eq "foreign push: HAProxy staples it (revoked)" revoked "$(stapled_status)"
kill -CONT "$AGENT_PID"
t0=$(date +%s%3N)
assert_wait_until "foreign push: the agent puts its current response back within 10 s" 10 stapled_current
echo "# foreign push corrected after $(($(date +%s%3N) - t0)) ms"

# --- HAProxy reloaded (SIGUSR2, master-worker): the new worker loads the .ocsp file the agent keeps current
hap_reload
assert_wait_until "reload with --haproxy-crt: the current response is stapled within 10 s" 10 stapled_current

# --- HAProxy restarted: the same from the file, at once
hap_stop
hap_start
t0=$(date +%s%3N)
assert_wait_until "restart with --haproxy-crt: the current response is stapled within 10 s" 10 stapled_current
echo "# HAProxy restarted (with the .ocsp file): current response stapled after $(($(date +%s%3N) - t0)) ms"

# --- the agent restarted (into socket-only mode): HAProxy keeps stapling throughout
: >"$T_DIR/probe.log"
(
    while [ ! -e "$T_DIR/probe.stop" ]; do
        stapled_status >>"$T_DIR/probe.log"
        sleep 0.1
    done
) &
PROBE_PID=$!
T_PIDS+=("$PROBE_PID")
wait_until 10 test -s "$T_DIR/probe.log" || fail "the staple probe runs"
stop_checked "agent 1 (socket and file)"
start_agent --users "$USERS_FILE" --cert "$PKI/proxy-chain.pem" --haproxy-socket "$SOCK" --time-scale 0.02 ||
    bail "the agent starts again with --haproxy-socket only"
assert_wait_until "agent 2: the socket is delivered" 10 delivery_is "$SOCK_TARGET" delivered
touch "$T_DIR/probe.stop"
wait_exit "$PROBE_PID" 15
forget_pid "$PROBE_PID"
probes=$(grep -c '' "$T_DIR/probe.log")
assert_eq "agent stopped and restarted: HAProxy stapled GOOD in every one of $probes handshakes" \
    "good" "$(sort -u "$T_DIR/probe.log" | paste -sd,)"
req GET /v1/ocsp/status
assert_json "agent 2: the socket is the only target" '[.delivery[].target] | @csv' "\"$SOCK_TARGET\""
assert_json "agent 2: valid, from the persisted configuration" '.state' valid
assert_wait_until "agent 2: HAProxy staples the agent's current response" 10 stapled_current
QUIET_PRODUCED=$(current_produced_at) # agent 2 queried once at start-up; none from here on

# =============================================================================================================
# Without --haproxy-crt: HAProxy comes back with an empty .ocsp; only the runtime socket can put it right.
: >"$CRT.ocsp"
hap_stop
hap_start
t0=$(date +%s%3N)
assert_wait_until "restart without --haproxy-crt: the current response is stapled within 10 s" 10 stapled_current
echo "# HAProxy restarted (empty .ocsp): current response stapled after $(($(date +%s%3N) - t0)) ms"
assert_wait_until "restart without --haproxy-crt: the HTTPS frontend too" 10 stapled_is good "$HTTPS_PORT"
hap_reload
t0=$(date +%s%3N)
assert_wait_until "reload without --haproxy-crt: the current response is stapled within 10 s" 10 stapled_current
echo "# HAProxy reloaded (empty .ocsp): current response stapled after $(($(date +%s%3N) - t0)) ms"
assert_eq "the agent never wrote the .ocsp file without --haproxy-crt" 0 "$(stat -c %s "$CRT.ocsp")"

# --- HAProxy stopped: the agent serves on and says the socket failed; HAProxy back: delivered again
hap_stop
assert_wait_until "HAProxy stopped: delivery says failed for the socket within 10 s" 10 \
    delivery_is "$SOCK_TARGET" failed
assert_status "HAProxy stopped: the API still answers" 200
assert_jq "HAProxy stopped: last_error says why" '.delivery[0].last_error | type == "string" and length > 0'
echo "# last_error: $(jq -r '.delivery[0].last_error' <<<"$BODY")"
assert_json "HAProxy stopped: the certificate status is untouched" '[.state, .cert_status] | @csv' '"valid","GOOD"'
assert_eq "HAProxy stopped: staple_delivered is 0 for the socket" 0 "$(metric ocsp_agent_staple_delivered \
    "target=\"$SOCK_TARGET\"")"
errors=$(metric ocsp_agent_staple_deliveries_total "target=\"$SOCK_TARGET\",result=\"error\"")
assert_match "HAProxy stopped: failed tries are counted" '^[1-9][0-9]*$' "$errors"
hap_start
t0=$(date +%s%3N)
assert_wait_until "HAProxy back: the current response is stapled within 10 s" 10 stapled_current
echo "# HAProxy back after a stop: current response stapled after $(($(date +%s%3N) - t0)) ms"
assert_wait_until "HAProxy back: delivery says delivered" 10 delivery_is "$SOCK_TARGET" delivered
assert_eq "HAProxy back: staple_delivered is 1 for the socket" 1 "$(metric ocsp_agent_staple_delivered \
    "target=\"$SOCK_TARGET\"")"
assert_eq "no new answer during the quiet period (the fixes were reconciliation)" "$QUIET_PRODUCED" \
    "$(current_produced_at)"
stop_checked "agent 2 (socket only)"

# =============================================================================================================
# Invalidation: the file is emptied, so a reload staples nothing; the responder back: stapled again.
start_agent --users "$USERS_FILE" --cert "$PKI/proxy-chain.pem" --haproxy-socket "$SOCK" --haproxy-crt "$CRT" \
    --time-scale 0.02 || bail "agent 3 starts"
put_json /v1/ocsp '{"query_frequency": 60}'
assert_status "agent 3: PUT query_frequency 60 (1.2 s)" 200
assert_wait_until "agent 3: HAProxy staples the current response" 10 stapled_current
printf 'http 500\n' >"$RESP_CONTROL"
assert_wait_status "a failing responder invalidates the status" '.state == "invalidated"' 20
assert_wait_until "invalidated: the .ocsp file is emptied" 5 test ! -s "$CRT.ocsp"
assert_wait_until "invalidated: the file target is delivered (it staples nothing, as it should)" 5 \
    delivery_is "$FILE_TARGET" delivered
echo "# invalidated: HAProxy's running worker still staples: $(stapled_status) (no runtime command drops a response)"
req GET /v1/ocsp/status
echo "# invalidated: the socket target says: $(jq -c --arg t "$SOCK_TARGET" '.delivery[] | select(.target == $t)' \
    <<<"$BODY")"
hap_reload
assert_wait_until "invalidated, then HAProxy reloaded: nothing is stapled" 10 stapled_is none
assert_wait_until "invalidated, then HAProxy reloaded: redis-py refuses (no staple)" 10 redis_refuses_no_staple
: >"$RESP_CONTROL"
assert_wait_status "the responder answers again: valid" '.state == "valid"' 20
assert_wait_until "valid again after the invalidation: HAProxy staples GOOD within 10 s" 10 stapled_is good
assert_wait_until "valid again after the invalidation: the .ocsp file holds it" 5 test -s "$CRT.ocsp"
assert_wait_until "valid again after the invalidation: redis-py PINGs" 10 redis_pongs
stop_checked "agent 3"

hap_stop
t_finish
