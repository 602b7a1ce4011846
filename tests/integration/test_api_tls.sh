#!/usr/bin/env bash
# The API over HTTPS (--tls-cert/--tls-key): a certificate made now, verified by curl; plain HTTP to the TLS port
# gets nothing; bad key files stop start-up with one line naming them.
source "$(dirname "$0")/lib.sh"

tls=$T_DIR/tls
mkdir -p "$tls"
new_cert api
new_cert other

make_users admin
start_agent --users "$USERS_FILE" --tls-cert "$tls/api.pem" --tls-key "$tls/api.key" ||
    bail "the agent does not start with TLS"
CURL_TLS=(--cacert "$tls/api.pem")

req GET /v1/ocsp
assert_status "HTTPS GET /v1/ocsp, certificate verified" 200
assert_json "HTTPS: the configuration" .query_frequency 3600
assert_match "HTTPS: Content-Type application/json" '^application/json' "$(header_value Content-Type)"
put_json /v1/ocsp '{"query_frequency": 900}'
assert_status "HTTPS PUT" 200
assert_json "HTTPS PUT applied" .query_frequency 900
REQ_USER='' req GET /v1/ocsp
assert_error "HTTPS without credentials" 401 unauthorized

# Two requests on one TLS connection (keep-alive).
out=$(curl -sS --max-time "$OA_CURL_TIMEOUT" "${CURL_TLS[@]}" -u "admin@example.com:${USER_PASS[admin]}" \
    -o /dev/null -w '%{http_code} %{num_connects}\n' "$AGENT_URL/v1/ocsp" -o /dev/null "$AGENT_URL/v1/ocsp/status" 2>&1)
assert_eq "two requests on one TLS connection" $'200 1\n200 0' "$out"

# The server presents the certificate it was given: verification against another CA fails.
CURL_TLS=(--cacert "$tls/other.pem")
req GET /v1/ocsp
assert_eq "curl refuses the server's certificate against another CA" 60 "$CURL_RC"
CURL_TLS=(--cacert "$tls/api.pem")

# Plain HTTP to the TLS port gets no HTTP answer, and the agent carries on.
curl -sS --max-time 5 -o "$T_DIR/plain.body" -w '%{http_code}' -u "admin@example.com:${USER_PASS[admin]}" \
    "http://127.0.0.1:$AGENT_PORT/v1/ocsp" >"$T_DIR/plain.status" 2>/dev/null
plain_rc=$?
assert_ne "plain HTTP to the TLS port: curl fails" 0 "$plain_rc"
assert_ne "plain HTTP to the TLS port: no 200" 200 "$(cat "$T_DIR/plain.status")"
assert_eq "plain HTTP to the TLS port: no configuration leaks" "" \
    "$(grep -o query_frequency "$T_DIR/plain.body" 2>/dev/null)"
# A TLS client that stops after its ClientHello must not hold the agent either.
timeout 3 openssl s_client -connect "127.0.0.1:$AGENT_PORT" </dev/null >/dev/null 2>&1
req GET /v1/ocsp
assert_status "HTTPS still served after the plain-HTTP attempt" 200
stop_agent

# --- bad TLS files stop start-up
port=$(free_port)
base=(--users "$USERS_FILE" --listen "127.0.0.1:$port" --data-dir "$T_DIR/data")
printf 'this is not a key\n' >"$tls/garbage.key"
assert_start_fails "a garbage --tls-key names the file" "$tls/garbage.key" \
    "${base[@]}" --tls-cert "$tls/api.pem" --tls-key "$tls/garbage.key"
assert_start_fails "a missing --tls-key names the file" "$tls/missing.key" \
    "${base[@]}" --tls-cert "$tls/api.pem" --tls-key "$tls/missing.key"
assert_start_fails "a key that does not match the certificate is refused" "$tls/other.key|$tls/api.pem|--tls-key" \
    "${base[@]}" --tls-cert "$tls/api.pem" --tls-key "$tls/other.key"
assert_start_fails "a garbage --tls-cert names the file" "$tls/garbage.key" \
    "${base[@]}" --tls-cert "$tls/garbage.key" --tls-key "$tls/api.key"
assert_start_fails "--tls-cert without --tls-key is refused" '--tls-key' \
    "${base[@]}" --tls-cert "$tls/api.pem"
assert_start_fails "--tls-key without --tls-cert is refused" '--tls-cert' \
    "${base[@]}" --tls-key "$tls/api.key"
