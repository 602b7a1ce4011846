#!/usr/bin/env bash
# The staple across restarts, with a real `openssl ocsp` responder: a valid response is re-verified and served at
# once after a restart (before any query could succeed), served while recovering only until its own nextUpdate, and
# a staple that is garbage, signed by another CA, or past its nextUpdate is discarded at start-up.
#
# The responder hands out responses valid for one minute (-nmin 1); the suite waits for that minute to pass, so it
# takes about 75 s.
# Under ASan on a loaded machine, a fresh agent's first request pays the password KDF (over 6 s measured) and its
# exit after SIGTERM includes LeakSanitizer's scan of the heap that KDF churned (seconds): this suite allows more
# than the harness's default 10 s for both.
OA_STOP_TIMEOUT=${OA_STOP_TIMEOUT:-30}
OA_CURL_TIMEOUT=${OA_CURL_TIMEOUT:-30}
source "$(dirname "$0")/lib.sh"

make_resp_pki ''
make_users admin
DATA=$T_DIR/data
mkdir -p "$DATA"
AGENT_ARGS=(--users "$USERS_FILE" --cert "$PKI/proxy-chain.pem" --log-level info)
# The later runs only read the status: without authentication their first request does not wait for the password
# KDF (seconds under sanitizers or valgrind), so "at once" after a restart really is at once.
RESTART_ARGS=(--no-auth --cert "$PKI/proxy-chain.pem" --log-level info)

# ---------------------------------------------------------------------------------------------------------------
# Local helpers (wait_status, and the openssl responder's ossl_start/ossl_stop, are in lib.sh).

status_field() { printf '%s' "$BODY" | jq -r --arg k "$1" '.[$k] // ""'; }
first_line_of() { grep -nE -- "$1" "$AGENT_LOG" | head -n 1 | cut -d: -f1; } # ERE: line number, or nothing

assert_staple_good() { # NAME FILE
    local text
    text=$(openssl ocsp -respin "$2" -issuer "$PKI/ca.pem" -CAfile "$PKI/ca.pem" -resp_text 2>&1)
    if grep -q '^Response verify OK' <<<"$text" && grep -q 'Cert Status: good$' <<<"$text"; then pass "$1"; else
        fail "$1" "$(grep -E 'verify|Cert Status|rror' <<<"$text" | head -n 4)"; fi
}

assert_absent() { # NAME FILE
    if [ -e "$2" ]; then fail "$1" "$2 still exists"; else pass "$1"; fi
}

# ===============================================================================================================
# Run 1: a valid GOOD staple is made (nextUpdate one minute ahead).

ossl_start 1
start_agent "${AGENT_ARGS[@]}" --data-dir "$DATA" || bail "the agent does not start"
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 3600}'
assert_status "PUT enables OCSP" 200
wait_status '.state == "valid"' 10 || fail "run 1: state valid" "$(short "$BODY")"
assert_json "run 1: GOOD" .cert_status GOOD
RUN1=$BODY
NEXT_UPDATE=$(epoch_of "$(status_field next_update)")
assert_staple_good "run 1: ocsp.der verifies and says good" "$DATA/ocsp.der"
cp "$DATA/ocsp.der" "$T_DIR/early.der" || bail "run 1 left no ocsp.der"
stop_agent
if cmp -s "$T_DIR/early.der" "$DATA/ocsp.der"; then pass "run 1: ocsp.der stays after a clean exit"; else
    fail "run 1: ocsp.der stays after a clean exit"; fi
ossl_stop

# ===============================================================================================================
# Run 2: restart with the responder stopped: the persisted staple is served at once.

[ "$(date +%s)" -lt $((NEXT_UPDATE - 10)) ] ||
    bail "run 1 took so long that its one-minute staple is about to expire before the restart"
start_agent "${RESTART_ARGS[@]}" --data-dir "$DATA" || bail "the agent does not restart"
req GET /v1/ocsp/status
assert_status "restart: GET /v1/ocsp/status" 200
assert_jq "restart: GOOD served at once (state valid or recovering)" \
    '.cert_status == "GOOD" and (.state == "valid" or .state == "recovering")'
assert_jq "restart: the same response as before the restart" \
    "[.produced_at, .this_update, .next_update] == ($RUN1 | [.produced_at, .this_update, .next_update])"
LOADED=$(first_line_of ' event=staple_loaded ')
FIRST_Q=$(first_line_of ' event=ocsp_query ')
assert_match "restart: the staple was re-verified and loaded" 'event=staple_loaded .*cert_status=GOOD' \
    "$(grep ' event=staple_loaded ' "$AGENT_LOG")"
if [ -n "$LOADED" ] && { [ -z "$FIRST_Q" ] || [ "$LOADED" -lt "$FIRST_Q" ]; }; then
    pass "restart: the staple is loaded before the first query"
else
    fail "restart: the staple is loaded before the first query" "staple_loaded at line ${LOADED:-none}" \
        "first ocsp_query at line ${FIRST_Q:-none}"
fi
wait_log ' event=ocsp_query .*result=ocsp_responder_connection_failed .*trigger=schedule' 10 ||
    fail "restart: the start-up query is made (and fails: the responder is stopped)" "$(tail -n 3 "$AGENT_LOG")"
