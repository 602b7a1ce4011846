#!/usr/bin/env bash
# Hostile input: bytes no well-behaved client sends, thrown at a running agent over raw sockets. For each input the
# exact answer is asserted (a JSON 4xx of the expected code, or a closed connection), and after each one that the
# agent still serves a normal client with the configuration unchanged. Also: hundreds of connections that stop
# half-way (408 after 10 s while others are served at once), more connections than --max-connections, and
# pipelined bursts. The cases of tests/data/hostile/ are table-driven (see its README); the rest are below.
source "$(dirname "$0")/lib.sh"

RAWHTTP=$OA_SOURCE_DIR/tests/support/rawhttp.py
HOSTILE=$OA_TEST_DATA/hostile
INPUTS=0 # distinct hostile inputs whose outcome was asserted

command -v python3 >/dev/null || bail "python3 is required (scripts/setup.sh installs it)"
make_users admin cluster_viewer
ADMIN_CRED="admin@example.com:${USER_PASS[admin]}"
VIEWER_CRED="cluster_viewer@example.com:${USER_PASS[cluster_viewer]}"

# The interpreter itself, not a version manager's shim that costs a fraction of a second per call.
PYTHON=$(python3 -c 'import sys; print(sys.executable)') || bail "python3 does not run"
rawhttp() { "$PYTHON" "$RAWHTTP" "$@"; }

# still_serving NAME: the agent is alive and a normal client gets 200 with the configuration from before.
still_serving() {
    local name=$1
    if ! proc_alive "$AGENT_PID"; then
        bail "$name: the agent died" "$(tail -n 30 "$AGENT_LOG")"
    fi
    req GET /v1/ocsp
    if [ "$STATUS" == 200 ] && [ "$BODY" == "$BASE" ]; then
        pass "$name: afterwards GET /v1/ocsp is 200 with the configuration unchanged"
    else
        fail "$name: afterwards GET /v1/ocsp is 200 with the configuration unchanged" \
            "status ${STATUS:-none} (curl exit $CURL_RC)" "expected: $BASE" "got:      $(short "$BODY")"
    fi
}

