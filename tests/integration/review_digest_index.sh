#!/usr/bin/env bash
# Review rev17c, finding C4: the state digest (R2, and the signed state root) reads each table by a
# full scan (`SELECT *`), while every decision looks rows up through an index. A replica whose
# `nodes` table is left intact but whose primary-key index (sqlite_autoindex_nodes_1) was pointed,
# with `PRAGMA writable_schema`, at an empty index b-tree while the cluster was stopped digested
# exactly like the honest replicas, yet found no row for n1 at every lookup; elected first, it
# passed the head round and released to the revoked n1. Fixed: every open runs
# `PRAGMA integrity_check` (store_schema.c), so the edited replica refuses its database (store
# failed, not ready, no vote for its state), an honest one leads, and neither honest one diverges.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

revoked_n1_cluster
stop_signed_cluster

# One row of $A's state, outside the audit log.
DB=$WORK/$A/state/keyfleet.db
sqlite3 "$DB" "CREATE TABLE x (name TEXT PRIMARY KEY)"
R=$(sqlite3 "$DB" "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_x_1'")
sqlite3 "$DB" "PRAGMA writable_schema = ON; UPDATE sqlite_master SET rootpage = $R WHERE name = 'sqlite_autoindex_nodes_1';
    DELETE FROM sqlite_master WHERE tbl_name = 'x'"
expect_eq "the table still says n1 is revoked (what the digest scans)" \
    "$(sqlite3 "$DB" "SELECT revoked FROM nodes NOT INDEXED WHERE name = 'n1'")" 1
expect_eq "a lookup by name finds no n1 (what decisions read)" "$(sqlite3 "$DB" "SELECT count(*) FROM nodes WHERE name = 'n1'")" 0
start "$A"
for _ in $(seq 1 100); do grep -q "event=store_failed" "$WORK/$A/keyfleetd.log" && break; sleep 0.05; done
expect_match "the edited $A refuses its database at open" "$(grep "event=store_failed" "$WORK/$A/keyfleetd.log")" \
    "what=\"checking the database.*integrity check: "
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
