#!/usr/bin/env bash
# The audit log can't be changed without detection: editing, deleting or reordering a row makes
# `keyfleetctl audit verify` fail and name the first bad record. A kill -9 during a stream of
# releases loses no record: after a restart the chain verifies and every key that went out has
# its release record.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
start_kfd "$F"
allow_nodes "$F" "n*"
WRAP=$(field wrapped "$(node "$F" n1 enroll vol-1 data)")
for i in 1 2 3 4; do node "$F" n1 release vol-1 "$WRAP" >/dev/null; done
# Checkpoints (signed heads, docs/audit.md) are records too: wait for the one after the releases.
for _ in $(seq 1 50); do ctl "$F" audit --action checkpoint --json | grep -q '"reason":"[^"]*size 6\\n' && break; sleep 0.1; done
expect_match "a fresh chain verifies, with its checkpoints" "$(ctl "$F" audit verify)" "audit chain ok: [0-9]+ records verified, [1-9][0-9]* signed checkpoints \(by coordinator-1\)"
DB=$F/state/keyfleet.db
# An online backup: the database is in WAL mode, so a plain copy could miss committed pages.
sqlite3 "$DB" ".backup '$WORK/pristine.db'"
# restore: put the pristine copy back with keyfleetd stopped, and start it again.
restore() {
    stop_kfd TERM
    cp "$WORK/pristine.db" "$DB"
    rm -f "$DB-wal" "$DB-shm"
    start_kfd "$F"
}

# The coordinator holds its write transaction open for up to 50 ms (docs/cluster.md): a writer
# beside it, like this attacker, waits for the lock.
tamper() { sqlite3 -cmd ".timeout 5000" "$DB" "$1"; }
verify_out() { ctl "$F" audit verify 2>&1; echo "rc=$?"; }

tamper "UPDATE audit SET reason = 'nothing to see' WHERE seq = 3"
out=$(verify_out)
expect_match "an edited row fails verification, naming it" "$out" "BROKEN at record 3: .*edited.*rc=1"
restore
expect_match "the untouched copy verifies" "$(ctl "$F" audit verify)" "audit chain ok: [0-9]+ records"
tamper "UPDATE audit SET node = 'n2' WHERE seq = 5"
expect_match "an edited node name fails at that record" "$(verify_out)" "BROKEN at record 5"
restore

tamper "DELETE FROM audit WHERE seq = 4"
expect_match "a deleted row fails verification" "$(verify_out)" "BROKEN at record 5: a record is missing before this one"
restore

# Reorder: swap the contents of two rows (keeping their seq numbers).
tamper "UPDATE audit SET seq = -1 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = -1;"
expect_match "reordered rows fail verification" "$(verify_out)" "BROKEN at record 4"
restore

LAST=$(sqlite3 -cmd ".timeout 5000" "$DB" "SELECT max(seq) FROM audit")
tamper "DELETE FROM audit WHERE seq = $LAST"
# (A record the coordinator appends meanwhile makes the same cut read as a gap before it.)
expect_match "a row cut off the end fails verification while the coordinator runs" "$(verify_out)" \
    "BROKEN at record ($LAST: the log ends early|$((LAST + 1)): a record is missing before this one)"
restore

# kill -9 during a stream of releases.
: >"$WORK/released"
(
    for i in $(seq 1 400); do
        out=$(node "$F" n1 release vol-1 "$WRAP" 2>/dev/null) || continue
        [ "$(field code "$out")" = ok ] && echo "$(field request "$out") $(field audit_seq "$out")" >>"$WORK/released"
    done
) &
stream=$!
for _ in $(seq 1 200); do [ "$(wc -l <"$WORK/released")" -ge 20 ] && break; sleep 0.05; done
kill -9 "$KFD_PID"
wait "$KFD_PID" 2>/dev/null
wait "$stream" 2>/dev/null
n=$(wc -l <"$WORK/released")
check "keys went out before the kill ($n)" test "$n" -ge 20
start_kfd "$F"
expect_match "after kill -9 and restart the chain verifies" "$(ctl "$F" audit verify)" "audit chain ok"
ctl "$F" audit --action release --decision allow --json >"$WORK/records"
missing=0
while read -r req seq; do
    grep -q "\"seq\":$seq,.*\"request_id\":\"$req\",\"decision\":\"allow\"" "$WORK/records" || missing=$((missing + 1))
done <"$WORK/released"
expect_eq "every key that went out has its release record" "$missing" "0"
dups=$(sed -n 's/.*"request_id":"\([0-9a-f]*\)".*/\1/p' "$WORK/records" | sort | uniq -d | wc -l)
expect_eq "... and exactly one" "$dups" "0"
stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
check_sanitizers
finish
