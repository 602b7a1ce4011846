#!/usr/bin/env bash
# Cluster mode over TLS with a password: the store is a redis-server that only speaks TLS, requires a client
# certificate (tls-auth-clients yes) and a password (requirepass).
#
#   - start-up refuses bad TLS options with one line naming the option (missing file, a key without its
#     certificate, a key that is not the certificate's, TLS files without --cluster-tls);
#   - two nodes with the right CA, client certificate and password share the configuration and the status; the
#     store holds what they wrote (read back with redis-cli over TLS); a rediss:// URL connects without
#     --cluster-tls;
#   - a node that cannot trust the store (another CA), presents no client certificate, gives a wrong password,
#     speaks plain TCP to the TLS port, or reaches the store by a name its certificate does not carry, never
#     connects: it logs store_unavailable with the reason, answers PUT with 503 cluster_store_unavailable, goes on
#     serving GET, and never shows the password in its log;
#   - the store restarted: the TLS nodes reconnect on their own and PUT works again.
source "$(dirname "$0")/lib.sh"

TIME_SCALE=0.02

make_users admin
start_pki_responder

source "$(dirname "$0")/cluster_lib.sh"

# The store's PKI: a CA, the server's certificate for IP 127.0.0.1 only (so "localhost" is a name it does not
# carry), a client certificate, and an unrelated CA.
S=$T_DIR/store-pki
mkdir -p "$S"
ossl() { openssl "$@" 2>>"$T_DIR/store-pki.log" >/dev/null || bail "openssl $1 for the store's PKI" "$(tail -5 "$T_DIR/store-pki.log")"; }
for ca in ca other-ca; do
    ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=store $ca" \
        -keyout "$S/$ca.key" -out "$S/$ca.pem"
