#!/usr/bin/env bash
# Review rev17, R2 (the rest): a follower whose replicated state outside the audit log was edited
# while only it was stopped (here: node n1's revocation undone in `nodes`; its audit log intact).
# Before, the next checkpoint it applied made it `vouched`, so had it led later it would have
# confirmed itself without a head round and released by its edited tables. Now the leader follows
# each checkpoint with a state check (its state digest at that checkpoint record): the edited
# follower diverges at the first checkpoint after its start, and is never vouched.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

start_cluster c 3
S3=$CLUSTER
WRAP=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
expect_match "n1 gets its key before the revocation" "$(release n1 vol-1 "$WRAP" "$S3")" "^code=ok status=released"
expect_match "n1 is revoked" "$(ctlx "$L" node revoke n1 stolen 2>&1)" "revoked"
A=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
for n in c1 c2 c3; do signed_on "$n"; done
caught_up "$A" "$L"
stop_replicas "$A"

# One row of the stopped follower's state, outside the audit log.
sqlite3 "$WORK/$A/state/keyfleet.db" "UPDATE nodes SET revoked = 0 WHERE name = 'n1'"
start "$A"
# Records for checkpoints to cover: denied releases of the revoked n1, through the leader.
for _ in $(seq 1 60); do
    release n1 vol-1 "$WRAP" "${RPC[$L]}" >/dev/null 2>&1
    [[ "$(readyz "$A")" == *diverged* ]] && break
    sleep 0.2
done
expect_match "the edited follower $A diverges at a checkpoint" "$(readyz "$A")" \
    "not ready: audit log diverged at seq [0-9]+: the replicated state .* differs from the leader's.*503"
check "and says so in its log" grep -q "event=audit_diverged.*replicated state" "$WORK/$A/keyfleetd.log"
for n in c1 c2 c3; do
    [ "$n" = "$A" ] && continue
    grep -q "event=audit_diverged" "$WORK/$n/keyfleetd.log"
    check "the honest $n does not diverge" test $? -ne 0
done
out=$(release n1 vol-1 "$WRAP" "${RPC[$L]}" 2>&1)
check "the revoked n1 gets no key from the leader ($out)" test "${out#code=ok}" = "$out"
check "the leader still signs" signed_on "$L"
stop_replicas c1 c2 c3
check_sanitizers
finish
