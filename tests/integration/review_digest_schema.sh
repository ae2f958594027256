#!/usr/bin/env bash
# Review rev17c, finding C4 (second variant): the state digest hashes values in storage order, not
# the column names. With `PRAGMA writable_schema`, the `CREATE TABLE nodes` text of a stopped
# replica was rewritten to swap the names `revoked` and `reason`: not a byte of the table changed,
# the digest stayed the honest one, and decisions read n1's reason ('stolen', so 0) as `revoked`;
# elected first, it released to the revoked n1. Fixed: every open compares the schema with what
# the migrations make (store_schema.c), so the edited replica refuses its database, an honest one
# leads, and neither honest one diverges.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

revoked_n1_cluster
stop_signed_cluster

# One row of $A's state, outside the audit log.
DB=$WORK/$A/state/keyfleet.db
SQL=$(sqlite3 "$DB" "SELECT sql FROM sqlite_master WHERE name = 'nodes'")
NEW=$(printf '%s' "$SQL" | sed -e 's/revoked INTEGER NOT NULL/@@ INTEGER NOT NULL/' -e 's/reason TEXT/revoked TEXT/' -e 's/@@/reason/')
check "the schema text was rewritten ($NEW)" test "$NEW" != "$SQL"
sqlite3 "$DB" "PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = '$NEW' WHERE name = 'nodes'"
expect_eq "decisions read n1 as not revoked" "$(sqlite3 "$DB" "SELECT CAST(revoked AS INTEGER) FROM nodes WHERE name = 'n1'")" 0
start "$A"
for _ in $(seq 1 100); do grep -q "event=store_failed" "$WORK/$A/keyfleetd.log" && break; sleep 0.05; done
expect_match "the edited $A refuses its database at open" "$(grep "event=store_failed" "$WORK/$A/keyfleetd.log")" \
    "error=\"table nodes differs from what keyfleet.s migrations make"
expect_match "the edited $A does not serve" "$(readyz "$A")" "state store failed.* 503$"
expect_match "the edited $A takes no part in Raft (it cannot lead)" "$(grep "event=raft_not_started" "$WORK/$A/keyfleetd.log")" \
    "checking the database"
start "$B"
start "$C"
LEAD=$(wait_leader "$B" "$A" "$B" "$C")
check "an honest replica leads, not the edited $A (leader '$LEAD')" test -n "$LEAD" -a "$LEAD" != "$A"
out=$(release n1 vol-1 "$WRAP" "${RPC[$A]}" 2>&1)
check "the revoked n1 gets no key from the edited $A ($out)" test "${out#code=ok}" = "$out"
out=$(release n1 vol-1 "$WRAP" "${RPC[$B]},${RPC[$C]}" 2>&1)
check "the revoked n1 gets no key from the honest ones ($out)" test "${out#code=ok}" = "$out"
for n in "$B" "$C"; do
    expect_match "the honest $n serves" "$(readyz "$n")" " 200$"
    check "the honest $n does not diverge" test "$(grep -c "event=audit_diverged" "$WORK/$n/keyfleetd.log")" -eq 0
done
stop_replicas "$A" "$B" "$C"
check_sanitizers
finish