done
issue() { # NAME SUBJECT_CN EXT
    ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" -keyout "$S/$1.key" \
        -out "$S/$1.csr"
    printf '%s\n' "$3" >"$S/$1.ext"
    ossl x509 -req -in "$S/$1.csr" -CA "$S/ca.pem" -CAkey "$S/ca.key" -CAcreateserial -days 2 \
        -extfile "$S/$1.ext" -out "$S/$1.pem"
}
issue server "store" "subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth"
issue client "ocsp-agent node" "extendedKeyUsage=clientAuth"
chmod 600 "$S"/*.key

PASS=$(openssl rand -hex 12)
REDIS_ARGS=(--port 0 --tls-port "$REDIS_PORT" --tls-cert-file "$S/server.pem" --tls-key-file "$S/server.key"
    --tls-ca-cert-file "$S/ca.pem" --tls-auth-clients yes --requirepass "$PASS")
REDIS_CLI_ARGS=(--tls --cacert "$S/ca.pem" --cert "$S/client.pem" --key "$S/client.key" -a "$PASS" --no-auth-warning)
TLS_OPTS=(--cluster-tls --cluster-ca "$S/ca.pem" --cluster-cert "$S/client.pem" --cluster-key "$S/client.key"
    --cluster-password "$PASS")

# ---------------------------------------------------------------------------------------------------------------
echo "# start-up refusals"
U=(--users "$USERS_FILE" --data-dir "$T_DIR/x" --cluster "$CLUSTER")
assert_start_fails "--cluster-ca names a missing file" '^ocsp-agent: --cluster-ca: .*missing\.pem' \
    "${U[@]}" --cluster-tls --cluster-ca "$S/missing.pem"
assert_start_fails "--cluster-key without --cluster-cert" '^ocsp-agent: --cluster-key: needs --cluster-cert' \
    "${U[@]}" --cluster-tls --cluster-key "$S/client.key"
assert_start_fails "--cluster-cert without --cluster-key" '^ocsp-agent: --cluster-cert: needs --cluster-key' \
    "${U[@]}" --cluster-tls --cluster-cert "$S/client.pem"
assert_start_fails "a client key that is not the certificate's" '^ocsp-agent: --cluster-key: .*server\.key' \
    "${U[@]}" --cluster-tls --cluster-cert "$S/client.pem" --cluster-key "$S/server.key"
assert_start_fails "--cluster-ca without --cluster-tls" '^ocsp-agent: --cluster-ca: needs --cluster-tls' \
    "${U[@]}" --cluster-ca "$S/ca.pem"
assert_start_fails "--cluster-tls without --cluster" '^ocsp-agent: --cluster-tls: needs --cluster' \
    --users "$USERS_FILE" --data-dir "$T_DIR/x" --cluster-tls

start_redis
[ "$(rcli PING)" = PONG ] && pass "redis-cli reaches the TLS store" || bail "redis-cli reaches the TLS store"

echo "# two nodes over TLS share configuration and status"
start_node n1 "${TLS_OPTS[@]}"
start_node n2 "${TLS_OPTS[@]}"
for n in n1 n2; do
    on "$n"
    wait_log 'event=store_connected' 10 && pass "$n connects to the TLS store" || fail "$n connects to the TLS store"
done
on n1
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 1234}'
assert_status "PUT on n1" 200
assert_eq "the store holds the change" 1234 "$(rcli HGET ocsp-agent:conf conf | jq -r .query_frequency)"
wait_conf n2 '.query_frequency == 1234 and .ocsp_functionality == true' 5 && pass "n2 serves n1's change" ||
    fail "n2 serves n1's change" "$BODY"
for n in n1 n2; do
    wait_status_on "$n" '.cert_status == "GOOD"' 15 && pass "$n serves a GOOD status" || fail "$n serves a GOOD status" "$BODY"
done
# One consistent moment: n1, n2, then n1 again, read again when n1's answer changed in between (a new query).
produced_at_on() { on "$1"; req GET /v1/ocsp/status; printf '%s' "$BODY" | jq -r .produced_at; }
n1_steady_around_n2() {
    p1=$(produced_at_on n1)
    p2=$(produced_at_on n2)
    [ "$(produced_at_on n1)" = "$p1" ]
}
wait_until 10 n1_steady_around_n2 || fail "n1 serves the same response before and after n2 is read (within 10 s)"
assert_eq "both nodes serve the same response" "$p1" "$p2"
assert_match "the store holds the shared status" '"type":"status"' "$(rcli GET "$(key_of status)")"

echo "# rediss:// turns TLS on without --cluster-tls"
TLS_FILES=("${TLS_OPTS[@]:1}")
NODE_CLUSTER="rediss://127.0.0.1:$REDIS_PORT" start_node by-scheme "${TLS_FILES[@]}"
wait_log 'event=store_connected' 10 && pass "a rediss:// node connects" || fail "a rediss:// node connects" "$(tail -n 5 "$AGENT_LOG")"
wait_conf by-scheme '.query_frequency == 1234' 5 && pass "the rediss:// node serves the shared configuration" ||
    fail "the rediss:// node serves the shared configuration" "$BODY"
stop_checked "the rediss:// node stops cleanly"
unset 'N_PID[by-scheme]' 'N_PORT[by-scheme]' 'N_LOG[by-scheme]'

# refused NAME REASON_ERE ARGS...: a node started with ARGS never reaches the store.
refused() {
    local name=$1 re=$2
    shift 2
    start_node "$name" "$@"
    if wait_log 'event=store_unavailable' 10; then
        pass "$name: store_unavailable is logged"
        assert_match "$name: the log says why" "$re" "$(grep 'event=store_unavailable' "$AGENT_LOG" | head -n 1)"
    else
        fail "$name: store_unavailable is logged" "$(tail -n 5 "$AGENT_LOG")"
    fi
    assert_no_match "$name never connects" 'event=store_connected' "$(cat "$AGENT_LOG")"
    put_json /v1/ocsp '{"query_frequency": 999}'
    assert_error "$name: PUT while the store is out of reach" 503 cluster_store_unavailable
    req GET /v1/ocsp
    assert_status "$name: GET still answers" 200
    assert_file_lacks "$name: the password is never logged" "$AGENT_LOG" "$PASS"
    stop_checked "$name stops cleanly"
}

echo "# nodes that must not connect"
refused bad-ca 'certificate verify failed|verif' --cluster-tls --cluster-ca "$S/other-ca.pem" \
    --cluster-cert "$S/client.pem" --cluster-key "$S/client.key" --cluster-password "$PASS"
refused no-cert 'certificate required|closed|reset' --cluster-tls --cluster-ca "$S/ca.pem" --cluster-password "$PASS"
refused bad-pass 'WRONGPASS|invalid|password' --cluster-tls --cluster-ca "$S/ca.pem" --cluster-cert "$S/client.pem" \
    --cluster-key "$S/client.key" --cluster-password "not-$PASS"
refused plain 'reset|closed|protocol' --cluster-password "$PASS"
NODE_CLUSTER="redis://localhost:$REDIS_PORT" refused by-name 'hostname mismatch' "${TLS_OPTS[@]}"
rcli HGET ocsp-agent:conf conf | jq -e '.query_frequency == 1234' >/dev/null &&
    pass "no refused node changed the store" || fail "no refused node changed the store"

echo "# SIGHUP reads the store's TLS files again, all or nothing, for the next connection"
# n3 reads copies of the files, which the suite rewrites.
R=$T_DIR/n3-tls
mkdir -p "$R"
cp "$S/ca.pem" "$S/client.pem" "$S/client.key" "$R/"
# At debug level, so that each failed reconnection is logged with its reason (store_retry_failed).
start_node n3 --cluster-tls --cluster-ca "$R/ca.pem" --cluster-cert "$R/client.pem" --cluster-key "$R/client.key" \
    --cluster-password "$PASS" --log-level debug
wait_log 'event=store_connected' 10 && pass "n3 connects with its copies" || fail "n3 connects with its copies"
count_log() { grep -cE -- "$1" "$AGENT_LOG"; }
kill -HUP "$AGENT_PID"
assert_wait_eq "n3: SIGHUP runs a reload" 5 1 count_log 'event=reload_requested'
assert_eq "n3: unchanged files: nothing reloaded, nothing refused" "0 0" \
    "$(count_log 'event=reloaded .*group=cluster_tls') $(count_log 'event=reload_failed')"
printf 'not a certificate\n' >"$R/client.pem"
kill -HUP "$AGENT_PID"
assert_wait_eq "n3: a broken client certificate is refused" 5 1 count_log 'event=reload_failed .*group=cluster_tls'
assert_match "n3: reload_failed names the certificate file" "file=$R/client.pem" \
    "$(grep 'event=reload_failed' "$AGENT_LOG" | tail -n 1)"
cp "$S/client.pem" "$R/client.pem"
cp "$S/other-ca.pem" "$R/ca.pem"
kill -HUP "$AGENT_PID"
assert_wait_eq "n3: a new CA file is reloaded" 5 1 count_log 'event=reloaded .*group=cluster_tls'
put_json /v1/ocsp '{"response_timeout": 2}'
assert_status "n3: the connection that is up keeps working (PUT)" 200

echo "# the store restarts: the TLS nodes come back on their own"
stop_redis
on n1
wait_log 'event=store_unavailable' 10 && pass "n1 notices the outage" || fail "n1 notices the outage"
put_json /v1/ocsp '{"query_frequency": 777}'
assert_error "PUT during the outage" 503 cluster_store_unavailable
start_redis
for n in n1 n2; do
    on "$n"
    wait_log 'event=store_reconnected' 15 && pass "$n reconnects over TLS" || fail "$n reconnects over TLS"
done
# n3 now trusts another CA: its next connections fail, until its CA file is put back and reloaded.
on n3
wait_until 15 eval '[ "$(count_log "event=store_(unavailable|retry_failed) .*verif")" -ge 1 ]' &&
    pass "n3: the reloaded CA is used for the next connection (the store is not trusted)" ||
    fail "n3: the reloaded CA is used for the next connection" "$(grep store_ "$AGENT_LOG" | tail -n 3)"
assert_no_match "n3 has not reconnected" 'event=store_reconnected' "$(cat "$AGENT_LOG")"
cp "$S/ca.pem" "$R/ca.pem"
kill -HUP "$AGENT_PID"
assert_wait_eq "n3: the right CA is reloaded" 5 2 count_log 'event=reloaded .*group=cluster_tls'
wait_log 'event=store_reconnected' 15 && pass "n3 reconnects with the CA put back" ||
    fail "n3 reconnects with the CA put back" "$(tail -n 5 "$AGENT_LOG")"
assert_file_lacks "n3: the password is never logged" "$AGENT_LOG" "$PASS"
stop_checked "n3 stops cleanly"
wait_conf n1 '.query_frequency == 1234' 1 && pass "the configuration survived on n1" || fail "the configuration survived on n1"
on n2
put_json /v1/ocsp '{"query_frequency": 4321}'
assert_status "PUT on n2 after the restart" 200
wait_conf n1 '.query_frequency == 4321' 5 && pass "n1 serves n2's change" || fail "n1 serves n2's change" "$BODY"
assert_eq "the store holds it" 4321 "$(rcli HGET ocsp-agent:conf conf | jq -r .query_frequency)"

for n in n1 n2; do
    on "$n"
    assert_file_lacks "$n: the password is never logged" "$AGENT_LOG" "$PASS"
    stop_checked "$n stops cleanly"
done
t_finish
