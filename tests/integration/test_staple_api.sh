#!/usr/bin/env bash
# The agent's own HTTPS API staples the watched certificate's status (API.md section 6): with --tls-cert serving the
# certificate given to --cert, a client asking for the status (openssl s_client -status, curl --cert-status) gets
# the current response: none before the first answer, GOOD, REVOKED, GOOD again, none after an invalidation. Another
# certificate on the API staples nothing. TLS 1.2 offers only ECDHE suites with an AEAD cipher.
source "$(dirname "$0")/lib.sh"

start_pki_responder
make_users admin

# stapled_status PORT: what a client asking for the status is handed: "none", or the Cert Status openssl prints
# ("good", "revoked"); "error" when the handshake itself fails.
stapled_status() {
    local out
    out=$(timeout 10 openssl s_client -connect "127.0.0.1:$1" -servername localhost -status -CAfile "$PKI/ca.pem" \
        </dev/null 2>&1) || { echo error; return; }
    if grep -q 'OCSP response: no response sent' <<<"$out"; then
        echo none
    elif grep -q 'OCSP Response Status: successful' <<<"$out"; then
        sed -n 's/^ *Cert Status: \([a-z]*\).*/\1/p' <<<"$out" | head -n 1
    else
        echo error
    fi
}

# wait_stapled PORT EXPECTED [TIMEOUT]: polls stapled_status until it prints EXPECTED; STAPLED is the last answer.
wait_stapled() {
    local deadline=$((SECONDS + ${3:-10}))
    while :; do
        STAPLED=$(stapled_status "$1")
        [ "$STAPLED" = "$2" ] && return 0
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

assert_stapled() { # NAME PORT EXPECTED [TIMEOUT]
    if wait_stapled "$2" "$3" "${4:-10}"; then pass "$1"; else fail "$1" "expected $3, got $STAPLED"; fi
}

# curl_cert_status: curl's exit status for an authenticated GET over HTTPS that requires a good stapled status.
curl_cert_status() {
    curl -sS --max-time "$OA_CURL_TIMEOUT" --cert-status --cacert "$PKI/ca.pem" \
        -u "admin@example.com:${USER_PASS[admin]}" -o /dev/null "https://localhost:$AGENT_PORT/v1/ocsp" 2>/dev/null
    echo $?
}

CURL_TLS=(--cacert "$PKI/ca.pem")
start_agent --users "$USERS_FILE" --tls-cert "$PKI/proxy-chain.pem" --tls-key "$PKI/proxy.key" \
    --cert "$PKI/proxy-chain.pem" --time-scale 0.02 || bail "the agent does not start with --tls-cert = --cert"
API_PORT=$AGENT_PORT

# --- before the first answer: nothing to staple
assert_eq "before any answer: no staple in the handshake" none "$(stapled_status "$API_PORT")"
req GET /v1/ocsp/status
assert_status "status over HTTPS" 200
assert_json "the API is the only delivery target" '[.delivery[].target] | @csv' '"api"'
assert_ne "curl --cert-status refuses a handshake without a staple" 0 "$(curl_cert_status)"

# --- GOOD
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60, "recovery_max_tries": 1}'
assert_status "PUT enables OCSP" 200
assert_wait_status "the first answer is GOOD" '.state == "valid" and .cert_status == "GOOD"'
assert_stapled "GOOD is stapled" "$API_PORT" good
assert_eq "curl --cert-status accepts the GOOD staple" 0 "$(curl_cert_status)"
# The staple in the handshake is the staple file's response. A new one arrives every 1.2 s, so the two are read
# again until no query landed in between (the file read before and after the handshake is the same).
same=0
for _ in $(seq 20); do
    before=$(sha256sum <"$T_DIR/data/ocsp.der")
    cp "$T_DIR/data/ocsp.der" "$T_DIR/staple.der" 2>/dev/null
    timeout 10 openssl s_client -connect "127.0.0.1:$API_PORT" -status -CAfile "$PKI/ca.pem" </dev/null \
        >"$T_DIR/s_client.out" 2>&1
    [ "$before" = "$(sha256sum <"$T_DIR/data/ocsp.der")" ] || continue
    openssl ocsp -respin "$T_DIR/staple.der" -resp_text -noverify >"$T_DIR/file.txt" 2>&1
    if [ "$(grep -m1 'Produced At' "$T_DIR/file.txt")" = "$(grep -m1 'Produced At' "$T_DIR/s_client.out")" ]; then
        same=1
        break
    fi
