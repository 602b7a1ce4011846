#!/usr/bin/env bash
# Cluster mode: the store stops and restarts under load, twice: once cleanly (SIGTERM) and once killed (SIGKILL).
# It comes back empty both times (no persistence).
#
# Three nodes and a real OCSP responder, so that every node serves a valid GOOD status and has a staple file. For
# each outage, tests/support/cluster_load.py runs traffic on every node from before the store goes until after it
# is back: clients looping GET /v1/ocsp and GET /v1/ocsp/status, and one writer per node looping PUT /v1/ocsp, each
# request on a new connection, bounded, and recorded (node, method, value sent, status, error_code, start and end
# times). The store is stopped once the load flows on every node (an acknowledged PUT and both GETs answered on
# each); it is started again after 3 s and once every node has refused a PUT and answered both GETs meanwhile; the
# load goes on for 3 s after every node has reconnected, and until every node has acknowledged a PUT sent after its
# reconnection. The suite waits for these on the load's live record, with deadlines. Then, for that outage:
#   - every request got an answer (no connection failure, no timeout); every PUT answered 200 or 503, never anything
#     else; every 503 is cluster_store_unavailable;
#   - on each node, every PUT sent after the node logged the outage and answered before the store was back was
#     refused (at least one), and at least one PUT sent after the node reconnected was acknowledged;
#   - every GET /v1/ocsp answered 200 and every GET /v1/ocsp/status answered 200 with GOOD (valid) throughout, with
#     answers of both kinds on every node while the store was down; each staple file was present at every 20 ms
#     sample and every agent process alive at every sample;
#   - each node logged store_unavailable exactly once and store_reconnected exactly once for the outage, at the
#     right moments;
#   - no acknowledged PUT is lost: within a bounded time the store and all three nodes hold the same configuration,
#     the one the acknowledged PUTs determine, and every node records the store's version.
# At the end every node exits 0 on SIGTERM.
#
# What "the last acknowledged PUT" means with concurrent writers. The store orders the writes: each one is a
# compare-and-set on the version, so the versions are a total order and the final configuration is the one with the
# highest. With several concurrent writers on one key, the PUT whose answer came last need not be the one with the
# highest version (two writes can be answered in either order), so "the final value is the last acknowledged
# value" would not be sound. Here each writer owns one key: n1 writes query_frequency, n2 recovery_frequency, n3
# recovery_max_tries, each PUT setting that key alone. The three writers still race for every version (their
# compare-and-sets conflict, and the losers are re-validated against the winner's configuration, which is how a
# partial update keeps the other keys), but the PUTs on one key are sequential: a writer sends its next PUT only
# after the previous one was answered, so a PUT acknowledged later was also written at a higher version. Hence,
# exactly, for each key: the final value is the value of the writer's last acknowledged PUT, provided no PUT of
# unknown outcome (a 503 that says it "may or may not have been applied": a timeout, or a connection lost after
# sending) came after it; that proviso is itself asserted. PUT values are unique per key within a load (START,
# START+1, ...), except recovery_max_tries, whose range 1-100 makes them repeat every 100 PUTs; a writer never sends
# the value of its last acknowledged PUT, because a PUT that changes nothing is answered 200 by the node itself,
# without the store (even while it is down).
source "$(dirname "$0")/lib.sh"

TIME_SCALE=0.02 # query_frequency 60 s -> a period of 1.2 s
NODES=(n1 n2 n3)
declare -A WRITER_KEY=([n1]=query_frequency [n2]=recovery_frequency [n3]=recovery_max_tries)
FLOW_MAX_S=10      # the load flows on every node within this (the generator starts, each node answers)
OUTAGE_S=3         # the store is away at least this long: the nodes' retry delay grows meanwhile (0.1 s doubling)
OUTAGE_MAX_S=10    # ... and until every node has refused a PUT and answered both GETs, within this
LOAD_AFTER_S=3     # load after every node has reconnected (deliberate: nothing may fail during the resync)
ACK_MAX_S=10       # ... and until every node has acknowledged a PUT sent after its reconnection, within this
RECONNECT_MAX_S=15 # the backoff tops at 2 s; generous for a loaded machine
CONVERGE_MAX_S=10

