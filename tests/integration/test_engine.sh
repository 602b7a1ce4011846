#!/usr/bin/env bash
# The querying engine against a real `openssl ocsp` responder: a GOOD answer and its staple, the schedule's pace
# under --time-scale, the midpoint rule, REVOKED and back, a stopped responder (explicit test, then recovery and
# invalidation), disabling, and an explicit test while disabled.
#
# The responder is the openssl command line. It serves one connection at a time and stalls on a connection that
# closes without a request, so its readiness is read from `ss -ltn`, never probed with a connect. It reads a changed
# index.txt one request late, so it is restarted after every revoke and unrevoke.
#
# Timing is checked with generous bounds (the machine is shared): counts over a window, and intervals computed from
# the agent's own log timestamps (completion time minus duration_ms = start of the attempt).
# Under ASan on a loaded machine, a fresh agent's first request pays the password KDF (over 6 s measured) and its
# exit after SIGTERM includes LeakSanitizer's scan of the heap that KDF churned (seconds): this suite allows more
# than the harness's default 10 s for both.
OA_STOP_TIMEOUT=${OA_STOP_TIMEOUT:-30}
OA_CURL_TIMEOUT=${OA_CURL_TIMEOUT:-30}
source "$(dirname "$0")/lib.sh"

make_resp_pki '' # RESP_URL without a path: the suite compares it with what the agent serves
make_users admin

# ---------------------------------------------------------------------------------------------------------------
# Log and staple helpers (wait_status, and the openssl responder's ossl_start/ossl_stop, are in lib.sh)

log_mark() { grep -c '' "$AGENT_LOG"; }                 # lines in the agent log so far
log_since() { tail -n +"$(($1 + 1))" "$AGENT_LOG"; }    # the lines after mark $1
queries_since() { log_since "$1" | grep -E ' event=ocsp_query( |$)' | grep -E -- "${2:-.}"; }
count_since() { log_since "$1" | grep -cE -- "$2"; }    # MARK ERE

