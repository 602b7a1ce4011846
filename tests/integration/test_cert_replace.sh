#!/usr/bin/env bash
# The watched certificate replaced while the agent runs (API.md section 7), against two real `openssl ocsp`
# responders: certificate A names the first in its AIA, certificate B the second. --cert is a Kubernetes-style
# secret mount (tls.crt -> ..data/tls.crt, ..data -> a versioned directory). A replacement rewritten in place,
# swapped by symlink, renamed over, or followed by SIGHUP is put in force: the old staple is gone at once from
# ocsp.der, the status and the --haproxy-crt file, the new certificate's responder is asked at once, and its answer
# is served. Broken files of every kind are refused with reload_failed (once per content) and the old state stays.
# Finally 50 replacements alternate A and B during a stream of API requests: every request is answered, and the
# staple file never holds a response for the certificate not in force.
source "$(dirname "$0")/lib.sh"

make_resp_pki
RESP2_PORT=$(free_port) || bail "no free port for the second OCSP responder"
RESP2_URL="http://127.0.0.1:$RESP2_PORT/"
C=$T_DIR/certs
mkdir -p "$C"

cat >"$C/ext.cnf" <<EOF
[ b ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityInfoAccess = OCSP;URI:$RESP2_URL
authorityKeyIdentifier = keyid
[ noaia ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
EOF
# leaf NAME SERIAL EXT CA_PEM CA_KEY: a P-256 leaf in $C/NAME.pem and NAME.key.
leaf() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$C/$1.key" 2>/dev/null &&
        openssl req -new -key "$C/$1.key" -subj "/O=$1/CN=localhost" -out "$C/$1.csr" 2>/dev/null &&
        openssl x509 -req -in "$C/$1.csr" -CA "$4" -CAkey "$5" -set_serial "0x$2" -days 30 -extfile "$C/ext.cnf" \
            -extensions "$3" -out "$C/$1.pem" 2>"$C/openssl.err" || bail "making certificate $1" "$(cat "$C/openssl.err")"
}
cp "$PKI/proxy.pem" "$C/a.pem"
leaf b 1002 b "$PKI/ca.pem" "$PKI/ca.key"
leaf noaia 1003 noaia "$PKI/ca.pem" "$PKI/ca.key"
# A stranger: issued by another CA that bears the same name as ours.
openssl req -new -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=ocsp-agent test CA" -days 30 \
    -addext "basicConstraints=critical,CA:TRUE" -keyout "$C/other-ca.key" -out "$C/other-ca.pem" 2>/dev/null ||
    bail "making the other CA"
leaf stranger 1004 b "$C/other-ca.pem" "$C/other-ca.key"
# An expired certificate from our CA (the openssl 3.0 command line cannot date one in the past).
python3 - "$PKI/ca.pem" "$PKI/ca.key" "$C/expired.pem" <<'PY' || bail "making the expired certificate"
import datetime, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
ca = x509.load_pem_x509_certificate(open(sys.argv[1], "rb").read())
ca_key = serialization.load_pem_private_key(open(sys.argv[2], "rb").read(), None)
key = ec.generate_private_key(ec.SECP256R1())
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=expired.test"))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(0x1005)
        .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), False)
        .sign(ca_key, hashes.SHA256()))
open(sys.argv[3], "wb").write(cert.public_bytes(serialization.Encoding.PEM))
PY
cat "$C/a.pem" "$PKI/ca.pem" >"$C/a-chain.pem" # A again, other bytes, the same CertID

# Both responders know A and B (and the certificate without AIA, which nobody asks about).
for n in b noaia; do
    end=$(date -u -d "$(openssl x509 -in "$C/$n.pem" -noout -enddate | cut -d= -f2)" +%y%m%d%H%M%SZ)
    printf 'V\t%s\t\t%s\tunknown\t/O=%s/CN=localhost\n' "$end" "$(openssl x509 -in "$C/$n.pem" -noout -serial |
        cut -d= -f2)" "$n" >>"$PKI/index.txt"
