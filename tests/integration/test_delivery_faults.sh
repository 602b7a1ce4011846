#!/usr/bin/env bash
# Broken delivery targets never hold up the agent (API.md section 6): one agent delivers at once to six HAProxy
# runtime sockets that misbehave each in its own way (missing, refusing, silent, garbage, a megabyte reply, closed
# mid-reply), to a hook that hangs, crashes, floods its output or exits non-zero, and to a healthy .ocsp file.
# Meanwhile the API answers every request, the file target is delivered, each broken target shows its own reason in
# the status and the metrics, and a socket that starts to answer properly is delivered within 10 s.
source "$(dirname "$0")/lib.sh"

RESP_NMIN=30 # HAProxy's rules want more than 300 s of validity
start_pki_responder
make_users admin

# A fake runtime socket: MODE is stall (accept, never answer), garbage (a whole reply, not HAProxy's), huge (1 MiB),
# cut (close at once, no reply), or good (answers a push with HAProxy's success line, and a check with an empty
# reply, "holds nothing", so the agent pushes again). HAProxy ends every reply with an empty line.
# The mode is read from MODE_FILE for every connection, so a test can mend the socket while it runs.
cat >"$T_DIR/fake_runtime.py" <<'EOF'
import os, socket, sys, threading
kind, where, mode_file = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "unix":
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(where)
else:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(where)))
srv.listen(16)
held = []
def serve(conn):
    mode = open(mode_file).read().strip()
    line = b""
    while not line.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        line += chunk
    if mode == "stall":
        held.append(conn)  # never answered, never closed
        return
    if mode == "garbage":
        conn.sendall(b"\x00\x01 this is not HAProxy \xff\n\n")
    elif mode == "huge":
        conn.sendall(b"x" * (1 << 20))
    elif mode == "good":
        conn.sendall(b"OCSP Response updated!\n\n" if line.startswith(b"set ssl ocsp-response ") else b"\n")
    conn.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF

declare -A SOCK=()
start_fake() { # NAME KIND WHERE MODE
    printf '%s\n' "$4" >"$T_DIR/mode-$1"
    python3 "$T_DIR/fake_runtime.py" "$2" "$3" "$T_DIR/mode-$1" </dev/null 2>>"$T_DIR/fake.log" &
    T_PIDS+=("$!")
}
SOCK[missing]=$T_DIR/missing.sock
SOCK[refused]=127.0.0.1:$(free_port)
for name in stall garbage huge cut; do
    SOCK[$name]=$T_DIR/$name.sock
    start_fake "$name" unix "${SOCK[$name]}" "$name"
done
good_port=$(free_port)
SOCK[mended]=127.0.0.1:$good_port
start_fake mended tcp "$good_port" stall
deadline=$((SECONDS + 10))
until [ -S "$T_DIR/cut.sock" ] && [ -S "$T_DIR/stall.sock" ] && [ -S "$T_DIR/garbage.sock" ] &&
    [ -S "$T_DIR/huge.sock" ] && port_open "$good_port"; do
    [ $SECONDS -lt $deadline ] || bail "the fake runtime sockets start" "$(cat "$T_DIR/fake.log")"
    sleep 0.05
done

# The hook misbehaves as HOOK_MODE says: hang, crash, flood, fail, or ok.
HOOK=$T_DIR/hook.sh
cat >"$HOOK" <<EOF
#!/bin/sh
echo "\$1" >>"$T_DIR/hook.runs"
case "\$(cat "$T_DIR/hook.mode")" in
hang) sleep 600 ;;
crash) kill -SEGV \$\$ ;;
flood) head -c 5000000 /dev/zero | tr '\\0' 'x'; head -c 5000000 /dev/zero | tr '\\0' 'y' >&2; exit 4 ;;
fail) echo "nginx: [emerg] the test says no" >&2; exit 3 ;;
esac
exit 0
EOF
chmod 755 "$HOOK"
echo hang >"$T_DIR/hook.mode"

mkdir -p "$T_DIR/haproxy"
cp "$PKI/proxy.pem" "$T_DIR/haproxy/proxy.pem"
args=()
for name in missing refused stall garbage huge cut mended; do args+=(--haproxy-socket "${SOCK[$name]}"); done
# The hook is killed after 2 s here (30 s in production).
OA_TEST_HOOK_TIMEOUT_MS=2000 start_agent --users "$USERS_FILE" --cert "$PKI/proxy-chain.pem" --time-scale 0.05 \
    --haproxy-crt "$T_DIR/haproxy/proxy.pem" --staple-hook "$HOOK" "${args[@]}" ||
    bail "the agent does not start with seven sockets, a hook and a .ocsp file"

# delivery_of PREFIX: the status's delivery entry whose target is PREFIX (exactly), from the last status body.
delivery_of() { printf '%s' "$BODY" | jq -c --arg t "$1" '[.delivery[] | select(.target == $t)][0]'; }
# wait_target TARGET JQ_EXPR TIMEOUT_S: until the status's entry for TARGET satisfies JQ_EXPR.
wait_target() {
    local deadline=$((SECONDS + $3))
    while :; do
        req GET /v1/ocsp/status
        ENTRY=$(delivery_of "$1")
        printf '%s' "$ENTRY" | jq -e "$2" >/dev/null 2>&1 && return 0
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
assert_target() { # NAME TARGET JQ_EXPR [TIMEOUT_S]
    if wait_target "$2" "$3" "${4:-15}"; then pass "$1"; else fail "$1" "last: $ENTRY"; fi
}

put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60}'
assert_status "PUT enables OCSP" 200
assert_wait_status "the first answer is GOOD" '.state == "valid"'