# wait_since MARK ERE [TIMEOUT]: 0 once a log line after MARK matches ERE (default 10 s).
wait_since() {
    local deadline=$((SECONDS + ${3:-10}))
    until [ "$(count_since "$1" "$2")" -gt 0 ]; do
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

# field LINE KEY: the value of KEY in a text log line (quoted or bare).
field() { printf '%s\n' "$1" | sed -nE "s/(^|.* )$2=(\"([^\"]*)\"|([^ \"]*)).*/\3\4/p"; }

# attempt_starts: for each ocsp_query line on stdin, the attempt's start in epoch milliseconds.
attempt_starts() {
    local line ts d
    while IFS= read -r line; do
        ts=$(field "$line" ts)
        d=$(field "$line" duration_ms)
        echo $(($(date -u -d "$ts" +%s%3N) - ${d:-0}))
    done
}

# schedule_started_since MS: 0 when the last scheduled attempt logged started at or after epoch ms MS.
schedule_started_since() {
    local last
    last=$(queries_since 0 'trigger=schedule' | tail -n 1)
    [ -n "$last" ] && [ "$(attempt_starts <<<"$last")" -ge "$1" ]
}

# assert_intervals NAME MIN_MS MAX_MS: the gaps between consecutive start times on stdin lie in [MIN, MAX].
assert_intervals() {
    local name=$1 lo=$2 hi=$3 gaps
    gaps=$(awk 'NR > 1 { printf "%d ", $1 - prev } { prev = $1 }')
    if [ -z "$gaps" ]; then
        fail "$name" "fewer than two attempts to compare"
    elif awk -v lo="$lo" -v hi="$hi" '{ for (i = 1; i <= NF; i++) if ($i < lo || $i > hi) exit 1 }' <<<"$gaps"; then
        pass "$name (gaps ms: $gaps)"
    else
        fail "$name" "gaps between attempts (ms): $gaps, expected each in [$lo, $hi]"
    fi
}

RFC1123_RE='^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT$'


# assert_rfc1123 NAME VALUE: VALUE is an RFC 1123 GMT date that `date` reads back to the same text.
assert_rfc1123() {
    local e
    if [[ $2 =~ $RFC1123_RE ]] && e=$(epoch_of "$2") &&
        [ "$(date -u -d "@$e" '+%a, %d %b %Y %H:%M:%S GMT')" = "$2" ]; then
        pass "$1"
    else
        fail "$1" "not an RFC 1123 GMT date: '$2'"
    fi
}

# assert_between NAME LO HI VALUE (integers)
assert_between() {
    if [[ $4 =~ ^-?[0-9]+$ ]] && [ "$4" -ge "$2" ] && [ "$4" -le "$3" ]; then pass "$1 ($4)"; else
        fail "$1" "expected a number in [$2, $3], got '$4'"; fi
}

# assert_staple NAME FILE good|revoked: openssl verifies FILE against the CA and reads that status for serial 1001.
assert_staple() {
    local name=$1 file=$2 want=$3 text
    if [ ! -s "$file" ]; then
        fail "$name" "$file is missing or empty"
        return
    fi
    text=$(openssl ocsp -respin "$file" -issuer "$PKI/ca.pem" -CAfile "$PKI/ca.pem" -resp_text 2>&1)
    if grep -q '^Response verify OK' <<<"$text" && grep -q "Cert Status: $want\$" <<<"$text" &&
        grep -q 'Serial Number: 1001$' <<<"$text"; then
        pass "$name"
    else
        fail "$name" "openssl ocsp -respin $file: expected 'Response verify OK' and 'Cert Status: $want'" \
            "$(grep -E 'verify|Cert Status|Serial Number|rror' <<<"$text" | head -n 6)"
    fi
}

# status_field KEY: KEY of the last body ("" when absent).
status_field() { printf '%s' "$BODY" | jq -r --arg k "$1" '.[$k] // ""'; }

# ===============================================================================================================
# Agent 1, time-scale 1: GOOD, the midpoint rule, REVOKED and back.

DATA1=$T_DIR/data1
mkdir -p "$DATA1"
ossl_start 1 # nextUpdate one minute ahead: the midpoint (30 s) comes before query_frequency (3600 s)
start_agent --users "$USERS_FILE" --cert "$PKI/proxy-chain.pem" --data-dir "$DATA1" --log-level info ||
    bail "the agent does not start"

req GET /v1/ocsp/status
assert_json "before enabling: state disabled, UNKNOWN" '[.state, .cert_status] | @csv' '"disabled","UNKNOWN"'
assert_eq "before enabling: no query was made" 0 "$(count_since 0 ' event=ocsp_query ')"

put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 3600}'
assert_status "PUT enables OCSP" 200
assert_json "PUT answers the updated config" '[.ocsp_functionality, .query_frequency, .responder_url] | @csv' \
    "true,3600,\"$RESP_URL\""

# --- GOOD
assert_wait_status "enabling queries at once: state valid" '.state == "valid"'
GOOD_STATUS=$BODY
assert_json "GOOD: cert_status" .cert_status GOOD
assert_json "GOOD: responder_url from the certificate's AIA" .responder_url "$RESP_URL"
assert_jq "GOOD: no revocation_time" 'has("revocation_time") | not'
assert_json "GOOD: no failures" '[.consecutive_failures, .recovery_tries] | @csv' '0,0'
for k in produced_at this_update next_update last_attempt last_success next_query; do
    assert_rfc1123 "GOOD: $k is RFC 1123 GMT" "$(status_field $k)"
done
THIS1=$(epoch_of "$(status_field this_update)")
NEXT1=$(epoch_of "$(status_field next_update)")
assert_between "GOOD: next_update - this_update is the responder's -nmin 1 (s)" 59 61 $((NEXT1 - THIS1))
assert_between "GOOD: this_update is now (s from now)" -10 2 $((THIS1 - $(date +%s)))
assert_staple "GOOD: the staple ocsp.der verifies and says good" "$DATA1/ocsp.der" good
q=$(queries_since 0)
assert_eq "GOOD: exactly one attempt logged" 1 "$(grep -c . <<<"$q")"
assert_match "GOOD: the attempt's log line" \
    "result=ok cert_status=GOOD .*duration_ms=[0-9]+ trigger=schedule" "$q"