make_users admin
start_pki_responder

source "$(dirname "$0")/cluster_lib.sh"
start_redis

# ---------------------------------------------------------------------------------------------------------------
# Helpers

# ms_of ISO8601: milliseconds since the epoch.
ms_of() { date -u -d "$1" +%s%3N; }

# log_events NODE EVENT: the number of EVENT lines in NODE's log.
log_events() { grep -c " event=$2 " "${N_LOG[$1]}"; }

# log_event_ms NODE EVENT N: the time (epoch ms) of the Nth EVENT line in NODE's log; nothing when there is none.
log_event_ms() {
    local line
    line=$(grep " event=$2 " "${N_LOG[$1]}" | sed -n "${3}p")
    [ -n "$line" ] && ms_of "$(field "$line" ts)"
}

LOAD_PID=
LOAD_OUT=
LOAD_ERR=
LOAD_LIVE=
# load_start NAME START: the load on every node, into $T_DIR/load-NAME.tsv (and, as requests end, the live record
# $T_DIR/load-NAME.live); writers start at value START.
load_start() {
    local args=() n
    LOAD_OUT="$T_DIR/load-$1.tsv"
    LOAD_ERR="$T_DIR/load-$1.err"
    LOAD_LIVE="$T_DIR/load-$1.live"
    rm -f "$T_DIR/load.stop" "$LOAD_LIVE"
    for n in "${NODES[@]}"; do
        args+=(--node "$n=${N_PORT[$n]}" --writer "$n=${WRITER_KEY[$n]}:$2"
            --watch-file "$n=$T_DIR/data-$n/ocsp.der" --watch-pid "$n=${N_PID[$n]}")
    done
    # Bounded twice: the stop file, and a hard limit well above the phase's own length.
    python3 "$OA_SOURCE_DIR/tests/support/cluster_load.py" --out "$LOAD_OUT" --stop-file "$T_DIR/load.stop" \
        --max-seconds 60 --user admin@example.com --password "${USER_PASS[admin]}" --readers 1 --pause-ms 5 \
        --timeout 10 --live "$LOAD_LIVE" "${args[@]}" </dev/null 2>"$LOAD_ERR" &
    LOAD_PID=$!
    T_PIDS+=("$LOAD_PID")
}
load_stop() {
    touch "$T_DIR/load.stop"
    # A request in flight finishes within its 10 s limit.
    if ! wait_exit "$LOAD_PID" 20; then
        kill -KILL "$LOAD_PID" 2>/dev/null
    fi
    wait "$LOAD_PID"
    local rc=$?
    forget_pid "$LOAD_PID"
    if [ "$rc" -ne 0 ] || [ ! -s "$LOAD_OUT" ]; then
        bail "the load generator ran and wrote its record" "exit status $rc" "$(tail -n 5 "$LOAD_ERR")"
    fi
}

# reqs AWK_CONDITION: the recorded requests of the current load that satisfy the condition. Fields: $2 node,
# $3 method, $4 path, $5 value, $6 status, $7 error_code, $8 start ms, $9 end ms, $10 detail.
reqs() { awk -F'\t' -v OFS='\t' "\$1 == \"REQ\" && ($1)" "$LOAD_OUT"; }
count() { reqs "$1" | grep -c .; }

# expect_none NAME AWK_CONDITION: no recorded request satisfies the condition.
expect_none() {
    local bad
    bad=$(reqs "$2")
    if [ -z "$bad" ]; then pass "$1"; else
        fail "$1" "$(grep -c . <<<"$bad") requests, the first ones (node method path value status error_code t0 t1 detail):" \
            "$(head -n 5 <<<"$bad")"
    fi
}

# live_on NODE AWK_CONDITION: 0 when a request of NODE in the live record so far satisfies the condition (fields as
# for reqs).
live_on() {
    awk -F'\t' -v n="$1" "\$1 == \"REQ\" && \$2 == n && ($2) { found = 1; exit } END { exit !found }" \
        "$LOAD_LIVE" 2>/dev/null
}

