#!/usr/bin/env bash
# Review rev40 F1 (docs/reviews/rev40-store-failover-client.md): a leader whose state store failed
# hands leadership on with raft_transfer, and libraft (id 0) picks the first up-to-date voter in
# configuration order, store failed or not; the target takes it at once (TimeoutNow), whatever its
# own election timer says. With two of three stores failed (another process holding each database
# locked for a moment, as cluster_store_failed does for one), the two failed replicas handed
# leadership to each other while the healthy third, its timer kept by their heartbeats, never
# stood: the cluster answered `unavailable` until a restart. The healthy replica must lead.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n2
. "$(dirname "$0")/cluster_lib.sh"

start_cluster c 3
if [ "$L" = c3 ]; then # the case needs the leader and its first transfer target to be c1 and c2
    stop_replicas c3
    L=$(wait_leader c1 c1 c2)
    start c3
    check "c1 or c2 leads (${L:-none})" test -n "$L"
fi
pick_roles # A: the first voter after the leader in configuration order (its transfer target); C healthy
for _ in $(seq 1 50); do # a new leader answers "retry" until a majority confirms its audit head
    WRAP=$(field wrapped "$("$NODE_CLIENT" "$CLUSTER" "$F/n2.crt" "$F/n2.key" "$F/ca.crt" enroll vol-2 data)")
    [ -n "$WRAP" ] && break
    sleep 0.1
done
expect_match "n2 gets its key" "$(release_ok n2 vol-2 "$WRAP" "$CLUSTER")" "^code=ok status=released"
caught_up "$C" "$B"
caught_up "$A" "$B"

# The follower A's store fails applying a release's audit record under the lock.
lock_db "$A"
release n2 vol-2 "$WRAP" "${RPC[$B]}" >/dev/null
unlock_db "$A"
expect_match "follower $A's store failed" "$(cat "$WORK/$A/keyfleetd.log")" "event=store_failed "
# Then the leader B's, on the next release.
lock_db "$B"
"$NODE_CLIENT" "${RPC[$B]}" "$F/n2.crt" "$F/n2.key" "$F/ca.crt" release vol-2 "$WRAP" >/dev/null 2>&1
unlock_db "$B"
expect_match "leader $B's store failed" "$(cat "$WORK/$B/keyfleetd.log")" "event=store_failed "

for _ in $(seq 1 100); do l=$(leader_seen_by "$C" || true); [ "$l" = "$C" ] && break; sleep 0.1; done
check "the healthy replica $C leads (leader ${l:-none})" test "$l" = "$C"
expect_match "a release through the cluster gets the key" "$(release_ok n2 vol-2 "$WRAP" "$CLUSTER")" \
    "^code=ok status=released"
echo "# leader changes seen by $C: $(grep -c 'event=raft_state' "$WORK/$C/keyfleetd.log")"
stop_replicas c1 c2 c3
check_sanitizers
finish
