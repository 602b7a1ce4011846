#!/usr/bin/env bash
# Live reload (SIGHUP): the agent survives the signal; a replaced users file is in force from the next request
# (a removed user and an old password get 401, a new password 200); a replaced API certificate is what new TLS
# connections see while an open one finishes on the old; every broken file is refused with reload_failed naming it,
# and the agent keeps serving with the users and certificate it had; ocsp_agent_reloads_total counts each group.
source "$(dirname "$0")/lib.sh"

tls=$T_DIR/tls
mkdir -p "$tls"
new_cert api-one
new_cert api-two
cat "$tls/api-one.pem" "$tls/api-two.pem" >"$tls/both.pem"
serial_of() { openssl x509 -in "$1" -noout -serial; }
SERIAL_ONE=$(serial_of "$tls/api-one.pem")
SERIAL_TWO=$(serial_of "$tls/api-two.pem")
[ "$SERIAL_ONE" != "$SERIAL_TWO" ] || bail "the two certificates have the same serial"

# The files the agent is given; the suite replaces them the way an operator would (write aside, rename over).
LIVE_CERT=$tls/live.pem
LIVE_KEY=$tls/live.key
cp "$tls/api-one.pem" "$LIVE_CERT"
cp "$tls/api-one.key" "$LIVE_KEY"
install_file() { # SRC DST: atomically replaces DST with a copy of SRC
    cp "$1" "$2.new" && mv -f "$2.new" "$2"
}

# write_users NAME:ROLE... : writes $USERS_FILE with these users ("<NAME>@example.com") and the passwords in
# USER_PASS[NAME] (hashed now); NAME:ROLE:keep reuses the hash the file holds for that user.
write_users() {
    local spec name role keep entries=() hash
    for spec in "$@"; do
        IFS=: read -r name role keep <<<"$spec"
        if [ "$keep" = keep ]; then
            hash=$(jq -r --arg n "$name@example.com" '.users[] | select(.name == $n) | .password' "$USERS_FILE")
        else
            hash=$(printf '%s\n' "${USER_PASS[$name]}" | hash_password) || bail "hashing a password fails"
        fi
        entries+=("$(jq -cn --arg n "$name@example.com" --arg r "$role" --arg p "$hash" \
            '{name: $n, role: $r, password: $p}')")
    done
    printf '%s\n' "${entries[@]}" | jq -s '{users: .}' >"$USERS_FILE.new" && mv -f "$USERS_FILE.new" "$USERS_FILE" ||
        bail "cannot write $USERS_FILE"
}

USER_PASS[admin]="Pw-admin-$RANDOM$RANDOM"
USER_PASS[bob]="Pw-bob-$RANDOM$RANDOM"
USER_PASS[carol]="Pw-carol-$RANDOM$RANDOM"
write_users admin:admin bob:admin carol:admin

start_agent --users "$USERS_FILE" --tls-cert "$LIVE_CERT" --tls-key "$LIVE_KEY" || bail "the agent does not start"
CURL_TLS=(--cacert "$tls/both.pem")

# metric VALUE_NAME: the value of ocsp_agent_reloads_total{result="VALUE_NAME"} ("" when absent).
metric() {
    REQ_USER=admin req GET /metrics
    printf '%s\n' "$BODY" | sed -n "s/^ocsp_agent_reloads_total{result=\"$1\"} //p"
}
reloads() { printf '%s %s' "$(metric ok)" "$(metric failed)"; }
# count_log ERE: lines of the agent's log that match.
count_log() { grep -cE -- "$1" "$AGENT_LOG"; }
# served_serial: the serial of the certificate a new TLS connection to the agent is shown.
served_serial() {
    timeout 5 openssl s_client -connect "127.0.0.1:$AGENT_PORT" -servername localhost </dev/null 2>/dev/null |
        openssl x509 -noout -serial 2>/dev/null
}
# status_as NAME [PASSWORD]: the status code of GET /v1/ocsp as NAME.
status_as() {
    REQ_USER=$1 REQ_PASS=${2-${USER_PASS[$1]}} req GET /v1/ocsp
    printf '%s' "$STATUS"
}

EXP_OK=0
EXP_FAILED=0
# hup NAME OK FAILED: sends SIGHUP and waits until the reload is done (the counter moved by OK ok and FAILED
# failed group attempts; the reload runs at once in the signal's callback).
hup() {
    EXP_OK=$((EXP_OK + $2))
    EXP_FAILED=$((EXP_FAILED + $3))
    kill -HUP "$AGENT_PID"
    assert_wait_eq "$1: reload done (ok failed)" 15 "$EXP_OK $EXP_FAILED" reloads
}