# --- midpoint: nextUpdate 60 s ahead and query_frequency 3600 → next query about 30 s after the attempt.
LAST=$(epoch_of "$(printf '%s' "$GOOD_STATUS" | jq -r .last_attempt)")
NQ=$(epoch_of "$(printf '%s' "$GOOD_STATUS" | jq -r .next_query)")
assert_between "midpoint: next_query - last_attempt ≈ 30 s (half of the 60 s validity)" 27 33 $((NQ - LAST))

# --- REVOKED
ossl_stop
BEFORE_REVOKE=$(date +%s)
bash "$OA_SOURCE_DIR/tests/support/make-pki.sh" revoke "$PKI" || bail "make-pki.sh revoke"
AFTER_REVOKE=$(date +%s)
ossl_start 5
MARK=$(log_mark)
req POST /v1/ocsp/test
assert_status "REVOKED: POST /v1/ocsp/test" 200
assert_json "REVOKED: the test answers REVOKED" .cert_status REVOKED
assert_rfc1123 "REVOKED: revocation_time is RFC 1123 GMT" "$(status_field revocation_time)"
REVT=$(epoch_of "$(status_field revocation_time)")
assert_between "REVOKED: revocation_time is the moment of revoking (s after)" 0 $((AFTER_REVOKE - BEFORE_REVOKE + 1)) \
    $((${REVT:-0} - BEFORE_REVOKE))
TEST_REVT=$(status_field revocation_time)
req GET /v1/ocsp/status
assert_json "REVOKED: the cache is updated (OCSP enabled)" '[.state, .cert_status] | @csv' '"valid","REVOKED"'
assert_json "REVOKED: the cache holds the same revocation_time" .revocation_time "$TEST_REVT"
assert_eq "REVOKED: one ocsp_status_revoked event" 1 "$(count_since "$MARK" ' event=ocsp_status_revoked ')"
assert_match "REVOKED: the event names the serial" 'event=ocsp_status_revoked .*serial=(0x)?1001' \
    "$(log_since "$MARK" | grep ' event=ocsp_status_revoked ')"
assert_match "REVOKED: the attempt is logged as a test" 'result=ok cert_status=REVOKED .*trigger=test' \
    "$(queries_since "$MARK")"
assert_staple "REVOKED: the staple says revoked" "$DATA1/ocsp.der" revoked

ossl_stop
bash "$OA_SOURCE_DIR/tests/support/make-pki.sh" unrevoke "$PKI" || bail "make-pki.sh unrevoke"
ossl_start 5
req POST /v1/ocsp/test
assert_status "unrevoked: POST /v1/ocsp/test" 200
assert_jq "unrevoked: GOOD without revocation_time" '.cert_status == "GOOD" and (has("revocation_time") | not)'
req GET /v1/ocsp/status
assert_json "unrevoked: the cache is GOOD again" '[.state, .cert_status] | @csv' '"valid","GOOD"'
assert_staple "unrevoked: the staple says good" "$DATA1/ocsp.der" good
assert_eq "unrevoked: still one ocsp_status_revoked event in all" 1 "$(count_since 0 ' event=ocsp_status_revoked ')"
stop_agent

# ===============================================================================================================
# Agent 2, time-scale 0.01: query_frequency 60 and recovery_frequency 60 become 0.6 s.

DATA2=$T_DIR/data2
mkdir -p "$DATA2"
start_agent --users "$USERS_FILE" --cert "$PKI/proxy-chain.pem" --data-dir "$DATA2" --log-level info \
    --time-scale 0.01 || bail "the agent does not start with --time-scale 0.01"
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60,
                    "recovery_max_tries": 3}'
