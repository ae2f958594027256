#!/usr/bin/env bash
# A replica whose state store failed serves nothing until restarted (it fails closed). As leader
# it must not hold the cluster with it: it hands leadership on, and a client whose first
# coordinator is that replica (answering `unavailable`, naming no leader) asks the next one.
# The failure: another process holds the leader's database locked while the leader writes a
# release's audit record (SQLITE_BUSY), which is what a foreign writer looping on one replica's
# database caused in review rev17d's D2 test under load.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
. "$(dirname "$0")/cluster_lib.sh"
n2_cluster
E=$L
OTHERS=$(for n in c1 c2 c3; do [ "$n" != "$E" ] && echo "$n"; done)
H=$(echo "$OTHERS" | head -n 1)

# Hold the leader's database locked while a release goes through it.
lock_db "$E"
out=$("$NODE_CLIENT" "${RPC[$E]}" "$F/n2.crt" "$F/n2.key" "$F/ca.crt" release vol-2 "$WRAP" 2>&1)
unlock_db "$E"
expect_match "a release through the locked leader $E: unavailable, no key" "$out" "^code=unavailable"
expect_match "$E logs its store failure" "$(cat "$WORK/$E/keyfleetd.log")" "event=store_failed "
for _ in $(seq 1 100); do l=$(leader_seen_by "$H" || true); [ -n "$l" ] && [ "$l" != "$E" ] && break; sleep 0.1; done
expect_match "$E stands down" "$(cat "$WORK/$E/keyfleetd.log")" "event=raft_standing_down reason=\"state store failed\""
check "another replica leads (leader ${l:-none})" test -n "$l" -a "$l" != "$E"
# The failed replica first in the client's list: it answers unavailable naming no leader, and the
# client goes on to the next.
first=$(servers_of "$E" $OTHERS)
expect_match "a release with the failed replica listed first gets its key" \
    "$(release n2 vol-2 "$WRAP" "$first")" "^code=ok status=released"
expect_match "... while $E itself still answers unavailable" \
    "$("$NODE_CLIENT" "${RPC[$E]}" "$F/n2.crt" "$F/n2.key" "$F/ca.crt" release vol-2 "$WRAP" 2>&1)" \
    "^code=unavailable message=\"coordinator cannot release keys: state store failed"
stop_replicas c1 c2 c3
check_sanitizers
finish
