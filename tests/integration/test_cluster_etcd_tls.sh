#!/usr/bin/env bash
# Cluster mode on etcd over TLS with a user: the store is one etcd member that speaks only HTTPS, requires a client
# certificate signed by its CA (--client-cert-auth) and authentication; the agents' user holds a role with read-write
# on /ocsp-agent/ only.
#
#   - start-up refuses --cluster-user without --cluster-password with one line;
#   - two nodes with the right CA, client certificate, user and password connect, share the configuration (the store
#     holds it, read back with etcdctl as root) and, once querying is on, both serve GOOD;
#   - a node that gives a wrong password, logs in as a user without the role, trusts another CA, presents no client
#     certificate, speaks plain HTTP to the TLS port, or reaches the member by a name its certificate does not carry,
#     never connects: it logs store_unavailable with the reason, answers PUT with 503 cluster_store_unavailable, goes
#     on serving GET, and never shows its password in its log; none of them changes the store.
source "$(dirname "$0")/lib.sh"

TIME_SCALE=0.02 # query_frequency 60 s -> a period of 1.2 s

make_users admin
start_pki_responder

# The store's PKI: a CA, the member's certificate for IP 127.0.0.1 only (so "localhost" is a name it does not carry),
# a client certificate, and an unrelated CA. etcd's JSON gateway reaches its own gRPC server with the member's
# certificate, so that one must also be good for client authentication; and the gateway refuses a client
# certificate with a common name (etcd would otherwise take it for a user name), so the client's subject has none.
S=$T_DIR/store-pki
mkdir -p "$S"
ossl() {
    openssl "$@" 2>>"$T_DIR/store-pki.log" >/dev/null ||
        bail "openssl $1 for the store's PKI" "$(tail -5 "$T_DIR/store-pki.log")"
}
for ca in ca other-ca; do
    ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=etcd $ca" \
        -keyout "$S/$ca.key" -out "$S/$ca.pem"