assert_status "time-scale 0.01: PUT enables OCSP, 0.6 s frequencies, 3 tries" 200

# --- the schedule's pace
wait_log ' event=ocsp_query .*result=ok' 10 || fail "time-scale 0.01: a first answer" "$(tail -n 5 "$AGENT_LOG")"
# The attempts that start in a 3 s window. An attempt is logged when it ends, so the window is complete in the log
# once an attempt that started after it has been logged: that is waited for (at most 8 s), rather than counting at
# the end of the window while an attempt may be in flight.
t_win=$(now_ms)
wait_until 8 schedule_started_since $((t_win + 3000)) ||
    fail "schedule: an attempt starts after the 3 s window (within 8 s of its start)"
assert_between "schedule: attempts in 3 s at 0.6 s intervals" 3 6 \
    "$(queries_since 0 'trigger=schedule' | attempt_starts | awk -v a="$t_win" -v b=$((t_win + 3000)) \
        '$1 >= a && $1 < b' | grep -c .)"
assert_eq "schedule: every scheduled attempt succeeded" 0 "$(queries_since 0 'trigger=schedule' | grep -vc 'result=ok')"
queries_since 0 'trigger=schedule' | attempt_starts | assert_intervals "schedule: gaps within [0.5, 1.3] s (a sanitizer build under load can start one late)" 500 1300

# --- disabling stops querying; the cached GOOD stays (state disabled)
MARK=$(log_mark)
put_json /v1/ocsp '{"ocsp_functionality": false}'
assert_status "PUT disables OCSP" 200
t_disabled=$(now_ms)
# Deliberate: 2 s (over three periods of 0.6 s) pass to show that no attempt starts once OCSP is disabled. An attempt
# in flight when disabling is cancelled and logged when it ends, whenever that is: it is told apart by its start,
# before the PUT was answered.
sleep 2
assert_eq "disabled: no attempt starts in the 2 s after the PUT was answered (it was 0.6 s)" "" \
    "$(queries_since "$MARK" | attempt_starts | awk -v t="$t_disabled" '$1 >= t')"
req GET /v1/ocsp/status
assert_json "disabled: state disabled, cached GOOD kept" '[.state, .cert_status] | @csv' '"disabled","GOOD"'
assert_jq "disabled: no next_query" 'has("next_query") | not'
DISABLED_STATUS=$BODY
cp "$DATA2/ocsp.der" "$T_DIR/disabled.der" 2>/dev/null
# Disabling may have cancelled a query in flight, closing its connection, possibly before the request went out;
# openssl ocsp then stalls on that connection for about 15 s. A fresh responder keeps what follows independent of
# that race.
ossl_stop
ossl_start 5

# --- an explicit test while disabled answers, and changes nothing
MARK=$(log_mark)
req POST /v1/ocsp/test
assert_status "disabled: POST /v1/ocsp/test" 200
assert_json "disabled: the test answers GOOD" .cert_status GOOD
TEST_THIS=$(status_field this_update)
req GET /v1/ocsp/status
assert_jq "disabled: the status is unchanged by the test (except next_query)" \
    "del(.next_query) == ($DISABLED_STATUS | del(.next_query))"
assert_ne "disabled: the test's fresh this_update is not cached" "$TEST_THIS" "$(status_field this_update)"
if cmp -s "$T_DIR/disabled.der" "$DATA2/ocsp.der"; then pass "disabled: ocsp.der unchanged by the test"; else
    fail "disabled: ocsp.der unchanged by the test"; fi
assert_eq "disabled: one attempt, logged as a test" "1 1" \
    "$(queries_since "$MARK" | grep -c .) $(queries_since "$MARK" 'result=ok .*trigger=test' | grep -c .)"

