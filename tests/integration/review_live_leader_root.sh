#!/usr/bin/env bash
# Review rev17c, finding C1 (the state root's side): one row added to the running leader's
# `revoked_certs` (a serial nobody holds; no release changes, so every audit head stays the same).
# The leader's next note is of its edited tables; its unsigned CmdStateCheck and then the state
# root it signs (v2 `state SEQ VERSION DIGEST`) carry that digest, and each honest follower,
# comparing it with its own correct note, diverges on the leader's word alone, while the edited
# leader stays ready. Expected: the honest majority keeps serving. Fixed (docs/audit.md,
# "Disputes"): a replica that differs from the leader's word is disputed, not diverged; a head
# round among the voters settles it, and the edited leader, outvoted, diverges and steps down.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

start_cluster c 3
S3=$CLUSTER
WRAP=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
for n in c1 c2 c3; do signed_on "$n"; done

sqlite3 -cmd ".timeout 5000" "$WORK/$L/state/keyfleet.db" \
    "INSERT INTO revoked_certs VALUES ('0badc0de', 'node', 'nobody', 'edited', 1)"
for _ in $(seq 1 40); do
    release n1 vol-1 "$WRAP" "${RPC[$L]}" >/dev/null 2>&1 # records for the next checkpoints
    n_div=0
    for n in c1 c2 c3; do [[ "$(readyz "$n")" == *diverged* ]] && n_div=$((n_div + 1)); done
    [ "$n_div" -gt 0 ] && break
    sleep 0.2
done
for n in c1 c2 c3; do
    [ "$n" = "$L" ] && continue
    check "the honest follower $n does not diverge ($(readyz "$n" | head -c 220))" \
        test "$(grep -c "event=audit_diverged" "$WORK/$n/keyfleetd.log")" -eq 0
done
expect_match "the edited leader $L is the one that stops" "$(readyz "$L")" "diverged"
for n in c1 c2 c3; do
    [ "$n" = "$L" ] && continue
    ok=""
    for _ in $(seq 1 50); do [[ "$(readyz "$n")" == ok* ]] && ok=1 && break; sleep 0.1; done
    check "the honest follower $n serves again once the majority settled it" test -n "$ok"
done
for n in c1 c2 c3; do signed_on "$L" >/dev/null 2>&1; release n1 vol-1 "$WRAP" "${RPC[$L]}" >/dev/null 2>&1; done
signed_on "$L" >/dev/null 2>&1
out=$(ctlx "$L" audit verify 2>&1)
check "audit verify against the edited leader does not pass ($(echo "$out" | tail -1 | head -c 200))" \
    test "${out#*audit chain ok}" = "$out"
H=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
echo "# audit verify against the honest $H: $(ctlx "$H" audit verify 2>&1 | tail -1 | head -c 240)"
stop_replicas c1 c2 c3
check_sanitizers
finish