done
# ossl_on PORT: one more `openssl ocsp` on PORT, listening before this returns.
ossl_on() {
    local port=$1 deadline=$((SECONDS + 10))
    openssl ocsp -index "$PKI/index.txt" -port "$port" -rsigner "$PKI/ocsp.pem" -rkey "$PKI/ocsp.key" \
        -CA "$PKI/ca.pem" -nmin 60 -ignore_err </dev/null >"$T_DIR/ossl-$port.log" 2>&1 &
    T_PIDS+=("$!")
    until ss -Hltn "sport = :$port" 2>/dev/null | grep -q LISTEN; do
        [ $SECONDS -lt "$deadline" ] || bail "openssl ocsp listens on port $port" "$(cat "$T_DIR/ossl-$port.log")"
        sleep 0.05
    done
}
ossl_on "$RESP_PORT"
ossl_on "$RESP2_PORT"

# The secret mount, as the kubelet lays it out.
M=$T_DIR/mount
mkdir -p "$M/..v1"
cp "$C/a.pem" "$M/..v1/tls.crt"
ln -s ..v1 "$M/..data"
ln -s ..data/tls.crt "$M/tls.crt"
CERT=$M/tls.crt
ISSUER=$C/issuer.pem
cp "$PKI/ca.pem" "$ISSUER"
HCRT=$C/haproxy.pem
cat "$C/a.pem" "$PKI/proxy.key" >"$HCRT"
STAPLE=$T_DIR/data/ocsp.der

make_users admin
start_agent --users "$USERS_FILE" --cert "$CERT" --issuer "$ISSUER" --haproxy-crt "$HCRT" ||
    bail "the agent does not start"
# `openssl ocsp` serves one connection at a time and stalls up to 15 s on one closed before its request, which
# every replaced certificate's cancelled query leaves behind: a 20 s response_timeout outlasts the stall, so a query
# made then is late rather than failed (and retried only a recovery_frequency later).
put_json /v1/ocsp '{"ocsp_functionality": true, "response_timeout": 20}'
assert_status "enable OCSP" 200

count_log() { grep -cE -- "$1" "$AGENT_LOG"; }
changes() { count_log 'event=certificate_changed'; }
failures() { count_log 'event=reload_failed group=cert'; }
# staple_for NAME [FILE]: FILE (default ocsp.der) is a response about certificate NAME ($C/NAME.pem).
staple_for() {
    openssl ocsp -respin "${2:-$STAPLE}" -issuer "$PKI/ca.pem" -cert "$C/$1.pem" -VAfile "$PKI/ocsp.pem" \
        -no_nonce 2>/dev/null | grep -q "$1.pem: good"
}
# no_wrong_staple NAME: ocsp.der and the haproxy .ocsp file are, when they hold something, about NAME (a copy of
# the file just checked needs no second look).
no_wrong_staple() {
    # Both files are replaced by rename, so each read sees one whole response or none.
    { [ ! -s "$STAPLE" ] || staple_for "$1"; } &&
        { [ ! -s "$HCRT.ocsp" ] || cmp -s "$STAPLE" "$HCRT.ocsp" || staple_for "$1" "$HCRT.ocsp"; } && return 0
    WAIT_DETAIL="ocsp.der $(stat -c %s "$STAPLE" 2>/dev/null) bytes, $HCRT.ocsp $(stat -c %s "$HCRT.ocsp") bytes"
    return 1
}
served_for() { # NAME: the status is valid, and ocsp.der and the haproxy .ocsp file are NAME's response
    req GET /v1/ocsp/status
    WAIT_DETAIL="status $STATUS $(short "$BODY")"
    [ "$STATUS" = 200 ] && [ "$(printf '%s' "$BODY" | jq -r .state)" = valid ] && staple_for "$1" &&
        staple_for "$1" "$HCRT.ocsp"
}
changed_to() { [ "$(changes)" -ge "$1" ]; }
asked() { # URL N: the agent has logged N successful queries to URL
    [ "$(count_log "event=ocsp_query responder=$1 result=ok")" -ge "$2" ]
}

