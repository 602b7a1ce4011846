#!/usr/bin/env bash
# Crash safety of the persisted configuration.
#  (a) A client streams PUTs with changing values; the agent is killed with SIGKILL at a random moment; after a
#      restart the file and GET must hold exactly one acknowledged state: the last acknowledged PUT, or the one in
#      flight when the agent died, never an older one, never a mix, never a broken file. Repeated
#      $OA_CRASH_ROUNDS times (default 30). Temporary files left by the kills must not pile up.
#  (b) A data dir the agent may not write (the agent runs as an unprivileged user, since root ignores
#      permissions): PUT answers 500 config_persist_failed, nothing changes, the agent keeps serving, and once the
#      directory is writable again a PUT succeeds.
source "$(dirname "$0")/lib.sh"

RAWHTTP=$OA_SOURCE_DIR/tests/support/rawhttp.py
ROUNDS=${OA_CRASH_ROUNDS:-30}
DATA=$T_DIR/data
CONF=$DATA/ocsp.json

command -v python3 >/dev/null || bail "python3 is required (scripts/setup.sh installs it)"
# The interpreter itself, not a version manager's shim that costs a fraction of a second per call.
PYTHON=$(python3 -c 'import sys; print(sys.executable)') || bail "python3 does not run"

# state_of I: the five settable keys after PUT number I of the stream, as compact sorted JSON. The same formula
# as conf_for() in rawhttp.py: three keys move together, so a state torn between two PUTs would show.
state_of() {
    jq -cnS --argjson i "$1" '{ocsp_functionality: false, query_frequency: (60 + $i % 86000),
        response_timeout: (1 + $i % 60), recovery_frequency: 60, recovery_max_tries: (1 + $i % 100)}'
}

# settable JSON: the five settable keys of a configuration object (a GET body or the file), compact and sorted.
settable() {
    jq -cS '{ocsp_functionality, query_frequency, response_timeout, recovery_frequency, recovery_max_tries}' \
        <<<"$1" 2>/dev/null
}


# ---------------------------------------------------------------------------------------------------------------
# (a) SIGKILL during a stream of PUTs

mkdir -p "$DATA"
# Authentication plays no part here; without it a restart does not pay for a password hash before the stream.
start_agent --no-auth --data-dir "$DATA" || bail "the agent does not start"
put_json /v1/ocsp "$(jq -c 'del(.ocsp_functionality, .recovery_frequency)' <<<"$(state_of 0)")"
assert_status "the first PUT" 200
prev=$(state_of 0)
assert_eq "the first PUT is in the file" "$prev" "$(settable "$(cat "$CONF" 2>/dev/null)")"

