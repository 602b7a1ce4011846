#!/usr/bin/env bash
# Cluster mode: a node's configuration stays the store's when a PUT is confirmed late, and an acknowledged PUT
# survives a store that came back empty.
#
#   - a PUT whose write the store holds back past the PUT's 3 s limit: the client gets 503 "may or may not have been
#     applied"; the write commits when the store resumes, and the node that took the PUT puts it in force too (from
#     the late reply, under the PUT's user, logged once), like every other node, without any reconnection;
#   - the store restarts empty; the node that was away comes back first with an older version and seeds it under a
#     new epoch; a PUT through it is acknowledged; the better-informed node (higher version) comes back later: its
#     seed does not overwrite the acknowledged write, and it adopts the store's configuration, at the lower version;
#   - the store restarts empty and nothing is written after: the better-informed node's seed replaces the older one
#     (same epoch), and the node that seeded first applies it.
source "$(dirname "$0")/lib.sh"

make_users admin
make_resp_pki # the nodes need a certificate; no responder answers

source "$(dirname "$0")/cluster_lib.sh"
start_redis

stored() { rcli HGET ocsp-agent:conf "$1"; }
stored_conf() { rcli HGET ocsp-agent:conf conf; }
log_count() { grep -c -- "$2" "${N_LOG[$1]}"; }

# ---------------------------------------------------------------------------------------------------------------
echo "# a PUT confirmed after its time limit"
# A lease of 6 s: heartbeats every 2 s, and a store silent for less than 6 s is not taken for an outage, so only the
# PUT's own limit runs out while the store holds its clients.
start_node n1 --cluster-lease 6000
on n1
wait_log 'event=store_connected' 10 || bail "n1 connects to the store"
start_node n2 --cluster-lease 6000
on n2
wait_log 'event=store_connected' 10 || bail "n2 connects to the store"
for n in n1 n2; do on $n; req GET /v1/ocsp; done # the first request pays the password KDF
assert_eq "the store holds the seeded version 0" 0 "$(stored version)"
assert_eq "the seeded store is marked seeded" 1 "$(stored seeded)"

assert_eq "the store holds every client for 3.3 s" OK "$(rcli CLIENT PAUSE 3300 ALL)"
on n1
put_json /v1/ocsp '{"query_frequency": 777}'
assert_error "PUT on n1 while the store holds its write" 503 cluster_store_unavailable
assert_match "the answer says the outcome is unknown" 'may or may not have been applied' \
    "$(jq -r .description <<<"$BODY")"
if wait_conf n1 '.query_frequency == 777' 3; then pass "n1 serves its own late-confirmed write"; else
    fail "n1 serves its own late-confirmed write" "$BODY"; fi
if wait_conf n2 '.query_frequency == 777' 1; then pass "n2 serves it too"; else fail "n2 serves it too" "$BODY"; fi
assert_eq "the store holds version 1" 1 "$(stored version)"
assert_json "the store holds query_frequency 777" .query_frequency 777 "$(stored_conf)"
assert_eq "a PUT clears the seeded mark" 0 "$(stored seeded)"
EPOCH=$(stored epoch)
assert_match "the store's epoch is 16 hex digits" '^[0-9a-f]{16}$' "$EPOCH"
for n in n1 n2; do
    assert_file_contains "$n records the store's epoch and version" "$T_DIR/data-$n/cluster.json" \
        "{\"conf_epoch\":\"$EPOCH\",\"conf_version\":1}"
done
assert_eq "n1 applied it from the reply, without an outage (store_unavailable lines)" 0 \
    "$(log_count n1 'event=store_unavailable')"
assert_eq "n1 logged the change once, under the PUT's user" 1 \
    "$(log_count n1 'event=config_changed user=admin@example.com keys=query_frequency')"
on n1
put_json /v1/ocsp '{"query_frequency": 778}'
assert_status "a PUT on n1 confirmed in time" 200
assert_eq "the store holds version 2" 2 "$(stored version)"
assert_eq "n1 logged that change once too (two config_changed lines of the user)" 2 \
    "$(log_count n1 'event=config_changed user=admin@example.com')"
if wait_conf n2 '.query_frequency == 778' 1; then pass "n2 serves the second change"; else
    fail "n2 serves the second change" "$BODY"; fi
stop_node n1
stop_node n2