assert_eq "before any reload: the counter is 0 0" "0 0" "$(reloads)"
req GET /metrics
grep -q '^# TYPE ocsp_agent_reloads_total counter$' <<<"$BODY" && pass "metrics: ocsp_agent_reloads_total is a counter" ||
    fail "metrics: ocsp_agent_reloads_total is a counter" "$(short "$BODY")"
assert_eq "metrics: one HELP line" 1 "$(grep -c '^# HELP ocsp_agent_reloads_total ' <<<"$BODY")"
for u in admin bob carol; do assert_eq "before: $u is let in" 200 "$(status_as $u)"; done
assert_eq "before: new connections see the first certificate" "$SERIAL_ONE" "$(served_serial)"

# --- SIGHUP with nothing changed: the agent stays, nothing changes, both groups count as ok
hup "unchanged files" 2 0
if proc_alive "$AGENT_PID"; then pass "SIGHUP does not stop the agent"; else fail "SIGHUP does not stop the agent"; fi
assert_eq "unchanged files: no reloaded line" 0 "$(count_log 'event=reloaded ')"
assert_eq "unchanged files: every user still in" "200 200 200" "$(status_as admin) $(status_as bob) $(status_as carol)"
assert_eq "unchanged files: the same certificate" "$SERIAL_ONE" "$(served_serial)"

# --- users: carol removed, bob's password changed, admin kept as is
OLD_BOB=${USER_PASS[bob]}
USER_PASS[bob]="Pw-bob-new-$RANDOM$RANDOM"
write_users admin:admin:keep bob:admin
hup "users replaced" 2 0
assert_wait "users replaced: logged with the counts" 5 \
    wait_log 'event=reloaded group=users file=[^ ]*users.json users=2 added=0 removed=1 changed=1' 0
assert_eq "a removed user gets 401 from the next request" 401 "$(status_as carol)"
assert_eq "a changed password: the old one gets 401" 401 "$(status_as bob "$OLD_BOB")"
assert_eq "a changed password: the new one gets 200" 200 "$(status_as bob)"
assert_eq "an unchanged user still gets 200" 200 "$(status_as admin)"
REQ_USER=carol req GET /v1/ocsp
assert_error "a removed user: the usual 401 answer" 401 unauthorized

# --- TLS: a keep-alive session opened before the replacement finishes on the old certificate
mkfifo "$T_DIR/sc.in"
openssl s_client -connect "127.0.0.1:$AGENT_PORT" -servername localhost -CAfile "$tls/both.pem" -crlf -nocommands \
    <"$T_DIR/sc.in" >"$T_DIR/sc.out" 2>&1 &
SC_PID=$!
T_PIDS+=("$SC_PID")
exec 7>"$T_DIR/sc.in"
AUTH_B64=$(printf '%s' "admin@example.com:${USER_PASS[admin]}" | base64 -w0)
sc_request() { printf 'GET /v1/ocsp HTTP/1.1\nHost: localhost\nAuthorization: Basic %s\n\n' "$AUTH_B64" >&7; }
sc_answers() { grep -o 'HTTP/1.1 200 OK' "$T_DIR/sc.out" | wc -l; }
sc_request
assert_wait_eq "keep-alive session: first answer" 10 1 sc_answers
assert_match "keep-alive session: shown the first certificate" 'CN ?= ?api-one' "$(grep -m1 'subject=' "$T_DIR/sc.out")"

install_file "$tls/api-two.key" "$LIVE_KEY"
install_file "$tls/api-two.pem" "$LIVE_CERT"
hup "certificate replaced" 2 0
assert_wait "certificate replaced: logged with subject, serial and notAfter" 5 \
    wait_log "event=reloaded group=tls file=[^ ]*live.pem subject=\"?CN=api-two\"? serial=${SERIAL_TWO#serial=} not_after=\"[^\"]+ GMT\"" 0
assert_eq "new connections see the new certificate's serial" "$SERIAL_TWO" "$(served_serial)"
req GET /v1/ocsp
assert_status "curl over a new connection, new certificate verified" 200
sc_request
assert_wait_eq "keep-alive session opened before the swap: its next request is answered" 10 2 sc_answers
if proc_alive "$SC_PID"; then pass "keep-alive session: still open on the old certificate"; else
    fail "keep-alive session: still open on the old certificate" "$(tail -n 5 "$T_DIR/sc.out")"; fi
exec 7>&-
wait_exit "$SC_PID" 5 || kill "$SC_PID" 2>/dev/null
wait "$SC_PID" 2>/dev/null
forget_pid "$SC_PID"

