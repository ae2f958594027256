#!/usr/bin/env bash
# Review rev17c, finding C1: one database written while its coordinator runs and leads. Node n1's
# revocation is undone in the running leader's `nodes` table (its audit log untouched). The
# leader's next state note is of the edited tables, so its unsigned CmdStateCheck and the state
# root it signs in its next checkpoint carry the edited digest: every honest follower compares
# its own (correct) digest with the leader's word and diverges, while the edited leader stays
# healthy, keeps signing and releases to the revoked n1. Expected: the one edited replica is the
# one that stops, not the majority. Fixed (docs/audit.md, "Disputes"): the edited leader sees
# another process's commit into its database (PRAGMA data_version) at its next apply and is
# disputed, so the release it records is never answered (`release_withheld`); a follower that
# differs from the leader's word is disputed, not diverged, and a head round among the voters
# outvotes the edited leader, which diverges and hands leadership on.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

revoked_n1_cluster
for n in c1 c2 c3; do signed_on "$n"; done

n_released=$(grep -c "event=released node=n1" "$WORK/$L/keyfleetd.log")
# The running leader's database, one row outside the audit log (the writer has no key).
sqlite3 -cmd ".timeout 5000" "$WORK/$L/state/keyfleet.db" "UPDATE nodes SET revoked = 0 WHERE name = 'n1'"
got=""
for _ in $(seq 1 40); do
    out=$(release n1 vol-1 "$WRAP" "${RPC[$L]}" 2>&1)
    [ "${out#code=ok}" != "$out" ] && got=$out
    n_div=0
    for n in c1 c2 c3; do [[ "$(readyz "$n")" == *diverged* ]] && n_div=$((n_div + 1)); done
    [ "$n_div" -gt 0 ] && break
    sleep 0.2
done
check "the revoked n1 gets no key from the edited leader (${got:-none})" test -z "$got"
check "the edited leader saw the commit into its database" grep -q "event=audit_disputed" "$WORK/$L/keyfleetd.log"
check "the edited leader sent n1 no key after the edit ($(grep -c "event=released node=n1" "$WORK/$L/keyfleetd.log") released)" \
    test "$(grep -c "event=released node=n1" "$WORK/$L/keyfleetd.log")" -eq "$n_released"
for n in c1 c2 c3; do
    [ "$n" = "$L" ] && continue
    check "the honest follower $n does not diverge ($(readyz "$n" | head -c 200))" \
        test "$(grep -c "event=audit_diverged" "$WORK/$n/keyfleetd.log")" -eq 0
done
expect_match "the edited leader $L is the one that stops" "$(readyz "$L")" "diverged"
stop_replicas c1 c2 c3
check_sanitizers
finish