# ---------------------------------------------------------------------------------------------------------------
echo "# the store comes back empty: an acknowledged PUT is not overwritten by a later seed"
stop_redis
start_redis
start_node a
on a
wait_log 'event=store_connected' 10 || bail "a connects to the store"
start_node b
on b
wait_log 'event=store_connected' 10 || bail "b connects to the store"
on a
put_json /v1/ocsp '{"query_frequency": 100}'
assert_status "PUT query_frequency 100 on a" 200
if wait_conf b '.query_frequency == 100' 2; then pass "b applies version 1"; else fail "b applies version 1" "$BODY"; fi
stop_node b # b leaves at version 1
on a
put_json /v1/ocsp '{"query_frequency": 200}'
assert_status "PUT query_frequency 200 on a" 200
put_json /v1/ocsp '{"query_frequency": 300}'
assert_status "PUT query_frequency 300 on a" 200
stop_node a # a leaves at version 3
assert_eq "the store held version 3" 3 "$(stored version)"
OLD_EPOCH=$(stored epoch)

stop_redis
start_redis # empty
start_node b
on b
wait_log 'event=store_connected' 10 || bail "b connects to the empty store"
assert_file_contains "b logs that it seeded the empty store" "$AGENT_LOG" 'event=cluster_conf_seeded version=1 epoch='
assert_match "into an empty store" 'event=cluster_conf_seeded .*over="an empty store"' \
    "$(grep 'event=cluster_conf_seeded' "$AGENT_LOG")"
assert_eq "b seeded its version 1" 1 "$(stored version)"
assert_eq "marked seeded" 1 "$(stored seeded)"
assert_json "with its query_frequency 100" .query_frequency 100 "$(stored_conf)"
EPOCH=$(stored epoch)
assert_match "under a new epoch" '^[0-9a-f]{16}$' "$EPOCH"
assert_ne "different from the lost one" "$OLD_EPOCH" "$EPOCH"
put_json /v1/ocsp '{"recovery_max_tries": 9}'
assert_status "PUT recovery_max_tries 9 on b is acknowledged" 200
assert_eq "the store holds version 2" 2 "$(stored version)"
assert_eq "the seeded mark is cleared" 0 "$(stored seeded)"

start_node a # version 3, query_frequency 300
on a
wait_log 'event=store_connected' 10 || bail "a connects to the store again"
# a reads the store and makes its choice (seed it or adopt it) before it logs store_connected; its choice is complete
# once it records the store's epoch and version, which is waited for.
assert_wait "a records the store's epoch and the lower version" 5 \
    grep -qF "{\"conf_epoch\":\"$EPOCH\",\"conf_version\":2}" "$T_DIR/data-a/cluster.json"
assert_file_lacks "a did not seed" "$AGENT_LOG" 'event=cluster_conf_seeded'
assert_eq "the store still holds version 2" 2 "$(stored version)"
assert_eq "and its epoch" "$EPOCH" "$(stored epoch)"
assert_jq "the store keeps the acknowledged write (query_frequency 100, recovery_max_tries 9)" \
    '.query_frequency == 100 and .recovery_max_tries == 9' "$(stored_conf)"
for n in a b; do
    on $n
    req GET /v1/ocsp
    assert_jq "$n serves the store's configuration" '.query_frequency == 100 and .recovery_max_tries == 9'
done

# ---------------------------------------------------------------------------------------------------------------
echo "# the store comes back empty and nothing is written: the better-informed seed wins"
stop_node b # b leaves at version 2
on a
put_json /v1/ocsp '{"query_frequency": 400}'
assert_status "PUT query_frequency 400 on a" 200
stop_node a # a leaves at version 3
stop_redis
start_redis
start_node b
on b
wait_log 'event=store_connected' 10 || bail "b connects to the empty store"
assert_eq "b seeded its version 2" 2 "$(stored version)"
EPOCH=$(stored epoch)
start_node a
on a
wait_log 'event=store_connected' 10 || bail "a connects to the store"
assert_file_contains "a logs that its seed replaced the seeded one" "$AGENT_LOG" \
    'event=cluster_conf_seeded version=3 epoch='
assert_match "over b's seed" 'over="a seeded configuration of a lower version"' \
    "$(grep 'event=cluster_conf_seeded' "$AGENT_LOG")"
assert_eq "the store holds a's version 3" 3 "$(stored version)"
assert_eq "in the same epoch" "$EPOCH" "$(stored epoch)"
assert_eq "still marked seeded" 1 "$(stored seeded)"
if wait_conf b '.query_frequency == 400 and .recovery_max_tries == 9' 2; then pass "b applies a's seed"; else
    fail "b applies a's seed" "$BODY"; fi
assert_file_contains "b records version 3" "$T_DIR/data-b/cluster.json" "{\"conf_epoch\":\"$EPOCH\",\"conf_version\":3}"
on b
put_json /v1/ocsp '{"recovery_max_tries": 10}'
assert_status "PUT recovery_max_tries 10 on b" 200
assert_eq "the store holds version 4" 4 "$(stored version)"
if wait_conf a '.query_frequency == 400 and .recovery_max_tries == 10' 2; then pass "a applies it"; else
    fail "a applies it" "$BODY"; fi

on a
stop_checked a
on b
stop_checked b
