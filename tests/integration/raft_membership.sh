#!/usr/bin/env bash
# Raft peers must be current members (#22, item 8): a valid coordinator certificate is not enough
# to reach raft. A replica removed with `keyfleetctl cluster remove` keeps its certificate, yet
# the live replicas cut its connections and refuse new ones, while it runs on and after a
# restart, and it neither rejoins nor moves the cluster's term or leader; a coordinator
# certificate issued for a name that was never a member is refused too. Every refusal is one
# `raft_peer_refused name=... reason=...` line. Every wait is bounded.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

# wait_log NAME PATTERN: at most 5 s for PATTERN in NAME's log.
wait_log() { for _ in $(seq 1 50); do grep -Eq "$2" "$WORK/$1/keyfleetd.log" && return 0; sleep 0.1; done; return 1; }
term_of() { "$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[$1]}" cluster status 2>/dev/null | sed -n 's/^term: //p'; }
ctl_f() { "$CTL" -c "$F/keyfleetctl.yaml" "$@"; }

start_cluster m 3
S=$CLUSTER
out=$("$NODE_CLIENT" "$S" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)
W1=$(field wrapped "$out")
expect_match "a volume enrolled through the cluster" "$out" "^code=ok wrapped=kf:local:v1:"

# ---- a removed member, still running, with a valid certificate ----------------------------------
GONE=$(for n in m1 m2 m3; do [ "$n" != "$L" ] && echo "$n" && break; done)
LIVE=()
for n in m1 m2 m3; do [ "$n" != "$GONE" ] && LIVE+=("$n"); done
out=$(ctl_f cluster remove "$GONE" 2>&1)
expect_match "cluster remove $GONE" "$out" "removed $GONE"
S=$(servers_of "${LIVE[@]}")
check "the leader cuts the removed member's connection" \
    wait_log "$L" "event=raft_peer_refused direction=in name=\"$GONE\" reason=\"[^\"]*no longer a member"
# Its own configuration still lists the others: it campaigns and dials them, and is refused.
for n in "${LIVE[@]}"; do
    check "$n refuses $GONE at the Raft port" \
        wait_log "$n" "event=raft_peer_refused direction=in name=\"$GONE\" reason="
done
TERM0=$(term_of "$L")
for _ in $(seq 1 5); do out=$(release n1 vol-1 "$W1" "$S" 2>&1); done
expect_match "the two remaining replicas release keys" "$out" "^code=ok status=released"
sleep 1.5
expect_eq "the leader is unchanged while $GONE campaigns" "$(leader_seen_by "${LIVE[0]}")" "$L"
expect_eq "... and so is the term" "$(term_of "$L")" "$TERM0"
out=$(ctl_f --server "${RPC[$L]}" cluster status 2>&1)
expect_eq "two members remain" "$(grep -c 'raft=' <<<"$out")" "2"

# ---- the removed member restarted: it dials again and is refused, and does not catch up ---------
kill -9 "${PID[$GONE]}"
wait "${PID[$GONE]}" 2>/dev/null
before=$(grep -c "event=raft_peer_refused direction=in name=\"$GONE\" " "$WORK/$L/keyfleetd.log")
start "$GONE"
for _ in $(seq 1 3); do release n1 vol-1 "$W1" "$S" >/dev/null 2>&1; done
ok_after=""
for _ in $(seq 1 50); do
    after=$(grep -c "event=raft_peer_refused direction=in name=\"$GONE\" " "$WORK/$L/keyfleetd.log")
    [ "$after" -gt "$before" ] && { ok_after=1; break; }
    sleep 0.1
done
check "the restarted $GONE is refused by the leader" test -n "$ok_after"
caught_up "${LIVE[0]}" "$L" >/dev/null
sleep 1
a=$(applied_of "$L"); g=$(applied_of "$GONE")
check "$GONE does not rejoin: it applied nothing new (applied=$g, leader $a)" test -n "$a" -a "${g:-0}" -lt "$a"
expect_eq "... the leader is still $L" "$(leader_seen_by "${LIVE[0]}")" "$L"
expect_eq "... at the same term" "$(term_of "$L")" "$TERM0"
kill -9 "${PID[$GONE]}"