# --- broken files: each refused, named, and the agent keeps its users and certificate
# refused NAME ERE_FILE: after one more reload_failed line naming the file, the old state is still served.
N_FAILED=0
refused() {
    N_FAILED=$((N_FAILED + 1))
    assert_wait_eq "$1: reload_failed logged" 5 "$N_FAILED" count_log 'level=error event=reload_failed '
    assert_match "$1: the line names the file" "event=reload_failed group=[a-z]+ file=$2 " \
        "$(grep 'event=reload_failed ' "$AGENT_LOG" | tail -n 1)"
    assert_eq "$1: the users in force stay (admin, bob new, bob old, carol)" "200 200 401 401" \
        "$(status_as admin) $(status_as bob) $(status_as bob "$OLD_BOB") $(status_as carol)"
    assert_eq "$1: the certificate in force stays" "$SERIAL_TWO" "$(served_serial)"
}
cp "$USERS_FILE" "$T_DIR/users.good"

if [ "$(id -u)" = 0 ]; then
    # root reads any file whatever its mode: a missing file is the unreadable one.
    mv "$USERS_FILE" "$T_DIR/users.aside"
    hup "users file unreadable" 1 1
    mv "$T_DIR/users.aside" "$USERS_FILE"
else
    chmod 000 "$USERS_FILE"
    hup "users file unreadable" 1 1
    chmod 600 "$USERS_FILE"
fi
refused "users file unreadable" "[^ ]*users.json"
assert_match "users file unreadable: the reason" 'reason="users file [^ ]*users.json: cannot be read' \
    "$(grep 'event=reload_failed ' "$AGENT_LOG" | tail -n 1)"

printf '{"users": [ this is not JSON\n' >"$USERS_FILE"
hup "users file not JSON" 1 1
refused "users file not JSON" "[^ ]*users.json"
assert_match "users file not JSON: the reason" 'not valid JSON' "$(grep 'event=reload_failed ' "$AGENT_LOG" | tail -n 1)"

jq '.users[1].role = "root"' "$T_DIR/users.good" >"$USERS_FILE"
hup "users file with an unknown role" 1 1
refused "users file with an unknown role" "[^ ]*users.json"
assert_match "unknown role: the reason names the entry" 'users\[1\]: unknown role' \
    "$(grep 'event=reload_failed ' "$AGENT_LOG" | tail -n 1)"
cp "$T_DIR/users.good" "$USERS_FILE"

mv "$LIVE_CERT" "$tls/live.aside"
hup "certificate file unreadable" 1 1
refused "certificate file unreadable" "[^ ]*live.pem"
mv "$tls/live.aside" "$LIVE_CERT"

printf 'this is not PEM\n' >"$tls/garbage.pem"
install_file "$tls/garbage.pem" "$LIVE_CERT"
hup "certificate file not PEM" 1 1
refused "certificate file not PEM" "[^ ]*live.pem"
install_file "$tls/api-two.pem" "$LIVE_CERT"

install_file "$tls/api-one.key" "$LIVE_KEY"
hup "key that does not match the certificate" 1 1
refused "key that does not match the certificate" "[^ ]*live.key"
assert_match "key mismatch: the reason" 'does not match the certificate' \
    "$(grep 'event=reload_failed ' "$AGENT_LOG" | tail -n 1)"
install_file "$tls/api-two.key" "$LIVE_KEY"

# --- good files again: nothing changed, both ok; then back to the first certificate, which is taken
hup "files restored" 2 0
assert_eq "files restored: still the second certificate" "$SERIAL_TWO" "$(served_serial)"
install_file "$tls/api-one.key" "$LIVE_KEY"
install_file "$tls/api-one.pem" "$LIVE_CERT"
hup "first certificate back" 2 0
assert_eq "first certificate back: served" "$SERIAL_ONE" "$(served_serial)"
assert_eq "metrics: every attempt counted" "$EXP_OK $EXP_FAILED" "$(reloads)"
assert_eq "metrics: the counts" "16 6" "$EXP_OK $EXP_FAILED"
stop_agent

# --- --no-auth and plain HTTP: nothing to reload, and SIGHUP still does not stop the agent
CURL_TLS=()
start_agent --no-auth || bail "the agent does not start with --no-auth"
kill -HUP "$AGENT_PID"
assert_wait "--no-auth: SIGHUP is logged" 5 wait_log 'event=reload_requested' 0
req GET /metrics
assert_status "--no-auth: still answering after SIGHUP" 200
assert_match "--no-auth: no group, nothing counted" 'ocsp_agent_reloads_total\{result="ok"\} 0' "$BODY"
assert_eq "--no-auth: no reload_failed" 0 "$(count_log 'event=reload_failed')"
stop_agent