done
issue() { # NAME SUBJECT EXT
    ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" -keyout "$S/$1.key" -out "$S/$1.csr"
    printf '%s\n' "$3" >"$S/$1.ext"
    ossl x509 -req -in "$S/$1.csr" -CA "$S/ca.pem" -CAkey "$S/ca.key" -CAcreateserial -days 2 \
        -extfile "$S/$1.ext" -out "$S/$1.pem"
}
issue server "/CN=etcd member" "subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth"
issue client "/O=ocsp-agent/OU=node" "extendedKeyUsage=clientAuth"
chmod 600 "$S"/*.key

ROOT_PASS=$(openssl rand -hex 12)
PASS=$(openssl rand -hex 12)
STRANGER_PASS=$(openssl rand -hex 12)

# etcdctl over TLS with the client certificate, as $ETCD_USER ("root:PASSWORD" once authentication is on).
ETCD_USER=
ectl() {
    etcdctl --endpoints "$ETCD_ENDPOINTS" --cacert "$S/ca.pem" --cert "$S/client.pem" --key "$S/client.key" \
        ${ETCD_USER:+--user "$ETCD_USER"} --dial-timeout=2s --command-timeout=3s "$@"
}

# cluster_etcd_lib.sh starts its store with start_etcd_cluster, whose members speak plain HTTP and let anyone in.
# This suite's store is one member that speaks only TLS and wants a client certificate; it is replaced here, before
# that file is sourced. etcd_wait_healthy asks it through ectl, with the certificate.
start_etcd_cluster() {
    if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
        echo "skipped: etcd and etcdctl are needed (Debian: etcd-server, etcd-client)"
        exit 0
    fi
    ETCD_N=1 ETCD_NAME[1]=m1 ETCD_DATA[1]=$T_DIR/etcd-m1 ETCD_LOG[1]=$T_DIR/etcd-m1.log
    ETCD_CLIENT_PORT[1]=$(_etcd_port) || bail "no free port for etcd"
    ETCD_PEER_PORT[1]=$(_etcd_port) || bail "no free port for etcd"
    local client="https://127.0.0.1:${ETCD_CLIENT_PORT[1]}" peer="http://127.0.0.1:${ETCD_PEER_PORT[1]}"
    ETCD_ENDPOINTS=$client
    ETCD_URL="etcd://127.0.0.1:${ETCD_CLIENT_PORT[1]}"
    etcd --name m1 --data-dir "${ETCD_DATA[1]}" --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" --initial-cluster "m1=$peer" \
        --cert-file "$S/server.pem" --key-file "$S/server.key" --client-cert-auth --trusted-ca-file "$S/ca.pem" \
        </dev/null >>"${ETCD_LOG[1]}" 2>&1 &
    ETCD_PID[1]=$!
    T_PIDS+=("${ETCD_PID[1]}")
    etcd_wait_healthy "the TLS member starts"
}
source "$(dirname "$0")/cluster_etcd_lib.sh"

# Authentication: root, the agents' user with read-write on /ocsp-agent/, and a user without that role. etcdctl
# grants root its role itself when `auth enable` finds it missing.
while read -r what; do
    # shellcheck disable=SC2086 # each line is a command's words
    ectl $what >>"$T_DIR/etcdctl.log" 2>&1 || bail "etcdctl ${what%%:*}" "$(tail -n 3 "$T_DIR/etcdctl.log")"
done <<EOF
user add root:$ROOT_PASS
user add agent:$PASS
user add stranger:$STRANGER_PASS
role add ocsp
role grant-permission ocsp --prefix=true readwrite /ocsp-agent/
user grant-role agent ocsp
auth enable
EOF
ETCD_USER=root:$ROOT_PASS
ectl put /ocsp-agent/probe x >/dev/null 2>&1 && pass "root writes to the store over TLS" ||
    fail "root writes to the store over TLS" "$(ectl put /ocsp-agent/probe x 2>&1 | tail -n 2)"
ectl del /ocsp-agent/probe >/dev/null 2>&1
assert_match "without a user, etcd refuses to read" 'permission denied|user name is empty' \
    "$(ETCD_USER= ectl get /ocsp-agent/conf 2>&1)"

TLS_FILES=(--cluster-tls --cluster-ca "$S/ca.pem" --cluster-cert "$S/client.pem" --cluster-key "$S/client.key")
TLS_OPTS=("${TLS_FILES[@]}" --cluster-user agent --cluster-password "$PASS")

# ---------------------------------------------------------------------------------------------------------------
echo "# start-up refusals"
assert_start_fails "--cluster-user without --cluster-password" '^ocsp-agent: --cluster-user: needs --cluster-password' \
    --users "$USERS_FILE" --data-dir "$T_DIR/x" --cluster "$CLUSTER" "${TLS_FILES[@]}" --cluster-user agent

echo "# two nodes over TLS as the agents' user share configuration and status"
for n in n1 n2; do start_connected "$n" "${TLS_OPTS[@]}"; done
querying_on n1 n2
assert_conf_on "serves n1's change" 2 '.ocsp_functionality == true and .query_frequency == 60' n2
assert_jq "the store holds n1's change (read as root)" '.ocsp_functionality == true and .query_frequency == 60' \
    "$(stored_conf)"
assert_jq "the store holds the shared status" '.type == "status" and .cert_status == "GOOD"' "$(stored_status)"

echo "# nodes that must not connect"
# Each line: a node, its password (the one it must never log), what the log must say of the refusal (an ERE, dots
# for spaces), then its options (@ stands for the store's PKI directory). All are started at once, then checked.
R_NAMES=()
declare -A R_PASS=() R_WHY=()
CA="--cluster-tls --cluster-ca @ca.pem" OTHER_CA="--cluster-tls --cluster-ca @other-ca.pem"
CERT="--cluster-cert @client.pem --cluster-key @client.key"
while read -r name pass why opts; do
    R_NAMES+=("$name") R_PASS[$name]=$pass R_WHY[$name]=$why
    read -r -a args <<<"${opts//@/$S/}"
    case $name in by-name) NODE_CLUSTER="etcd://localhost:${ETCD_CLIENT_PORT[1]}" start_node "$name" "${args[@]}" ;;
    *) start_node "$name" "${args[@]}" ;; esac
done <<EOF
bad-pass not-$PASS authentication.failed $CA $CERT --cluster-user agent --cluster-password not-$PASS
no-role $STRANGER_PASS permission.denied $CA $CERT --cluster-user stranger --cluster-password $STRANGER_PASS
bad-ca $PASS unable.to.get.local.issuer $OTHER_CA $CERT --cluster-user agent --cluster-password $PASS
no-cert $PASS alert.bad.certificate|certificate.required $CA --cluster-user agent --cluster-password $PASS
plain $PASS closed.the.connection|HTTP.request.to.an.HTTPS --cluster-user agent --cluster-password $PASS
by-name $PASS hostname.mismatch $CA $CERT --cluster-user agent --cluster-password $PASS
EOF
for name in "${R_NAMES[@]}"; do
    on "$name"
    # The one store_unavailable line says why, whatever step was refused.
    if wait_log 'event=store_unavailable' 10; then
        why=$(grep -m1 'event=store_unavailable' "$AGENT_LOG")
        assert_match "$name: the log says why the store is unavailable" "${R_WHY[$name]}" "$why"
    else
        fail "$name: store_unavailable is logged" "$(tail -n 5 "$AGENT_LOG")"
    fi
    assert_file_lacks "$name never connects" "$AGENT_LOG" 'event=store_connected'
    put_json /v1/ocsp '{"query_frequency": 999}'
    assert_error "$name: PUT while the store refuses it" 503 cluster_store_unavailable
    req GET /v1/ocsp
    assert_status "$name: GET still answers" 200
    assert_file_lacks "$name: its password is never logged" "$AGENT_LOG" "${R_PASS[$name]}"
    stop_checked "$name stops cleanly"
    unset "N_PID[$name]" "N_PORT[$name]" "N_LOG[$name]"
done
assert_jq "no refused node changed the store" '.query_frequency == 60' "$(stored_conf)"

echo "# the TLS nodes still share changes"
on n2
put_json /v1/ocsp '{"query_frequency": 90}'
assert_status "PUT on n2" 200
assert_conf_on "serves n2's change" 2 '.query_frequency == 90' n1
assert_jq "the store holds n2's change" '.query_frequency == 90' "$(stored_conf)"
for n in n1 n2; do
    on "$n"
    stop_checked "$n stops cleanly"
done
# Every node's log, to its last line: the connected nodes' too.
assert_eq "no node ever logged a password" "" \
    "$(grep -lF -e "$PASS" -e "$STRANGER_PASS" -e "$ROOT_PASS" "$T_DIR"/agent-*.log)"
t_finish
