#!/usr/bin/env bash
# Fault injection: the real agent against oa-fault-responder (tests/support/fault_responder.c), a responder of our
# own that answers in whatever broken way its current mode says.
#
#   1. POST /v1/ocsp/test once per fault: the exact HTTP status and error_code, that the agent asked exactly once,
#      and that it gave up within its response_timeout where the responder stalls or floods.
#   2. A responder name that does not resolve.
#   3. The schedule: valid GOOD with a staple file, a failing responder (recovering, the staple kept, then
#      invalidated and removed), REVOKED, and GOOD again.
#
# The last lines say how many distinct faults were asserted, then "N passed, M failed".
# Under ASan the agent's leak check at exit takes seconds on a loaded machine once its thread pool has run a KDF.
OA_STOP_TIMEOUT=${OA_STOP_TIMEOUT:-30}
source "$(dirname "$0")/lib.sh"

if [ -z "${OA_FAULT_RESPONDER:-}" ]; then
    OA_FAULT_RESPONDER=$(dirname "$OA_AGENT_BIN")/tests/oa-fault-responder
fi
[ -x "$OA_FAULT_RESPONDER" ] || bail "the fault responder is built" "not executable: $OA_FAULT_RESPONDER"
command -v openssl >/dev/null || bail "the openssl command is installed"

# The faults asserted so far, each counted once however many assertions it took (the "good" baseline is not a
# fault), and the schedule's scenarios, counted apart.
declare -A FAULTS=() SCENARIOS=()
fault_seen() { [ "$1" == good ] || FAULTS[$1]=1; }
scenario_seen() { SCENARIOS[$1]=1; }
# Printed just before the harness's summary line; the suite's exit status is passed on to it.
trap 'rc=$?; echo "distinct faults asserted: ${#FAULTS[@]}, schedule scenarios: ${#SCENARIOS[@]}"; (exit $rc); t_finish' EXIT

# ---------------------------------------------------------------------------------------------------------------
# The responder

RESP_PID=
RESP_PORT=
RESP_URL=
RESP_DIR=
RESP_LOG=
RESP_RUNS=0

# start_fault_responder DIR [ARGS...]: starts the responder on a free port with its PKI in DIR and waits for its
# "ready" line. Sets RESP_PID, RESP_PORT, RESP_URL (the OCSP URI in DIR/leaf.pem), RESP_DIR and RESP_LOG.
start_fault_responder() {
    local dir=$1 out i
    shift
    RESP_RUNS=$((RESP_RUNS + 1))
    RESP_DIR=$dir
    RESP_PORT=$(free_port) || bail "no free loopback port for the responder"
    RESP_LOG="$T_DIR/responder-$RESP_RUNS.log"
    out="$T_DIR/responder-$RESP_RUNS.out"
    "$OA_FAULT_RESPONDER" --dir "$dir" --port "$RESP_PORT" "$@" </dev/null >"$out" 2>"$RESP_LOG" &
    RESP_PID=$!
    T_PIDS+=("$RESP_PID")
    for i in $(seq 1 200); do
        grep -q "^ready port=$RESP_PORT\$" "$out" 2>/dev/null && break
        proc_alive "$RESP_PID" || bail "the fault responder starts" "$(cat "$RESP_LOG")"
        sleep 0.05
    done
    grep -q "^ready port=$RESP_PORT\$" "$out" || bail "the fault responder is ready within 10 s" "$(cat "$RESP_LOG")"
    RESP_URL="http://127.0.0.1:$RESP_PORT/"
}

# stop_fault_responder: SIGTERM, and the responder exits 0.
stop_fault_responder() {
    local rc
    kill -TERM "$RESP_PID" 2>/dev/null
    if wait_exit "$RESP_PID" 5; then
        wait "$RESP_PID"
        rc=$?
    else
        kill -KILL "$RESP_PID" 2>/dev/null
        wait "$RESP_PID" 2>/dev/null
        rc=killed
    fi
    forget_pid "$RESP_PID"
    assert_eq "the fault responder exits 0 on SIGTERM" 0 "$rc"
}

# control PATH: one control request to the responder; prints the body.
control() {
    curl -sS --max-time 5 "http://127.0.0.1:$RESP_PORT/_control/$1" 2>&1
}

