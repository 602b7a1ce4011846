#!/usr/bin/env bash
# Cluster mode and staple delivery (API.md section 6): every node delivers to its own local targets from the shared
# status, and a node's delivery failure shows in its own status only.
#
#   - two nodes, each with its own --haproxy-crt file and --staple-hook; one poller queries, and both nodes' targets
#     get the poller's response: the .ocsp files and the hook's copies equal the stored DER, byte for byte;
#   - n2's hook fails: n2's status says failed with the hook's exit status and first stderr line, n1's says
#     delivered; once the hook works again, n2 delivers on its own retry, with no new query needed;
#   - the poller's retries run out: on both nodes the hook runs "removed" and the .ocsp file is emptied.
source "$(dirname "$0")/lib.sh"

TIME_SCALE=0.02 # query_frequency and recovery_frequency 60 s -> 1.2 s

make_users admin
RESP_NMIN=30 # HAProxy will not take a response with 300 s or less before its nextUpdate
start_pki_responder

source "$(dirname "$0")/cluster_lib.sh"
start_store

# The hook: copies the staple to $T_DIR/hooked-NODE.der on "updated", removes that copy on "removed", and logs
# every run; it fails while $T_DIR/fail-NODE exists.
HOOK=$T_DIR/hook.sh
cat >"$HOOK" <<EOF
#!/bin/sh
out=$T_DIR/hooked-\$OCSP_AGENT_NODE_ID.der
echo "\$1 \$OCSP_AGENT_CERT_STATUS" >>"$T_DIR/hook-\$OCSP_AGENT_NODE_ID.log"
if [ -e "$T_DIR/fail-\$OCSP_AGENT_NODE_ID" ]; then echo "node \$OCSP_AGENT_NODE_ID refuses" >&2; exit 7; fi
case "\$1" in
updated) cp "\$2" "\$out.tmp" && mv "\$out.tmp" "\$out" ;;
removed) rm -f "\$out" ;;
esac
EOF
chmod 755 "$HOOK"

NODES=(n1 n2)
for n in "${NODES[@]}"; do
    mkdir -p "$T_DIR/crt-$n"
    cp "$PKI/proxy.pem" "$T_DIR/crt-$n/proxy.pem"
    : >"$T_DIR/crt-$n/proxy.pem.ocsp"
    start_node "$n" --haproxy-crt "$T_DIR/crt-$n/proxy.pem" --staple-hook "$HOOK"
done

sha() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }

