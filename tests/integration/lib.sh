# shellcheck shell=bash
# The harness every integration suite sources: it drives the real ocsp-agent binary over loopback with curl.
#
#   source "$(dirname "$0")/lib.sh"
#   make_users                       # users.json with one user per role, known passwords
#   start_agent --users "$USERS_FILE"
#   req GET /v1/ocsp                 # as admin; sets STATUS, BODY, HEADERS_FILE
#   assert_status "GET /v1/ocsp" 200
#   assert_json "default query_frequency" .query_frequency 3600
#   stop_agent                       # SIGTERM, asserts exit code 0
#
# Each suite gets its own temporary directory ($T_DIR). When the suite ends, however it ends, every process the
# harness started is killed, the directory is removed (kept when OA_KEEP_TMP=1) and the last line printed is
# exactly "N passed, M failed"; the exit code is non-zero when anything failed.
#
# Environment (ctest sets it): OA_AGENT_BIN (the binary), OA_TEST_DATA, OA_SOURCE_DIR (the repository root).

set -uo pipefail

: "${OA_AGENT_BIN:?OA_AGENT_BIN must name the ocsp-agent binary}"
OA_SOURCE_DIR=${OA_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
OA_TEST_DATA=${OA_TEST_DATA:-$OA_SOURCE_DIR/tests/data}
OA_START_TIMEOUT=${OA_START_TIMEOUT:-10}
OA_STOP_TIMEOUT=${OA_STOP_TIMEOUT:-40} # LeakSanitizer's exit scan can take many seconds on a loaded machine
OA_CURL_TIMEOUT=${OA_CURL_TIMEOUT:-30}
export LC_ALL=C

T_NAME=$(basename "$0" .sh)
T_DIR=$(mktemp -d "${TMPDIR:-/tmp}/oa-$T_NAME.XXXXXX")
T_PASS=0
T_FAIL=0
T_PIDS=()
T_AGENT_RUNS=0

# The agent started last.
AGENT_PID=
AGENT_PORT=
AGENT_URL=
AGENT_LOG=
# Extra curl arguments for every request (a suite sets CURL_TLS=(--cacert FILE) for HTTPS).
CURL_TLS=()

# The last response of req().
STATUS=
BODY=
CURL_RC=0
HEADERS_FILE="$T_DIR/last.headers"

# The users make_users wrote: role -> password; every name is "<role>@example.com".
declare -A USER_PASS=()
USERS_FILE="$T_DIR/users.json"
ROLES=(admin cluster_member cluster_viewer db_member db_viewer user_manager none)

# ---------------------------------------------------------------------------------------------------------------
# Results

pass() {
    T_PASS=$((T_PASS + 1))
    echo "ok - $1"
}

# fail NAME [DETAIL...]: one failure, with detail lines indented under it.
fail() {
    local name=$1 line
    shift
    T_FAIL=$((T_FAIL + 1))
    echo "FAIL - $name"
    for line in "$@"; do
        printf '%s\n' "$line" | sed 's/^/    /' | head -c 4000
    done
}

# bail MESSAGE: a failure after which the suite cannot go on; the exit trap still cleans up and summarises.
bail() {
    fail "$1" "${@:2}"
    echo "suite stopped: $1"
    exit 1
}

short() { printf '%s' "$1" | head -c 600; }

assert_eq() { # NAME EXPECTED ACTUAL
    if [ "$2" == "$3" ]; then pass "$1"; else fail "$1" "expected: $(short "$2")" "got:      $(short "$3")"; fi
}

assert_ne() { # NAME UNEXPECTED ACTUAL
    if [ "$2" != "$3" ]; then pass "$1"; else fail "$1" "expected anything but: $(short "$2")"; fi
}

assert_match() { # NAME ERE ACTUAL
    if [[ $3 =~ $2 ]]; then pass "$1"; else fail "$1" "expected to match: $2" "got: $(short "$3")"; fi
}

assert_no_match() { # NAME ERE ACTUAL
    if [[ $3 =~ $2 ]]; then fail "$1" "expected not to match: $2" "got: $(short "$3")"; else pass "$1"; fi
}

# assert_status NAME EXPECTED: the status of the last response.
assert_status() {
    if [ "$STATUS" == "$2" ]; then
        pass "$1"
    else
        fail "$1" "expected HTTP $2, got ${STATUS:-nothing} (curl exit $CURL_RC)" "body: $(short "$BODY")" \
            "$(cat "$T_DIR/last.curlerr" 2>/dev/null)"
    fi
}

# assert_json NAME FILTER EXPECTED [JSON]: `jq -r FILTER` on JSON (default: the last body) prints EXPECTED.
assert_json() {
    local json=${4-$BODY} got
    if ! got=$(printf '%s' "$json" | jq -r "$2" 2>&1); then
        fail "$1" "not JSON, or jq failed on $2: $(short "$got")" "body: $(short "$json")"
        return
    fi
    if [ "$got" == "$3" ]; then pass "$1"; else fail "$1" "$2: expected $(short "$3"), got $(short "$got")" \
        "body: $(short "$json")"; fi
}

# assert_jq NAME EXPR [JSON]: EXPR is true for JSON (default: the last body).
assert_jq() {
    local json=${3-$BODY}
    if printf '%s' "$json" | jq -e "$2" >/dev/null 2>&1; then pass "$1"; else fail "$1" "not true: $2" \
        "body: $(short "$json")"; fi
}

# assert_error NAME STATUS ERROR_CODE: the last response is that status with a JSON error body of that code,
# whose description is a non-empty sentence and whose message says the same.
assert_error() {
    local name=$1 status=$2 code=$3
    assert_status "$name: HTTP $status" "$status"
    assert_match "$name: Content-Type is JSON" '^application/json' "$(header_value Content-Type)"
    assert_jq "$name: error_code $code with description and message" \
        ".error_code == \"$code\" and (.description | type == \"string\" and length > 0)
         and .message == .description and (keys | sort) == [\"description\", \"error_code\", \"message\"]"
}

assert_file_contains() { # NAME FILE FIXED_STRING
    if grep -qF -- "$3" "$2" 2>/dev/null; then pass "$1"; else fail "$1" "$2 lacks: $3" \
        "tail: $(tail -n 5 "$2" 2>/dev/null)"; fi
}

assert_file_lacks() { # NAME FILE FIXED_STRING
    if grep -qF -- "$3" "$2" 2>/dev/null; then fail "$1" "$2 contains: $3" \
        "line: $(grep -F -- "$3" "$2" | head -n 1)"; else pass "$1"; fi
}

# ---------------------------------------------------------------------------------------------------------------
# Waiting: a suite never sleeps and then asserts; it waits until the condition holds, with a deadline, then asserts
# on what it waited for. The only other sleeps are the deliberate ones that let time pass to show that something
# did NOT happen; each says so, and why its length is enough, in a comment.

# now_ms: milliseconds since the epoch.
now_ms() {
    local t=$EPOCHREALTIME
    echo $((${t%.*} * 1000 + 10#${t#*.} / 1000))
}

# secs_to_ms SECONDS: "1.5" -> 1500 (at most three decimals are kept).
secs_to_ms() {
    local s=$1 f=000
    [[ $s == *.* ]] && f=${s#*.}000
    s=${s%%.*}
    echo $((10#${s:-0} * 1000 + 10#${f:0:3}))
}

# sleep_until EPOCH_MS: sleeps until that moment (not at all when it has passed). For the deliberate waits only: a
# phase that must last a given time, counted from its start, whatever was waited for within it.
sleep_until() {
    local left=$(($1 - $(now_ms)))
    [ "$left" -le 0 ] || sleep "$((left / 1000)).$(printf '%03d' $((left % 1000)))"
}

# wait_until TIMEOUT_S COMMAND [ARGS...]: runs COMMAND every 50 ms until it succeeds; 0 as soon as it does, 1 when
# TIMEOUT_S seconds (decimals allowed) have passed first. COMMAND runs at least once, and once more after the
# deadline has passed, so that a condition that holds by then is not missed. Its output is not captured.
wait_until() {
    local deadline
    deadline=$(($(now_ms) + $(secs_to_ms "$1")))
    shift
    while :; do
        "$@" && return 0
        if [ "$(now_ms)" -ge "$deadline" ]; then
            "$@" && return 0
            return 1
        fi
        sleep 0.05
    done
}

# assert_wait NAME TIMEOUT_S COMMAND [ARGS...]: wait_until as an assertion.
assert_wait() {
    local name=$1 timeout=$2
    shift 2
    if wait_until "$timeout" "$@"; then pass "$name"; else fail "$name" "not true within $timeout s: $*"; fi
}

# wait_eq TIMEOUT_S EXPECTED COMMAND [ARGS...]: wait_until COMMAND prints exactly EXPECTED. WAIT_OUT holds what it
# printed last.
WAIT_OUT=
_prints() { # EXPECTED COMMAND [ARGS...]
    WAIT_OUT=$("${@:2}")
    [ "$WAIT_OUT" == "$1" ]
}
wait_eq() { wait_until "$1" _prints "${@:2}"; }

# assert_wait_eq NAME TIMEOUT_S EXPECTED COMMAND [ARGS...]: wait_eq as an assertion; a failure shows the last output.
assert_wait_eq() {
    if wait_eq "$2" "$3" "${@:4}"; then pass "$1"; else
        fail "$1" "expected within $2 s: $(short "$3")" "got last:           $(short "$WAIT_OUT")"; fi
}

# assert_wait_match NAME TIMEOUT_S ERE COMMAND [ARGS...]: waits until COMMAND prints text that matches ERE, then
# passes; a failure shows the last output (also left in WAIT_OUT).
_prints_match() { # ERE COMMAND [ARGS...]
    WAIT_OUT=$("${@:2}")
    [[ $WAIT_OUT =~ $1 ]]
}
assert_wait_match() {
    if wait_until "$2" _prints_match "$3" "${@:4}"; then pass "$1"; else
        fail "$1" "expected within $2 s to match: $3" "got last: $(short "$WAIT_OUT")"; fi
}

# ---------------------------------------------------------------------------------------------------------------
# Processes

# 0 when pid is a live process (not a zombie waiting to be reaped).
proc_alive() {
    local state
    [ -r "/proc/$1/stat" ] || return 1
    state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$state" ] && [ "$state" != Z ]
}

forget_pid() {
    local keep=() p
    for p in "${T_PIDS[@]}"; do [ "$p" == "$1" ] || keep+=("$p"); done
    T_PIDS=("${keep[@]}")
}

# wait_exit PID TIMEOUT: waits until PID has exited; 0 when it did within TIMEOUT seconds.
wait_exit() {
    local pid=$1 deadline=$((SECONDS + $2))
    while proc_alive "$pid"; do
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

kill_all() {
    local pid
    for pid in "${T_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${T_PIDS[@]}"; do
        if ! wait_exit "$pid" 3; then kill -KILL "$pid" 2>/dev/null; fi
        wait "$pid" 2>/dev/null
    done
    T_PIDS=()
}

t_finish() {
    local rc=$?
    trap - EXIT INT TERM
    kill_all
    if [ "$rc" -ne 0 ] && [ "$T_FAIL" -eq 0 ]; then
        fail "the suite itself exited with status $rc"
    fi
    if [ "$T_FAIL" -gt 0 ] && [ -n "$AGENT_LOG" ] && [ -s "$AGENT_LOG" ]; then
        echo "--- last lines of $AGENT_LOG"
        tail -n 15 "$AGENT_LOG"
    fi
    if [ "${OA_KEEP_TMP:-0}" = 1 ]; then echo "kept $T_DIR"; else rm -rf "$T_DIR"; fi
    echo "$T_PASS passed, $T_FAIL failed"
    # A bare `exit` in a trap would return the status from before the trap: say it.
    if [ "$T_FAIL" -eq 0 ]; then exit 0; fi
    exit 1
}
trap t_finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------------------
# Ports

# 0 when something accepts TCP connections on 127.0.0.1:PORT; bounded, as a full backlog can stall a connect.
port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

# Prints a loopback TCP port nothing uses, outside the kernel's ephemeral range so that outgoing connections do not
# take it in the meantime.
free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        if ! port_open "$p" && [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# wait_port PORT PID TIMEOUT: 0 once PORT accepts connections; 1 when PID died first or TIMEOUT passed.
wait_port() {
    local port=$1 pid=$2 deadline=$((SECONDS + $3))
    while [ $SECONDS -lt "$deadline" ]; do
        proc_alive "$pid" || return 1
        port_open "$port" && return 0
        sleep 0.05
    done
    return 1
}

# ---------------------------------------------------------------------------------------------------------------
# The agent

# start_agent ARGS...: starts the agent in the background and waits (at most OA_START_TIMEOUT s) until its port
# answers. Unless ARGS give them, adds --listen 127.0.0.1:<free port> (not when $START_PORT names the port a
# --config file chooses) and --data-dir $T_DIR/data (not with --config). Sets AGENT_PID, AGENT_PORT, AGENT_URL
# (https when --tls-cert is given) and AGENT_LOG (its stderr). Returns 1, with a failure counted, when the agent
# exits or does not answer in time.
start_agent() {
    local args=("$@") i a listen='' data_dir=0 scheme=http
    for ((i = 0; i < ${#args[@]}; i++)); do
        a=${args[i]}
        case $a in
        --listen) listen=${args[i + 1]:-} ;;
        --listen=*) listen=${a#--listen=} ;;
        --data-dir | --data-dir=* | --config | --config=*) data_dir=1 ;;
        --tls-cert | --tls-cert=*) scheme=https ;;
        esac
    done
    if [ -n "${START_PORT:-}" ] && [ -z "$listen" ]; then
        AGENT_PORT=$START_PORT
    elif [ -z "$listen" ]; then
        AGENT_PORT=$(free_port) || bail "no free loopback port"
        args=(--listen "127.0.0.1:$AGENT_PORT" "${args[@]}")
    else
        AGENT_PORT=${listen##*:}
    fi
    if [ "$data_dir" = 0 ]; then
        mkdir -p "$T_DIR/data"
        args+=(--data-dir "$T_DIR/data")
    fi
    T_AGENT_RUNS=$((T_AGENT_RUNS + 1))
    AGENT_LOG="$T_DIR/agent-$T_AGENT_RUNS.log"
    AGENT_URL="$scheme://127.0.0.1:$AGENT_PORT"
    # OA_AGENT_WRAPPER runs the agent under another program, e.g. valgrind (scripts/valgrind.sh): its words are
    # put before the binary. The wrapper must keep the agent's PID, signals and exit status (valgrind does).
    local wrapper=()
    [ -z "${OA_AGENT_WRAPPER:-}" ] || read -r -a wrapper <<<"$OA_AGENT_WRAPPER"
    "${wrapper[@]}" "$OA_AGENT_BIN" "${args[@]}" </dev/null >"$AGENT_LOG.stdout" 2>"$AGENT_LOG" &
    AGENT_PID=$!
    T_PIDS+=("$AGENT_PID")
    # The port opens before start-up finishes (the agent binds first); the start-up line says it is done.
    if wait_port "$AGENT_PORT" "$AGENT_PID" "$OA_START_TIMEOUT" &&
        wait_log 'event"?[=:]"?agent_started' "$OA_START_TIMEOUT"; then
        return 0
    fi
    local rc=running
    if ! proc_alive "$AGENT_PID"; then
        wait "$AGENT_PID"
        rc=$?
        forget_pid "$AGENT_PID"
    fi
    fail "agent starts: ocsp-agent ${args[*]}" "exit status: $rc; stderr:" "$(tail -n 10 "$AGENT_LOG")"
    return 1
}

# stop_agent [SIGNAL]: sends SIGNAL (default TERM) to the agent started last and asserts that it exits with
# status 0 within OA_STOP_TIMEOUT seconds (killed with SIGKILL otherwise).
stop_agent() {
    local sig=${1:-TERM} pid=$AGENT_PID rc
    if [ -z "$pid" ]; then
        fail "stop_agent: no agent is running"
        return 1
    fi
    kill -s "$sig" "$pid" 2>/dev/null
    if ! wait_exit "$pid" "$OA_STOP_TIMEOUT"; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        forget_pid "$pid"
        AGENT_PID=
        fail "agent exits after SIG$sig" "still running after ${OA_STOP_TIMEOUT}s; killed"
        return 1
    fi
    wait "$pid"
    rc=$?
    forget_pid "$pid"
    AGENT_PID=
    if [ "$rc" -eq 0 ]; then
        pass "agent exits with status 0 after SIG$sig"
    else
        fail "agent exits with status 0 after SIG$sig" "exit status $rc; stderr:" "$(tail -n 10 "$AGENT_LOG")"
    fi
}

# run_agent ARGS...: runs the agent in the foreground (bounded: 10 s) with $RUN_STDIN (default empty) on its
# standard input. Sets RUN_RC, RUN_OUT and RUN_ERR (stdout and stderr text).
run_agent() {
    printf '%s' "${RUN_STDIN-}" >"$T_DIR/run.stdin"
    timeout -k 2 10 "$OA_AGENT_BIN" "$@" <"$T_DIR/run.stdin" >"$T_DIR/run.stdout" 2>"$T_DIR/run.stderr"
    RUN_RC=$?
    RUN_OUT=$(cat "$T_DIR/run.stdout")
    RUN_ERR=$(cat "$T_DIR/run.stderr")
}

# assert_start_fails NAME ERE ARGS...: the agent run with ARGS refuses to start: a non-zero exit (not a timeout),
# and exactly one line on stderr that matches ERE.
assert_start_fails() {
    local name=$1 re=$2 lines problems=()
    shift 2
    run_agent "$@"
    lines=$(grep -c '' "$T_DIR/run.stderr")
    [ "$RUN_RC" -ne 0 ] || problems+=("exit status 0")
    [ "$RUN_RC" -ne 124 ] && [ "$RUN_RC" -ne 137 ] || problems+=("still running after 10 s: it started")
    [ "$lines" -eq 1 ] || problems+=("$lines lines on stderr, expected exactly 1")
    grep -qE -- "$re" "$T_DIR/run.stderr" || problems+=("stderr does not match: $re")
    if [ ${#problems[@]} -eq 0 ]; then
        pass "$name"
    else
        fail "$name" "ocsp-agent $*" "${problems[@]}" "exit status $RUN_RC; stderr:" "$(head -n 10 "$T_DIR/run.stderr")"
    fi
}

# stop_checked NAME: SIGTERM to the agent; it must finish its own shutdown (the agent_stopped line) within 5 s and
# the process must exit with status 0. The exit itself may take a while longer in a sanitizer build, whose leak
# check runs at exit and is slow on a loaded machine, so that part is given 30 s and its duration printed; when it
# takes longer the threads' states are shown.
stop_checked() {
    local name=$1 pid=$AGENT_PID t0 rc
    t0=$(date +%s%N)
    kill -TERM "$pid"
    if wait_log 'event=agent_stopped' 5; then
        pass "$name: the agent shuts down within 5 s of SIGTERM"
    else
        fail "$name: the agent shuts down within 5 s of SIGTERM" "$(tail -n 5 "$AGENT_LOG")"
    fi
    if ! wait_exit "$pid" 30; then
        fail "$name: the process exits after its shutdown" "threads (name, state, wait channel):" \
            "$(for t in /proc/"$pid"/task/*; do echo "$(cat "$t/comm") $(cut -d' ' -f3 "$t/stat") $(cat "$t/wchan")"; done)"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid"
    rc=$?
    forget_pid "$pid"
    AGENT_PID=
    echo "# $name: the process exited $((($(date +%s%N) - t0) / 1000000)) ms after SIGTERM"
    assert_eq "$name: exit status 0" 0 "$rc"
}

# The openssl responder over the PKI in $PKI on $RESP_PORT (both set by the suite). Readiness is read from ss: a
# bare connect would stall `openssl ocsp`, which serves one connection at a time and waits on a silent one.
OSSL_PID=
OSSL_RUNS=0

resp_listening() { ss -Hltn "sport = :$RESP_PORT" 2>/dev/null | grep -q LISTEN; }

# ossl_start [NMIN]: starts `openssl ocsp` on RESP_PORT (nextUpdate NMIN minutes ahead, default 5) and waits until
# it listens.
ossl_start() {
    local nmin=${1:-5} deadline=$((SECONDS + 10))
    OSSL_RUNS=$((OSSL_RUNS + 1))
    openssl ocsp -index "$PKI/index.txt" -port "$RESP_PORT" -rsigner "$PKI/ocsp.pem" -rkey "$PKI/ocsp.key" \
        -CA "$PKI/ca.pem" -nmin "$nmin" -ignore_err </dev/null >"$T_DIR/ossl-$OSSL_RUNS.log" 2>&1 &
    OSSL_PID=$!
    T_PIDS+=("$OSSL_PID")
    until resp_listening; do
        proc_alive "$OSSL_PID" || bail "openssl ocsp starts on port $RESP_PORT" "$(cat "$T_DIR/ossl-$OSSL_RUNS.log")"
        [ $SECONDS -lt "$deadline" ] || bail "openssl ocsp listens on port $RESP_PORT within 10 s"
        sleep 0.05
    done
}

# ossl_stop: stops the responder and waits until nothing listens on its port any more.
ossl_stop() {
    local deadline
    [ -n "$OSSL_PID" ] || return 0
    kill -TERM "$OSSL_PID" 2>/dev/null
    wait_exit "$OSSL_PID" 5 || kill -KILL "$OSSL_PID" 2>/dev/null
    wait "$OSSL_PID" 2>/dev/null
    forget_pid "$OSSL_PID"
    OSSL_PID=
    deadline=$((SECONDS + 5))
    while resp_listening; do
        [ $SECONDS -lt "$deadline" ] || bail "the responder's port $RESP_PORT is released"
        sleep 0.05
    done
}

# epoch_of RFC1123: seconds since the epoch, or nothing.
epoch_of() { date -u -d "$1" +%s 2>/dev/null; }

# hash_password: reads one password on stdin and prints its users-file hash. Normally `ocsp-agent passwd` (the
# production cost); with OA_TEST_KDF_ITERATIONS set (scripts/valgrind.sh does), the same PBKDF2-SHA256 format made
# by Python at that cost, so that an agent under memcheck verifies it in moments rather than a minute.
hash_password() {
    if [ -z "${OA_TEST_KDF_ITERATIONS:-}" ]; then
        "$OA_AGENT_BIN" passwd
        return
    fi
    python3 -c '
import base64, hashlib, os, sys
pw = sys.stdin.readline().rstrip("\r\n").encode()
n = int(sys.argv[1]); salt = os.urandom(16)
dk = hashlib.pbkdf2_hmac("sha256", pw, salt, n, 32)
print("$pbkdf2-sha256$%d$%s$%s" % (n, base64.b64encode(salt).decode(), base64.b64encode(dk).decode()))
' "$OA_TEST_KDF_ITERATIONS"
}

# make_users [ROLE...]: writes $USERS_FILE with one user per role ("<role>@example.com"; default: every role),
# passwords hashed by `ocsp-agent passwd`, and fills USER_PASS. Each hash costs a full KDF (seconds under ASan),
# so suites that need only an admin ask for just that.
make_users() {
    local roles=("$@") role pids=() pid entries=()
    [ $# -gt 0 ] || roles=("${ROLES[@]}")
    for role in "${roles[@]}"; do
        USER_PASS[$role]="Pw-$role-$RANDOM$RANDOM"
        printf '%s\n' "${USER_PASS[$role]}" | hash_password >"$T_DIR/hash.$role" 2>"$T_DIR/hash.$role.err" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || bail "ocsp-agent passwd fails" "$(cat "$T_DIR"/hash.*.err)"
    done
    for role in "${roles[@]}"; do
        entries+=("$(jq -cn --arg n "$role@example.com" --arg r "$role" --arg p "$(head -n 1 "$T_DIR/hash.$role")" \
            '{name: $n, role: $r, password: $p}')")
    done
    printf '%s\n' "${entries[@]}" | jq -s '{users: .}' >"$USERS_FILE" || bail "cannot write $USERS_FILE"
    rm -f "$T_DIR"/hash.*
}

# unix_cmd SOCKET COMMAND: writes COMMAND and a newline to the UNIX stream socket SOCKET, prints everything it
# answers until it closes (HAProxy's runtime API, one command per connection). $SYS_PYTHON, when a suite sets it,
# runs the client.
unix_cmd() {
    "${SYS_PYTHON:-python3}" - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    out += d
sys.stdout.write(out.decode(errors="replace"))
PY
}

# ---------------------------------------------------------------------------------------------------------------
# HTTP

# req METHOD PATH [CURL_ARGS...]: one request to the agent, as the user of role $REQ_USER (default admin; empty
# for no credentials), with $REQ_PASS overriding that user's password. Sets STATUS ("000" when no response),
# BODY, CURL_RC and HEADERS_FILE.
req() {
    local method=$1 path=$2 user=${REQ_USER-admin} auth=()
    shift 2
    if [ -n "$user" ]; then
        auth=(-u "$user@example.com:${REQ_PASS-${USER_PASS[$user]:-}}")
    fi
    : >"$HEADERS_FILE"
    : >"$T_DIR/last.body"
    STATUS=$(curl -sS --max-time "$OA_CURL_TIMEOUT" -o "$T_DIR/last.body" -D "$HEADERS_FILE" -w '%{http_code}' \
        -X "$method" "${CURL_TLS[@]}" "${auth[@]}" "$@" "$AGENT_URL$path" 2>"$T_DIR/last.curlerr")
    CURL_RC=$?
    BODY=$(cat "$T_DIR/last.body")
}

# put_json PATH BODY [CURL_ARGS...]: PUT with a JSON body.
put_json() {
    local path=$1 body=$2
    shift 2
    req PUT "$path" -H 'Content-Type: application/json' --data-binary "$body" "$@"
}

# header_value NAME: the value of header NAME in the last response (the last one when repeated).
header_value() {
    grep -i "^$1:" "$HEADERS_FILE" | tail -n 1 | cut -d: -f2- | sed 's/^[[:space:]]*//; s/\r$//'
}

# wait_log ERE [TIMEOUT]: 0 once a line of the current agent log matches ERE (default timeout 5 s).
wait_log() {
    local deadline=$((SECONDS + ${2:-5}))
    until grep -qE -- "$1" "$AGENT_LOG" 2>/dev/null; do
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

# wait_status JQ_EXPR [TIMEOUT]: polls GET /v1/ocsp/status every 100 ms until it answers 200 with a body for which
# JQ_EXPR is true; 0 when it did within TIMEOUT seconds (default 10). BODY is the last answer.
wait_status() {
    local deadline=$((SECONDS + ${2:-10}))
    while :; do
        req GET /v1/ocsp/status
        if [ "$STATUS" = 200 ] && printf '%s' "$BODY" | jq -e "$1" >/dev/null 2>&1; then return 0; fi
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# assert_wait_status NAME JQ_EXPR [TIMEOUT]: wait_status as an assertion; a failure shows the last status.
assert_wait_status() {
    if wait_status "$2" "${3:-10}"; then pass "$1"; else fail "$1" "last status: $(short "$BODY")"; fi
}

# ---------------------------------------------------------------------------------------------------------------
# PKI and OCSP responder

# new_cert NAME: a self-signed P-256 certificate for 127.0.0.1 and localhost in $tls/NAME.pem and NAME.key, for
# an HTTPS API ($tls: the suite's directory for them).
new_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$1" \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$tls/$1.key" -out "$tls/$1.pem" \
        2>"$tls/openssl.err" || bail "openssl req fails" "$(cat "$tls/openssl.err")"
}

# make_pki DIR RESPONDER_URL: a CA, a delegated OCSP responder and the proxy certificate (tests/support/make-pki.sh).
make_pki() {
    bash "$OA_SOURCE_DIR/tests/support/make-pki.sh" "$1" "$2" >/dev/null 2>"$T_DIR/make-pki.err" ||
        bail "make-pki.sh $1 $2 fails" "$(cat "$T_DIR/make-pki.err")"
}

# start_responder PKI_DIR PORT: a loopback OCSP responder (scripts/ocsp-responder.py) for the PKI; its responses
# are valid RESP_NMIN minutes (default 5: under HAProxy's 300 s margin, so suites that feed HAProxy ask for more). Sets
# RESP_PID, RESP_LOG (one line per request) and RESP_CONTROL (write a mode there to change its answers).
start_responder() {
    RESP_LOG="$T_DIR/responder.log"
    RESP_CONTROL="$T_DIR/responder.control"
    python3 "$OA_SOURCE_DIR/scripts/ocsp-responder.py" --pki "$1" --port "$2" --control "$RESP_CONTROL" \
        ${RESP_NMIN:+--nmin "$RESP_NMIN"} </dev/null 2>"$RESP_LOG" &
    RESP_PID=$!
    T_PIDS+=("$RESP_PID")
    wait_port "$2" "$RESP_PID" 10 || bail "the OCSP responder starts on port $2" "$(cat "$RESP_LOG")"
}

# make_resp_pki [PATH]: the PKI of a suite in $PKI ($T_DIR/pki) for a responder on a free loopback port. Sets
# RESP_PORT, and RESP_URL (http://127.0.0.1:RESP_PORT then PATH, default "/"), the certificates' OCSP URI.
make_resp_pki() {
    RESP_PORT=$(free_port) || bail "no free port for the OCSP responder"
    RESP_URL="http://127.0.0.1:$RESP_PORT${1-/}"
    PKI=$T_DIR/pki
    make_pki "$PKI" "$RESP_URL"
}

# start_pki_responder: make_resp_pki, then start_responder on that PKI and port.
start_pki_responder() {
    make_resp_pki
    start_responder "$PKI" "$RESP_PORT"
}

# ---------------------------------------------------------------------------------------------------------------
# Generic waits

# wait_until TIMEOUT COMMAND [ARGS...]: runs COMMAND every 100 ms until it succeeds; 0 when it did within TIMEOUT
# seconds (fractions allowed), 1 otherwise. COMMAND runs at least once, however short the timeout.
wait_until() {
    local timeout=$1 deadline
    shift
    deadline=$(($(date +%s%N) + $(awk -v t="$timeout" 'BEGIN { printf "%.0f", t * 1e9 }')))
    while :; do
        "$@" && return 0
        [ "$(date +%s%N)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# assert_wait_until NAME TIMEOUT COMMAND [ARGS...]: wait_until as an assertion; a failure shows $WAIT_DETAIL, which
# COMMAND may set to say what it saw last.
WAIT_DETAIL=
assert_wait_until() {
    local name=$1
    shift
    WAIT_DETAIL=
    if wait_until "$@"; then pass "$name"; else fail "$name" "not true within $1 s: ${*:2}" "$WAIT_DETAIL"; fi
}

# start_responder_nmin PKI_DIR PORT NMIN: start_responder whose responses carry a nextUpdate NMIN minutes ahead
# (start_responder's default is 5: too close for HAProxy, which staples nothing within 300 s of a nextUpdate).
start_responder_nmin() {
    RESP_LOG="$T_DIR/responder.log"
    RESP_CONTROL="$T_DIR/responder.control"
    python3 "$OA_SOURCE_DIR/scripts/ocsp-responder.py" --pki "$1" --port "$2" --control "$RESP_CONTROL" \
        --nmin "$3" </dev/null 2>"$RESP_LOG" &
    RESP_PID=$!
    T_PIDS+=("$RESP_PID")
    wait_port "$2" "$RESP_PID" 10 || bail "the OCSP responder starts on port $2" "$(cat "$RESP_LOG")"
}

# ---------------------------------------------------------------------------------------------------------------
# etcd: a real cluster of `etcd` members on loopback (start_etcd_cluster and the member helpers), shared with the
# benchmarks.
# shellcheck source=tests/support/etcd_cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/../support/etcd_cluster.sh"
