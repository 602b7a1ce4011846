# shellcheck shell=bash
# A real cluster of `etcd` members (Debian etcd-server) on loopback, for the cluster suites on etcd
# (tests/integration/lib.sh sources it) and the cluster benchmark.
#
# The file that sources it provides: T_DIR (where the members keep their data and logs), T_NAME (a name for the
# cluster's token), the array T_PIDS (every member started is added; the sourcing file's exit trap stops them),
# and the functions bail MESSAGE [DETAIL...], wait_until SECONDS COMMAND..., wait_exit PID SECONDS, forget_pid PID,
# proc_alive PID and free_port (tests/integration/lib.sh has them all).
#
#   start_etcd_cluster N        N members m1..mN, each with its own client and peer port and data dir under $T_DIR;
#                               returns once `etcdctl endpoint health` says all are healthy. Exports ETCD_URL
#                               (etcd://127.0.0.1:P1,...: the agent's --cluster), ETCD_ENDPOINTS (127.0.0.1:P1,...:
#                               etcdctl's --endpoints) and, per member I (1..N), ETCD_PID[I], ETCD_DATA[I],
#                               ETCD_NAME[I], ETCD_CLIENT_PORT[I], ETCD_PEER_PORT[I] and ETCD_LOG[I]
#   ectl ARGS...                etcdctl against the whole cluster, each command bounded
#   etcd_member_kill I          SIGKILL (a crash); etcd_member_stop I / etcd_member_cont I: SIGSTOP / SIGCONT
#   etcd_member_restart I       stops member I (if running) and starts it again on its data; waits until healthy
#                               (etcd_member_start I starts it without waiting; etcd_wait_healthy WHAT waits)
#   etcd_member_wipe_readd I    kills member I, removes it from the cluster, adds it back and starts it on an empty
#                               data dir (--initial-cluster-state existing); waits until every member is healthy
#   etcd_leader                 prints the index of the member that is the leader now
#   stop_etcd_cluster           every member stopped (SIGTERM)
#   etcd_value KEY              prints the value stored at KEY (nothing when absent); etcd_keys PREFIX the keys
#                               under PREFIX, one a line
#   etcd_status_node            the "node" of the status record the agents stored under /ocsp-agent/status/ (one
#                               CertID); etcd_lease_holder the node holding the poller's lease /ocsp-agent/lease/
# The members are in T_PIDS: the exit trap stops them with every other process.

export ETCDCTL_API=3
ETCD_N=0
ETCD_URL=
ETCD_ENDPOINTS=
ETCD_TOKEN=
ETCD_RUNS=0
ETCD_PID=()
ETCD_DATA=()
ETCD_NAME=()
ETCD_CLIENT_PORT=()
ETCD_PEER_PORT=()
ETCD_LOG=()

ectl() { etcdctl --endpoints "$ETCD_ENDPOINTS" --dial-timeout=2s --command-timeout=3s "$@"; }

# _etcd_port: a free port that no member was given yet (free_port may hand out the same one twice in a row, since
# nothing listens on it until the member starts).
_etcd_port() {
    local p q i taken
    for i in $(seq 1 50); do
        p=$(free_port) || return 1
        taken=0
        for q in "${ETCD_CLIENT_PORT[@]}" "${ETCD_PEER_PORT[@]}"; do [ "$q" != "$p" ] || taken=1; done
        [ "$taken" = 1 ] || { echo "$p"; return 0; }
    done
    return 1
}

# _etcd_spawn I STATE INITIAL_CLUSTER: starts member I in the background (its log appended to ETCD_LOG[I]).
_etcd_spawn() {
    local i=$1 peer="http://127.0.0.1:${ETCD_PEER_PORT[$1]}" client="http://127.0.0.1:${ETCD_CLIENT_PORT[$1]}"
    ETCD_RUNS=$((ETCD_RUNS + 1))
    echo "--- start $ETCD_RUNS ($2)" >>"${ETCD_LOG[$i]}"
    etcd --name "${ETCD_NAME[$i]}" --data-dir "${ETCD_DATA[$i]}" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$3" --initial-cluster-state "$2" --initial-cluster-token "$ETCD_TOKEN" \
        --heartbeat-interval 100 --election-timeout 1000 </dev/null >>"${ETCD_LOG[$i]}" 2>&1 &
    ETCD_PID[i]=$!
    T_PIDS+=("${ETCD_PID[$i]}")
}