# wait_same_staple TIMEOUT_S: until, on every node, the staple file, the .ocsp file and the hook's copy hold the
# same bytes, and the same as every other node's.
wait_same_staple() {
    local deadline=$((SECONDS + $1)) n want ok
    while :; do
        ok=1
        want=$(sha "$T_DIR/data-n1/ocsp.der")
        [ -n "$want" ] || ok=0
        for n in "${NODES[@]}"; do
            [ "$(sha "$T_DIR/data-$n/ocsp.der")" = "$want" ] &&
                [ "$(sha "$T_DIR/crt-$n/proxy.pem.ocsp")" = "$want" ] &&
                [ "$(sha "$T_DIR/hooked-$n.der")" = "$want" ] || ok=0
        done
        [ "$ok" = 1 ] && return 0
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# delivery_state NODE TARGET_PREFIX: the state of NODE's delivery target whose name starts with TARGET_PREFIX.
delivery_of() {
    on "$1"
    req GET /v1/ocsp/status
    printf '%s' "$BODY" | jq -c --arg p "$2" '[.delivery[] | select(.target | startswith($p))][0]'
}

# wait_delivery NODE PREFIX JQ_EXPR TIMEOUT_S
wait_delivery() {
    local deadline=$((SECONDS + $4))
    while :; do
        DELIVERY=$(delivery_of "$1" "$2")
        printf '%s' "$DELIVERY" | jq -e "$3" >/dev/null 2>&1 && return 0
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
assert_delivery() { # NAME NODE PREFIX JQ_EXPR [TIMEOUT_S]
    if wait_delivery "$2" "$3" "$4" "${5:-10}"; then pass "$1"; else fail "$1" "last: $DELIVERY"; fi
}

on n1
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60, "recovery_max_tries": 2}'
assert_status "PUT enables OCSP for the cluster" 200

# --- both nodes deliver the poller's response to their own targets
if wait_same_staple 15; then pass "every node's .ocsp file and hook copy equal the shared staple"; else
    fail "every node's .ocsp file and hook copy equal the shared staple" \
        "$(for n in "${NODES[@]}"; do echo "$n: $(sha "$T_DIR/data-$n/ocsp.der") $(sha "$T_DIR/crt-$n/proxy.pem.ocsp") $(sha "$T_DIR/hooked-$n.der")"; done)"
fi
pollers=0
for n in "${NODES[@]}"; do
    grep -q ' event=ocsp_query .*trigger=schedule' "${N_LOG[$n]}" && pollers=$((pollers + 1))
    assert_delivery "$n: its .ocsp file target is delivered" "$n" "file:" '.state == "delivered"'
    assert_jq "$n: the file target names its own file" ".target == \"file:$T_DIR/crt-$n/proxy.pem.ocsp\"" "$DELIVERY"
    assert_delivery "$n: its hook target is delivered" "$n" "hook:" '.state == "delivered"'
    assert_match "$n: its hook was told GOOD" '^updated GOOD$' "$(tail -n 1 "$T_DIR/hook-$n.log")"
done
assert_eq "one node queried the responder, the other delivered from the shared status" 1 "$pollers"

# --- a failing hook on n2 shows in n2's status only, and n2 retries by itself
touch "$T_DIR/fail-n2"
runs_before=$(wc -l <"$T_DIR/hook-n2.log")
assert_delivery "n2: its failing hook shows as failed, with exit status and stderr" n2 "hook:" \
    '.state == "failed" and (.last_error | test("7")) and (.last_error | test("node n2 refuses"))' 15
assert_delivery "n1: its hook still delivered" n1 "hook:" '.state == "delivered"'
assert_delivery "n2: its .ocsp file target is unaffected" n2 "file:" '.state == "delivered"'
on n2
req GET /metrics
assert_match "n2 metrics: failed hook runs are counted" \
    "ocsp_agent_staple_deliveries_total\\{target=\"hook:$HOOK\",result=\"error\"\\} [1-9]" "$BODY"
rm -f "$T_DIR/fail-n2"
assert_delivery "n2: the hook delivers again once it works" n2 "hook:" '.state == "delivered"' 15
assert_ne "n2: the hook ran again after its failure" "$runs_before" "$(wc -l <"$T_DIR/hook-n2.log")"
if wait_same_staple 10; then pass "n2's hook copy caught up with the shared staple"; else
    fail "n2's hook copy caught up with the shared staple"
fi

# --- invalidation: both nodes stop stapling through their own targets
printf 'http 500\n' >"$RESP_CONTROL"
for n in "${NODES[@]}"; do
    wait_status_on "$n" '.state == "invalidated"' 30 || fail "$n: invalidated" "$(short "$BODY")"
done
for n in "${NODES[@]}"; do
    assert_delivery "$n: after the invalidation the hook ran 'removed'" "$n" "hook:" '.state == "delivered"' 10
    assert_match "$n: the hook's last run was 'removed'" '^removed $' "$(tail -n 1 "$T_DIR/hook-$n.log")"
    assert_eq "$n: the hook's copy is gone" 0 "$([ -e "$T_DIR/hooked-$n.der" ] && echo 1 || echo 0)"
    assert_eq "$n: the .ocsp file is empty" 0 "$(stat -c %s "$T_DIR/crt-$n/proxy.pem.ocsp")"
    assert_eq "$n: the staple file is gone" 0 "$([ -e "$T_DIR/data-$n/ocsp.der" ] && echo 1 || echo 0)"
done

for n in "${NODES[@]}"; do on "$n"; stop_checked "$n"; done
t_finish
