#!/usr/bin/env bash
# GET and PUT /v1/ocsp against the real binary: defaults, partial updates, every kind of invalid body,
# no_responder_url, enabling with a certificate, routing errors, error bodies, and what a change logs.
source "$(dirname "$0")/lib.sh"

DEFAULTS='{"ocsp_functionality":false,"responder_url":"","query_frequency":3600,"response_timeout":1,"recovery_frequency":60,"recovery_max_tries":5}'

# assert_config NAME JSON: the last body is exactly the configuration JSON (same keys, same values, same types).
assert_config() {
    assert_jq "$1" ". == $2"
}

# assert_unchanged NAME JSON: a fresh GET still shows JSON.
assert_unchanged() {
    req GET /v1/ocsp
    assert_config "$1: configuration unchanged" "$2"
}

make_users admin
start_agent --users "$USERS_FILE" || bail "the agent does not start"

# --- defaults
req GET /v1/ocsp
assert_status "GET /v1/ocsp" 200
assert_match "GET /v1/ocsp: Content-Type application/json" '^application/json' "$(header_value Content-Type)"
assert_json "GET /v1/ocsp: exactly the six keys" '[keys[]] | join(",")' \
    "ocsp_functionality,query_frequency,recovery_frequency,recovery_max_tries,responder_url,response_timeout"
assert_json "default ocsp_functionality" '.ocsp_functionality' false
assert_json "default responder_url without --cert" '.responder_url' ""
assert_json "default query_frequency" '.query_frequency' 3600
assert_json "default response_timeout" '.response_timeout' 1
assert_json "default recovery_frequency" '.recovery_frequency' 60
assert_json "default recovery_max_tries" '.recovery_max_tries' 5
assert_jq "defaults have integer and boolean types" \
    '(.ocsp_functionality | type) == "boolean" and ([.query_frequency, .response_timeout, .recovery_frequency,
      .recovery_max_tries] | map(type == "number" and . == floor) | all) and (.responder_url | type) == "string"'

# --- partial updates
put_json /v1/ocsp '{"query_frequency": 120}'
assert_status "PUT query_frequency=120" 200
assert_match "PUT: Content-Type application/json" '^application/json' "$(header_value Content-Type)"
cur=$(jq -c '.query_frequency = 120' <<<"$DEFAULTS")
assert_config "PUT answers the whole updated object" "$cur"
req GET /v1/ocsp
assert_config "GET after PUT shows query_frequency 120, the rest unchanged" "$cur"

put_json /v1/ocsp '{"response_timeout": 5, "recovery_max_tries": 10}'
assert_status "PUT two keys" 200
cur=$(jq -c '.response_timeout = 5 | .recovery_max_tries = 10' <<<"$cur")
assert_config "PUT two keys keeps the earlier query_frequency" "$cur"

put_json /v1/ocsp '{}'
assert_status "PUT {} (nothing to change)" 200
assert_config "PUT {} answers the unchanged object" "$cur"

# GET-modify-PUT: the whole object, responder_url included with its current value, is accepted.
req GET /v1/ocsp
body=$(jq -c '.recovery_frequency = 300' <<<"$BODY")
put_json /v1/ocsp "$body"
assert_status "GET-modify-PUT with responder_url unchanged" 200
cur=$(jq -c '.recovery_frequency = 300' <<<"$cur")
assert_config "GET-modify-PUT applied" "$cur"