wait_status '.state == "recovering"' 5
assert_json "restart: recovering, still serving GOOD" '[.state, .cert_status, .consecutive_failures] | @csv' \
    '"recovering","GOOD",1'
if cmp -s "$T_DIR/early.der" "$DATA/ocsp.der"; then pass "restart: ocsp.der kept while recovering"; else
    fail "restart: ocsp.der kept while recovering"; fi

# Still running, still recovering (the next retry is 60 s away): the response is served until its nextUpdate and
# never after.
OBS=$T_DIR/expiry.obs
: >"$OBS"
deadline=$((SECONDS + NEXT_UPDATE - $(date +%s) + 15))
while [ $SECONDS -lt $deadline ]; do
    t_before=$(date +%s%3N)
    req GET /v1/ocsp/status
    printf '%s\t%s\t%s\t%s\n' "$t_before" "$(status_field cert_status)" "$(status_field state)" \
        "$(date +%s%3N)" >>"$OBS"
    [ "$(status_field cert_status)" = GOOD ] || break
    sleep 0.2
done
assert_json "expiry while recovering: invalidated, UNKNOWN" '[.state, .cert_status] | @csv' \
    '"invalidated","UNKNOWN"'
assert_eq "expiry while recovering: GOOD never served at or after nextUpdate" "" \
    "$(awk -F'\t' -v nu="$NEXT_UPDATE" '$2 == "GOOD" && $1 >= nu * 1000' "$OBS")"
DROPPED_AT=$(awk -F'\t' '$2 != "GOOD" { print int($4 / 1000); exit }' "$OBS")
if [ -n "$DROPPED_AT" ] && [ "$DROPPED_AT" -le $((NEXT_UPDATE + 2)) ]; then
    pass "expiry while recovering: dropped within 2 s of nextUpdate ($((DROPPED_AT - NEXT_UPDATE)) s)"
else
    fail "expiry while recovering: dropped within 2 s of nextUpdate" "nextUpdate $NEXT_UPDATE, dropped at ${DROPPED_AT:-never}"
fi
assert_absent "expiry while recovering: ocsp.der removed" "$DATA/ocsp.der"
assert_match "expiry while recovering: logged" 'event=staple_expired' "$(cat "$AGENT_LOG")"
stop_agent

# ===============================================================================================================
# Runs 3-5: staples that must be discarded at start-up (the responder stays stopped, OCSP stays enabled).

# check_discarded NAME STAPLE_FILE ERE: the agent started with STAPLE_FILE as ocsp.der logs staple_discarded
# matching ERE, removes the file and serves UNKNOWN.
check_discarded() {
    local name=$1
    cp "$2" "$DATA/ocsp.der"
    start_agent "${RESTART_ARGS[@]}" --data-dir "$DATA" || { fail "$name: the agent starts"; return; }
    req GET /v1/ocsp/status
    assert_jq "$name: UNKNOWN at once, nothing cached" \
        '.cert_status == "UNKNOWN" and (.state | IN("pending", "recovering"))
         and (has("produced_at") or has("next_update") | not)'
    assert_match "$name: staple_discarded logged" "event=staple_discarded .*$3" \
        "$(grep ' event=staple_discarded ' "$AGENT_LOG")"
    assert_absent "$name: ocsp.der removed" "$DATA/ocsp.der"
    assert_eq "$name: nothing loaded" "" "$(grep ' event=staple_loaded ' "$AGENT_LOG")"
    stop_agent
}

printf 'this is not an OCSP response\n' >"$T_DIR/garbage.der"
check_discarded "garbage staple" "$T_DIR/garbage.der" 'ocsp\.der'

# A well-formed, good response for another CA's certificate: it must not verify against ours.
OTHER=$T_DIR/other
make_pki "$OTHER" "http://127.0.0.1:1/"
openssl ocsp -issuer "$OTHER/ca.pem" -cert "$OTHER/proxy.pem" -no_nonce -reqout "$T_DIR/other.req" \
    >/dev/null 2>&1 || bail "openssl ocsp -reqout fails"
openssl ocsp -index "$OTHER/index.txt" -rsigner "$OTHER/ocsp.pem" -rkey "$OTHER/ocsp.key" -CA "$OTHER/ca.pem" \
    -reqin "$T_DIR/other.req" -respout "$T_DIR/other.der" -nmin 5 >/dev/null 2>&1 || bail "offline openssl ocsp fails"
if openssl ocsp -respin "$T_DIR/other.der" -issuer "$OTHER/ca.pem" -CAfile "$OTHER/ca.pem" 2>&1 |
    grep -q '^Response verify OK'; then pass "the other CA's response is valid for that CA"; else
    fail "the other CA's response is valid for that CA"; fi
check_discarded "another CA's staple" "$T_DIR/other.der" 'error_code='

# The staple of run 1, now past its nextUpdate.
if [ "$(date +%s)" -ge "$NEXT_UPDATE" ]; then pass "run 1's staple is past its nextUpdate"; else
    fail "run 1's staple is past its nextUpdate"; fi
check_discarded "expired staple" "$T_DIR/early.der" '(nextUpdate|expired)'