assert_wait_until "A: the first responder's answer is served" 10 served_for a

# before_change: remembers how often each responder was asked, for expect_change (call it before replacing).
declare -A ASKED=()
before_change() {
    ASKED[$RESP_URL]=$(count_log "event=ocsp_query responder=$RESP_URL result=ok")
    ASKED[$RESP2_URL]=$(count_log "event=ocsp_query responder=$RESP2_URL result=ok")
}
# expect_change NAME URL HOW: the replacement made since before_change puts NAME in force, asking URL at once.
N_CHANGES=0
expect_change() {
    local name=$1 url=$2 how=$3 asked_before=${ASKED[$2]}
    N_CHANGES=$((N_CHANGES + 1))
    assert_wait_until "$how: noticed within 10 s" 10 changed_to "$N_CHANGES"
    # The old staple is gone at once: from here on nothing about the old certificate is anywhere.
    assert_wait_until "$how: no staple for the old certificate" 0 no_wrong_staple "$name"
    assert_match "$how: certificate_changed names both" "old_serial=[0-9A-F]+ .*new_serial=$(openssl x509 -in \
        "$C/$name.pem" -noout -serial | cut -d= -f2) new_responder=$url" "$(grep certificate_changed "$AGENT_LOG" |
        tail -n 1)"
    assert_wait_until "$how: $url asked at once" 5 asked "$url" $((asked_before + 1))
    assert_wait_until "$how: $name's answer served, in ocsp.der and $HCRT.ocsp" 5 served_for "$name"
    req GET /v1/ocsp
    assert_json "$how: GET /v1/ocsp shows the new responder" .responder_url "$url"
}

# --- rewritten in place (through the symlinks: the file in the versioned directory changes)
before_change
cat "$C/b.pem" >"$M/..v1/tls.crt"
expect_change b "$RESP2_URL" "in place"

# --- the kubelet's swap: a new versioned directory, ..data renamed over
before_change
mkdir "$M/..v2"
cp "$C/a.pem" "$M/..v2/tls.crt"
ln -s ..v2 "$M/..data_tmp" && mv -T "$M/..data_tmp" "$M/..data"
rm -rf "$M/..v1"
expect_change a "$RESP_URL" "symlink swap"

# --- SIGHUP: taken at once, before the watch's quiet period ends (the watch then has nothing left to do)
before_change
noticed=$(count_log 'event=cert_file_changed')
cp "$C/b.pem" "$M/..v2/tls.crt.new" && mv -f "$M/..v2/tls.crt.new" "$M/..v2/tls.crt" && kill -HUP "$AGENT_PID"
expect_change b "$RESP2_URL" "SIGHUP"
assert_eq "SIGHUP: the watch did not reload it a second time" "$noticed" "$(count_log 'event=cert_file_changed')"

# --- renamed over the path itself (the symlink becomes a plain file)
before_change
cp "$C/a.pem" "$C/next.pem" && mv -f "$C/next.pem" "$CERT"
expect_change a "$RESP_URL" "rename over"

# --- the same certificate again: nothing changes, nothing is asked
asked_a=$(count_log "event=ocsp_query responder=$RESP_URL")
cp "$C/a-chain.pem" "$C/next.pem" && mv -f "$C/next.pem" "$CERT"
kill -HUP "$AGENT_PID"
sleep 1
assert_eq "same CertID, other bytes: no certificate_changed" "$N_CHANGES" "$(changes)"
assert_eq "same CertID, other bytes: nothing asked" "$asked_a" "$(count_log "event=ocsp_query responder=$RESP_URL")"
assert_wait_until "same CertID: A's staple stays" 0 served_for a