# etcd_healthy [I]: 0 when every member (or member I alone) answers its health check.
etcd_healthy() {
    if [ $# -gt 0 ]; then
        etcdctl --endpoints "127.0.0.1:${ETCD_CLIENT_PORT[$1]}" --dial-timeout=2s --command-timeout=3s \
            endpoint health >/dev/null 2>&1
    else
        ectl endpoint health >/dev/null 2>&1
    fi
}

# etcd_wait_healthy WHAT: waits (at most 30 s: a member that rejoins may first have to catch up) until every member
# is healthy; bails out otherwise, showing the members' last log lines.
etcd_wait_healthy() {
    local i logs=()
    wait_until 30 etcd_healthy && return 0
    for i in $(seq 1 "$ETCD_N"); do logs+=("${ETCD_NAME[$i]}:" "$(tail -n 5 "${ETCD_LOG[$i]}")"); done
    bail "$1: every etcd member is healthy within 30 s" "$(ectl endpoint health 2>&1)" "${logs[@]}"
}

start_etcd_cluster() {
    local n=$1 i initial=() endpoints=()
    if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
        echo "skipped: etcd and etcdctl are needed (Debian: etcd-server, etcd-client)"
        exit 0
    fi
    ETCD_N=$n
    # A token of its own, so that members of another suite's cluster could never join this one.
    ETCD_TOKEN="oa-$T_NAME-$$-$RANDOM$RANDOM"
    for i in $(seq 1 "$n"); do
        ETCD_NAME[i]="m$i"
        ETCD_DATA[i]="$T_DIR/etcd-m$i"
        ETCD_LOG[i]="$T_DIR/etcd-m$i.log"
        rm -rf "${ETCD_DATA[$i]}" # a new cluster: nothing of an earlier one under the same name
        ETCD_CLIENT_PORT[i]=$(_etcd_port) || bail "no free port for etcd"
        ETCD_PEER_PORT[i]=$(_etcd_port) || bail "no free port for etcd"
        initial+=("m$i=http://127.0.0.1:${ETCD_PEER_PORT[$i]}")
        endpoints+=("127.0.0.1:${ETCD_CLIENT_PORT[$i]}")
    done
    ETCD_ENDPOINTS=$(IFS=,; echo "${endpoints[*]}")
    ETCD_URL="etcd://$ETCD_ENDPOINTS"
    export ETCD_URL ETCD_ENDPOINTS
    for i in $(seq 1 "$n"); do _etcd_spawn "$i" new "$(IFS=,; echo "${initial[*]}")"; done
    etcd_wait_healthy "start_etcd_cluster $n"
}

# _etcd_end I SIGNAL: sends SIGNAL to member I and reaps it (SIGKILL after 5 s); a stopped member is continued so
# that a SIGTERM reaches it.
_etcd_end() {
    local pid=${ETCD_PID[$1]:-}
    [ -n "$pid" ] || return 0
    kill -s "$2" "$pid" 2>/dev/null
    kill -CONT "$pid" 2>/dev/null
    wait_exit "$pid" 5 || kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    forget_pid "$pid"
    ETCD_PID[$1]=
}

etcd_member_kill() { _etcd_end "$1" KILL; }
etcd_member_stop() { kill -STOP "${ETCD_PID[$1]}"; }
etcd_member_cont() { kill -CONT "${ETCD_PID[$1]}"; }

# etcd_member_start I: starts member I again on its data dir, without waiting (after all members were stopped, none
# is healthy before a majority runs).
etcd_member_start() {
    # On a data dir that holds a member, etcd ignores the initial-cluster flags: they are given only because etcd
    # wants them well formed.
    _etcd_spawn "$1" existing "${ETCD_NAME[$1]}=http://127.0.0.1:${ETCD_PEER_PORT[$1]}"
}

etcd_member_restart() {
    _etcd_end "$1" TERM
    etcd_member_start "$1"
    etcd_wait_healthy "etcd_member_restart $1"
}

# _etcd_member_id ENDPOINTS NAME: the hex id of the member NAME (`member list` prints "ID, status, name, peer URLs,
# client URLs, is learner", the ID in hex as `member remove` wants it); nothing when it is not a member.
_etcd_member_id() {
    etcdctl --endpoints "$1" --command-timeout=3s member list 2>/dev/null | awk -F', ' -v n="$2" '$3 == n { print $1 }'
}

# _etcd_removed ENDPOINTS NAME: 0 once NAME is no member. A removal whose answer timed out (a leader election in
# between) may still have been applied, hence the check before each try.
_etcd_removed() {
    local id
    etcdctl --endpoints "$1" --command-timeout=3s member list >/dev/null 2>&1 || return 1
    id=$(_etcd_member_id "$1" "$2")
    [ -n "$id" ] || return 0
    etcdctl --endpoints "$1" --command-timeout=5s member remove "$id" >/dev/null 2>>"$T_DIR/etcdctl.err"
}

# _etcd_added ENDPOINTS PEER_URL NAME: 0 once a member with that peer URL is listed (added by an earlier try whose
# answer was lost, or now).
_etcd_added() {
    etcdctl --endpoints "$1" --command-timeout=3s member list 2>/dev/null | grep -qF ", $2, " && return 0
    etcdctl --endpoints "$1" --command-timeout=5s member add "$3" --peer-urls="$2" >/dev/null 2>>"$T_DIR/etcdctl.err"
}

etcd_member_wipe_readd() {
    local i=$1 j list=() initial=() others peer
    peer="http://127.0.0.1:${ETCD_PEER_PORT[$i]}"
    for j in $(seq 1 "$ETCD_N"); do
        [ "$j" = "$i" ] || list+=("127.0.0.1:${ETCD_CLIENT_PORT[$j]}")
        initial+=("${ETCD_NAME[$j]}=http://127.0.0.1:${ETCD_PEER_PORT[$j]}")
    done
    others=$(IFS=,; echo "${list[*]}")
    _etcd_end "$i" KILL
    # A removal sent while the others still elect a new leader (the member was the leader) would wait for the
    # election and likely time out: it is sent once another member leads.
    wait_until 15 _etcd_has_leader || bail "etcd_member_wipe_readd $i: a member leads within 15 s"
    : >"$T_DIR/etcdctl.err"
    wait_until 30 _etcd_removed "$others" "${ETCD_NAME[$i]}" ||
        bail "etcd_member_wipe_readd $i: ${ETCD_NAME[$i]} is removed within 30 s" "$(tail -n 3 "$T_DIR/etcdctl.err")"
    rm -rf "${ETCD_DATA[$i]}"
    wait_until 30 _etcd_added "$others" "$peer" "${ETCD_NAME[$i]}" ||
        bail "etcd_member_wipe_readd $i: ${ETCD_NAME[$i]} is added within 30 s" "$(tail -n 3 "$T_DIR/etcdctl.err")"
    # What `member add` prints as ETCD_INITIAL_CLUSTER: every member, the new one with its peer URL.
    _etcd_spawn "$i" existing "$(IFS=,; echo "${initial[*]}")"
    etcd_wait_healthy "etcd_member_wipe_readd $i"
}

_etcd_has_leader() { etcd_leader >/dev/null; }

# etcd_leader: the index of the member that is the leader (nothing, and 1, when no member answering knows one). Only
# the members running (not killed, not paused) are asked, each through its JSON gateway with a short deadline, so that
# a round takes milliseconds; ids are compared as the gateway prints them (64-bit integers as strings).
etcd_leader() {
    local i st
    for i in $(seq 1 "$ETCD_N"); do
        [ -n "${ETCD_PID[$i]}" ] && proc_alive "${ETCD_PID[$i]}" || continue
        [ "$(sed 's/^.*) //' "/proc/${ETCD_PID[$i]}/stat" 2>/dev/null | cut -d' ' -f1)" != T ] || continue
        st=$(curl -s --max-time 0.5 -X POST -d '{}' "http://127.0.0.1:${ETCD_CLIENT_PORT[$i]}/v3/maintenance/status" |
            jq -r 'if (.leader // "0") != "0" and .leader == .header.member_id then "yes" else "no" end' 2>/dev/null)
        [ "$st" != yes ] || { echo "$i"; return 0; }
    done
    return 1
}

etcd_value() { ectl get --print-value-only "$1" 2>/dev/null; }
etcd_keys() { ectl get --prefix --keys-only "$1" 2>/dev/null | grep .; }

# The first value under PREFIX (the suites run one CertID, so there is one).
_etcd_first_value() { ectl get --prefix --print-value-only "$1" 2>/dev/null | head -n 1; }

etcd_status_node() { _etcd_first_value /ocsp-agent/status/ | jq -r '.node // empty' 2>/dev/null; }

# The lease key holds the holder's node id, as text or as a JSON object with "node".
etcd_lease_holder() {
    local v
    v=$(_etcd_first_value /ocsp-agent/lease/)
    if printf '%s' "$v" | jq -e 'type == "object"' >/dev/null 2>&1; then
        printf '%s' "$v" | jq -r '.node // empty'
    else
        printf '%s\n' "$v" | sed 's/^"\(.*\)"$/\1/'
    fi
}

# stop_etcd_cluster: every member stopped (SIGTERM), as an operator would.
stop_etcd_cluster() {
    local i
    for i in $(seq 1 "$ETCD_N"); do _etcd_end "$i" TERM; done
}