# ---- a coordinator certificate for a name that was never a member --------------------------------
RPC[x9]=127.0.0.1:$((BASE + 9))
RAFT[x9]=127.0.0.1:$((BASE + 29))
peers=""
for n in "${LIVE[@]}" x9; do peers="$peers    - {name: $n, raft: \"${RAFT[$n]}\", rpc: \"${RPC[$n]}\"}"$'\n'; done
write_config x9 "  peers:"$'\n'"$peers"
start x9
for n in "${LIVE[@]}"; do
    check "$n refuses x9, never a member" \
        wait_log "$n" "event=raft_peer_refused direction=in name=\"x9\" reason=\"[^\"]*not a member"
done
kill -9 "${PID[x9]}"
wait "${PID[x9]}" 2>/dev/null
sleep 0.5
# The same by hand: a TLS client with x9's certificate that sends a well-formed member address.
hello="name=x9 raft=${RAFT[x9]} rpc=${RPC[x9]}"
before=$(grep -c "name=\"x9\" reason=\"not a member" "$WORK/$L/keyfleetd.log")
{ printf "\\x$(printf %02x $((${#hello} >> 8)))\\x$(printf %02x $((${#hello} & 255)))%s" "$hello"; sleep 1; } |
    timeout 5 openssl s_client -quiet -connect "${RAFT[$L]}" -alpn keyfleet-raft/1 -cert "$F/x9.crt" \
        -key "$F/x9.key" -CAfile "$F/ca.crt" >/dev/null 2>&1
sleep 0.2
after=$(grep -c "name=\"x9\" reason=\"not a member" "$WORK/$L/keyfleetd.log")
check "x9's certificate with a matching member address is refused by the leader" test "$after" -gt "$before"
sleep 1
expect_eq "the leader is still $L" "$(leader_seen_by "${LIVE[0]}")" "$L"
expect_eq "... at the same term" "$(term_of "$L")" "$TERM0"
out=$(release n1 vol-1 "$W1" "$S")
expect_match "the cluster still releases" "$out" "^code=ok status=released"
m=$(curl -s --http2 --cacert "$F/ca.crt" --cert "$F/operator.crt" --key "$F/operator.key" "https://${RPC[$L]}/metrics")
expect_match "the refusals are counted" "$m" "keyfleet_raft_peers_refused_total [1-9]"

# ---- the leader asked to remove itself (review rev46, R46-4) --------------------------------------
# Once the configuration leaves it out it could not record its own removal: it hands leadership
# on, and the new leader removes it and records `cluster_remove`.
OTHER=$(for n in "${LIVE[@]}"; do [ "$n" != "$L" ] && echo "$n"; done)
out=$(ctl_f --server "${RPC[$L]}" cluster remove "$L" 2>&1)
expect_match "the leader asked to remove itself hands leadership on" "$out" "leads: it is handing leadership"
check "$OTHER leads" test "$(wait_leader "$OTHER" "$OTHER")" = "$OTHER"
for _ in $(seq 1 50); do
    out=$(ctl_f --server "${RPC[$OTHER]}" cluster remove "$L" 2>&1) && break
    sleep 0.2
done
expect_match "the new leader removes $L" "$out" "removed $L"
expect_eq "one member remains" "$(ctl_f --server "${RPC[$OTHER]}" cluster status 2>&1 | grep -c 'raft=')" "1"
expect_eq "the removal is recorded" "$(db_value_when "$WORK/$OTHER/state/keyfleet.db" \
    "SELECT count(*) FROM audit WHERE action = 'cluster_remove' AND reason = 'member $L'" 1)" "1"
expect_eq "... and the hand-over before it, as a refused change (review rev46b R46b-4)" \
    "$(sqlite3 -cmd ".timeout 5000" "$WORK/$OTHER/state/keyfleet.db" \
        "SELECT count(*) FROM audit WHERE action = 'cluster_change' AND decision = 2 AND reason LIKE 'remove member $L: it leads%'")" "1"

stop_replicas "${LIVE[@]}"
check_sanitizers
finish
