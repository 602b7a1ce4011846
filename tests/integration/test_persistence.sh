#!/usr/bin/env bash
# The OCSP configuration survives restarts: the file in the data dir, a corrupt file at start-up, and a data dir
# that cannot be written.
source "$(dirname "$0")/lib.sh"

DATA=$T_DIR/data
CONF=$DATA/ocsp.json
mkdir -p "$DATA"
make_users admin

# --- PUT, restart, GET
start_agent --users "$USERS_FILE" --data-dir "$DATA" || bail "the agent does not start"
req GET /v1/ocsp
assert_json "fresh data dir: defaults" .query_frequency 3600
put_json /v1/ocsp '{"query_frequency": 7200, "recovery_max_tries": 9}'
assert_status "PUT before the restart" 200
if [ -f "$CONF" ]; then pass "PUT writes $CONF"; else fail "PUT writes $CONF" "data dir: $(ls -la "$DATA")"; fi
assert_jq "the file is a JSON object" 'type == "object"' "$(cat "$CONF" 2>/dev/null)"
assert_json "the file holds query_frequency" .query_frequency 7200 "$(cat "$CONF" 2>/dev/null)"
assert_json "the file holds recovery_max_tries" .recovery_max_tries 9 "$(cat "$CONF" 2>/dev/null)"
assert_eq "the file is private (mode 600)" 600 "$(stat -c %a "$CONF" 2>/dev/null)"
stop_agent
leftovers=$(find "$DATA" -mindepth 1 ! -name ocsp.json ! -name ocsp.der -printf '%f\n')
assert_eq "no temporary files left in the data dir" "" "$leftovers"

start_agent --users "$USERS_FILE" --data-dir "$DATA" || bail "the agent does not restart"
req GET /v1/ocsp
assert_status "GET after the restart" 200
assert_jq "the restart keeps both values and the defaults" \
    '. == {"ocsp_functionality":false,"responder_url":"","query_frequency":7200,"response_timeout":1,
           "recovery_frequency":60,"recovery_max_tries":9}'
put_json /v1/ocsp '{"response_timeout": 4}'
assert_status "a second PUT" 200
stop_agent
assert_json "the second PUT rewrote the file, keeping the first" '[.query_frequency, .response_timeout] | @csv' \
    '7200,4' "$(cat "$CONF" 2>/dev/null)"

# --- a corrupt file at start-up: a clear log line, the defaults, the bad file kept aside
check_corrupt() { # NAME CONTENT
    local name=$1
    printf '%s' "$2" >"$CONF"
    start_agent --users "$USERS_FILE" --data-dir "$DATA" || { fail "$name: the agent starts"; return; }
    req GET /v1/ocsp
    assert_status "$name: the agent serves" 200
    assert_json "$name: defaults in force" '[.query_frequency, .recovery_max_tries] | @csv' '3600,5'
    assert_match "$name: an error line names the file" "level=\"?error.*ocsp\.json" "$(cat "$AGENT_LOG")"
    assert_eq "$name: the corrupt file is kept as ocsp.json.corrupt" "[$2]" \
        "$(if [ -f "$CONF.corrupt" ]; then printf '[%s]' "$(cat "$CONF.corrupt")"; else echo absent; fi)"
    put_json /v1/ocsp '{"query_frequency": 900}'
    assert_status "$name: PUT works afterwards" 200
    assert_json "$name: PUT writes a good file again" .query_frequency 900 "$(cat "$CONF" 2>/dev/null)"
    stop_agent
    rm -f "$CONF.corrupt"
}
check_corrupt "not JSON" '{"query_frequency": 72'
check_corrupt "out of range" '{"version": 1, "query_frequency": 5}'
check_corrupt "wrong type" '{"version": 1, "ocsp_functionality": "yes"}'
check_corrupt "empty file" ''

# --- an unwritable data dir: PUT answers 500, nothing changes
rm -f "$CONF"
start_agent --users "$USERS_FILE" --data-dir "$DATA" || bail "the agent does not start"
put_json /v1/ocsp '{"query_frequency": 1200}'
assert_status "PUT while writable" 200
# Replace the directory by a plain file: nothing can be created under it, not even by root.
mv "$DATA" "$DATA.real"
printf 'not a directory\n' >"$DATA"
put_json /v1/ocsp '{"query_frequency": 2400, "recovery_max_tries": 3}'
assert_error "PUT with an unwritable data dir" 500 config_persist_failed
req GET /v1/ocsp
assert_status "GET after the failed PUT" 200
assert_json "GET shows the old values" '[.query_frequency, .recovery_max_tries] | @csv' '1200,5'
# Writable again: the next PUT succeeds.
rm -f "$DATA"
mv "$DATA.real" "$DATA"
put_json /v1/ocsp '{"query_frequency": 2400}'
assert_status "PUT once the data dir is back" 200
assert_json "the file has the new value" .query_frequency 2400 "$(cat "$CONF" 2>/dev/null)"
stop_agent
if [ "$(id -u)" -ne 0 ]; then
    # Without root, a read-only directory is enough.
    start_agent --users "$USERS_FILE" --data-dir "$DATA" || bail "the agent does not start"
    chmod 500 "$DATA"
    put_json /v1/ocsp '{"query_frequency": 4800}'
    assert_error "PUT into a read-only data dir" 500 config_persist_failed
    chmod 700 "$DATA"
    stop_agent
fi

# --- ocsp_functionality survives a restart too (the responder may be down)
make_resp_pki
rm -f "$CONF"
start_agent --users "$USERS_FILE" --data-dir "$DATA" --cert "$T_DIR/pki/proxy-chain.pem" ||
    bail "the agent does not start with --cert"
put_json /v1/ocsp '{"ocsp_functionality": true}'
assert_status "enable OCSP" 200
stop_agent
start_agent --users "$USERS_FILE" --data-dir "$DATA" --cert "$T_DIR/pki/proxy-chain.pem" ||
    bail "the agent does not restart with --cert"
req GET /v1/ocsp
assert_json "OCSP still enabled after the restart" .ocsp_functionality true
stop_agent
