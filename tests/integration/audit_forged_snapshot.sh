#!/usr/bin/env bash
# Review of #17: a replica rewritten while the whole cluster was stopped is elected first with an
# honest replica's vote (which disputes its head), and the third replica, being rebuilt, needs a
# snapshot. The forged leader must not hand it the
# forged database: that copy would then "confirm" the forged head, the forgery would be signed,
# and the honest replica would look diverged. An unconfirmed leader sends no snapshot (docs/audit.md),
# so it stays unconfirmed, signs nothing, and the honest replica that comes up disputes it without
# diverging.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"
FORGE="python3 $(dirname "$0")/audit_forge.py"

start_cluster c 3
S3=$CLUSTER
WRAP=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
for i in $(seq 1 50); do release n1 vol-1 "$WRAP" "$S3" >/dev/null; done
X=$L
H=$(for n in c1 c2 c3; do [ "$n" != "$X" ] && echo "$n" && break; done)
G=$(for n in c1 c2 c3; do [ "$n" != "$X" ] && [ "$n" != "$H" ] && echo "$n"; done)
for n in "$X" "$H" "$G"; do signed_on "$n"; done
caught_up "$H" "$X"
caught_up "$G" "$X"
stop_replicas "$X" "$H" "$G"

DBX=$WORK/$X/state/keyfleet.db
LASTX=$(sqlite3 "$DBX" "SELECT max(seq) FROM audit")
expect_eq "$X's newest record is a checkpoint" "$(sqlite3 "$DBX" "SELECT action FROM audit WHERE seq = $LASTX")" "checkpoint"
$FORGE "$DBX" truncate "$LASTX"
$FORGE "$DBX" edit "$((LASTX - 1))" source 203.0.113.66
CPS_X=$(sqlite3 "$DBX" "SELECT count(*) FROM audit_checkpoints")
# G is being rebuilt (operations.md): its state is gone and it waits to be sent everything, so it
# can only catch up from a snapshot.
rm -rf "$WORK/$G/state/raft" "$WORK/$G/state"/keyfleet.db*
sed -i "s/^cluster:$/cluster:\n  join: true\n  raft_listen: \"${RAFT[$G]}\"/" "$WORK/$G/keyfleetd.yaml"
# X snapshots its forged database right after it is elected (a low threshold stands in for a
# longer unconfirmed term).
sed -i "s/snapshot_threshold: 64/snapshot_threshold: 16/" "$WORK/$X/keyfleetd.yaml"

# X starts alone and campaigns past its hold-back; H comes up with a long election timeout, so
# the vote it gives is X's. H disputes X's head: X stays unconfirmed.
SNAPS0=$(grep -c "event=raft_snapshot " "$WORK/$X/keyfleetd.log")
LINES0=$(wc -l <"$WORK/$X/keyfleetd.log")
since_restart() { tail -n +"$((LINES0 + 1))" "$WORK/$X/keyfleetd.log"; }
start "$X"
sleep 3.5
sed -i "s/election_timeout: 300ms/election_timeout: 5s/" "$WORK/$H/keyfleetd.yaml"
start "$H"
LEAD=$(wait_leader "$H" "$X" "$H")
expect_eq "the rewritten $X is elected first" "$LEAD" "$X"
for _ in $(seq 1 150); do grep -q "event=audit_head_disputed peer=$H" "$WORK/$X/keyfleetd.log" && break; sleep 0.1; done
grep -q "event=audit_head_disputed peer=$H" "$WORK/$X/keyfleetd.log"
check "$X logs that $H holds another audit head" test $? -eq 0
for _ in $(seq 1 600); do [ "$(grep -c "event=raft_snapshot " "$WORK/$X/keyfleetd.log")" -gt "$SNAPS0" ] && break; sleep 0.1; done
check "$X took a snapshot of its forged database" test "$(grep -c "event=raft_snapshot " "$WORK/$X/keyfleetd.log")" -gt "$SNAPS0"

# The rebuilt G comes up and needs that snapshot.
start "$G"
for _ in $(seq 1 100); do grep -q "event=raft_snapshot_held" "$WORK/$X/keyfleetd.log" && break; sleep 0.1; done
grep -q "event=raft_snapshot_held" "$WORK/$X/keyfleetd.log"
check "unconfirmed, $X holds back the snapshot $G needs" test $? -eq 0
sleep 4
grep -q "event=raft_restored" "$WORK/$G/keyfleetd.log"
check "$G installed no snapshot from $X" test $? -ne 0
expect_eq "$X signed no checkpoint" "$(sqlite3 "$DBX" "SELECT count(*) FROM audit_checkpoints")" "$CPS_X"
since_restart | grep -q "event=audit_head_confirmed"
check "$X's head is not confirmed" test $? -ne 0
for n in "$H" "$G"; do
    grep -q "event=audit_diverged" "$WORK/$n/keyfleetd.log"
    check "$n is not marked diverged" test $? -ne 0
done
expect_match "$H serves reads" "$(readyz "$H")" "200"
out=$("$NODE_CLIENT" "${RPC[$X]}" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" release vol-1 "$WRAP" 2>&1)
expect_match "unconfirmed, $X serves no writes" "$out" "code=unavailable.*confirm its audit log"

# A refused caller is logged and counted, not appended to a log no majority confirmed.
AF=$(sqlite3 "$DBX" "SELECT count(*) FROM audit WHERE action = 'auth_fail'")
curl -s --max-time 5 --http2 --cacert "$F/ca.crt" --cert "$F/n1.crt" --key "$F/n1.key" \
    -H 'Content-Type: application/proto' --data-binary '' \
    "https://${RPC[$X]}/keyfleet.v1.AdminService/ListPending" >/dev/null
for _ in $(seq 1 50); do grep -q "event=auth_fail_unaudited" "$WORK/$X/keyfleetd.log" && break; sleep 0.1; done
grep -q "event=auth_fail_unaudited" "$WORK/$X/keyfleetd.log"
check "$X logs the refused caller" test $? -eq 0
sleep 0.5
expect_eq "unconfirmed, $X appends no auth_fail record" \
    "$(sqlite3 "$DBX" "SELECT count(*) FROM audit WHERE action = 'auth_fail'")" "$AF"

stop_replicas "$X" "$H" "$G"
check_sanitizers
finish