set_mode() {
    local got
    got=$(control "mode?name=$1")
    [ "$got" == ok ] || fail "the responder switches to mode $1" "answer: $got"
}

# OCSP requests the responder has received so far.
resp_requests() {
    control stats | jq -r '.requests' 2>/dev/null || echo "?"
}

# ---------------------------------------------------------------------------------------------------------------
# Helpers on the agent

ELAPSED_MS=0
# ocsp_test: POST /v1/ocsp/test as admin; sets STATUS, BODY and ELAPSED_MS.
ocsp_test() {
    local t0 t1
    t0=${EPOCHREALTIME/./}
    req POST /v1/ocsp/test
    t1=${EPOCHREALTIME/./}
    ELAPSED_MS=$(((t1 - t0) / 1000))
}

# assert_elapsed_below NAME MS: the last ocsp_test took less than MS milliseconds.
assert_elapsed_below() {
    if [ "$ELAPSED_MS" -lt "$2" ]; then pass "$1"; else fail "$1" "took ${ELAPSED_MS} ms, limit $2 ms"; fi
}

RFC1123='^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT$'

# check_fault NAME MODE STATUS ERROR_CODE [TIME_LIMIT_MS]: in MODE, a test answers STATUS with ERROR_CODE (an ERE
# when it holds a '|'), after exactly one request to the responder, within TIME_LIMIT_MS (default 3000).
check_fault() {
    local name=$1 mode=$2 status=$3 code=$4 limit=${5:-3000} before after
    fault_seen "$name"
    set_mode "$mode"
    before=$(resp_requests)
    ocsp_test
    after=$(resp_requests)
    if [[ $code == *'|'* ]]; then
        assert_status "$name: HTTP $status" "$status"
        assert_jq "$name: error_code is one of $code" \
            ".error_code | test(\"^($code)\$\")"
        assert_jq "$name: description and message are the same sentence" \
            '(.description | type == "string" and length > 0) and .message == .description'
    else
        assert_error "$name" "$status" "$code"
    fi
    assert_eq "$name: the agent asked the responder exactly once" 1 "$((after - before))"
    assert_elapsed_below "$name: the test answers within ${limit} ms" "$limit"
}

# check_valid NAME MODE CERT_STATUS: in MODE, a test answers 200 with CERT_STATUS and well-formed times.
check_valid() {
    local name=$1 mode=$2 cs=$3 before after
    fault_seen "$name"
    set_mode "$mode"
    before=$(resp_requests)
    ocsp_test
    after=$(resp_requests)
    assert_status "$name: HTTP 200" 200
    assert_json "$name: cert_status $cs" .cert_status "$cs"
    assert_json "$name: responder_url is the responder" .responder_url "$RESP_URL"
    assert_match "$name: this_update is RFC 1123" "$RFC1123" "$(jq -r .this_update <<<"$BODY" 2>/dev/null)"
    assert_match "$name: produced_at is RFC 1123" "$RFC1123" "$(jq -r .produced_at <<<"$BODY" 2>/dev/null)"
    assert_eq "$name: the agent asked the responder exactly once" 1 "$((after - before))"
}

# ---------------------------------------------------------------------------------------------------------------
# 1. One test per fault

# Only the admin user: every request here is an admin's, and each hash costs a slow KDF.
make_admin_user() {
    local hash
    USER_PASS[admin]="Pw-admin-$RANDOM$RANDOM"
    hash=$(printf '%s\n' "${USER_PASS[admin]}" | hash_password 2>"$T_DIR/passwd.err") ||
        bail "ocsp-agent passwd works" "$(cat "$T_DIR/passwd.err")"
    jq -n --arg p "$hash" '{users: [{name: "admin@example.com", role: "admin", password: $p}]}' >"$USERS_FILE" ||
        bail "cannot write $USERS_FILE"
}

make_admin_user
PKI1=$T_DIR/pki1
start_fault_responder "$PKI1"
start_agent --users "$USERS_FILE" --cert "$PKI1/leaf-chain.pem" --data-dir "$T_DIR/data1" --time-scale 0.01 ||
    bail "the agent starts with the responder's certificate"