# --- broken files: each refused whole, once, naming the file; the old state intact, the API answering
intact() {
    served_for a && [ "$(changes)" = "$N_CHANGES" ] &&
        req GET /v1/ocsp && [ "$(printf '%s' "$BODY" | jq -r .responder_url)" = "$RESP_URL" ]
}
# refused HOW FILE REASON_ERE: the last reload_failed names FILE and the reason, and A is still in force.
N_FAILED=0
refused() {
    N_FAILED=$((N_FAILED + 1))
    assert_wait_until "$1: refused" 10 bash -c "[ \$(grep -c 'event=reload_failed group=cert' '$AGENT_LOG') -ge \
        $N_FAILED ]"
    assert_match "$1: reload_failed names $2 and why" "file=$2 .*reason=\"?[^ ]*$3" \
        "$(grep 'event=reload_failed group=cert' "$AGENT_LOG" | tail -n 1)"
    assert_wait_until "$1: A's state intact" 0 intact
}
put_cert() { cp "$1" "$C/next.pem" && mv -f "$C/next.pem" "$CERT"; }

printf 'not a certificate\n' >"$C/garbage.pem"
put_cert "$C/garbage.pem"
refused "not PEM (noticed by the watch)" "$CERT" ".*no certificate in the file"
# The watch keeps polling (every 2 s): the same broken content is not reported again.
sleep 2.5
assert_eq "a broken content is reported once" "$N_FAILED" "$(failures)"

head -c 300 "$C/b.pem" >"$C/half.pem"
put_cert "$C/half.pem"
kill -HUP "$AGENT_PID"
refused "a half-written certificate" "$CERT" ".*(no certificate|cannot be read)"

put_cert "$C/stranger.pem"
kill -HUP "$AGENT_PID"
refused "signed by another CA of the same name" "$ISSUER" ".*did not (issue|sign)"

put_cert "$C/expired.pem"
kill -HUP "$AGENT_PID"
refused "expired" "$CERT" ".*expired on"

rm -f "$CERT" && ln -s "$C/missing.pem" "$CERT"
kill -HUP "$AGENT_PID"
refused "unreadable (a dangling symlink)" "$CERT" ".*cannot read the file"

put_cert "$C/b.pem"
printf 'garbage\n' >"$ISSUER.new" && mv -f "$ISSUER.new" "$ISSUER"
kill -HUP "$AGENT_PID"
refused "the issuer file is not PEM" "$ISSUER" ".*no certificate in the file"

rm -f "$ISSUER"
kill -HUP "$AGENT_PID"
refused "the issuer file is missing" "$ISSUER" ".*cannot read the file"

REQ_USER=admin req GET /metrics
assert_match "ocsp_agent_reloads_total counts the refusals" "ocsp_agent_reloads_total\{result=\"failed\"\} $N_FAILED" \
    "$BODY"

# The issuer back: B, which the certificate file holds since, is taken.
before_change
cp "$PKI/ca.pem" "$ISSUER"
expect_change b "$RESP2_URL" "issuer restored"

# --- a certificate without a responder URL while enabled: nothing asked, the status says why, an alert
queries=$(count_log 'event=ocsp_query ')
put_cert "$C/noaia.pem"
kill -HUP "$AGENT_PID"
N_CHANGES=$((N_CHANGES + 1))
assert_wait_until "no AIA: taken" 10 changed_to "$N_CHANGES"
assert_wait_status "no AIA: pending, last_error_code no_responder_url" \
    '.state == "pending" and .last_error_code == "no_responder_url" and .responder_url == "" and .cert_status ==
    "UNKNOWN"' 5
assert_eq "no AIA: the alert is logged" 1 "$(count_log 'level=error event=ocsp_query_failed error_code=no_responder_url')"
assert_eq "no AIA: no staple file" absent "$([ -e "$STAPLE" ] && echo present || echo absent)"
assert_eq "no AIA: the haproxy .ocsp file is empty" 0 "$(stat -c %s "$HCRT.ocsp")"
sleep 1
assert_eq "no AIA: nothing asked" "$queries" "$(count_log 'event=ocsp_query ')"
before_change
put_cert "$C/a.pem"
kill -HUP "$AGENT_PID"
expect_change a "$RESP_URL" "after the certificate without AIA"

