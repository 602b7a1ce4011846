#!/usr/bin/env bash
# A rolling certificate replacement in cluster mode (API.md section 7, last bullet): three nodes and one Redis;
# certificate A (AIA: responder A) is replaced by certificate B (AIA: responder B, the same CA) on n1, then n2,
# then n3 (the --cert file renamed over, then SIGHUP).
#
#   - the store keys the status by CertID, and each node registers the CertID it holds;
#   - while the nodes hold different certificates, every node serves its own certificate's response (its staple
#     file is checked with `openssl ocsp -respin`), and its status names its own certificate's responder;
#   - each responder sees one query per period (1.2 s) for its certificate, never one per node holding it;
#   - once no node holds A any more, A's keys are gone from the store.
source "$(dirname "$0")/lib.sh"

TIME_SCALE=0.02 # query_frequency 60 s -> 1.2 s
PERIOD_MS=1200

make_users admin
make_resp_pki
RESP_A_PORT=$RESP_PORT
RESP_B_PORT=$(free_port) || bail "no free port for the second OCSP responder"
C=$T_DIR/certs
mkdir -p "$C"
# B: from the CA of A, its own serial, responder B in its AIA (openssl 3's req signs with -CA).
printf '[ req ]\ndistinguished_name = dn\n[ dn ]\n' >"$C/req.cnf"
openssl req -x509 -new -config "$C/req.cnf" -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$C/b.key" \
    -subj "/O=b/CN=localhost" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -set_serial 0x1002 -days 30 \
    -addext "basicConstraints=critical,CA:FALSE" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "authorityInfoAccess=OCSP;URI:http://127.0.0.1:$RESP_B_PORT/" -addext "authorityKeyIdentifier=keyid" \
    -out "$C/b.pem" 2>"$C/openssl.err" || bail "making certificate B" "$(cat "$C/openssl.err")"
cp "$PKI/proxy.pem" "$C/a.pem"
cat "$C/b.pem" "$PKI/ca.pem" >"$C/b-chain.pem"
end=$(date -u -d "$(openssl x509 -in "$C/b.pem" -noout -enddate | cut -d= -f2)" +%y%m%d%H%M%SZ)
printf 'V\t%s\t\t1002\tunknown\t/O=b/CN=localhost\n' "$end" >>"$PKI/index.txt"

# Two responders on the same PKI, each with its own log of one line per request.
for r in A B; do
    port_var=RESP_${r}_PORT
    python3 "$OA_SOURCE_DIR/scripts/ocsp-responder.py" --pki "$PKI" --port "${!port_var}" </dev/null \
        2>"$T_DIR/responder-$r.log" &
    T_PIDS+=("$!")
    wait_port "${!port_var}" "$!" 10 || bail "responder $r starts" "$(cat "$T_DIR/responder-$r.log")"
done
queries_of() { grep -cE '^ocsp-responder: (GET|POST) ' "$T_DIR/responder-$1.log"; } # A|B

source "$(dirname "$0")/cluster_lib.sh"
start_store

# Each node watches its own copy of the certificate, so that it can be replaced on one node at a time.
NODES=(n1 n2 n3)
for n in "${NODES[@]}"; do
    mkdir -p "$T_DIR/data-$n"
    cp "$PKI/proxy-chain.pem" "$T_DIR/cert-$n.pem"
    start_agent --users "$USERS_FILE" --cert "$T_DIR/cert-$n.pem" --data-dir "$T_DIR/data-$n" --node-id "$n" \
        --time-scale "$TIME_SCALE" --cluster "$CLUSTER" || bail "node $n starts"
    N_PID[$n]=$AGENT_PID
    N_PORT[$n]=$AGENT_PORT
    N_LOG[$n]=$AGENT_LOG
done
for n in "${NODES[@]}"; do
    on "$n"
    wait_log 'event=store_connected' 5 || bail "$n connects to the store"
done

certid_of() { store_node_entry "$1" | jq -r '.certid // empty'; } # NODE
registered() { [ -n "$(certid_of "$1")" ]; }
wait_until 3 registered n3
ID_A=$(certid_of n1)
assert_match "a node registers the hex of its CertID" '^[0-9a-f]{40}$' "$ID_A"
assert_eq "nodes holding the same certificate register the same CertID" "$ID_A $ID_A" "$(certid_of n2) $(certid_of n3)"

on n1
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60}'
assert_status "OCSP enabled on the cluster" 200