req GET /v1/ocsp
assert_json "the agent reads the responder URL from the certificate" .responder_url "$RESP_URL"
put_json /v1/ocsp '{"response_timeout": 1}'
assert_status "PUT response_timeout 1" 200
assert_json "OCSP stays disabled: only explicit tests query" .ocsp_functionality false

# Valid answers.
check_valid "good" good GOOD
assert_json "good: next_update is present" '.next_update | test("GMT$")' true
check_valid "unknown" unknown UNKNOWN
check_valid "revoked" revoked REVOKED
assert_match "revoked: revocation_time is RFC 1123" "$RFC1123" "$(jq -r .revocation_time <<<"$BODY" 2>/dev/null)"
revoked_at=$(jq -r .revocation_time <<<"$BODY" 2>/dev/null)
revoked_epoch=$(date -d "$revoked_at" +%s 2>/dev/null || echo 0)
# The responder says "revoked a day ago"; allow for a slow start.
assert_jq "revoked: revocation_time is about a day ago" \
    "($(date +%s) - $revoked_epoch) as \$d | \$d > 86000 and \$d < 87000" '{}'
check_valid "delegated responder with the OCSP-signing EKU" delegated GOOD
check_valid "no nextUpdate (accepted)" no_next_update GOOD
assert_jq "no nextUpdate: the status has no next_update" 'has("next_update") | not'
check_valid "no nonce in the answer (accepted)" no_nonce GOOD

# Transport.
check_fault "hang: no answer" hang 504 ocsp_responder_timeout 3000
assert_jq "hang: the agent waited about response_timeout (>= 900 ms)" "$ELAPSED_MS >= 900" '{}'
check_fault "slow: one byte every 300 ms" slow 504 ocsp_responder_timeout 3000
assert_jq "slow: the agent waited about response_timeout (>= 900 ms)" "$ELAPSED_MS >= 900" '{}'
check_fault "close in the middle of the body" close_mid 502 ocsp_responder_bad_http
check_fault "TCP reset after the request" reset 502 'ocsp_responder_bad_http|ocsp_responder_connection_failed'
check_fault "HTTP 500" http500 502 ocsp_responder_http_status
check_fault "HTTP 404" http404 502 ocsp_responder_http_status
check_fault "HTTP 302 redirect (not followed)" redirect 502 ocsp_responder_http_status
assert_match "HTTP 302: the message names the status" '302' "$(jq -r .message <<<"$BODY" 2>/dev/null)"
check_fault "Content-Type text/html" wrong_ctype 502 ocsp_responder_content_type
check_fault "Content-Length 100 MB" huge 502 ocsp_response_too_large 2000
check_fault "endless chunked body" huge_chunked 502 ocsp_response_too_large 2000

# Encoding.
check_fault "random bytes" garbage 502 ocsp_response_malformed
check_fault "DER cut in half" truncated 502 ocsp_response_malformed
check_fault "DER plus trailing bytes" trailing 502 ocsp_response_malformed

# OCSP response statuses: the message names the status.
for st in trylater:'try ?later' internalerror:'internal ?error' unauthorized:'unauthorized' \
    malformedrequest:'malformed ?request' sigrequired:'sig(nature)? ?required'; do
    mode=${st%%:*}
    check_fault "response status $mode" "$mode" 502 ocsp_response_unsuccessful
    assert_jq "response status $mode: the message names it" ".message | test(\"${st#*:}\"; \"i\")"
done

# Trust.
check_fault "signed by an unrelated CA" unrelated_ca 502 ocsp_response_signature_invalid
check_fault "delegated signer without the OCSP-signing EKU" noeku 502 ocsp_response_signature_invalid
check_fault "CertID for another serial" other_serial 502 ocsp_response_certid_mismatch

# Time.
check_fault "nextUpdate an hour ago" expired 502 ocsp_response_expired
check_fault "thisUpdate an hour ahead" future 502 ocsp_response_not_yet_valid

# Nonce.
check_fault "a nonce that is not ours" wrong_nonce 502 ocsp_response_nonce_mismatch