# --- 50 replacements, alternating, during a stream of API requests
STOP=$T_DIR/stop-stream
stream() {
    local code
    while [ ! -e "$STOP" ]; do
        for path in /v1/ocsp/status /v1/ocsp; do
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -u "admin@example.com:${USER_PASS[admin]}" \
                "$AGENT_URL$path")
            echo "$code" >>"$T_DIR/stream.codes"
            sleep 0.02
        done
    done
}
stream &
STREAM_PID=$!
T_PIDS+=("$STREAM_PID")
wrong=0
for i in $(seq 1 50); do
    if [ $((i % 2)) = 1 ]; then name=b; else name=a; fi
    put_cert "$C/$name.pem"
    kill -HUP "$AGENT_PID"
    N_CHANGES=$((N_CHANGES + 1))
    deadline=$((SECONDS + 10))
    until [ "$(changes)" -ge "$N_CHANGES" ]; do
        [ $SECONDS -lt "$deadline" ] || { fail "replacement $i: taken" "$(tail -n 3 "$AGENT_LOG")"; break; }
        sleep 0.02
    done
    no_wrong_staple "$name" || { wrong=$((wrong + 1)); echo "# replacement $i: $WAIT_DETAIL"; }
done
touch "$STOP"
wait "$STREAM_PID"
forget_pid "$STREAM_PID"
assert_eq "50 replacements: never a staple for the certificate not in force" 0 "$wrong"
assert_wait_until "50 replacements: A's answer served at the end" 30 served_for a
total=$(wc -l <"$T_DIR/stream.codes")
assert_ne "50 replacements: requests were made meanwhile" 0 "$total"
assert_eq "50 replacements: every request answered 200" "$total" "$(grep -c '^200$' "$T_DIR/stream.codes")"
echo "# $total API requests during the 50 replacements"

stop_agent

# --- HAProxy in front: its own certificate replaced over its runtime API, the agent's staple following. HAProxy
# (2.6) keys responses by CertID and registers a certificate's CertID only when it comes with an .ocsp: the
# transaction carries an empty one, so the new certificate staples nothing until the agent pushes its response.
HAPROXY_BIN=${OA_HAPROXY_BIN:-/usr/sbin/haproxy}
if [ ! -x "$HAPROXY_BIN" ]; then
    echo "# $HAPROXY_BIN is missing: the HAProxy part is skipped (scripts/setup.sh installs haproxy)"
    t_finish
fi
HAP_DIR=$T_DIR/haproxy
mkdir -p "$HAP_DIR"
HAP_CRT=$HAP_DIR/proxy.pem
cat "$C/a.pem" "$PKI/proxy.key" "$PKI/ca.pem" >"$HAP_CRT"
: >"$HAP_CRT.ocsp"
SOCK=$HAP_DIR/admin.sock
HAP_PORT=$(free_port) || bail "no free port"
cat >"$HAP_DIR/haproxy.cfg" <<EOF
global
    stats socket $SOCK mode 600 level admin
defaults
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend https
    mode http
    bind 127.0.0.1:$HAP_PORT ssl crt $HAP_CRT
    http-request return status 200 content-type text/plain string "ok"
EOF
"$HAPROXY_BIN" -W -db -f "$HAP_DIR/haproxy.cfg" </dev/null >"$HAP_DIR/haproxy.log" 2>&1 &
HAP_PID=$!
T_PIDS+=("$HAP_PID")
{ wait_port "$HAP_PORT" "$HAP_PID" 10 && wait_until 10 test -S "$SOCK"; } ||
    bail "HAProxy starts" "$(tail -n 5 "$HAP_DIR/haproxy.log")"
