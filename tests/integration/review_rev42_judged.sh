#!/usr/bin/env bash
# Review rev42, S1: what only the handler judges (the policy, a volume's name and labels, the
# accepted PCR values) is judged again at apply, from each replica's own rows
# (coordinator/store/store_judged.h). A follower whose volume labels were edited while it was
# stopped refuses, at apply, the release the honest leader decided on its own labels: it does not
# record it, and so its log parts from the others' at once (diverged at the next checkpoint),
# whenever the next state note comes. The honest replicas record it and do not diverge. Before,
# the follower recorded the release like the others and only a state note could find the edit.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

start_cluster c 3
S3=$CLUSTER
WRAP=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
expect_match "n1 gets its key" "$(release n1 vol-1 "$WRAP" "$S3")" "^code=ok status=released"
A=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
B=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && [ "$n" != "$A" ] && echo "$n"; done)
for n in c1 c2 c3; do signed_on "$n"; done
check "$A has applied all the leader has" caught_up "$A" "$L"
stop_replicas "$A"
RELEASES="SELECT count(*) FROM audit WHERE action = 'release' AND volume_id = 'vol-1' AND decision = 1"
released_on() { # NAME: the releases of vol-1 NAME recorded (read once it is stopped or synced)
    sqlite3 -cmd ".timeout 5000" "$WORK/$1/state/keyfleet.db" "$RELEASES"
}
expect_eq "$A recorded the first release" "$(released_on "$A")" "1"

# One row of the stopped follower's state, outside the audit log: vol-1's labels.
sqlite3 "$WORK/$A/state/keyfleet.db" "UPDATE volumes SET labels = '{\"tier\":\"edited\"}' WHERE id = 'vol-1'"
start "$A"
check "$A catches up" caught_up "$A" "$L"
# The leader decides on its own (honest) labels; the command carries their digest.
expect_match "the leader releases n1's key" "$(release n1 vol-1 "$WRAP" "${RPC[$L]}")" "^code=ok status=released"
for n in c1 c2 c3; do signed_on "$n" >/dev/null 2>&1; done
check "$A applied up to the leader" caught_up "$A" "$L"
for n in "$L" "$B"; do
    expect_eq "the honest $n recorded the second release" "$(db_value_when "$WORK/$n/state/keyfleet.db" "$RELEASES" 2)" "2"
done
for _ in $(seq 1 50); do [[ "$(readyz "$A")" == *diverged* ]] && break; sleep 0.1; done
stop_replicas "$A"
expect_eq "the edited $A refused the release at apply (its labels are not the ones it was decided on)" \
    "$(released_on "$A")" "1"
grep -q "event=audit_diverged" "$WORK/$A/keyfleetd.log"
check "$A diverges" test $? -eq 0
for n in "$L" "$B"; do
    grep -q "event=audit_diverged" "$WORK/$n/keyfleetd.log"
    check "the honest $n does not diverge" test $? -ne 0
done
expect_match "the honest two serve on" "$(release_ok n1 vol-1 "$WRAP" "$(servers_of "$L" "$B")")" "^code=ok status=released"
stop_replicas "$L" "$B"
check_sanitizers
finish
