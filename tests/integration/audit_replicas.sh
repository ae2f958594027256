#!/usr/bin/env bash
# Issue #17's cluster attacks: a follower whose audit log is rewritten while it is stopped, in a
# way its own checks at start cannot see (the newest record, after the last signed checkpoint,
# edited and every hash recomputed), is caught when it applies the leader's next checkpoint: it
# answers /readyz 503 with the reason, shows "diverged at seq N" in cluster status, logs it and
# counts it in a metric, and never stands for leader, even when the leader dies and it would be
# the natural candidate. The cluster keeps serving through the other replicas. A snapshot whose
# log does not extend a replica's own is refused (the unit test test_store covers the image
# checks one by one).
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"
FORGE="python3 $(dirname "$0")/audit_forge.py"

start_cluster c 3
S3=$CLUSTER
WRAP=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
for i in 1 2 3; do release n1 vol-1 "$WRAP" "$S3" >/dev/null; done
X=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
Y=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && [ "$n" != "$X" ] && echo "$n"; done)
# X must hold all the leader holds before it stops: a lagging X would take, after its restart, a
# checkpoint the leader signed meanwhile over X's forged newest record (and see the edit at once).
check "the leader signs its newest records" signed_on "$L"
check "follower $X has applied all the leader has" caught_up "$L" "$X"
check "the leader's checkpoint reaches follower $X" signed_on "$X"
expect_match "$X's log verifies (the leader signed it)" "$(ctlx "$X" audit verify)" "audit chain ok: [0-9]+ records verified, [1-9][0-9]* signed checkpoints \(by $L\)"

stop_replicas "$X"
DBX=$WORK/$X/state/keyfleet.db
LASTX=$(sqlite3 "$DBX" "SELECT max(seq) FROM audit")
$FORGE "$DBX" edit "$LASTX" source 203.0.113.66
start "$X"
for _ in $(seq 1 100); do [ "$(leader_seen_by "$X")" = "$L" ] && break; sleep 0.05; done
expect_match "rewritten while stopped, $X starts and serves: its own checks cannot see it yet" "$(readyz "$X")" "ok.*200"

# Before any checkpoint covers what $X held at start, the leader dies. $X, whose newest records
# nothing signed yet, holds back from the election; $Y wins.
kill -9 "${PID[$L]}"
wait "${PID[$L]}" 2>/dev/null
NEWL=$(wait_leader "$Y" "$X" "$Y")
expect_eq "with the leader gone, $Y is elected: $X holds back with unsigned records" "$NEWL" "$Y"
grep -q "event=raft_holding_back" "$WORK/$X/keyfleetd.log"
check "$X logs that it holds back" test $? -eq 0

# $Y's first checkpoint covers the forged record.
expect_match "$Y serves its first release as leader" "$(release_ok n1 vol-1 "$WRAP" "${RPC[$Y]}")" "^code=ok"
for _ in $(seq 1 50); do [[ "$(readyz "$X")" == *503 ]] && break; sleep 0.1; done
# The leader's signed head is one word against X's (review rev17c, C1): X is disputed, not yet
# diverged, and with only X and Y up no majority decides, so neither serves (fail closed).
expect_match "at its next apply of a checkpoint, $X stops serving (/readyz 503, with the reason)" "$(readyz "$X")" \
    "not ready: audit disputed at seq [0-9]+ .*: the leader's signed head at [0-9]+ differs from this replica's.*503"
out=$("$NODE_CLIENT" "${RPC[$X]}" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" release vol-1 "$WRAP" 2>&1)
expect_match "$X releases nothing itself" "$out" "code=unavailable"
for _ in $(seq 1 50); do grep -q "event=audit_head_reconfirming" "$WORK/$Y/keyfleetd.log" && break; sleep 0.1; done
out=$(release n1 vol-1 "$WRAP" "${RPC[$Y]}" 2>&1)
expect_match "with only $X and $Y up, $Y serves no release either (no majority settles the dispute)" "$out" "code=unavailable"

# The old leader comes back: a majority ($L, $Y) holds another head than $X, which diverges.
start "$L"
for _ in $(seq 1 100); do grep -q "event=audit_diverged seq=" "$WORK/$X/keyfleetd.log" && break; sleep 0.1; done
grep -q "event=audit_diverged seq=" "$WORK/$X/keyfleetd.log"
check "$X logs audit_diverged once $L is back" test $? -eq 0
expect_match "... with the reason" "$(readyz "$X")" \
    "not ready: audit log diverged at seq [0-9]+: the leader's signed head at [0-9]+ differs from this replica's.*503"
out=$(ctlx "$Y" cluster status)
expect_match "cluster status shows $X as diverged at seq N" "$out" "$X raft=.* audit_records=[0-9]+ diverged at seq [0-9]+ \(the leader's signed head"
DIV=$(curl -s --http2 --cacert "$F/ca.crt" --cert "$F/operator.crt" --key "$F/operator.key" "https://${RPC[$X]}/metrics" |
    awk '$1 == "keyfleet_audit_diverged" {print $2}')
expect_eq "$X's keyfleet_audit_diverged is 1" "$DIV" "1"

# Then the new leader dies: of $L and $X, only $L may lead.
caught_up "$L" "$Y"
kill -9 "${PID[$Y]}"
wait "${PID[$Y]}" 2>/dev/null
NEWL=$(wait_leader "$L" "$X" "$L")
expect_eq "with $Y gone too, $L (not the diverged $X) is elected" "$NEWL" "$L"
sleep 2
expect_eq "... and $X has not led, 2 s on" "$(leader_seen_by "$L")" "$L"
grep -q "event=raft_state state=leader" "$WORK/$X/keyfleetd.log"
check "$X never stood as leader" test $? -ne 0
grep -q "event=raft_standing_down" "$WORK/$X/keyfleetd.log"
check "$X logs that it stays out of elections" test $? -eq 0
expect_match "$L serves releases with $X's vote" "$(release n1 vol-1 "$WRAP" "${RPC[$L]}")" "^code=ok status=released"
expect_match "$L's log verifies" "$(ctlx "$L" audit verify)" "audit chain ok"
Y=$L
stop_replicas "$X" "$Y"
check_sanitizers
finish