# --- re-enable with a large query_frequency (3600 → 36 s): one query at once, then nothing for a while
MARK=$(log_mark)
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 3600}'
assert_status "PUT re-enables with query_frequency 3600" 200
wait_since "$MARK" ' event=ocsp_query .*result=ok' 10 || fail "re-enabled: a query at once" "$(tail -n 3 "$AGENT_LOG")"
req GET /v1/ocsp/status
assert_json "re-enabled: valid GOOD" '[.state, .cert_status] | @csv' '"valid","GOOD"'
assert_jq "re-enabled: last_attempt is the new attempt's" "(.last_attempt | length) > 0 and .last_attempt != $(printf '%s' "$DISABLED_STATUS" | jq .last_attempt)"
LAST=$(epoch_of "$(status_field last_attempt)")
NQ=$(epoch_of "$(status_field next_query)")
assert_between "re-enabled: next_query - last_attempt ≈ 36 s (3600 × 0.01)" 34 38 $((NQ - LAST))
# Deliberate: 1.5 s (two and a half of the former 0.6 s periods) pass to show that no second attempt follows.
sleep 1.5
assert_eq "re-enabled: exactly one attempt in 1.5 s" 1 "$(queries_since "$MARK" | grep -c .)"

# --- responder stopped: an explicit test fails and changes nothing
ossl_stop
req GET /v1/ocsp/status
VALID_STATUS=$BODY
cp "$DATA2/ocsp.der" "$T_DIR/valid.der"
MARK=$(log_mark)
req POST /v1/ocsp/test
assert_error "responder stopped: POST /v1/ocsp/test" 502 ocsp_responder_connection_failed
req GET /v1/ocsp/status
assert_jq "responder stopped: the failed test changes nothing in the status" \
    "del(.next_query) == ($VALID_STATUS | del(.next_query))"
assert_json "responder stopped: still valid GOOD, no failure counted" \
    '[.state, .cert_status, .consecutive_failures, has("last_error_code")] | @csv' '"valid","GOOD",0,false'
if cmp -s "$T_DIR/valid.der" "$DATA2/ocsp.der"; then pass "responder stopped: ocsp.der kept"; else
    fail "responder stopped: ocsp.der kept"; fi
assert_match "responder stopped: the test attempt is logged" \
    'result=ocsp_responder_connection_failed .*trigger=test' "$(queries_since "$MARK")"

# --- the scheduled path: recovery, then invalidation. Re-enabling queries at once, so the failing regular attempt
# starts at a known moment while query_frequency is already 36 s: every attempt seen below is from recovery.
put_json /v1/ocsp '{"ocsp_functionality": false}'
assert_status "PUT disables before the recovery run" 200
MARK=$(log_mark)
put_json /v1/ocsp '{"ocsp_functionality": true}'
assert_status "PUT enables with the responder stopped" 200
OBS=$T_DIR/recovery.obs
: >"$OBS"
deadline=$((SECONDS + 15))
while [ $SECONDS -lt $deadline ]; do
    req GET /v1/ocsp/status
    printf '%s\n' "$BODY" | jq -r '[.state, .cert_status, .consecutive_failures, .recovery_tries] | @tsv' >>"$OBS"
    [ "$(status_field state)" = invalidated ] && break
    sleep 0.05
done
FINAL=$BODY
assert_json "recovery: ends invalidated" .state invalidated "$FINAL"
assert_match "recovery: the cached GOOD is served while recovering" $'(^|\n)recovering\tGOOD\t' "$(cat "$OBS")"
assert_eq "recovery: nothing but GOOD while recovering" "" \
    "$(awk -F'\t' '$1 == "recovering" && $2 != "GOOD"' "$OBS" | sort -u)"
assert_eq "recovery: only valid, recovering, invalidated states seen" "" \
    "$(awk -F'\t' '$1 != "valid" && $1 != "recovering" && $1 != "invalidated"' "$OBS" | sort -u)"
assert_eq "recovery: consecutive_failures never decreases" "ok" \
    "$(awk -F'\t' '$3 < prev { bad = 1 } { prev = $3 } END { print bad ? "decreased" : "ok" }' "$OBS")"
