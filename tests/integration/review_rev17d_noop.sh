#!/usr/bin/env bash
# Review rev17d, finding D2: one database, the whole cluster down. A writer with access to the
# running leader's database commits, again and again, a write that changes nothing
# (a table created and dropped in one transaction). Each commit changes PRAGMA data_version, so the leader
# is disputed at its next apply: the release it just recorded is withheld, writes wait for a
# head round, and the round settles the dispute (its state equals the majority's). It never
# diverges, so it keeps leading, and while the writer loops almost no honest node gets its key
# from anyone: worse than losing that one replica (the two others would serve).
# Expected (fixed): a replica into whose database another process committed while it ran does not
# lead on: after the round it hands leadership on (or diverges), and an honest node's releases
# succeed from another leader while the writer loops.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
. "$(dirname "$0")/cluster_lib.sh"
n2_cluster
for n in c1 c2 c3; do signed_on "$n"; done
E=$L
if [ "${KF_REV17D_TARGET:-leader}" = follower ]; then for n in c1 c2 c3; do [ "$n" != "$L" ] && E=$n && break; done; fi

# The writer: a commit that changes nothing, every 50 ms, for at most 15 s (stopped below).
(
    end=$(($(date +%s) + 15))
    while [ "$(date +%s)" -lt "$end" ]; do
        sqlite3 -cmd ".timeout 2000" "$WORK/$E/state/keyfleet.db" "BEGIN IMMEDIATE; CREATE TABLE zz_noop (a); DROP TABLE zz_noop; COMMIT" 2>/dev/null
        sleep 0.05
    done
) &
WRITER=$!
PIDS+=("$WRITER")
sleep 1
ok_n=0
tries=0
end=$(($(date +%s) + 6))
while [ "$(date +%s)" -lt "$end" ] && [ "$tries" -lt 200 ]; do
    out=$("$NODE_CLIENT" "$S3" "$F/n2.crt" "$F/n2.key" "$F/ca.crt" release vol-2 "$WRAP" 2>&1)
    tries=$((tries + 1))
    [[ "$out" == code=ok* ]] && ok_n=$((ok_n + 1))
    sleep 0.1
done
# With the writer still looping: another replica leads, and a release through the cluster gets its
# key (asserted once, not as a share of the loop's attempts, which the election's seconds decide).
H=$(for n in c1 c2 c3; do [ "$n" != "$E" ] && echo "$n" && break; done)
for _ in $(seq 1 100); do l=$(leader_seen_by "$H" || true); [ -n "$l" ] && [ "$l" != "$E" ] && break; sleep 0.1; done
# Through the other two: the written replica may answer `unavailable` naming no leader (its store
# failed under the writer), and a client asks its first coordinator again (see the session note).
after=$(release n2 vol-2 "$WRAP" "$(servers_of $(for n in c1 c2 c3; do [ "$n" != "$E" ] && echo "$n"; done))" 2>&1)
kill "$WRITER" 2>/dev/null
wait "$WRITER" 2>/dev/null
now_leader=$(leader_seen_by "$H" || true)
echo "# releases answered while the writer looped: $ok_n of $tries; edited $E; leader now ${now_leader:-none}"
echo "# $E: $(grep -c "event=audit_disputed" "$WORK/$E/keyfleetd.log") disputes, $(grep -c "event=audit_dispute_settled" "$WORK/$E/keyfleetd.log") settled, $(grep -c "event=release_withheld" "$WORK/$E/keyfleetd.log") releases withheld"
echo "# an honest node's releases through all three while one database is written: $ok_n of $tries"
expect_match "... and, once another replica leads, its key (the writer still looping)" "$after" "^code=ok status=released"
check "the written replica $E no longer leads (leader ${now_leader:-none})" test "$now_leader" != "$E"
stop_replicas c1 c2 c3
check_sanitizers
finish
