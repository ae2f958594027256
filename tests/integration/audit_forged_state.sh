#!/usr/bin/env bash
# Review rev17, R2: the replicated state outside the audit log. A replica whose database had a
# row edited while the cluster was stopped (here: the revocation of node n1 undone in `nodes`;
# the audit log untouched, so every audit check passes) is elected first. Before R2 it decided
# releases from its own tables as leader: the revoked node got its key, and the honest replicas,
# whose apply refused that release and dropped its record, were the ones that diverged at its
# next checkpoint. Now the head confirmation compares a digest of the replicated state too: the
# edited replica is outvoted, marks itself diverged and releases nothing.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

revoked_n1_cluster
stop_signed_cluster

# One row of $A's state, outside the audit log.
sqlite3 "$WORK/$A/state/keyfleet.db" "UPDATE nodes SET revoked = 0 WHERE name = 'n1'"
start "$A"
sleep 3.5
sed -i "s/election_timeout: 300ms/election_timeout: 5s/" "$WORK/$B/keyfleetd.yaml"
start "$B"
LEAD=$(wait_leader "$B" "$A" "$B")
expect_eq "the edited $A is elected first" "$LEAD" "$A"
start "$C"
sleep 2
out=$(release n1 vol-1 "$WRAP" "${RPC[$A]}" 2>&1)
check "the revoked n1 gets no key from the edited leader ($out)" test "${out#code=ok}" = "$out"
for _ in $(seq 1 100); do [[ "$(readyz "$A")" == *diverged* ]] && break; sleep 0.1; done
expect_match "the edited $A is outvoted and stops serving" "$(readyz "$A")" \
    "not ready: audit log diverged at seq [0-9]+: 2 of 3 voters hold another audit head \(or replicated state\).*503"
NEWL=$(wait_leader "$B" "$B" "$C")
check "$B or $C leads" test -n "$NEWL"
out=$(release n1 vol-1 "$WRAP" "$(servers_of "$B" "$C")" 2>&1)
check "nor does the revoked n1 get a key from them ($out)" test "${out#code=ok}" = "$out"
check "the new leader signs" signed_on "$NEWL"
for n in "$B" "$C"; do
    grep -q "event=audit_diverged" "$WORK/$n/keyfleetd.log"
    check "the honest $n does not diverge" test $? -ne 0
done
stop_replicas "$A" "$B" "$C"
check_sanitizers
finish