# check_exchange NAME OUT_JSON EXPECT_LINES...: asserts a rawhttp `send` report against the expected responses
# (STATUS or "STATUS ERROR_CODE", one per response) and the final "close" or "open". One jq run computes every
# fact, so that a case costs one process rather than one per assertion.
check_exchange() {
    local name=$1 out=$2 want last facts
    local got errors_ok auth_ok allow_ok connection
    shift 2
    want=$(printf '%s|' "$@")
    want=${want%|}
    last=${*: -1}
    facts=$(jq -r '
        ([.responses[] | "\(.status)\(if .error_code then " " + .error_code else "" end)"]
         + [if .closed then "close" else "open" end] | join("|")),
        (all(.responses[] | select(.status >= 400);
             (.headers["content-type"] // "" | startswith("application/json"))
             and (.json | type == "object" and (keys | sort) == ["description", "error_code", "message"]
                  and (.description | type == "string" and length > 0) and .message == .description))),
        (all(.responses[] | select(.status == 401); .headers["www-authenticate"] // "" | test("^Basic "))),
        (all(.responses[] | select(.status == 405); .headers.allow == "GET, HEAD, PUT")),
        (if (.responses | length) > 0 then .responses[-1].headers.connection // "none" else "none" end)
        ' <<<"$out" 2>&1)
    { read -r got; read -r errors_ok; read -r auth_ok; read -r allow_ok; read -r connection; } <<<"$facts"
    assert_eq "$name: responses" "$want" "$got"
    if [ "$errors_ok" == true ]; then pass "$name: every error is a JSON error object"; else
        fail "$name: every error is a JSON error object" "$(short "$out")"; fi
    [ "$auth_ok" == true ] || fail "$name: a 401 asks for Basic credentials" "$(short "$out")"
    [ "$allow_ok" == true ] || fail "$name: a 405 lists the allowed methods" "$(short "$out")"
    if [ "$connection" != none ]; then
        if [ "$last" == close ]; then
            assert_eq "$name: the last response says Connection: close" close "$connection"
        else
            assert_eq "$name: the last response keeps the connection" keep-alive "$connection"
        fi
    fi
}

# assert_bodies_are_base NAME OUT_JSON: every 200 in the report carries the configuration from before.
assert_bodies_are_base() {
    if jq -e --arg base "$BASE" 'all(.responses[] | select(.status == 200); .body == $base)' <<<"$2" >/dev/null
    then
        pass "$1: every 200 carries the configuration in force"
    else
        fail "$1: every 200 carries the configuration in force" "expected: $BASE" \
            "got: $(jq -c '[.responses[] | select(.status == 200) | .body]' <<<"$2" | head -c 600)"
    fi
}

# run_case NAME REQUEST_FILE [RAWHTTP_OPTIONS...]: sends one table case and asserts its .expect file.
run_case() {
    local name=$1 file=$2 expect_file=${2%.http}.expect lines=() nresp out
    shift 2
    mapfile -t lines < <(grep -v '^[[:space:]]*$' "$expect_file")
    nresp=$((${#lines[@]} - 1))
    out=$(rawhttp send --port "$AGENT_PORT" --auth "$ADMIN_CRED" --viewer "$VIEWER_CRED" --file "$file" \
        --expect-responses "$nresp" --eof-wait 0.2 --idle 10 --timeout 15 "$@")
    INPUTS=$((INPUTS + 1))
    check_exchange "$name" "$out" "${lines[@]}"
    assert_bodies_are_base "$name" "$out"
    still_serving "$name"
}


# --- the agent under attack, with a configuration that differs from the defaults so that a change shows
start_agent --users "$USERS_FILE" --log-level debug || bail "the agent does not start"
put_json /v1/ocsp '{"query_frequency": 4321, "recovery_frequency": 321, "recovery_max_tries": 9}'
assert_status "a known configuration before the attack" 200
BASE=$BODY
req GET /v1/ocsp
assert_eq "GET returns that configuration" "$BASE" "$BODY"

# --- the table: tests/data/hostile/*.http
ncases=0
for file in "$HOSTILE"/*.http; do
    [ -f "${file%.http}.expect" ] || { fail "$(basename "$file"): has no .expect file"; continue; }
    run_case "$(basename "$file" .http)" "$file"
    ncases=$((ncases + 1))
done
[ "$ncases" -ge 60 ] && pass "the table holds $ncases cases" || fail "the table holds at least 60 cases" "$ncases"

# --- the same framing attacks delivered in many small writes: the parser state must carry across reads
for name in body_chunked_over_limit content_length_with_chunked put_json_nul_then_object pipeline_good_then_bad; do
    run_case "$name, in 40 writes" "$HOSTILE/$name.http" --pieces 40
done

# --- random garbage: five blocks of 4 KiB from the kernel's generator (never starting with CR or LF, which the
# parser may skip as an empty line before a request)
for i in 1 2 3 4 5; do
    garbage=$(head -c 4096 /dev/urandom | od -An -v -tx1 | tr -d ' \n' | sed 's/../\\x&/g')
    out=$(rawhttp send --port "$AGENT_PORT" --data "\\x01$garbage" --expect-responses 1 --eof-wait 0.3 --idle 10)
    check_exchange "random garbage block $i" "$out" "400 bad_request" close
done
INPUTS=$((INPUTS + 1))
still_serving "random garbage"

# --- a client that half-closes right after a complete request (printf | nc -N) still gets its answer
out=$(rawhttp send --port "$AGENT_PORT" --auth "$ADMIN_CRED" --shutdown --expect-responses 1 --eof-wait 1 \
    --data 'GET /v1/ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {{AUTH}}\r\n\r\n')
INPUTS=$((INPUTS + 1))
assert_json "half-closed after the request: answered 200" '[.responses[].status] | @csv' 200 "$out"
assert_json "half-closed after the request: then closed" .closed true "$out"
assert_bodies_are_base "half-closed after the request" "$out"
still_serving "half-closed after the request"

# --- pipelining: 100 requests in one write, three resources in turn, the last one asking to close
pipe=$T_DIR/pipeline100.http
: >"$pipe"
for i in $(seq 0 99); do
    case $((i % 3)) in
    0) path=/v1/ocsp ;;
    1) path=/v1/ocsp/status ;;
    2) path=/metrics ;;
    esac
    conn=''
    [ "$i" -eq 99 ] && conn='Connection: close\r\n'
    printf '%s\n' "GET $path HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nAuthorization: Basic {{AUTH}}\\r\\n$conn\\r\\n" >>"$pipe"
done
out=$(rawhttp send --port "$AGENT_PORT" --auth "$ADMIN_CRED" --file "$pipe" --expect-responses 100 --eof-wait 1)
INPUTS=$((INPUTS + 1))
assert_json "100 pipelined GETs: 100 answers" '.responses | length' 100 "$out"
assert_json "100 pipelined GETs: every one 200" '[.responses[].status] | unique | @csv' 200 "$out"
assert_jq "100 pipelined GETs: answered in order (config, status, metrics, ...)" \
    '[.responses | to_entries[] | (.key % 3) as $k | .value |
      if $k == 0 then (.json | type == "object" and has("query_frequency"))
      elif $k == 1 then (.json | type == "object" and has("cert_status") and has("state"))
      else (.headers["content-type"] | startswith("text/plain")) and (.body | contains("ocsp_agent_info")) end]
     | all' "$out"
assert_bodies_are_base "100 pipelined GETs" "$(jq '.responses |= map(select(.json | type == "object"
    and has("query_frequency")))' <<<"$out")"
assert_json "100 pipelined GETs: closed after the last, as it asked" .closed true "$out"
still_serving "100 pipelined GETs"

# --- a burst of 3000 pipelined requests that the client reads only after 1 s: the agent must stop reading when
# its buffers fill, and resume, without losing or reordering an answer
burst=$T_DIR/burst.http
printf '%s\n' 'GET /v1/ocsp HTTP/1.1\r\nAuthorization: Basic {{AUTH}}\r\n\r\n' >"$burst.one"
for i in $(seq 1 3000); do cat "$burst.one"; done >"$burst"
out=$(rawhttp send --port "$AGENT_PORT" --auth "$ADMIN_CRED" --file "$burst" --expect-responses 3000 --read-delay 1 \
    --eof-wait 0.3 --timeout 30)
INPUTS=$((INPUTS + 1))
assert_json "3000 pipelined GETs read late: 3000 answers" '.responses | length' 3000 "$out"
assert_json "3000 pipelined GETs read late: every one 200" '[.responses[].status] | unique | @csv' 200 "$out"
assert_bodies_are_base "3000 pipelined GETs read late" "$out"
assert_json "3000 pipelined GETs read late: the connection stays open" .closed false "$out"
still_serving "3000 pipelined GETs read late"

# --- slowloris: 300 connections stop inside their headers and 20 inside a declared body; a normal client is
# served at once meanwhile, and the agent ends every slow one with 408 after its 10 s timeout
ready=$T_DIR/slowloris.ready
rawhttp slowloris --port "$AGENT_PORT" --auth "$ADMIN_CRED" --count 300 --body-count 20 --max-wait 16 \
    --ready-file "$ready" >"$T_DIR/slowloris.json" 2>"$T_DIR/slowloris.err" &
slow_pid=$!
T_PIDS+=("$slow_pid")
wait_until 10 test -s "$ready"
assert_eq "slowloris: 320 connections opened and holding" 320 "$(cat "$ready" 2>/dev/null)"
slow_start=$SECONDS
for i in 1 2 3; do
    t0=$(date +%s%N)
    req GET /v1/ocsp
    ms=$((($(date +%s%N) - t0) / 1000000))
    if [ "$STATUS" == 200 ] && [ "$BODY" == "$BASE" ] && [ "$ms" -lt 1000 ]; then
        pass "slowloris: a normal client is served within 1 s (request $i: $ms ms)"
    else
        fail "slowloris: a normal client is served within 1 s (request $i)" "status $STATUS after $ms ms" \
            "body: $(short "$BODY")"
    fi
    sleep 0.5 # deliberate: the three probes are spread over a second while the slow connections hold
done
req GET /metrics
assert_match "slowloris: the agent counts the held connections" 'ocsp_agent_http_connections (32[0-9])' "$BODY"
wait "$slow_pid"
forget_pid "$slow_pid"
slow=$(cat "$T_DIR/slowloris.json")
INPUTS=$((INPUTS + 2))
assert_json "slowloris: every connection ended (no other outcome)" '.outcomes | keys | join(",")' \
    "body 408 request_timeout closed,headers 408 request_timeout closed" "$slow"
assert_json "slowloris: 300 stuck in the headers got 408 request_timeout and a close" \
    '.outcomes["headers 408 request_timeout closed"].n' 300 "$slow"
assert_json "slowloris: 20 stuck in the body got 408 request_timeout and a close" \
    '.outcomes["body 408 request_timeout closed"].n' 20 "$slow"
assert_jq "slowloris: ended after the 10 s timeout, not before, and not much after" \
    '[.outcomes[] | .t_min >= 9.5 and .t_max <= 12.5] | all' "$slow"
still_serving "slowloris"

# --- the first agent survived everything: it stops cleanly and the sanitizers had nothing to say
stop_checked "after the attacks"
assert_file_lacks "no AddressSanitizer report" "$AGENT_LOG" "ERROR: AddressSanitizer"
assert_file_lacks "no UndefinedBehaviorSanitizer report" "$AGENT_LOG" "runtime error:"
assert_file_lacks "no LeakSanitizer report" "$AGENT_LOG" "ERROR: LeakSanitizer"

# --- more connections than --max-connections 50: the 51st is closed at once, the 50 keep working
start_agent --users "$USERS_FILE" --data-dir "$T_DIR/data-maxconn" --max-connections 50 ||
    bail "the agent does not start with --max-connections 50"
req GET /v1/ocsp
assert_status "max-connections agent: serves" 200
BASE=$BODY
out=$(rawhttp maxconn --port "$AGENT_PORT" --auth "$ADMIN_CRED" --limit 50)
INPUTS=$((INPUTS + 1))
assert_json "max-connections 50: the first 50 connections are served" .first_round_200 50 "$out"
assert_json "max-connections 50: the 51st is closed" .extra_closed true "$out"
assert_json "max-connections 50: the 51st gets no answer" .extra_responses 0 "$out"
assert_jq "max-connections 50: the 51st is closed at once (under 1 s)" '.extra_close_ms < 1000' "$out"
assert_json "max-connections 50: the 50 held connections still work" .second_round_200 50 "$out"
assert_json "max-connections 50: a freed slot takes a new client" .after_release_status 200 "$out"
still_serving "max-connections 50"
stop_checked "max-connections agent"
assert_file_lacks "max-connections agent: no sanitizer report" "$AGENT_LOG" "Sanitizer"

echo "hostile inputs asserted: $INPUTS"
