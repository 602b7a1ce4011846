#!/usr/bin/env bash
# nginx fed by the staple hook deploy/nginx/ocsp-staple-nginx: a private nginx on 127.0.0.1 (its own prefix, pid
# file, logs and temp directories under the suite's directory) serves the PKI's proxy certificate and includes the
# snippet the hook writes. The agent runs with --staple-hook and the hook's NGINX_* variables in its environment
# (a hook inherits the agent's environment). Checked from the client side with `openssl s_client -status` and
# `curl --cert-status`: the GOOD staple arrives, a revocation (and the next query) makes nginx staple REVOKED and
# curl refuse, and after the status is invalidated the hook turns stapling off.
#
# nginx fetches nothing itself with ssl_stapling_file: whatever it staples came through the hook and a reload.
# Time scale 0.01: query_frequency 3600 becomes 36 s (nothing regular happens while the suite looks), the recovery
# frequency (60 s) 0.6 s, which is also the hook's retry interval.
OA_STOP_TIMEOUT=${OA_STOP_TIMEOUT:-30}
OA_CURL_TIMEOUT=${OA_CURL_TIMEOUT:-30}
source "$(dirname "$0")/lib.sh"

NGINX=${OA_NGINX_BIN:-/usr/sbin/nginx}
HOOK=$OA_SOURCE_DIR/deploy/nginx/ocsp-staple-nginx
[ -x "$NGINX" ] || bail "nginx is not installed at $NGINX"

start_pki_responder
make_users admin

# ---------------------------------------------------------------------------------------------------------------
# A private nginx

NGX=$T_DIR/nginx
NGX_PORT=$(free_port) || bail "no free port for nginx"
mkdir -p "$NGX/tmp" "$NGX/ocsp"
NGX_CMD="$NGINX -p $NGX/ -c $NGX/nginx.conf -e $NGX/error.log"
cat >"$NGX/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes 1;
pid $NGX/nginx.pid;
error_log $NGX/error.log info;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $NGX/tmp/body;
    proxy_temp_path $NGX/tmp/proxy;
    fastcgi_temp_path $NGX/tmp/fastcgi;
    uwsgi_temp_path $NGX/tmp/uwsgi;
    scgi_temp_path $NGX/tmp/scgi;
    server {
        listen 127.0.0.1:$NGX_PORT ssl;
        ssl_certificate $PKI/proxy-chain.pem;
        ssl_certificate_key $PKI/proxy.key;
        include $NGX/ocsp/stapling.conf;
        location / { return 200 "ok\n"; }
    }
}
CONF
# Before the hook's first run the snippet says what nginx does without a staple.
echo 'ssl_stapling off;' >"$NGX/ocsp/stapling.conf"

# shellcheck disable=SC2086 # a word list
$NGX_CMD -t >"$T_DIR/nginx-t.log" 2>&1 || bail "nginx -t accepts the suite's configuration" "$(cat "$T_DIR/nginx-t.log")"
# shellcheck disable=SC2086
$NGX_CMD </dev/null >"$NGX/stdout.log" 2>&1 &
NGX_PID=$!
T_PIDS+=("$NGX_PID")
wait_port "$NGX_PORT" "$NGX_PID" 10 || bail "nginx listens on 127.0.0.1:$NGX_PORT" "$(tail -n 5 "$NGX/error.log")"
pass "a private nginx listens on 127.0.0.1:$NGX_PORT"

# staple_seen: sets STAPLE_SEEN to what nginx staples now (good, revoked, none, or other) and STAPLE_TEXT to the
# s_client output.
STAPLE_TEXT=
STAPLE_SEEN=
staple_seen() {
    STAPLE_TEXT=$(timeout 10 openssl s_client -connect "127.0.0.1:$NGX_PORT" -servername localhost -status \
        -CAfile "$PKI/ca.pem" </dev/null 2>&1)
    if grep -q 'OCSP response: no response sent' <<<"$STAPLE_TEXT"; then
        STAPLE_SEEN=none
    elif grep -q 'Cert Status: good' <<<"$STAPLE_TEXT"; then
        STAPLE_SEEN=good
    elif grep -q 'Cert Status: revoked' <<<"$STAPLE_TEXT"; then
        STAPLE_SEEN=revoked
    else
        STAPLE_SEEN=other
    fi
}

# assert_staple_seen NAME WANT [TIMEOUT]: polls (every 200 ms, at most TIMEOUT s, default 20) until nginx staples WANT.
assert_staple_seen() {
    local deadline=$((SECONDS + ${3:-20}))
    while :; do
        staple_seen
        if [ "$STAPLE_SEEN" = "$2" ]; then
            pass "$1"
            return 0
        fi
        if [ $SECONDS -ge "$deadline" ]; then
            fail "$1" "expected $2, nginx staples: $STAPLE_SEEN" \
                "$(grep -E 'OCSP|Cert Status|Verify return' <<<"$STAPLE_TEXT" | head -n 6)" \
                "agent: $(grep 'event=staple_hook' "$AGENT_LOG" | tail -n 2)" "nginx: $(tail -n 3 "$NGX/error.log")"
            return 1
        fi
        sleep 0.2
    done
}

curl_status() {
    curl -sS --max-time 10 --cacert "$PKI/ca.pem" --cert-status -o /dev/null -w '%{http_code}' \
        "https://127.0.0.1:$NGX_PORT/" 2>"$T_DIR/curl.err"
}