done
assert_eq "the handshake's response is the staple file's (same producedAt)" 1 "$same"
req GET /v1/ocsp/status
assert_json "delivery: the API holds the staple" '.delivery[0] | [.target, .state] | @csv' '"api","delivered"'
assert_jq "delivery: last_delivery is set, no last_error" '.delivery[0] | has("last_delivery") and (has("last_error") | not)'
req GET /metrics
assert_match "metrics: the API holds the current staple" 'ocsp_agent_staple_delivered\{target="api"\} 1' "$BODY"
assert_match "metrics: deliveries to the API are counted" \
    'ocsp_agent_staple_deliveries_total\{target="api",result="ok"\} [1-9]' "$BODY"

# --- REVOKED, then GOOD again
bash "$OA_SOURCE_DIR/tests/support/make-pki.sh" revoke "$PKI" >/dev/null
assert_wait_status "revoked at the responder: the status turns REVOKED" '.cert_status == "REVOKED"'
assert_stapled "REVOKED is stapled" "$API_PORT" revoked
assert_ne "curl --cert-status refuses the REVOKED staple" 0 "$(curl_cert_status)"
bash "$OA_SOURCE_DIR/tests/support/make-pki.sh" unrevoke "$PKI" >/dev/null
assert_wait_status "valid again at the responder: GOOD" '.cert_status == "GOOD"'
assert_stapled "GOOD is stapled again" "$API_PORT" good

# --- invalidation: the responder fails, retries run out, nothing is stapled any more
printf 'http 500\n' >"$RESP_CONTROL"
assert_wait_status "a failing responder invalidates the status" '.state == "invalidated"' 20
assert_eq "after the invalidation: no staple in the handshake" none "$(stapled_status "$API_PORT")"
req GET /v1/ocsp/status
assert_json "delivery after the invalidation: the API staples nothing, as it should" '.delivery[0].state' delivered
: >"$RESP_CONTROL"
assert_wait_status "the responder answers again: valid" '.state == "valid"' 20
assert_stapled "stapled again after the recovery" "$API_PORT" good

# --- TLS 1.2 suites: ECDHE with AEAD only
accepted=()
while read -r suite; do
    if timeout 5 openssl s_client -connect "127.0.0.1:$API_PORT" -tls1_2 -cipher "$suite" </dev/null >/dev/null 2>&1
    then accepted+=("$suite"); fi
done < <(openssl ciphers -tls1_2 'ALL:COMPLEMENTOFALL:@SECLEVEL=0' 2>/dev/null | tr ':' '\n' | grep -v '^TLS_')
assert_ne "TLS 1.2: some suite is accepted" 0 "${#accepted[@]}"
weak=$(printf '%s\n' "${accepted[@]}" | grep -Ev '^ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$')
assert_eq "TLS 1.2: every accepted suite is ECDHE with AEAD (accepted: ${accepted[*]})" "" "$weak"
if timeout 5 openssl s_client -connect "127.0.0.1:$API_PORT" -tls1_2 -cipher ECDHE-ECDSA-AES128-SHA </dev/null \
    >/dev/null 2>&1; then rc=0; else rc=1; fi
assert_eq "TLS 1.2: a CBC suite is refused" 1 "$rc"
stop_checked "the API stapling agent"

# --- another certificate on the API: its clients are never handed the watched certificate's status
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=other" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$T_DIR/other.key" -out "$T_DIR/other.pem" \
    2>/dev/null || bail "openssl req fails"
rm -rf "$T_DIR/data"
CURL_TLS=(--cacert "$T_DIR/other.pem")
start_agent --users "$USERS_FILE" --tls-cert "$T_DIR/other.pem" --tls-key "$T_DIR/other.key" \
    --cert "$PKI/proxy-chain.pem" --time-scale 0.02 || bail "the agent does not start with another API certificate"
put_json /v1/ocsp '{"ocsp_functionality": true}'
assert_wait_status "another API certificate: the watched one is still queried" '.state == "valid"'
assert_json "another API certificate: no delivery target" '.delivery | length' 0
assert_eq "another API certificate: nothing stapled" none "$(stapled_status "$AGENT_PORT")"
stop_checked "the agent with another API certificate"

t_finish