# hap_cmd COMMAND: one command on HAProxy's runtime API (a payload follows "<<" and ends with an empty line).
hap_cmd() { unix_cmd "$SOCK" "$1"; }
# handshake: "<served certificate's serial> <stapled response's serial or none> <its cert status or none>".
handshake() {
    local out cert staple status
    out=$(timeout 10 openssl s_client -connect "127.0.0.1:$HAP_PORT" -servername localhost -status \
        -CAfile "$PKI/ca.pem" </dev/null 2>/dev/null)
    # The response's own certificates come first in openssl's output: the server's follows "Server certificate".
    cert=$(printf '%s\n' "$out" | sed -n '/^Server certificate/,/END CERTIFICATE/p' |
        openssl x509 -noout -serial 2>/dev/null | cut -d= -f2)
    staple=$(printf '%s\n' "$out" | grep -m1 -E '^ +Serial Number: [0-9A-F]+$' | awk '{print $3}')
    status=$(printf '%s\n' "$out" | sed -n 's/^ *Cert Status: \([a-z]*\).*/\1/p' | head -n 1)
    echo "${cert:-error} ${staple:-none} ${status:-none}"
}
handshake_is() {
    HANDSHAKE=$(handshake)
    WAIT_DETAIL="handshake: $HANDSHAKE"
    [ "$HANDSHAKE" = "$1" ]
}

cp "$C/a.pem" "$C/hap-cert.pem"
OA_TEST_HAPROXY_BACKOFF_MS=250 start_agent --users "$USERS_FILE" --cert "$C/hap-cert.pem" --issuer "$ISSUER" \
    --haproxy-socket "$SOCK" --haproxy-crt "$HAP_CRT" --data-dir "$T_DIR/data-haproxy" || bail "the agent does not start with HAProxy"
put_json /v1/ocsp '{"ocsp_functionality": true, "response_timeout": 20}'
assert_status "HAProxy: enable OCSP" 200
assert_wait_until "HAProxy: A served with a GOOD staple for A" 30 handshake_is "1001 1001 good"

# The agent first (its pushes are refused until HAProxy knows B's CertID), then HAProxy's file and transaction.
cp "$C/b.pem" "$C/next.pem" && mv -f "$C/next.pem" "$C/hap-cert.pem"
kill -HUP "$AGENT_PID"
cat "$C/b.pem" "$C/b.key" "$PKI/ca.pem" >"$HAP_CRT.new" && mv -f "$HAP_CRT.new" "$HAP_CRT"
assert_match "HAProxy: set ssl cert" "Transaction (created|updated)" "$(hap_cmd "set ssl cert $HAP_CRT <<
$(cat "$HAP_CRT")
")"
assert_match "HAProxy: set ssl cert .ocsp, empty" "Transaction updated" "$(hap_cmd "set ssl cert $HAP_CRT.ocsp <<
")"
assert_match "HAProxy: commit ssl cert" "Success" "$(hap_cmd "commit ssl cert $HAP_CRT")"
# Until B's staple arrives, every handshake is looked at: B must never come with A's response.
wrong=0
deadline=$((SECONDS + 15))
while :; do
    HANDSHAKE=$(handshake)
    case $HANDSHAKE in
    "1002 1001 "*) wrong=$((wrong + 1)) ;;
    "1002 1002 good") break ;;
    esac
    [ $SECONDS -lt "$deadline" ] || break
    sleep 0.2
done
assert_eq "HAProxy: B served with a GOOD staple for B" "1002 1002 good" "$HANDSHAKE"
assert_eq "HAProxy: B never served with A's staple" 0 "$wrong"
assert_wait_until "HAProxy: the .ocsp file holds B's response" 5 staple_for b "$HAP_CRT.ocsp"
assert_eq "HAProxy: the old response, keyed by A's CertID, is not reported as still stapled" 0 \
    "$(grep -c 'staple_delivery_failed target=haproxy:.*no runtime command to drop' "$AGENT_LOG")"
req GET /v1/ocsp/status
assert_json "HAProxy: the socket target delivered" \
    '.delivery[] | select(.target | startswith("haproxy:")) | .state' delivered

stop_agent
kill -TERM "$HAP_PID" 2>/dev/null
wait_exit "$HAP_PID" 10 || kill -KILL "$HAP_PID" 2>/dev/null
wait "$HAP_PID" 2>/dev/null
forget_pid "$HAP_PID"
t_finish
