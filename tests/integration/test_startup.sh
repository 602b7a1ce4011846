#!/usr/bin/env bash
# The command line: bad options and files stop start-up with one stderr line naming them, --version, --help,
# passwd, --config, and a clean exit on SIGTERM and SIGINT.
source "$(dirname "$0")/lib.sh"

make_users admin
port=$(free_port)
base=(--users "$USERS_FILE" --listen "127.0.0.1:$port" --data-dir "$T_DIR/data")
mkdir -p "$T_DIR/data"

# --- --version, --help, passwd
run_agent --version
assert_eq "--version exits 0" 0 "$RUN_RC"
assert_match "--version prints the name and a version" '^ocsp-agent [0-9]+\.[0-9]+\.[0-9]+' "$RUN_OUT"
assert_eq "--version prints one line" 1 "$(grep -c '' "$T_DIR/run.stdout")"
assert_eq "--version writes nothing on stderr" "" "$RUN_ERR"
run_agent --help
assert_eq "--help exits 0" 0 "$RUN_RC"
for word in --listen --tls-cert --tls-key --users --no-auth --cert --issuer --responder-url --data-dir \
    --log-format --log-level --time-scale --config passwd --version; do
    assert_match "--help mentions $word" "(^|[^a-z-])$word([^a-z-]|$)" "$RUN_OUT"
done

RUN_STDIN=$'s3cret-Passw0rd\n' run_agent passwd
assert_eq "passwd exits 0" 0 "$RUN_RC"
assert_match "passwd prints a PBKDF2 hash" '^\$pbkdf2-sha256\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$' "$RUN_OUT"
first=$RUN_OUT
RUN_STDIN=$'s3cret-Passw0rd\n' run_agent passwd
assert_ne "passwd salts every hash" "$first" "$RUN_OUT"
assert_no_match "passwd never echoes the password" 's3cret-Passw0rd' "$RUN_OUT$RUN_ERR"
RUN_STDIN='' run_agent passwd
assert_ne "passwd with no input fails" 0 "$RUN_RC"
assert_eq "passwd with no input prints no hash" "" "$RUN_OUT"

# --- bad options: one line naming the option, non-zero exit
assert_start_fails "unknown option" '--query-frequency' "${base[@]}" --query-frequency 60
assert_start_fails "option without its value" '--listen' "${base[@]}" --listen
assert_start_fails "stray argument" 'stray' "${base[@]}" stray
for bad in 127.0.0.1 127.0.0.1:99999 127.0.0.1:0x10 127.0.0.1:abc :9443 999.1.1.1:9443 '[::1:9443'; do
    assert_start_fails "bad --listen $bad" '--listen' --users "$USERS_FILE" --data-dir "$T_DIR/data" --listen "$bad"
done
for bad in abc 0 -1 10000 1e9 ''; do
    assert_start_fails "bad --time-scale '$bad'" '--time-scale' "${base[@]}" --time-scale "$bad"
done
assert_start_fails "bad --log-level" '--log-level' "${base[@]}" --log-level verbose
assert_start_fails "bad --log-format" '--log-format' "${base[@]}" --log-format xml
assert_start_fails "bad --max-connections" '--max-connections' "${base[@]}" --max-connections 0

# --- bad files
assert_start_fails "missing --users file" "$T_DIR/no-such-users.json" \
    --users "$T_DIR/no-such-users.json" --listen "127.0.0.1:$port" --data-dir "$T_DIR/data"
