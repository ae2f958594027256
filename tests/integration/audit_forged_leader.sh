#!/usr/bin/env bash
# Review of #17, F1: after a whole-cluster stop, a replica whose database was rewritten (its
# newest checkpoint cut off and the record before it edited, every hash recomputed, so that its
# own checks at start see nothing) starts first and is elected. It must not sign a checkpoint
# over the forgery: a leader signs, and serves writes, only once a majority of voters reported
# the audit head it holds after the same entries (docs/audit.md). With one honest peer up it
# stays unconfirmed (the honest peer does not diverge); once a second honest peer answers, a
# majority holds another head, and the forged replica marks itself diverged and hands over.
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
pick_roles
stop_signed_cluster

cps() { sqlite3 "$WORK/$1/state/keyfleet.db" "SELECT count(*) FROM audit_checkpoints"; }
CPS_B=$(cps "$B")
DBA=$WORK/$A/state/keyfleet.db
LASTA=$(sqlite3 "$DBA" "SELECT max(seq) FROM audit")
expect_eq "$A's newest record is a checkpoint" "$(sqlite3 "$DBA" "SELECT action FROM audit WHERE seq = $LASTA")" "checkpoint"
$FORGE "$DBA" truncate "$LASTA"
$FORGE "$DBA" edit "$((LASTA - 1))" source 203.0.113.66

# $A starts alone and campaigns past its hold-back; $B comes up with a long election timeout,
# so the vote it gives is $A's.
start "$A"
sleep 3.5
sed -i "s/election_timeout: 300ms/election_timeout: 5s/" "$WORK/$B/keyfleetd.yaml"
start "$B"
LEAD=$(wait_leader "$B" "$A" "$B")
expect_eq "the rewritten $A is elected first" "$LEAD" "$A"
for _ in $(seq 1 100); do grep -q "event=audit_head_disputed" "$WORK/$A/keyfleetd.log" && break; sleep 0.05; done
grep -q "event=audit_head_disputed peer=$B" "$WORK/$A/keyfleetd.log"
check "$A logs that $B holds another audit head" test $? -eq 0
sleep 1.5
expect_eq "$A signed no checkpoint: $B holds as many as before" "$(cps "$B")" "$CPS_B"
expect_match "$B has not diverged" "$(readyz "$B")" "200"
grep -q "event=audit_diverged" "$WORK/$B/keyfleetd.log"
check "$B logs no divergence" test $? -ne 0
out=$("$NODE_CLIENT" "${RPC[$A]}" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" release vol-1 "$WRAP" 2>&1)
expect_match "unconfirmed, $A serves no writes" "$out" "code=unavailable.*confirm its audit log"

# $C comes up: two of three voters hold the honest head.
start "$C"
for _ in $(seq 1 150); do [[ "$(readyz "$A")" == *diverged* ]] && break; sleep 0.1; done
expect_match "$A finds itself in the minority and stops serving" "$(readyz "$A")" \
    "not ready: audit log diverged at seq [0-9]+: 2 of 3 voters hold another audit head.*503"
NEWL=$(wait_leader "$C" "$B" "$C")
check "$B or $C leads" test -n "$NEWL"
# A new leader answers "unavailable; retry" until a majority confirmed its head (one round).
for _ in $(seq 1 50); do
    out=$(release n1 vol-1 "$WRAP" "$(servers_of "$B" "$C")" 2>&1)
    [[ $out == "code=ok status=released"* ]] && break
    sleep 0.1
done
expect_match "the cluster serves releases again" "$out" "^code=ok status=released"
check "the new leader signs a checkpoint" signed_on "$NEWL"
expect_match "$NEWL's log verifies" "$(ctlx "$NEWL" audit verify)" "audit chain ok"
grep -q "event=audit_diverged" "$WORK/$B/keyfleetd.log"
check "$B never diverged" test $? -ne 0
out=$(ctlx "$NEWL" cluster status)
expect_match "cluster status shows $A diverged" "$out" "$A raft=.* diverged at seq [0-9]+"
stop_replicas "$A" "$B" "$C"
check_sanitizers
finish