next=1
total_acks=0
inflight_kept=0
max_leftovers=0
round_fail=0
start_time=$SECONDS
for ((r = 1; r <= ROUNDS; r++)); do
    log=$T_DIR/stream.$r.log
    : >"$log"
    "$PYTHON" "$RAWHTTP" putstream --port "$AGENT_PORT" --auth "x:y" --start "$next" --log "$log" &
    stream_pid=$!
    T_PIDS+=("$stream_pid")
    # Somewhere between 20 ms and 520 ms into the stream, which is from a few to hundreds of PUTs.
    sleep "$(printf '0.%03d' $((20 + RANDOM % 500)))"
    kill -KILL "$AGENT_PID" 2>/dev/null
    wait "$AGENT_PID" 2>/dev/null
    forget_pid "$AGENT_PID"
    if ! wait_exit "$stream_pid" 10; then kill -KILL "$stream_pid" 2>/dev/null; fi
    wait "$stream_pid" 2>/dev/null
    forget_pid "$stream_pid"

    # What the client saw: the last acknowledged PUT, and the one sent after it (in flight at the kill).
    acked=$(awk '$1 == "ACK" {n = $2} END {print n}' "$log")
    sent=$(awk '$1 == "SENT" {n = $2} END {print n}' "$log")
    acks=$(grep -c '^ACK ' "$log")
    total_acks=$((total_acks + acks))
    problems=()
    allowed=()
    if [ -n "$acked" ]; then
        allowed+=("$(state_of "$acked")")
        # Each acknowledgement is the whole new configuration.
        ack_body=$(awk -v n="$acked" '$1 == "ACK" && $2 == n {sub(/^ACK [0-9]+ /, ""); print}' "$log")
        [ "$(settable "$ack_body")" == "$(state_of "$acked")" ] ||
            problems+=("the answer to PUT $acked is not its configuration: $ack_body")
    else
        allowed+=("$prev")
    fi
    inflight=
    if [ -n "$sent" ] && [ "$sent" != "$acked" ]; then
        inflight=$sent
        allowed+=("$(state_of "$sent")")
    fi

    # The file on disk, before anything reads it.
    if ! file_state=$(jq -e -cS 'select(type == "object")' "$CONF" 2>/dev/null); then
        problems+=("$CONF is missing or not a JSON object: $(head -c 200 "$CONF" 2>&1)")
    fi
    file_state=$(settable "$file_state")
    match=0
    for s in "${allowed[@]}"; do [ "$file_state" == "$s" ] && match=1; done
    [ "$match" = 1 ] || problems+=("the file holds $file_state")
    [ -n "$inflight" ] && [ "$file_state" == "$(state_of "$inflight")" ] && inflight_kept=$((inflight_kept + 1))
    leftovers=$(find "$DATA" -maxdepth 1 -name 'ocsp.json.tmp.*' | wc -l)
    [ "$leftovers" -gt "$max_leftovers" ] && max_leftovers=$leftovers
    others=$(find "$DATA" -mindepth 1 -maxdepth 1 ! -name ocsp.json ! -name 'ocsp.json.tmp.*' -printf '%f ')
    [ -z "$others" ] || problems+=("unexpected files in the data dir: $others")

    # A restart serves that same state.
    if start_agent --no-auth --data-dir "$DATA"; then
        req GET /v1/ocsp
        [ "$STATUS" == 200 ] || problems+=("GET after the restart: HTTP $STATUS")
        got=$(settable "$BODY")
        [ "$got" == "$file_state" ] || problems+=("GET after the restart shows $got, the file $file_state")
        [ "$(jq -r .responder_url <<<"$BODY" 2>/dev/null)" == "" ] ||
            problems+=("GET after the restart has responder_url $(jq .responder_url <<<"$BODY")")
    else
        problems+=("the agent does not restart: $(tail -n 3 "$AGENT_LOG")")
    fi
    if [ ${#problems[@]} -eq 0 ]; then
        pass "round $r: killed after $acks acknowledged PUTs${inflight:+ with PUT $inflight in flight}; the file and GET hold $(jq -c '[.query_frequency, .response_timeout, .recovery_max_tries]' <<<"$file_state")"
    else
        round_fail=1
        fail "round $r: after SIGKILL the configuration is the last acknowledged one or the one in flight" \
            "acknowledged: ${acked:-none} (previous state $prev); in flight: ${inflight:-none}" \
            "allowed: ${allowed[*]}" "${problems[@]}" "stream log tail: $(tail -n 3 "$log")"
        proc_alive "${AGENT_PID:-0}" || bail "no agent to go on with"
    fi
    prev=$file_state
    # Fresh numbers for the next round, so that no state of an earlier round can be mistaken for a new one.
    last=${sent:-${acked:-$next}}
    next=$((last + 1))
done
elapsed=$((SECONDS - start_time))
echo "# $ROUNDS kills in ${elapsed}s, $total_acks PUTs acknowledged, $inflight_kept times the in-flight PUT was kept"
if [ "$total_acks" -ge "$ROUNDS" ]; then
    pass "the streams ran: $total_acks PUTs acknowledged over $ROUNDS rounds"
else
    fail "the streams ran: at least $ROUNDS PUTs acknowledged over $ROUNDS rounds" "only $total_acks"
fi
assert_match "killed temporary files do not pile up (at most 1 in the data dir, saw $max_leftovers)" '^[01]$' \
    "$max_leftovers"

# The agent that survived all this still takes a PUT, writes it, and leaves no temporary file of its own.
put_json /v1/ocsp '{"query_frequency": 7777}'
assert_status "a PUT after $ROUNDS kills" 200
assert_json "the PUT after the kills is in the file" .query_frequency 7777 "$(cat "$CONF" 2>/dev/null)"
last_pid=$AGENT_PID
stop_checked "after the kills"
assert_eq "after a clean stop, no temporary file of the last agent is left" "" \
    "$(find "$DATA" -maxdepth 1 -name "ocsp.json.tmp.$last_pid" 2>/dev/null)"

# Leftovers of earlier kills (a truncated object, an empty file, noise): they must not stop start-up, nor be read as
# the configuration, nor stop the next PUT.
kept=$(settable "$(cat "$CONF")")
printf '{"query_frequency": 12' >"$CONF.tmp.1"
printf '' >"$CONF.tmp.4194303"
head -c 100 /dev/urandom >"$CONF.tmp.$$"
printf 'x' >"$DATA/ocsp.der.tmp.4194303"
printf '{"epoch": "' >"$DATA/cluster.json.tmp.4194303"
start_agent --no-auth --data-dir "$DATA" || bail "the agent does not start beside stale temporary files"
assert_eq "start-up removes the dead writers' temp files of every data-dir file" "" \
    "$(find "$DATA" -maxdepth 1 -name '*.tmp.4194303' -printf '%f ')"
req GET /v1/ocsp
assert_eq "stale temporary files are not read as the configuration" "$kept" "$(settable "$BODY")"
put_json /v1/ocsp '{"query_frequency": 8888}'
assert_status "a PUT beside stale temporary files" 200
assert_json "and it reaches the file" .query_frequency 8888 "$(cat "$CONF" 2>/dev/null)"
stop_checked "beside stale temporary files"
reports=$(grep -lE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$T_DIR"/agent-*.log 2>/dev/null)
if [ -z "$reports" ]; then
    pass "no sanitizer report in the $(ls "$T_DIR"/agent-*.log | wc -l) agent logs"
else
    fail "no sanitizer report in the agent logs" "$reports" \
        "$(grep -h -m 3 -E 'Sanitizer|runtime error:' $reports)"
fi

# ---------------------------------------------------------------------------------------------------------------
# (b) a data dir the agent may not write

UDATA=$T_DIR/data-unwritable
UCONF=$UDATA/ocsp.json
mkdir -p "$UDATA"
make_users admin
if [ "$(id -u)" -eq 0 ]; then
    # Root writes anywhere, so the agent runs as nobody, owning its data dir; the harness runs it through a
    # wrapper (exec keeps the pid, so signals and waits still reach the agent).
    runas=nobody
    if ! id "$runas" >/dev/null 2>&1 || ! command -v setpriv >/dev/null; then
        bail "running as root needs the user nobody and setpriv to take permissions away"
    fi
    chown "$runas" "$UDATA"
    chmod 711 "$T_DIR"
    chmod 644 "$USERS_FILE"
    wrapper=$T_DIR/as-nobody.sh
    printf '#!/bin/sh\nexec setpriv --reuid=%s --regid=%s --clear-groups "%s" "$@"\n' \
        "$(id -u "$runas")" "$(id -g "$runas")" "$OA_AGENT_BIN" >"$wrapper"
    chmod 755 "$wrapper"
    real_bin=$OA_AGENT_BIN
    OA_AGENT_BIN=$wrapper
    start_agent --users "$USERS_FILE" --data-dir "$UDATA" || bail "the agent does not start as $runas"
    OA_AGENT_BIN=$real_bin
    assert_eq "the agent runs as $runas" "$(id -u "$runas")" "$(stat -c %u "/proc/$AGENT_PID" 2>/dev/null)"
else
    start_agent --users "$USERS_FILE" --data-dir "$UDATA" || bail "the agent does not start"
fi

put_json /v1/ocsp '{"query_frequency": 1800, "recovery_max_tries": 11}'
assert_status "PUT into the writable data dir" 200
before_file=$(cat "$UCONF" 2>/dev/null)
assert_json "the file holds the PUT" '[.query_frequency, .recovery_max_tries] | @csv' '1800,11' "$before_file"
req GET /v1/ocsp
before=$BODY

chmod 500 "$UDATA"
put_json /v1/ocsp '{"query_frequency": 3600, "recovery_max_tries": 2}'
assert_error "PUT into a read-only data dir" 500 config_persist_failed
assert_match "the error names the cause" 'ermission' "$(jq -r .description <<<"$BODY")"
if proc_alive "$AGENT_PID"; then pass "the agent keeps running"; else fail "the agent keeps running"; fi
req GET /v1/ocsp
assert_status "GET after the failed PUT" 200
assert_eq "GET after the failed PUT shows the old configuration" "$before" "$BODY"
assert_eq "the file is untouched" "$before_file" "$(cat "$UCONF" 2>/dev/null)"
assert_eq "no temporary file was created" "" "$(find "$UDATA" -name 'ocsp.json.tmp.*' -printf '%f ')"
assert_file_contains "the failure is logged" "$AGENT_LOG" "event=config_persist_failed"
# A second failing PUT, and a rejected one, change nothing either.
put_json /v1/ocsp '{"response_timeout": 9}'
assert_error "a second PUT into the read-only data dir" 500 config_persist_failed
put_json /v1/ocsp '{"response_timeout": 99}'
assert_error "an invalid PUT is still judged first" 400 invalid_schema
req GET /v1/ocsp
assert_eq "still the old configuration" "$before" "$BODY"

chmod 700 "$UDATA"
put_json /v1/ocsp '{"query_frequency": 3600, "recovery_max_tries": 2}'
assert_status "PUT once the data dir is writable again" 200
assert_json "its answer is the new configuration" '[.query_frequency, .recovery_max_tries, .response_timeout] | @csv' \
    '3600,2,1'
assert_json "the file holds it" '[.query_frequency, .recovery_max_tries] | @csv' '3600,2' "$(cat "$UCONF" 2>/dev/null)"
stop_checked "unwritable data dir"
assert_file_lacks "no sanitizer report" "$AGENT_LOG" "Sanitizer"
start_agent --users "$USERS_FILE" --data-dir "$UDATA" || bail "the agent does not restart"
req GET /v1/ocsp
assert_json "after a restart the new configuration is in force" '[.query_frequency, .recovery_max_tries] | @csv' \
    '3600,2'
stop_checked "restart after the unwritable data dir"