# staple_for NODE CERT: the node's staple file is a good response for CERT (serial and issuer: its CertID).
staple_for() {
    openssl ocsp -respin "$T_DIR/data-$1/ocsp.der" -issuer "$PKI/ca.pem" -cert "$2" -VAfile "$PKI/ocsp.pem" \
        -no_nonce 2>/dev/null | grep -q "^$2: good$"
}
# serves NODE CERT RESPONDER_PORT: the node's status is valid from that responder, and its staple is CERT's.
serves() {
    on "$1"
    req GET /v1/ocsp/status
    [ "$STATUS" = 200 ] && printf '%s' "$BODY" | jq -e --arg u "http://127.0.0.1:$3/" \
        '.state == "valid" and .cert_status == "GOOD" and .responder_url == $u' >/dev/null && staple_for "$1" "$2"
}
for n in "${NODES[@]}"; do
    assert_wait "$n serves certificate A's response" 10 serves "$n" "$C/a.pem" "$RESP_A_PORT"
done
assert_match "the status is stored under A's CertID" '"type":"status"' "$(store_record status "$ID_A")"

# replace NODE: B renamed over the node's --cert file, then SIGHUP.
replace() {
    cp "$C/b-chain.pem" "$T_DIR/cert-$1.pem.tmp" && mv -f "$T_DIR/cert-$1.pem.tmp" "$T_DIR/cert-$1.pem"
    kill -HUP "${N_PID[$1]}"
}

echo "# n1 holds B, n2 and n3 hold A"
replace n1
assert_wait "n1 serves certificate B's response" 6 serves n1 "$C/b.pem" "$RESP_B_PORT"
ID_B=$(certid_of n1)
assert_match "n1 registers B's CertID" '^[0-9a-f]{40}$' "$ID_B"
assert_ne "B's CertID is not A's" "$ID_A" "$ID_B"
for n in n2 n3; do
    assert_wait "$n still serves certificate A's response" 3 serves "$n" "$C/a.pem" "$RESP_A_PORT"
done
assert_wait_match "n2 or n3 holds A's lease" 4 '^n[23]$' store_record lease "$ID_A"
assert_wait_eq "n1, alone with B, holds B's lease" 4 n1 store_record lease "$ID_B"

# Each responder's requests in a window of five periods: one per period (4 to 6), whereas a query per node would
# give responder A twice as many. Counted between two moments in the responders' own logs.
a0=$(queries_of A)
b0=$(queries_of B)
t_end=$(($(now_ms) + 5 * PERIOD_MS))
sleep_until "$t_end" # a deliberate window: the count over five periods is the assertion
a1=$(queries_of A)
b1=$(queries_of B)
assert_between "responder A: one query per period in 6 s for two nodes holding A" 4 6 $((a1 - a0))
assert_between "responder B: one query per period in 6 s for one node holding B" 4 6 $((b1 - b0))
for n in n2 n3; do
    assert_wait "$n still serves certificate A's response after the window" 1 serves "$n" "$C/a.pem" "$RESP_A_PORT"
done
assert_wait "n1 still serves certificate B's response after the window" 1 serves n1 "$C/b.pem" "$RESP_B_PORT"

echo "# n2, then n3, hold B"
replace n2
assert_wait "n2 serves certificate B's response" 6 serves n2 "$C/b.pem" "$RESP_B_PORT"
assert_wait "n3 still serves certificate A's response" 3 serves n3 "$C/a.pem" "$RESP_A_PORT"
replace n3
assert_wait "n3 serves certificate B's response" 6 serves n3 "$C/b.pem" "$RESP_B_PORT"
for n in n1 n2; do
    assert_wait "$n still serves certificate B's response" 1 serves "$n" "$C/b.pem" "$RESP_B_PORT"
done
old_keys() { store_keys_naming "$ID_A"; }
assert_wait_eq "A's keys are gone from the store once no node holds A" 4 "" old_keys
assert_match "B's status is stored" '"type":"status"' "$(store_record status "$ID_B")"
assert_eq "the store knows B's CertID only" "$ID_B" "$(store_certids)"

# Responder A is asked no more.
a0=$(queries_of A)
b0=$(queries_of B)
t_end=$(($(now_ms) + 3 * PERIOD_MS))
sleep_until "$t_end" # a deliberate window: no query for A may happen in it
assert_eq "responder A is not asked once no node holds A" 0 $(($(queries_of A) - a0))
assert_between "responder B: one query per period for three nodes holding B" 2 4 $(($(queries_of B) - b0))

for n in "${NODES[@]}"; do
    on "$n"
    stop_checked "$n stops cleanly"
done