# Range limits are inclusive.
for kv in query_frequency:60 query_frequency:86400 response_timeout:1 response_timeout:60 \
    recovery_frequency:60 recovery_frequency:86400 recovery_max_tries:1 recovery_max_tries:100; do
    k=${kv%%:*} v=${kv#*:}
    put_json /v1/ocsp "{\"$k\": $v}"
    assert_status "PUT $k=$v (limit, accepted)" 200
    assert_json "PUT $k=$v applied" ".$k" "$v"
done
# Back to a known state for the rejection cases.
put_json /v1/ocsp '{"query_frequency": 120, "response_timeout": 5, "recovery_frequency": 300, "recovery_max_tries": 10}'
assert_status "PUT four keys" 200
assert_config "PUT four keys applied" "$cur"

# --- invalid_schema: each leaves the configuration as it was
invalid_bodies=(
    # wrong types
    '{"query_frequency": "120"}'
    '{"query_frequency": 120.5}'
    '{"query_frequency": 120.0}'
    '{"query_frequency": true}'
    '{"query_frequency": null}'
    '{"query_frequency": [120]}'
    '{"response_timeout": {"s": 5}}'
    '{"recovery_max_tries": "5"}'
    '{"recovery_frequency": 1e2}'
    '{"ocsp_functionality": 1}'
    '{"ocsp_functionality": "true"}'
    '{"ocsp_functionality": null}'
    '{"responder_url": 5}'
    '{"responder_url": null}'
    # ranges
    '{"query_frequency": 59}'
    '{"query_frequency": 86401}'
    '{"query_frequency": -1}'
    '{"query_frequency": 0}'
    '{"query_frequency": 99999999999999999999}'
    '{"response_timeout": 0}'
    '{"response_timeout": 61}'
    '{"recovery_frequency": 59}'
    '{"recovery_frequency": 86401}'
    '{"recovery_max_tries": 0}'
    '{"recovery_max_tries": 101}'
    # unknown keys (names are case-sensitive), also next to a valid key: nothing is applied
    '{"foo": 1}'
    '{"Query_frequency": 120}'
    '{"query_frequency": 900, "foo": 1}'
    '{"query_frequency": 900, "response_timeout": 0}'
    # not one object
    '[]'
    '[{"query_frequency": 900}]'
    '"query_frequency"'
    '42'
    'null'
    'true'
    # malformed JSON
    '{'
    '{"query_frequency": }'
    '{"query_frequency": 900,}'
    "{'query_frequency': 900}"
    '{} {}'
    '{"query_frequency": 900} x'
    '{"query_frequency": 900, "query_frequency": 1000}'
    # responder_url is read-only: only its current value ("") may be sent
    '{"responder_url": "http://ocsp.example.com/"}'
    '{"responder_url": " "}'
)
for body in "${invalid_bodies[@]}"; do
    put_json /v1/ocsp "$body"
    assert_error "PUT $body" 400 invalid_schema
done
assert_unchanged "after every invalid_schema" "$cur"

put_json /v1/ocsp ''
assert_error "PUT with an empty body" 400 invalid_schema
printf '{"query_frequency": 900}\0' >"$T_DIR/nul.json"
req PUT /v1/ocsp -H 'Content-Type: application/json' --data-binary @"$T_DIR/nul.json"
assert_error "PUT with a NUL byte after the object" 400 invalid_schema
put_json /v1/ocsp $'{"responder_url": "\xff"}'
assert_error "PUT with invalid UTF-8" 400 invalid_schema
req PUT /v1/ocsp -H 'Content-Type: text/plain' --data-binary '{"query_frequency": 900}'
assert_error "PUT declared as text/plain" 415 unsupported_media_type
assert_unchanged "after the malformed bodies" "$cur"

# --- no_responder_url: without --cert there is nothing to query
put_json /v1/ocsp '{"ocsp_functionality": true}'
assert_error "enable OCSP without a responder URL" 400 no_responder_url
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 900}'
assert_error "enable OCSP without a responder URL, with another key" 400 no_responder_url
assert_unchanged "after no_responder_url" "$cur"
put_json /v1/ocsp '{"ocsp_functionality": false}'
assert_status "disabling without a responder URL is fine" 200

# --- routing errors
req GET /v1/nothing
assert_error "GET /v1/nothing" 404 not_found
req GET /
assert_error "GET /" 404 not_found
req GET /v1/ocsp/status/extra
assert_error "GET /v1/ocsp/status/extra" 404 not_found
for mp in "DELETE /v1/ocsp" "POST /v1/ocsp" "PATCH /v1/ocsp"; do
    req "${mp% *}" "${mp#* }"
    assert_error "$mp" 405 method_not_allowed
    allow=$(header_value Allow)
    assert_match "$mp: Allow names GET and PUT" '(^|[ ,])GET([ ,]|$)' "$allow"
    assert_match "$mp: Allow names PUT" '(^|[ ,])PUT([ ,]|$)' "$allow"
done
req PUT /v1/ocsp/status -H 'Content-Type: application/json' --data-binary '{}'
assert_error "PUT /v1/ocsp/status" 405 method_not_allowed
assert_eq "PUT /v1/ocsp/status: Allow: GET, HEAD" "GET, HEAD" "$(header_value Allow)"
req GET /v1/ocsp/test
assert_error "GET /v1/ocsp/test" 405 method_not_allowed
assert_eq "GET /v1/ocsp/test: Allow: POST" POST "$(header_value Allow)"

