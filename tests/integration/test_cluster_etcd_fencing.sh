#!/usr/bin/env bash
# Cluster mode on etcd: a poller paused past its lease cannot overwrite its successor's status.
#
# Two agents hold the same certificate on a three-member etcd cluster, with a 2 s lease. The poller (the node whose
# metrics say ocsp_agent_cluster_poller 1) is paused with SIGSTOP for 6 s, three times its lease: the other node
# takes the lease, queries, and its status record replaces the paused one's in the store (/ocsp-agent/status/...).
# Then the paused node is continued. Whatever it had under way (a query, a renewal, a publication) may go on from
# where it stopped, but the store accepts a status only from the current lease holder: for 3 s after the resume the
# stored status still names the successor, and the old poller either says its write was fenced
# (cluster_status_fenced) or that it is no longer the poller (cluster_poller_released). Both nodes keep serving GOOD.
source "$(dirname "$0")/lib.sh"

TIME_SCALE=0.02 # query_frequency 60 s -> a period of 1.2 s
LEASE_MS=2000
PAUSE_S=6

make_users admin
start_pki_responder

source "$(dirname "$0")/cluster_etcd_lib.sh"

# is_poller NODE: 0 when NODE's metrics say it holds the lease.
is_poller() {
    on "$1"
    req GET /metrics
    [[ $BODY =~ (^|$'\n')ocsp_agent_cluster_poller\ 1($'\n'|$) ]]
}
# the_poller: prints the one node whose metrics say it is the poller; fails unless exactly one does.
the_poller() {
    local n found=()
    for n in a b; do is_poller "$n" && found+=("$n"); done
    [ ${#found[@]} -eq 1 ] || return 1
    echo "${found[0]}"
}
has_poller() { the_poller >/dev/null; }

# ---------------------------------------------------------------------------------------------------------------
echo "# two nodes on one certificate"
for n in a b; do start_connected "$n" --cluster-lease "$LEASE_MS"; done
querying_on a b
assert_wait_until "exactly one node reports itself the poller" 5 has_poller
FIRST=$(the_poller) || bail "a poller is found"
if [ "$FIRST" = a ]; then SECOND=b; else SECOND=a; fi
echo "# the poller is $FIRST"
assert_wait_eq "the stored status is the poller's" 5 "$FIRST" etcd_status_node
assert_eq "the lease names the poller" "$FIRST" "$(etcd_lease_holder)"

echo "# the poller is paused past its lease"
kill -STOP "${N_PID[$FIRST]}"
t_stop=$(now_ms)
# The successor's first record in the store: its lease is taken once the paused one's expired (2 s, etcd's expiry
# checks and one heartbeat more), and it queries at once.
assert_wait_eq "$SECOND's status replaces the paused poller's in the store" $((PAUSE_S - 1)) "$SECOND" etcd_status_node
assert_wait_eq "$SECOND holds the lease" 1 "$SECOND" etcd_lease_holder
on "$SECOND"
assert_file_contains "$SECOND logs the takeover" "$AGENT_LOG" 'event=cluster_poller_acquired'
# Deliberate: the pause lasts PAUSE_S from its start whatever was waited for above, so that the paused node wakes
# up well past its lease, with its timers overdue.
sleep_until $((t_stop + PAUSE_S * 1000))
kill -CONT "${N_PID[$FIRST]}"
t_cont=$(now_ms)
echo "# $FIRST continued after $((t_cont - t_stop)) ms"

echo "# for 3 s after the resume the store keeps the successor's status"
# Sampled every 50 ms for 3 s (deliberate: what is asserted is that something does not happen in that time, and
# 3 s is more than two query periods and the old poller's renewal, lease and heartbeat timers, all overdue).
others=()
while [ "$(now_ms)" -lt $((t_cont + 3000)) ]; do
    node=$(etcd_status_node)
    [ "$node" = "$SECOND" ] || others+=("$(($(now_ms) - t_cont)) ms: ${node:-none}")
    sleep 0.05
done
if [ ${#others[@]} -eq 0 ]; then
    pass "the stored status named $SECOND at every sample"
else
    fail "the stored status named $SECOND at every sample" "${others[@]:0:10}"
fi
assert_eq "the lease is still $SECOND's" "$SECOND" "$(etcd_lease_holder)"
on "$FIRST"
if grep -qE 'event=(cluster_status_fenced|cluster_poller_released)' "$AGENT_LOG"; then
    pass "$FIRST logs that its write was fenced or that it is no longer the poller: $(grep -oE \
        'event=(cluster_status_fenced|cluster_poller_released)' "$AGENT_LOG" | sort -u | tr '\n' ' ')"
else
    fail "$FIRST logs cluster_status_fenced or cluster_poller_released" "$(tail -n 10 "$AGENT_LOG")"
fi
assert_wait_until "$FIRST's metrics say it is not the poller" 2 eval "! is_poller $FIRST"
assert_eq "only $SECOND reports itself the poller" "$SECOND" "$(the_poller)"
assert_status_on "still serves GOOD" 3 '.cert_status == "GOOD"' a b

for n in a b; do stop_node "$n"; done