# None of these tests touched the cache: OCSP is disabled, so not even the valid answers were kept.
req GET /v1/ocsp/status
assert_json "after the tests: state still disabled" .state disabled
assert_json "after the tests: cert_status UNKNOWN" .cert_status UNKNOWN
assert_eq "after the tests: no staple file" absent "$([ -e "$T_DIR/data1/ocsp.der" ] && echo present || echo absent)"

# Refused: nothing listens any more.
stop_fault_responder
fault_seen "connection refused"
ocsp_test
assert_error "connection refused" 502 ocsp_responder_connection_failed
assert_elapsed_below "connection refused: the test answers within 2000 ms" 2000
assert_eq "the agent survived every fault" alive "$(proc_alive "$AGENT_PID" && echo alive || echo dead)"
stop_agent

# ---------------------------------------------------------------------------------------------------------------
# 2. A responder name that does not resolve

fault_seen "DNS name does not resolve"
start_agent --users "$USERS_FILE" --cert "$PKI1/leaf-chain.pem" --responder-url http://nonexistent.invalid/ \
    --data-dir "$T_DIR/data2" || bail "the agent starts with --responder-url"
req GET /v1/ocsp
assert_json "--responder-url overrides the certificate's URL" .responder_url "http://nonexistent.invalid/"
put_json /v1/ocsp '{"response_timeout": 3}'
ocsp_test
assert_error "DNS name does not resolve" 502 ocsp_responder_dns_failed
assert_elapsed_below "DNS name does not resolve: the test answers within 5000 ms" 5000
stop_agent

# ---------------------------------------------------------------------------------------------------------------
# 3. The schedule: valid, recovering, invalidated, revoked, good again

PKI3=$T_DIR/pki3
DATA3=$T_DIR/data3
STAPLE=$DATA3/ocsp.der
start_fault_responder "$PKI3"
start_agent --users "$USERS_FILE" --cert "$PKI3/leaf-chain.pem" --data-dir "$DATA3" --time-scale 0.01 ||
    bail "the agent starts for the schedule"

# query_frequency and recovery_frequency 60 become 0.6 s at --time-scale 0.01.
# Five retries keep the agent recovering for about 3 s, so the checks made while it recovers (two failures seen,
# the staple untouched) have a window of seconds, not one 0.6 s period, on a loaded machine.
put_json /v1/ocsp '{"ocsp_functionality": true, "recovery_max_tries": 5, "query_frequency": 60,
                    "recovery_frequency": 60}'
assert_status "enable OCSP with recovery_max_tries 5" 200
assert_wait_status "schedule: the first query makes the status valid and GOOD" \
    '.state == "valid" and .cert_status == "GOOD"'
assert_json "schedule: responder_url in the status" .responder_url "$RESP_URL"

# staple_text FILE: what openssl makes of a staple, verified against the test CA.
staple_text() {
    openssl ocsp -respin "$1" -issuer "$PKI3/ca.pem" -CAfile "$PKI3/ca.pem" -resp_text 2>&1
}
if [ -s "$STAPLE" ]; then pass "schedule: $STAPLE exists"; else fail "schedule: $STAPLE exists"; fi
text=$(staple_text "$STAPLE")
assert_match "schedule: the staple verifies against the CA" 'Response verify OK' "$text"
assert_match "schedule: the staple says good" 'Cert Status: good' "$text"

# A failing responder: recovering, the staple kept, then invalidated.
scenario_seen "failing responder: recovery, then invalidation"
set_mode garbage
assert_wait_status "schedule: a failed query starts recovery" '.state == "recovering"'
assert_json "recovering: the last valid answer is still served" .cert_status GOOD
assert_json "recovering: last_error_code names the failure" .last_error_code ocsp_response_malformed
assert_jq "recovering: consecutive_failures counts (>= 1)" '.consecutive_failures >= 1'
# Every answer from now on is garbage, so this copy is the last valid staple.
cp "$STAPLE" "$T_DIR/staple.before" 2>/dev/null
assert_match "recovering: the kept staple still verifies as good" 'Cert Status: good' \
    "$(staple_text "$T_DIR/staple.before")"
