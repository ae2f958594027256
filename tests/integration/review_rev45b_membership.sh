#!/usr/bin/env bash
# Review rev45b, R45b-4: a coordinator's addition or removal is a Raft configuration change that
# libraft applies without the state machine, so no replica's apply can refuse it. It is judged
# first (coordinator/rpc/rpc_cluster.c): a `cluster_change` record carrying the caller's
# certificate serial is committed, and the leader changes the configuration only once a head round
# over a check committed after it finds a majority of voters holding that record. Here op2's
# certificate is on the denylist of the two other replicas but not on the leader's (as if the
# leader's were edited): the leader lets op2 in, the follower refuses the record at apply, the
# third voter is down, so no majority holds the record and nothing is removed. Before, the leader
# removed the voter at once. With the third voter back, the honest majority decides.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
issue "$F" operator op2
. "$(dirname "$0")/cluster_lib.sh"

start_cluster c 3
S3=$CLUSTER
WRAP=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
check "n1 enrolls vol-1" test -n "$WRAP"
OP2_SERIAL=$(openssl x509 -in "$F/op2.crt" -noout -serial | sed 's/^serial=//; s/^0*//' | tr 'A-F' 'a-f')
A=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
B=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && [ "$n" != "$A" ] && echo "$n"; done)
members_of() { "$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[$1]}" cluster status 2>/dev/null | grep -c 'raft='; }
for n in c1 c2 c3; do signed_on "$n"; done
check "$A has applied all the leader has" caught_up "$A" "$L"
stop_replicas "$A"
sqlite3 "$WORK/$A/state/keyfleet.db" "INSERT INTO revoked_certs (serial, kind, name, reason, revoked_at) VALUES ('$OP2_SERIAL', 'operator', 'op2', 'edited', 1)"
start "$A"
check "$A catches up" caught_up "$A" "$L"
stop_replicas "$B"

out=$(ctlx "$L" --cert "$F/op2.crt" --key "$F/op2.key" cluster remove "$B" 2>&1)
expect_match "the leader does not remove $B for op2 (no majority holds the change's record)" "$out" \
    "unavailable|did not confirm"
expect_eq "$B is still a member" "$(members_of "$L")" "3"
CHANGE="SELECT count(*) FROM audit WHERE action = 'cluster_change' AND reason = 'remove member $B'"
expect_eq "the leader committed the change's judged record" \
    "$(db_value_when "$WORK/$L/state/keyfleet.db" "$CHANGE" 1)" "1"
expect_eq "... and no removal record" \
    "$(sqlite3 -cmd ".timeout 5000" "$WORK/$L/state/keyfleet.db" "SELECT count(*) FROM audit WHERE action = 'cluster_remove'")" "0"
grep -q "event=cluster_member_unchanged action=remove member=\"\\?$B\"\\? stage=head_round" "$WORK/$L/keyfleetd.log"
check "the leader logs that the change waited for a head round and was not made" test $? -eq 0
# The leader's head (with the record) is held by no majority: it serves no writes, now that the
# change gave up, and no checkpoint from before the record shortens its round.
expect_match "the leader serves no release while no majority holds its head" \
    "$(release n1 vol-1 "$WRAP" "${RPC[$L]}" 2>&1)" "^code=unavailable"
check "$A applied up to the leader" caught_up "$A" "$L"
expect_eq "$A refused op2's record at apply (op2's certificate is on its denylist)" \
    "$(sqlite3 -cmd ".timeout 5000" "$WORK/$A/state/keyfleet.db" "$CHANGE")" "0"

# The third voter back: it holds the leader's head (it applied neither), so the leader and it
# are a majority; the edited one is outvoted. Nothing was removed meanwhile.
start "$B"
for _ in $(seq 1 150); do [[ "$(readyz "$A")" == *diverged* ]] && break; sleep 0.1; done
expect_match "$A, whose log parted from the others', diverges" "$(readyz "$A")" "diverged"
expect_eq "still three members" "$(members_of "$L")" "3"
for n in "$L" "$B"; do
    grep -q "event=audit_diverged" "$WORK/$n/keyfleetd.log"
    check "$n does not diverge" test $? -ne 0
done

# The default operator (on no denylist) removes $A: the record is held by the leader and $B.
out=""
for _ in $(seq 1 50); do
    out=$(ctlx "$L" cluster remove "$A" 2>&1) && break
    sleep 0.2
done
expect_match "an operator on no denylist removes $A" "$out" "removed $A"
expect_eq "two members remain" "$(members_of "$L")" "2"
expect_eq "the removal is recorded after its judged record" \
    "$(db_value_when "$WORK/$L/state/keyfleet.db" "SELECT group_concat(action, ' ') FROM (SELECT action FROM audit WHERE action LIKE 'cluster_%' ORDER BY seq)" "cluster_change cluster_change cluster_remove")" \
    "cluster_change cluster_change cluster_remove"
finish
