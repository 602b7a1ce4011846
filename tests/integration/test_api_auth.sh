#!/usr/bin/env bash
# HTTP Basic authentication and the role table: a burst of first logins with the same credentials all answered,
# 401 without or with wrong credentials, admin allowed on all four OCSP endpoints, every other role refused with
# 403, and --no-auth (loopback only).
source "$(dirname "$0")/lib.sh"

make_users
start_pki_responder
start_agent --users "$USERS_FILE" --cert "$T_DIR/pki/proxy-chain.pem" || bail "the agent does not start"

# --- a burst of first logins: admin's credentials have not been verified yet, and 30 connections open at once with
# them. They share one KDF instead of filling the 8 the agent runs at once, so every one is answered 200, none 503.
burst=()
for i in $(seq 30); do
    burst+=(-o /dev/null "$AGENT_URL/v1/ocsp")
done
codes=$(curl -sS --max-time "$OA_CURL_TIMEOUT" --parallel --parallel-immediate --parallel-max 30 -w '%{http_code}\n' \
    -u "admin@example.com:${USER_PASS[admin]}" "${burst[@]}" 2>"$T_DIR/burst.err")
assert_eq "30 parallel first logins with one user's credentials: all 200" "30x200" \
    "$(sort <<<"$codes" | uniq -c | awk '{printf "%s%sx%s", sep, $1, $2; sep = ","}')"

# --- 401
assert_401() {
    assert_error "$1" 401 unauthorized
    assert_match "$1: WWW-Authenticate: Basic" '^Basic( |$)' "$(header_value WWW-Authenticate)"
}
REQ_USER='' req GET /v1/ocsp
assert_401 "no credentials"
REQ_USER='' req PUT /v1/ocsp -H 'Content-Type: application/json' --data-binary '{"query_frequency": 600}'
assert_401 "PUT without credentials"
REQ_USER=admin REQ_PASS=not-the-password req GET /v1/ocsp
assert_401 "wrong password"
REQ_USER=admin REQ_PASS='' req GET /v1/ocsp
assert_401 "empty password"
REQ_USER=nobody req GET /v1/ocsp
assert_401 "unknown user"
REQ_USER='' req GET /v1/ocsp -H 'Authorization: Bearer abcdef'
assert_401 "a Bearer token"
REQ_USER='' req GET /v1/ocsp -H 'Authorization: Basic !!!not-base64!!!'
assert_401 "malformed base64"
REQ_USER='' req GET /v1/ocsp -H "Authorization: Basic $(printf 'admin@example.com' | base64 -w0)"
assert_401 "credentials without a colon"
REQ_USER='' req GET /v1/nothing
assert_401 "an unknown path without credentials"

# --- each role on each OCSP endpoint
call() { # ENDPOINT: one request to it as $REQ_USER
    case $1 in
    "GET /v1/ocsp") req GET /v1/ocsp ;;
    "PUT /v1/ocsp") put_json /v1/ocsp '{"query_frequency": 600}' ;;
    "GET /v1/ocsp/status") req GET /v1/ocsp/status ;;
    "POST /v1/ocsp/test") req POST /v1/ocsp/test ;;
    esac
}
endpoints=("GET /v1/ocsp" "PUT /v1/ocsp" "GET /v1/ocsp/status" "POST /v1/ocsp/test")

for ep in "${endpoints[@]}"; do
    REQ_USER="admin" call "$ep"
    assert_status "admin: $ep" 200
done
req GET /v1/ocsp
assert_json "admin's PUT applied" .query_frequency 600
req POST /v1/ocsp/test
assert_json "admin's test reports GOOD from the responder" .cert_status GOOD
put_json /v1/ocsp '{"query_frequency": 3600}'
assert_status "admin resets query_frequency" 200

for role in "${ROLES[@]}"; do
    [ "$role" = admin ] && continue
    for ep in "${endpoints[@]}"; do
        REQ_USER=$role call "$ep"
        assert_error "$role: $ep" 403 insufficient_permissions
    done
    REQ_USER=$role req GET /metrics
    assert_status "$role: GET /metrics" 403
done
# A wrong password costs the agent a full KDF, so one other role is enough to show it is not admin-only.
REQ_USER=db_viewer REQ_PASS=wrong req GET /v1/ocsp
assert_401 "db_viewer with a wrong password"
req GET /v1/ocsp
assert_json "no refused PUT changed anything" .query_frequency 3600
req GET /metrics
assert_status "admin: GET /metrics" 200

# A verified login is remembered, but a later wrong password for the same user is still refused.
req GET /v1/ocsp
assert_status "admin again" 200
REQ_USER=admin REQ_PASS="${USER_PASS[admin]}x" req GET /v1/ocsp
assert_401 "admin with the password plus one character"
req GET /v1/ocsp
assert_status "admin after a failed attempt" 200
stop_agent

# --- --no-auth: loopback only
start_agent --no-auth || bail "the agent does not start with --no-auth on loopback"
REQ_USER='' req GET /v1/ocsp
assert_status "--no-auth: GET without credentials" 200
assert_json "--no-auth: the configuration" .query_frequency 3600
REQ_USER='' put_json /v1/ocsp '{"recovery_max_tries": 3}'
assert_status "--no-auth: PUT without credentials" 200
assert_json "--no-auth: PUT applied" .recovery_max_tries 3
stop_agent

port=$(free_port)
assert_start_fails "--no-auth on 0.0.0.0 is refused" '--no-auth' \
    --no-auth --listen "0.0.0.0:$port" --data-dir "$T_DIR/data"
assert_start_fails "--no-auth on [::] is refused" '--no-auth' \
    --no-auth --listen "[::]:$port" --data-dir "$T_DIR/data"
assert_start_fails "neither --users nor --no-auth is refused" '--users|--no-auth' \
    --listen "127.0.0.1:$port" --data-dir "$T_DIR/data"