# curl_until CODE / curl_until_not CODE: curl_status, repeated every 200 ms for at most 10 s until it prints CODE
# (or anything but CODE); prints the last result. Workers of the configuration before a reload may still take a
# connection for a moment after it.
curl_until() {
    local deadline=$((SECONDS + 10)) code
    code=$(curl_status)
    while [ "$code" != "$1" ] && [ $SECONDS -lt $deadline ]; do
        sleep 0.2
        code=$(curl_status)
    done
    echo "$code"
}
curl_until_not() {
    local deadline=$((SECONDS + 10)) code
    code=$(curl_status)
    while [ "$code" = "$1" ] && [ $SECONDS -lt $deadline ]; do
        sleep 0.2
        code=$(curl_status)
    done
    echo "$code"
}

assert_staple_seen "before the agent: nginx staples nothing" none 5

# ---------------------------------------------------------------------------------------------------------------
# The agent with the hook

export NGINX_STAPLE_FILE=$NGX/ocsp/proxy.der
export NGINX_STAPLING_CONF=$NGX/ocsp/stapling.conf
export NGINX_BIN=$NGX_CMD
start_agent --users "$USERS_FILE" --cert "$PKI/proxy-chain.pem" --staple-hook "$HOOK" --log-level info \
    --time-scale 0.01 || bail "the agent starts with --staple-hook"
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 3600, "recovery_frequency": 60,
                    "recovery_max_tries": 1}'
assert_status "PUT enables OCSP" 200
assert_wait_status "the first query: valid GOOD" '.state == "valid" and .cert_status == "GOOD"'

# --- GOOD
assert_staple_seen "GOOD: nginx staples the good response" good
assert_match "GOOD: s_client verifies nginx's certificate" 'Verify return code: 0 \(ok\)' "$STAPLE_TEXT"
assert_eq "GOOD: the staple nginx reads is the agent's" "$(sha256sum <"$T_DIR/data/ocsp.der")" \
    "$(sha256sum <"$NGINX_STAPLE_FILE")"
assert_eq "GOOD: the snippet turns stapling on with the file" \
    "ssl_stapling on;|ssl_stapling_file $NGINX_STAPLE_FILE;" "$(paste -sd'|' "$NGINX_STAPLING_CONF")"
assert_eq "GOOD: the staple file is 0644" 644 "$(stat -c %a "$NGINX_STAPLE_FILE")"
assert_eq "GOOD: curl --cert-status accepts the staple" 200 "$(curl_until 200)"
assert_wait_status "GOOD: the status shows the hook delivered" \
    "[.delivery[] | select(.target == \"hook:$HOOK\")] | length == 1 and .[0].state == \"delivered\"
     and (.[0].last_delivery | type == \"string\") and (.[0] | has(\"last_error\") | not)"
assert_match "GOOD: the hook run is logged" \
    "level=info event=staple_hook .*hook_event=updated exit_status=0 " "$(grep 'event=staple_hook' "$AGENT_LOG")"

# --- REVOKED: the responder reads index.txt on every request; the next query (an explicit test) caches it.
bash "$OA_SOURCE_DIR/tests/support/make-pki.sh" revoke "$PKI" || bail "make-pki.sh revoke"
req POST /v1/ocsp/test
assert_status "REVOKED: POST /v1/ocsp/test" 200
assert_json "REVOKED: the query answers REVOKED" .cert_status REVOKED
assert_staple_seen "REVOKED: nginx staples the revoked response" revoked
code=$(curl_until_not 200)
assert_ne "REVOKED: curl --cert-status refuses the connection" 200 "$code"
assert_match "REVOKED: curl names the revocation" '[Rr]evoked|revocation' "$(cat "$T_DIR/curl.err")"

# --- invalidated: the responder fails; the faster schedule (0.6 s) fails once, its one retry too.
echo "http 500" >"$RESP_CONTROL"
put_json /v1/ocsp '{"query_frequency": 60}'
assert_status "invalidation: PUT query_frequency 60 (0.6 s)" 200
assert_wait_status "invalidation: the status is invalidated" '.state == "invalidated"' 20
assert_staple_seen "invalidated: nginx staples nothing" none
assert_eq "invalidated: the snippet turns stapling off" "ssl_stapling off;" "$(cat "$NGINX_STAPLING_CONF")"
assert_match "invalidated: the hook ran for the removal" "event=staple_hook .*hook_event=removed exit_status=0 " \
    "$(grep 'event=staple_hook' "$AGENT_LOG")"
assert_eq "invalidated: curl --cert-status refuses a missing staple" 000 "$(curl_until 000)"

stop_agent
if proc_alive "$NGX_PID"; then pass "nginx ran throughout"; else fail "nginx ran throughout" "$(tail -n 5 "$NGX/error.log")"; fi

# --- the hook on its own: a failing check is one line on stderr and a non-zero exit, and nothing is reloaded.
out=$(NGINX_BIN=false NGINX_STAPLING_CONF=$T_DIR/alone.conf NGINX_STAPLE_FILE=$T_DIR/alone.der \
    "$HOOK" updated "$PKI/ca.pem" 2>&1 >/dev/null)
rc=$?
assert_ne "hook alone: nginx -t failing exits non-zero" 0 "$rc"
assert_eq "hook alone: one line on stderr" 1 "$(printf '%s\n' "$out" | grep -c '')"
assert_match "hook alone: the line says nginx -t failed" '^ocsp-staple-nginx: nginx -t failed, not reloaded' "$out"
out=$("$HOOK" bogus "$PKI/ca.pem" 2>&1 >/dev/null)
assert_match "hook alone: an unknown event is refused" "^ocsp-staple-nginx: unknown event 'bogus'" "$out"