assert_jq "recovery: consecutive_failures climbs while recovering (at least 2 distinct values seen)" \
    '[.[] | select(.[0] == "recovering") | .[2]] | unique | length >= 2' \
    "$(jq -R 'split("\t")' "$OBS" | jq -s '.')"
assert_json "invalidated: cert_status UNKNOWN, 4 failures, 3 retries" \
    '[.cert_status, .consecutive_failures, .recovery_tries, .recovery_max_tries] | @csv' '"UNKNOWN",4,3,3' "$FINAL"
assert_json "invalidated: last_error_code" .last_error_code ocsp_responder_connection_failed "$FINAL"
assert_jq "invalidated: no response times left" \
    '(has("this_update") or has("next_update") or has("produced_at")) | not' "$FINAL"
if [ -e "$DATA2/ocsp.der" ]; then fail "invalidated: ocsp.der removed" "$(ls -l "$DATA2")"; else
    pass "invalidated: ocsp.der removed"; fi
Q=$(queries_since "$MARK")
assert_eq "invalidated: 1 failing regular attempt + 3 retries logged" 4 "$(grep -c . <<<"$Q")"
assert_eq "invalidated: the triggers, in order" "schedule recovery recovery recovery" \
    "$(while IFS= read -r l; do field "$l" trigger; done <<<"$Q" | xargs)"
assert_eq "invalidated: retry numbers 1..3 of 3" "1/3 2/3 3/3" \
    "$(grep trigger=recovery <<<"$Q" | while IFS= read -r l; do echo "$(field "$l" attempt)/$(field "$l" max)"; done | xargs)"
assert_eq "invalidated: every attempt failed to connect" 4 \
    "$(grep -c 'result=ocsp_responder_connection_failed' <<<"$Q")"
attempt_starts <<<"$Q" | assert_intervals "recovery: retries every recovery_frequency (0.6 s; [0.5, 1.5] s)" 500 1500
assert_eq "invalidated: ocsp_query_failed logged once" 1 "$(count_since 0 ' event=ocsp_query_failed ')"
assert_match "invalidated: the alert carries the tries and the error" \
    'event=ocsp_query_failed .*recovery_tries=3 .*error_code=ocsp_responder_connection_failed' \
    "$(log_since "$MARK" | grep ' event=ocsp_query_failed ')"
LAST=$(epoch_of "$(printf '%s' "$FINAL" | jq -r .last_attempt)")
NQ=$(epoch_of "$(printf '%s' "$FINAL" | jq -r .next_query)")
assert_between "invalidated: the schedule is back at query_frequency (next_query - last_attempt ≈ 36 s)" 34 38 \
    $((NQ - LAST))
MARK=$(log_mark)
# Deliberate: 3 s (five recovery intervals of 0.6 s) pass to show that no attempt follows the invalidation.
sleep 3
assert_eq "invalidated: no attempt in 3 s (5 × recovery interval)" 0 "$(queries_since "$MARK" | grep -c .)"
assert_eq "invalidated: still one ocsp_query_failed" 1 "$(count_since 0 ' event=ocsp_query_failed ')"
req GET /v1/ocsp/status
assert_json "invalidated: stays invalidated UNKNOWN" '[.state, .cert_status] | @csv' '"invalidated","UNKNOWN"'

# --- the responder is back: an explicit test restores the status (OCSP is enabled)
ossl_start 5
req POST /v1/ocsp/test
assert_status "restored: POST /v1/ocsp/test" 200
assert_json "restored: the test answers GOOD" .cert_status GOOD
req GET /v1/ocsp/status
assert_json "restored: valid GOOD, counters reset" \
    '[.state, .cert_status, .consecutive_failures, .recovery_tries] | @csv' '"valid","GOOD",0,0'
assert_staple "restored: ocsp.der is back and says good" "$DATA2/ocsp.der" good
assert_eq "restored: no further ocsp_query_failed" 1 "$(count_since 0 ' event=ocsp_query_failed ')"
stop_agent
ossl_stop