# load_flows: every node has acknowledged a PUT and answered both GETs (200) in the live record.
load_flows() {
    local n
    for n in "${NODES[@]}"; do
        live_on "$n" '$3 == "PUT" && $6 == "200"' && live_on "$n" '$3 == "GET" && $4 == "/v1/ocsp" && $6 == "200"' &&
            live_on "$n" '$4 == "/v1/ocsp/status" && $6 == "200"' || return 1
    done
}

# outage_seen K T_DOWN: every node has logged its Kth outage and refused a PUT sent since, and answered
# GET /v1/ocsp (200) and GET /v1/ocsp/status (200 GOOD, valid) sent after T_DOWN: what the checks of the outage need.
outage_seen() {
    local n down_ms
    for n in "${NODES[@]}"; do
        down_ms=$(log_event_ms "$n" store_unavailable "$1")
        [ -n "$down_ms" ] && live_on "$n" "\$3 == \"PUT\" && \$8 >= $down_ms && \$6 == \"503\"" &&
            live_on "$n" "\$3 == \"GET\" && \$4 == \"/v1/ocsp\" && \$8 >= $2 && \$6 == \"200\"" &&
            live_on "$n" "\$4 == \"/v1/ocsp/status\" && \$8 >= $2 && \$6 == \"200\" && \$10 == \"GOOD/valid\"" ||
            return 1
    done
}

# reconnected K: every node has logged its Kth reconnection.
reconnected() {
    local n
    for n in "${NODES[@]}"; do [ "$(log_events "$n" store_reconnected)" -ge "$1" ] || return 1; done
}

# acked_after_reconnect K: every node has acknowledged a PUT sent after it logged its Kth reconnection.
acked_after_reconnect() {
    local n up_ms
    for n in "${NODES[@]}"; do
        up_ms=$(log_event_ms "$n" store_reconnected "$1")
        [ -n "$up_ms" ] && live_on "$n" "\$3 == \"PUT\" && \$8 >= $up_ms && \$6 == \"200\"" || return 1
    done
}

# kill_redis SIGNAL: stops the store with SIGNAL and waits until its process is gone.
kill_redis() {
    kill -s "$1" "$REDIS_PID" 2>/dev/null
    wait_exit "$REDIS_PID" 5 || kill -KILL "$REDIS_PID"
    wait "$REDIS_PID" 2>/dev/null
    forget_pid "$REDIS_PID"
}

