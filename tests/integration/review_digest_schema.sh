#!/usr/bin/env bash
# Review rev17c, finding C4 (second variant): the state digest hashes each row's values in
# storage order, not the column names. With `PRAGMA writable_schema`, the `CREATE TABLE nodes`
# text of a stopped replica is rewritten so that the names `revoked` and `reason` swap places: no
# byte of the table changes, so its digest equals the honest replicas', but `SELECT revoked`
# now reads n1's reason ("stolen", 0 as an integer). Elected first, it passes the head round and
# releases to the revoked n1; the honest replicas diverge. A rebuilt index (REINDEX) would not
# catch this; the schema text is in no digest. FAILS on main (not registered).
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
out=$(release n1 vol-1 "$WRAP" "$S3" 2>&1)
check "the revoked n1 gets no key" test "${out#code=ok}" = "$out"
A=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
B=$L
C=$(for n in c1 c2 c3; do [ "$n" != "$A" ] && [ "$n" != "$B" ] && echo "$n"; done)
for n in "$A" "$B" "$C"; do signed_on "$n"; done
caught_up "$A" "$B"
caught_up "$C" "$B"
stop_replicas "$A" "$B" "$C"

# One row of $A's state, outside the audit log.
DB=$WORK/$A/state/keyfleet.db
SQL=$(sqlite3 "$DB" "SELECT sql FROM sqlite_master WHERE name = 'nodes'")
NEW=$(printf '%s' "$SQL" | sed -e 's/revoked INTEGER NOT NULL/@@ INTEGER NOT NULL/' -e 's/reason TEXT/revoked TEXT/' -e 's/@@/reason/')
check "the schema text was rewritten ($NEW)" test "$NEW" != "$SQL"
sqlite3 "$DB" "PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = '$NEW' WHERE name = 'nodes'"
expect_eq "decisions read n1 as not revoked" "$(sqlite3 "$DB" "SELECT CAST(revoked AS INTEGER) FROM nodes WHERE name = 'n1'")" 0
start "$A"
sleep 3.5
sed -i "s/election_timeout: 300ms/election_timeout: 5s/" "$WORK/$B/keyfleetd.yaml"
start "$B"
LEAD=$(wait_leader "$B" "$A" "$B")
expect_eq "the edited $A is elected first" "$LEAD" "$A"
start "$C"
sleep 0.5
out=$(release n1 vol-1 "$WRAP" "${RPC[$A]}" 2>&1)
check "the revoked n1 gets no key from the edited leader ($out)" test "${out#code=ok}" = "$out"
for _ in $(seq 1 30); do
    release n1 vol-1 "$WRAP" "${RPC[$A]}" >/dev/null 2>&1
    [[ "$(readyz "$A")$(readyz "$B")$(readyz "$C")" == *diverged* ]] && break
    sleep 0.2
done
expect_match "the edited $A is the one that stops serving" "$(readyz "$A")" "diverged"
for n in "$B" "$C"; do
    check "the honest $n does not diverge ($(readyz "$n" | head -c 160))" \
        test "$(grep -c "event=audit_diverged" "$WORK/$n/keyfleetd.log")" -eq 0
done
stop_replicas "$A" "$B" "$C"
check_sanitizers
finish
