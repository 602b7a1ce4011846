#!/usr/bin/env bash
# A small PKI for tests and the demo, made with the openssl command line only.
#
#   make-pki.sh DIR RESPONDER_URL   create (or keep) the PKI in DIR and mark the leaf valid in DIR/index.txt
#   make-pki.sh revoke DIR          mark the leaf revoked (keyCompromise, revoked now) in DIR/index.txt
#   make-pki.sh unrevoke DIR        mark the leaf valid again
#
# DIR then holds:
#   ca.key, ca.pem            the certification authority
#   ocsp.key, ocsp.pem        a delegated OCSP responder certified by the CA (extended key usage OCSPSigning)
#   proxy.key, proxy.pem      the leaf (serial 0x1001, AIA OCSP URI = RESPONDER_URL, SAN localhost and 127.0.0.1)
#   proxy-chain.pem           proxy.pem followed by ca.pem
#   index.txt                 the leaf's status in the format of `openssl ca`, for `openssl ocsp -index`
#
# Certificates are kept when they already exist with the same responder URL, so running it twice is harmless.
# A responder for the PKI, serving until killed:
#   openssl ocsp -index DIR/index.txt -port PORT -rsigner DIR/ocsp.pem -rkey DIR/ocsp.key -CA DIR/ca.pem \
#       -nmin 5 -ignore_err
# With OpenSSL 3.0, -port takes a number only and listens on every address (IPv4 and IPv6). The responder serves
# one connection at a time and stalls on a connection that closes without a request, so wait for it to listen
# (ss, /proc/net/tcp6) rather than probing it with a bare connect. It notices a changed index.txt only one request
# late: restart it after revoke or unrevoke.
set -euo pipefail

LEAF_SERIAL=1001
OCSP_SERIAL=2001

usage() {
    echo "usage: $0 DIR RESPONDER_URL | $0 revoke DIR | $0 unrevoke DIR" >&2
    exit 2
}

# Writes index.txt with the leaf in the given state: V (valid) or R (revoked now).
write_index() {
    local dir=$1 state=$2 enddate expiry subject revoked=""
    enddate=$(openssl x509 -in "$dir/proxy.pem" -noout -enddate)
    expiry=$(date -u -d "${enddate#notAfter=}" +%y%m%d%H%M%SZ)
    subject=$(openssl x509 -in "$dir/proxy.pem" -noout -subject -nameopt compat)
    subject=${subject#subject=}
    if [ "$state" = R ]; then
        revoked="$(date -u +%y%m%d%H%M%SZ),keyCompromise"
    fi
    printf '%s\t%s\t%s\t%s\tunknown\t%s\n' "$state" "$expiry" "$revoked" "$LEAF_SERIAL" "$subject" \
        >"$dir/index.txt.tmp"
    mv -f "$dir/index.txt.tmp" "$dir/index.txt"
    [ -e "$dir/index.txt.attr" ] || echo "unique_subject = no" >"$dir/index.txt.attr"
}

# The OCSP URI in the leaf's AIA, or nothing.
leaf_url() {
    openssl x509 -in "$1/proxy.pem" -noout -ocsp_uri 2>/dev/null || true
}

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 600 "$1"
}

create() {
    local dir=$1 url=$2 tmp
    tmp=$(mktemp -d "$dir/.make-pki.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT

    cat >"$tmp/ext.cnf" <<EOF
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = ocsp-agent test CA
[ ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[ ocsp ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = OCSPSigning
noCheck = ignored
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityInfoAccess = OCSP;URI:$url
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

    new_key "$tmp/ca.key"
    openssl req -new -x509 -config "$tmp/ext.cnf" -extensions ca -key "$tmp/ca.key" -days 3650 \
        -set_serial 0x01 -out "$tmp/ca.pem" 2>/dev/null

    new_key "$tmp/ocsp.key"
    openssl req -new -key "$tmp/ocsp.key" -subj "/CN=ocsp-agent test OCSP responder" -out "$tmp/ocsp.csr" \
        2>/dev/null
    openssl x509 -req -in "$tmp/ocsp.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -set_serial "0x$OCSP_SERIAL" \
        -days 825 -extfile "$tmp/ext.cnf" -extensions ocsp -out "$tmp/ocsp.pem" 2>/dev/null

    new_key "$tmp/proxy.key"
    openssl req -new -key "$tmp/proxy.key" -subj "/CN=localhost" -out "$tmp/proxy.csr" 2>/dev/null
    openssl x509 -req -in "$tmp/proxy.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -set_serial "0x$LEAF_SERIAL" \
        -days 825 -extfile "$tmp/ext.cnf" -extensions leaf -out "$tmp/proxy.pem" 2>/dev/null

    cat "$tmp/proxy.pem" "$tmp/ca.pem" >"$tmp/proxy-chain.pem"
    for f in ca.key ca.pem ocsp.key ocsp.pem proxy.key proxy.pem proxy-chain.pem; do
        mv -f "$tmp/$f" "$dir/$f"
    done
    rm -rf "$tmp"
    trap - EXIT
}

[ $# -eq 2 ] || usage
case $1 in
revoke | unrevoke)
    dir=$2
    [ -f "$dir/proxy.pem" ] || { echo "$0: no PKI in $dir" >&2; exit 1; }
    if [ "$1" = revoke ]; then write_index "$dir" R; else write_index "$dir" V; fi
    ;;
*)
    dir=$1 url=$2
    case $url in
    http://*) ;;
    *) echo "$0: the responder URL must start with http://" >&2; exit 2 ;;
    esac
    mkdir -p "$dir"
    complete=1
    for f in ca.key ca.pem ocsp.key ocsp.pem proxy.key proxy.pem proxy-chain.pem; do
        [ -s "$dir/$f" ] || complete=0
    done
    if [ $complete = 0 ] || [ "$(leaf_url "$dir")" != "$url" ]; then
        create "$dir" "$url"
    fi
    write_index "$dir" V
    ;;
esac