# conf_triple JSON: "query_frequency,recovery_frequency,recovery_max_tries" of a configuration object.
conf_triple() { jq -r '"\(.query_frequency),\(.recovery_frequency),\(.recovery_max_tries)"' <<<"$1" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------------------------
# outage NUMBER SIGNAL START: one outage under load, and every check on its record.
outage() {
    local k=$1 sig=$2 start=$3 label n t_down t_up t_synced deadline ok down_ms up_ms window refused acked
    local expected=() key last last_t0 stored snap v want samples missing first
    label="outage $k (SIG$sig)"
    echo "# $label: load on every node, the store goes away and comes back empty"
    load_start "$k" "$start"
    wait_until "$FLOW_MAX_S" load_flows || fail "$label: the load flows on every node within $FLOW_MAX_S s"
    t_down=$(now_ms)
    kill_redis "$sig"
    wait_until "$OUTAGE_MAX_S" outage_seen "$k" "$t_down" ||
        fail "$label: every node refuses a PUT and answers both GETs while the store is down, within $OUTAGE_MAX_S s"
    # Deliberate: the store stays away OUTAGE_S s in all, so that the nodes retry it with a growing delay.
    sleep_until $((t_down + OUTAGE_S * 1000))
    t_up=$(now_ms)
    start_redis
    wait_until "$RECONNECT_MAX_S" reconnected "$k" ||
        fail "$label: every node reconnects within $RECONNECT_MAX_S s of the restart"
    t_synced=$(now_ms)
    wait_until "$ACK_MAX_S" acked_after_reconnect "$k" ||
        fail "$label: every node acknowledges a PUT sent after its reconnection, within $ACK_MAX_S s"
    # Deliberate: LOAD_AFTER_S s of load in all after the resynchronisation, during which nothing may fail.
    sleep_until $((t_synced + LOAD_AFTER_S * 1000))
    load_stop
    echo "# $label: store down for $((t_up - t_down)) ms; every node resynchronised $((t_synced - t_up)) ms after" \
        "the restart; $(count 1) requests: $(count '$3 == "PUT"') PUT ($(count '$3 == "PUT" && $6 == "200"')" \
        "acknowledged), $(count '$4 == "/v1/ocsp" && $3 == "GET"') GET /v1/ocsp," \
        "$(count '$4 == "/v1/ocsp/status"') GET /v1/ocsp/status"

    expect_none "$label: every request got an HTTP answer: no connection failure, no timeout ($(count 1))" \
        '$6 == "000"'
    expect_none "$label: every PUT answered 200 or 503 ($(count '$3 == "PUT"') PUTs)" \
        '$3 == "PUT" && $6 != "200" && $6 != "503"'
    expect_none "$label: every 503 carries error_code cluster_store_unavailable ($(count '$6 == "503"'))" \
        '$6 == "503" && $7 != "cluster_store_unavailable"'
    expect_none "$label: every GET /v1/ocsp answered 200 ($(count '$3 == "GET" && $4 == "/v1/ocsp"'))" \
        '$3 == "GET" && $4 == "/v1/ocsp" && $6 != "200"'
    expect_none "$label: every GET /v1/ocsp/status answered 200 GOOD, state valid ($(count '$4 == "/v1/ocsp/status"'))" \
        '$4 == "/v1/ocsp/status" && ($6 != "200" || $10 != "GOOD/valid")'

    for n in "${NODES[@]}"; do
        # The logs: one line each for this outage, at the right moments.
        assert_eq "$label: $n logged store_unavailable exactly once per outage so far" "$k" \
            "$(log_events "$n" store_unavailable)"
        assert_eq "$label: $n logged store_reconnected exactly once per outage so far" "$k" \
            "$(log_events "$n" store_reconnected)"
        down_ms=$(log_event_ms "$n" store_unavailable "$k")
        up_ms=$(log_event_ms "$n" store_reconnected "$k")
        assert_between "$label: $n logged the outage after the store went and before it came back (ms after)" \
            0 $((t_up - t_down)) $((${down_ms:-0} - t_down))
        assert_between "$label: $n logged the reconnection after the restart (ms after)" 0 $((t_synced - t_up)) \
            $((${up_ms:-0} - t_up))
        down_ms=${down_ms:-$t_down}
        up_ms=${up_ms:-$t_synced}

        # PUT: refused while the node knew the store was away, acknowledged again once it was back.
        window="\$2 == \"$n\" && \$3 == \"PUT\" && \$8 >= $down_ms && \$9 < $t_up"
        refused=$(count "$window && \$6 == \"503\"")
        assert_between "$label: $n refused PUTs while the store was down" 1 1000000 "$refused"
        expect_none "$label: $n refused every PUT sent while the store was down ($(count "$window"))" \
            "$window && \$6 != \"503\""
        acked=$(count "\$2 == \"$n\" && \$3 == \"PUT\" && \$8 >= $up_ms && \$6 == \"200\"")
        assert_between "$label: $n acknowledged PUTs sent after it reconnected" 1 1000000 "$acked"

        # GET: answered on every node while the store was down, not only around it.
        window="\$2 == \"$n\" && \$3 == \"GET\" && \$8 >= $t_down && \$9 < $t_up && \$6 == \"200\""
        assert_between "$label: $n answered GET /v1/ocsp while the store was down" 1 1000000 \
            "$(count "$window && \$4 == \"/v1/ocsp\"")"
        assert_between "$label: $n answered GET /v1/ocsp/status GOOD while the store was down" 1 1000000 \
            "$(count "$window && \$4 == \"/v1/ocsp/status\" && \$10 == \"GOOD/valid\"")"

        # The watcher's samples: the staple file and the process, every 20 ms of the load.
        read -r samples missing first < <(awk -F'\t' -v n="$n" '$1 == "WATCH" && $2 == n { print $4, $5, $6 }' \
            "$LOAD_OUT")
        assert_between "$label: $n's staple file was sampled" 50 1000000 "${samples:-0}"
        assert_eq "$label: $n's staple file was present at every sample (first missing at: ${first:--})" 0 \
            "${missing:-none}"
        read -r samples missing first < <(awk -F'\t' -v n="$n" '$1 == "PROC" && $2 == n { print $4, $5, $6 }' \
            "$LOAD_OUT")
        assert_eq "$label: $n's process was alive at every one of ${samples:-0} samples" 0 "${missing:-none}"
        if proc_alive "${N_PID[$n]}"; then pass "$label: $n is still the same live process"; else
            fail "$label: $n is still the same live process" "$(tail -n 5 "${N_LOG[$n]}")"; fi
    done

    # No acknowledged PUT lost: per key, the value of its writer's last acknowledged PUT (see the header).
    for n in "${NODES[@]}"; do
        key=${WRITER_KEY[$n]}
        last=$(reqs "\$2 == \"$n\" && \$3 == \"PUT\" && \$6 == \"200\"" | sort -t$'\t' -k8,8n | tail -n 1)
        v=$(cut -f5 <<<"$last")
        last_t0=$(cut -f8 <<<"$last")
        expected+=("$v")
        expect_none "$label: no PUT of unknown outcome on $n after its last acknowledged one ($key=$v)" \
            "\$2 == \"$n\" && \$3 == \"PUT\" && \$10 == \"unknown\" && \$8 >= ${last_t0:-0}"
    done
    want=$(IFS=,; echo "${expected[*]}")
    deadline=$((SECONDS + CONVERGE_MAX_S))
    while :; do
        stored=$(rcli HGET ocsp-agent:conf conf)
        snap="store=$(conf_triple "$stored")"
        ok=1
        [ "$(conf_triple "$stored")" = "$want" ] || ok=0
        for n in "${NODES[@]}"; do
            on "$n"
            req GET /v1/ocsp
            snap+=" $n=$(conf_triple "$BODY")"
            [ "$STATUS" = 200 ] && [ "$(conf_triple "$BODY")" = "$want" ] || ok=0
        done
        [ "$ok" = 1 ] || [ $SECONDS -ge $deadline ] || { sleep 0.1; continue; }
        break
    done
    assert_eq "$label: the store holds the last acknowledged value of each key (qf,rf,rmt)" "$want" \
        "$(conf_triple "$stored")"
    for n in "${NODES[@]}"; do
        assert_eq "$label: $n serves the same configuration as the store" "store=$want" \
            "store=$(sed -nE "s/.* $n=([^ ]*).*/\1/p" <<<"$snap")"
    done
    v=$(rcli HGET ocsp-agent:conf version)
    for n in "${NODES[@]}"; do
        assert_file_contains "$label: $n records the store's version $v" "$T_DIR/data-$n/cluster.json" \
            "\"conf_version\":$v}"
    done
}

# ---------------------------------------------------------------------------------------------------------------
echo "# three nodes serving a valid status"
for n in "${NODES[@]}"; do start_node "$n"; done
for n in "${NODES[@]}"; do
    on "$n"
    wait_log 'event=store_connected' 10 && pass "$n connects to the store" || fail "$n connects to the store"
done
on n1
put_json /v1/ocsp '{"ocsp_functionality": true, "query_frequency": 60, "recovery_frequency": 60}'
assert_status "enabling OCSP on n1" 200
for n in "${NODES[@]}"; do
    if wait_status_on "$n" '.cert_status == "GOOD" and .state == "valid"' 15; then pass "$n serves GOOD (valid)"; else
        fail "$n serves GOOD (valid)" "$BODY"; fi
    [ -s "$T_DIR/data-$n/ocsp.der" ] && pass "$n has its staple file" || fail "$n has its staple file"
done

outage 1 TERM 100
outage 2 KILL 30000

echo "# every node exits 0 on SIGTERM"
for n in "${NODES[@]}"; do
    on "$n"
    stop_checked "$n"
done