corrupt_users() { # NAME CONTENT
    printf '%s' "$2" >"$T_DIR/users-bad.json"
    assert_start_fails "corrupt users file: $1" "$T_DIR/users-bad.json" \
        --users "$T_DIR/users-bad.json" --listen "127.0.0.1:$port" --data-dir "$T_DIR/data"
}
hash=$(jq -r '.users[0].password' "$USERS_FILE")
corrupt_users "not JSON" '{"users": ['
corrupt_users "no users array" '{"people": []}'
corrupt_users "unknown role" "{\"users\": [{\"name\": \"a\", \"role\": \"superuser\", \"password\": \"$hash\"}]}"
corrupt_users "plain-text password" '{"users": [{"name": "a", "role": "admin", "password": "secret"}]}'
corrupt_users "duplicate user" "{\"users\": [{\"name\": \"a\", \"role\": \"admin\", \"password\": \"$hash\"},
    {\"name\": \"a\", \"role\": \"none\", \"password\": \"$hash\"}]}"
corrupt_users "unknown key" "{\"users\": [{\"name\": \"a\", \"role\": \"admin\", \"password\": \"$hash\", \"x\": 1}]}"

make_resp_pki
assert_start_fails "missing --cert file" "$T_DIR/no-such-cert.pem" "${base[@]}" --cert "$T_DIR/no-such-cert.pem"
printf 'not a certificate\n' >"$T_DIR/garbage.pem"
assert_start_fails "garbage --cert file" "$T_DIR/garbage.pem" "${base[@]}" --cert "$T_DIR/garbage.pem"
# proxy.pem alone has no issuer after it.
assert_start_fails "--cert without its issuer" "issuer|$T_DIR/pki/proxy.pem" "${base[@]}" --cert "$T_DIR/pki/proxy.pem"
assert_start_fails "missing --issuer file" "$T_DIR/no-such-ca.pem" \
    "${base[@]}" --cert "$T_DIR/pki/proxy.pem" --issuer "$T_DIR/no-such-ca.pem"
assert_start_fails "--issuer that did not issue the certificate" "issuer|$T_DIR/pki/ocsp.pem" \
    "${base[@]}" --cert "$T_DIR/pki/proxy.pem" --issuer "$T_DIR/pki/ocsp.pem"
# ... while the leaf with --issuer is accepted.
start_agent --users "$USERS_FILE" --cert "$T_DIR/pki/proxy.pem" --issuer "$T_DIR/pki/ca.pem" &&
    pass "--cert with --issuer starts"
req GET /v1/ocsp
assert_json "--cert with --issuer: responder_url from the certificate" .responder_url "$RESP_URL"
stop_agent

# The port is taken.
start_agent --users "$USERS_FILE" || bail "the agent does not start"
# Start-up work may be logged before the bind fails; the last line must say which address is taken.
run_agent --users "$USERS_FILE" --listen "127.0.0.1:$AGENT_PORT" --data-dir "$T_DIR/data2"
assert_match "a port already in use: non-zero exit" '^([1-9]|[1-9][0-9]|1[01][0-9]|12[0-3])$' "$RUN_RC"
assert_match "a port already in use: the last line names the address" "127\.0\.0\.1:$AGENT_PORT" \
    "$(tail -n 1 "$T_DIR/run.stderr")"
req GET /v1/ocsp
assert_status "the first agent still serves" 200
stop_agent

# --- --config
cfg_port=$(free_port)
jq -n --arg l "127.0.0.1:$cfg_port" --arg u "$USERS_FILE" --arg d "$T_DIR/data" \
    '{listen: $l, users: $u, data_dir: $d, log_level: "debug", time_scale: 1}' >"$T_DIR/config.json"
START_PORT=$cfg_port start_agent --config "$T_DIR/config.json" && pass "--config: listens on the file's address"
req GET /v1/ocsp
assert_status "--config: serves" 200
stop_agent
cli_port=$(free_port)
start_agent --config "$T_DIR/config.json" --listen "127.0.0.1:$cli_port" && pass "--config with --listen starts"
req GET /v1/ocsp
assert_status "the command line wins over --config" 200
if port_open "$cfg_port"; then fail "nothing listens on the file's port when --listen is given"; else
    pass "nothing listens on the file's port when --listen is given"; fi
stop_agent
assert_start_fails "--config: missing file" "$T_DIR/no-such-config.json" --config "$T_DIR/no-such-config.json"
printf '{"listen": ' >"$T_DIR/config-bad.json"
assert_start_fails "--config: not JSON" "$T_DIR/config-bad.json" --config "$T_DIR/config-bad.json"
jq '. + {query_frequency: 60}' "$T_DIR/config.json" >"$T_DIR/config-bad.json"
assert_start_fails "--config: unknown key" 'query_frequency' --config "$T_DIR/config-bad.json"
jq '.time_scale = "fast"' "$T_DIR/config.json" >"$T_DIR/config-bad.json"
assert_start_fails "--config: a string for a number" 'time_scale|time-scale' --config "$T_DIR/config-bad.json"

# --- start-up log and --time-scale warning
start_agent --users "$USERS_FILE" --time-scale 0.5 || bail "the agent does not start with --time-scale"
assert_match "the start-up log names the listen address" "127\.0\.0\.1:$AGENT_PORT" "$(cat "$AGENT_LOG")"
assert_match "--time-scale 0.5 logs a warning" 'level="?warn.*time.scale|time.scale.*level"?warn' \
    "$(cat "$AGENT_LOG")"
stop_agent
start_agent --users "$USERS_FILE" || bail "the agent does not start"
assert_no_match "no time-scale warning at 1" 'level="?warn.*time.scale' "$(cat "$AGENT_LOG")"
# --- signals: an orderly exit with status 0
stop_agent TERM
start_agent --users "$USERS_FILE" || bail "the agent does not start"
req GET /v1/ocsp
assert_status "a request before SIGINT" 200
stop_agent INT
if port_open "$AGENT_PORT"; then fail "the port is closed after SIGINT"; else pass "the port is closed after SIGINT"; fi
# SIGTERM while a client holds an idle keep-alive connection open.
start_agent --users "$USERS_FILE" || bail "the agent does not start"
exec 7<>"/dev/tcp/127.0.0.1/$AGENT_PORT"
stop_agent TERM
exec 7>&-