# --- a body over the limit
big=$(head -c $((70 * 1024)) /dev/zero | tr '\0' 'a')
printf '{"foo":"%s"}' "$big" >"$T_DIR/big.json"
req PUT /v1/ocsp -H 'Content-Type: application/json' -H 'Expect:' --data-binary @"$T_DIR/big.json"
assert_error "PUT with a 70 KiB body" 413 request_body_too_large
req GET /v1/ocsp
assert_status "the agent still answers after 413" 200
assert_config "after 413: configuration unchanged" "$cur"
stop_agent

# --- the log line of an accepted change
start_agent --users "$USERS_FILE" || bail "the agent does not restart"
put_json /v1/ocsp '{"query_frequency": 1800, "recovery_max_tries": 7}'
assert_status "PUT for the log check" 200
put_json /v1/ocsp '{"query_frequency": 59}'
assert_status "rejected PUT for the log check" 400
REQ_USER=admin REQ_PASS=wrong-password req GET /v1/ocsp
assert_status "a failed login for the log check" 401
if wait_log 'config_changed'; then pass "an accepted PUT logs config_changed"; else
    fail "an accepted PUT logs config_changed" "$(cat "$AGENT_LOG")"; fi
line=$(grep -m1 'config_changed' "$AGENT_LOG")
assert_match "config_changed names the user" 'user="?admin@example\.com' "$line"
assert_match "config_changed names exactly the changed keys" 'keys="?query_frequency,recovery_max_tries"?( |$)' "$line"
stop_agent
assert_file_lacks "the log never holds the admin password" "$AGENT_LOG" "${USER_PASS[admin]}"
assert_file_lacks "the log never holds a wrong password" "$AGENT_LOG" "wrong-password"
assert_file_lacks "the log never holds the credentials in base64" "$AGENT_LOG" \
    "$(printf '%s' "admin@example.com:${USER_PASS[admin]}" | base64 -w0)"
assert_no_match "the log never names the Authorization header" '[Aa]uthorization' "$(cat "$AGENT_LOG")"

# The same in JSON format: one object per line, with user and keys.
start_agent --users "$USERS_FILE" --log-format json || bail "the agent does not start with --log-format json"
put_json /v1/ocsp '{"response_timeout": 9}'
assert_status "PUT for the JSON log check" 200
wait_log 'config_changed' || true
stop_agent
assert_eq "every JSON log line parses" "" "$(jq -c . "$AGENT_LOG" >/dev/null 2>&1 || echo "not JSON lines")"
line=$(grep -m1 'config_changed' "$AGENT_LOG")
assert_json "JSON config_changed: user" '.user' admin@example.com "$line"
assert_json "JSON config_changed: keys" '.keys' response_timeout "$line"

# --- with a certificate: responder_url from its AIA, and enabling works (the responder may be down)
make_resp_pki
url=$RESP_URL
rm -rf "$T_DIR/data"
start_agent --users "$USERS_FILE" --cert "$T_DIR/pki/proxy-chain.pem" || bail "the agent does not start with --cert"
req GET /v1/ocsp
assert_status "GET with --cert" 200
assert_json "responder_url is the certificate's OCSP URI" .responder_url "$url"
assert_json "OCSP still disabled" .ocsp_functionality false
put_json /v1/ocsp "{\"responder_url\": \"${url}other\"}"
assert_error "PUT with another responder_url" 400 invalid_schema
put_json /v1/ocsp '{"responder_url": ""}'
assert_error "PUT clearing responder_url" 400 invalid_schema
put_json /v1/ocsp "{\"responder_url\": \"$url\", \"ocsp_functionality\": true}"
assert_status "enable OCSP, sending the current responder_url" 200
assert_json "enabled" .ocsp_functionality true
assert_json "responder_url kept" .responder_url "$url"
req GET /v1/ocsp
assert_json "GET shows OCSP enabled" .ocsp_functionality true
put_json /v1/ocsp '{"ocsp_functionality": false}'
assert_status "disable OCSP" 200
assert_json "disabled" .ocsp_functionality false
stop_agent

# --responder-url overrides the certificate's URL, and is read-only through the API as well.
start_agent --users "$USERS_FILE" --cert "$T_DIR/pki/proxy-chain.pem" \
    --responder-url "${url}override" || bail "the agent does not start with --responder-url"
req GET /v1/ocsp
assert_json "--responder-url wins over the certificate" .responder_url "${url}override"
put_json /v1/ocsp "{\"responder_url\": \"$url\"}"
assert_error "PUT the certificate's URL over the override" 400 invalid_schema
stop_agent