max_failures=0
saw_two=no
deadline=$((SECONDS + 15))
while [ $SECONDS -lt $deadline ]; do
    req GET /v1/ocsp/status
    n=$(jq -r '.consecutive_failures // 0' <<<"$BODY" 2>/dev/null)
    state=$(jq -r .state <<<"$BODY" 2>/dev/null)
    [ "$n" -gt "$max_failures" ] 2>/dev/null && max_failures=$n
    if [ "$state" == recovering ] && [ "$n" -ge 2 ] 2>/dev/null && [ "$n" -le 4 ] && [ $saw_two == no ]; then
        saw_two=yes
        if cmp -s "$STAPLE" "$T_DIR/staple.before"; then
            pass "recovering after 2 failures: the staple file is unchanged (not replaced by bad bytes)"
        else
            fail "recovering after 2 failures: the staple file is unchanged (not replaced by bad bytes)" \
                "$(ls -la "$DATA3")"
        fi
    fi
    [ "$state" == invalidated ] && break
    sleep 0.1
done
assert_json "schedule: invalidated after the retries" .state invalidated
assert_jq "invalidated: only after the first failure and all five retries (consecutive_failures >= 6)" \
    '.consecutive_failures >= 6'
assert_json "invalidated: cert_status UNKNOWN" .cert_status UNKNOWN
assert_eq "consecutive_failures was seen counting up while recovering" yes "$saw_two"
assert_eq "invalidated: the staple file is removed" absent "$([ -e "$STAPLE" ] && echo present || echo absent)"
if wait_log 'event="?ocsp_query_failed' 3; then pass "invalidated: the log has event=ocsp_query_failed"; else
    fail "invalidated: the log has event=ocsp_query_failed" "$(tail -n 5 "$AGENT_LOG")"; fi

# Revoked.
scenario_seen "revoked, then good again"
set_mode revoked
assert_wait_status "schedule: a REVOKED answer makes the status valid and REVOKED" \
    '.state == "valid" and .cert_status == "REVOKED"'
assert_match "schedule revoked: revocation_time is RFC 1123" "$RFC1123" \
    "$(jq -r .revocation_time <<<"$BODY" 2>/dev/null)"
assert_match "schedule revoked: the staple says revoked" 'Cert Status: revoked' "$(staple_text "$STAPLE")"
if wait_log 'event="?ocsp_status_revoked' 3; then pass "revoked: the log has event=ocsp_status_revoked"; else
    fail "revoked: the log has event=ocsp_status_revoked" "$(tail -n 5 "$AGENT_LOG")"; fi

# Good again.
set_mode good
assert_wait_status "schedule: GOOD again" '.state == "valid" and .cert_status == "GOOD"'
assert_jq "GOOD again: no revocation_time" 'has("revocation_time") | not'
assert_match "GOOD again: the staple says good" 'Cert Status: good' "$(staple_text "$STAPLE")"

# A verified UNKNOWN on the schedule: recovery, with the last GOOD kept and the staple untouched.
scenario_seen "scheduled UNKNOWN: recovery, then good again"
set_mode unknown
assert_wait_status "schedule: an UNKNOWN answer starts recovery" '.state == "recovering"'
# The copy is taken once recovery has begun (a GOOD answer before the switch could still have replaced the staple),
# then compared after one more UNKNOWN answer has landed.
cp "$STAPLE" "$T_DIR/staple.good"
n_unknown=$(jq -r .consecutive_failures <<<"$BODY")
assert_wait_status "scheduled UNKNOWN: another UNKNOWN answer lands while recovering" \
    ".state == \"recovering\" and .consecutive_failures > $n_unknown"
assert_json "scheduled UNKNOWN: last_error_code" .last_error_code cert_status_unknown
assert_json "scheduled UNKNOWN: the last GOOD is still served" .cert_status GOOD
if cmp -s "$STAPLE" "$T_DIR/staple.good"; then pass "scheduled UNKNOWN: the staple is not replaced"; else
    fail "scheduled UNKNOWN: the staple is not replaced"; fi
assert_match "scheduled UNKNOWN: the kept staple still says good" 'Cert Status: good' "$(staple_text "$STAPLE")"
set_mode good
assert_wait_status "scheduled UNKNOWN: a GOOD answer ends the recovery" \
    '.state == "valid" and .cert_status == "GOOD" and .consecutive_failures == 0'

stop_agent
stop_fault_responder