# The API keeps answering at once while the hook hangs and a socket stalls: 50 requests, each under 2 s.
slow=0
for _ in $(seq 50); do
    t0=$(date +%s%N)
    req GET /v1/ocsp/status
    [ "$STATUS" = 200 ] || slow=$((slow + 1000))
    [ $((($(date +%s%N) - t0) / 1000000)) -lt 2000 ] || slow=$((slow + 1))
done
assert_eq "50 status requests answered 200, each within 2 s, while targets misbehave" 0 "$slow"

assert_target "the .ocsp file target is delivered beside the broken ones" "file:$T_DIR/haproxy/proxy.pem.ocsp" \
    '.state == "delivered"'
# A new staple arrives every 3 s: the two files are compared when neither is being replaced.
same=0
deadline=$((SECONDS + 10))
while [ $SECONDS -lt $deadline ]; do
    if [ "$(sha256sum <"$T_DIR/data/ocsp.der")" = "$(sha256sum <"$T_DIR/haproxy/proxy.pem.ocsp")" ]; then
        same=1
        break
    fi
    sleep 0.1
done
assert_eq "the .ocsp file holds the staple" 1 "$same"
assert_target "a missing socket: failed, saying so" "haproxy:${SOCK[missing]}" \
    '.state == "failed" and (.last_error | test("No such file|no such file|missing|ENOENT"; "i"))'
assert_target "a refusing port: failed, saying so" "haproxy:${SOCK[refused]}" \
    '.state == "failed" and (.last_error | test("refused"; "i"))'
assert_target "a silent socket: failed at the deadline" "haproxy:${SOCK[stall]}" \
    '.state == "failed" and (.last_error | test("time|deadline|no answer|within"; "i"))'
assert_target "a garbage reply: failed, quoting it" "haproxy:${SOCK[garbage]}" \
    '.state == "failed" and (.last_error | test("not HAProxy"))'
assert_target "a megabyte reply: failed as too large" "haproxy:${SOCK[huge]}" \
    '.state == "failed" and (.last_error | test("large|long"; "i"))'
assert_target "a socket closed at once: failed" "haproxy:${SOCK[cut]}" \
    '.state == "failed" and (.last_error | length > 0)'
assert_target "a hanging hook: killed at its timeout and reported" "hook:$HOOK" \
    '.state == "failed" and (.last_error | test("time|kill|signal"; "i"))'

# The hook's other failures, each reported with what it said or how it died.
echo crash >"$T_DIR/hook.mode"
assert_target "a crashing hook: reported with its signal" "hook:$HOOK" \
    '.state == "failed" and (.last_error | test("SIGSEGV|signal 11|segmentation"; "i"))' 20
echo flood >"$T_DIR/hook.mode"
assert_target "a hook flooding its output: reported with its exit status and first stderr line" "hook:$HOOK" \
    '.state == "failed" and (.last_error | test("4")) and (.last_error | test("yyyy"))' 20
echo fail >"$T_DIR/hook.mode"
assert_target "a failing hook: reported with its exit status and stderr" "hook:$HOOK" \
    '.state == "failed" and (.last_error | test("3")) and (.last_error | test("the test says no"))' 20
echo ok >"$T_DIR/hook.mode"
assert_target "the hook works again: delivered" "hook:$HOOK" '.state == "delivered"' 20

# A socket that starts to answer properly is delivered within the reconciliation bound.
printf 'good\n' >"$T_DIR/mode-mended"
t0=$SECONDS
assert_target "a socket mended: delivered within 10 s" "haproxy:${SOCK[mended]}" '.state == "delivered"' 10
echo "# mended socket delivered after $((SECONDS - t0)) s"

req GET /metrics
assert_match "metrics: failed tries counted for a broken socket" \
    "ocsp_agent_staple_deliveries_total\\{target=\"haproxy:${SOCK[garbage]}\",result=\"error\"\\} [1-9]" "$BODY"
assert_match "metrics: a broken socket does not hold the staple" \
    "ocsp_agent_staple_delivered\\{target=\"haproxy:${SOCK[garbage]}\"\\} 0" "$BODY"
assert_match "metrics: the mended socket holds the staple" \
    "ocsp_agent_staple_delivered\\{target=\"haproxy:${SOCK[mended]}\"\\} 1" "$BODY"

# One log line per change of a target's state, not one per try: the garbage socket failed many times, logged once.
tries=$(printf '%s\n' "$BODY" | sed -n "s/^ocsp_agent_staple_deliveries_total{target=\"haproxy:${SOCK[garbage]//\//\\/}\",result=\"error\"} //p")
lines=$(grep -c "event=staple_delivery_failed target=haproxy:${SOCK[garbage]} " "$AGENT_LOG")
echo "# garbage socket: $tries failed tries, $lines log lines"
assert_eq "the garbage socket's failures are logged once" 1 "$lines"
stop_checked "the agent beside broken targets"
t_finish
