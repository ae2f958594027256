#!/usr/bin/env bash
# The audit record comes before the key, and the chain names what was edited:
#   - a Release (and an Enroll replay) whose audit commit fails returns no key, every time.
#     The failure is deterministic: a trigger on the audit table, added with the sqlite3 shell
#     as an attacker or a broken disk could, refuses each release record, so the apply of the
#     RecordRelease command fails after the key was unwrapped and sealed. No answer after the
#     fault may be ok; once the trigger is gone, releases work again and the chain verifies.
#   - an edited prev_hash is named by `keyfleetctl audit verify` (record and reason).
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
start_kfd "$F"
allow_nodes "$F" "n*"
DB=$F/state/keyfleet.db
sql() { sqlite3 -cmd ".timeout 5000" "$DB" "$1"; }

out=$(node "$F" n1 enroll vol-1 data)
KEY=$(field key "$out")
WRAP=$(field wrapped "$out")
RID=guards-audit-replay-0123
out=$(NODE_CLIENT_REQUEST_ID=$RID node "$F" n1 enroll vol-2 data2)
KEY2=$(field key "$out")
expect_match "control: a release before the fault" "$(node "$F" n1 release vol-1 "$WRAP")" "^code=ok status=released key=$KEY "

audit_signed "$F"
sql "CREATE TRIGGER guards_fail_release BEFORE INSERT ON audit WHEN NEW.action IN ('release', 'enroll_replay')
     BEGIN SELECT RAISE(ABORT, 'guards_audit: injected audit failure'); END;"
n0=$(sql "SELECT count(*) FROM audit")
answers=""
for i in 1 2 3 4 5; do
    out=$(node "$F" n1 release vol-1 "$WRAP")
    answers="$answers$out"$'\n'
done
expect_eq "no Release answer after the audit fault is ok" "$(printf '%s' "$answers" | grep -c '^code=ok')" "0"
expect_eq "... none carries a key" "$(printf '%s' "$answers" | grep -c 'key=')" "0"
expect_match "... each says no key was released" "$(printf '%s' "$answers" | head -n 1)" \
    '^code=unavailable message="release could not be recorded; no key was released"'
out=$(NODE_CLIENT_REQUEST_ID=$RID node "$F" n1 enroll vol-2 data2)
expect_match "an Enroll replay whose record fails: unavailable" "$out" '^code=unavailable message="enrollment replay could not be recorded'
case "$out" in *"$KEY2"* | *key=*) not_ok "... and no key" "$out" ;; *) ok "... and no key" ;; esac
expect_eq "nothing was added to the audit table meanwhile" "$(sql "SELECT count(*) FROM audit")" "$n0"
expect_match "the failed record is logged" "$(cat "$F/keyfleetd.log")" "event=release_not_recorded volume=\"?vol-1\"?"

sql "DROP TRIGGER guards_fail_release"
expect_match "control: with the fault gone, releasing works again" "$(node "$F" n1 release vol-1 "$WRAP")" \
    "^code=ok status=released key=$KEY "
expect_match "... and the chain verifies" "$(ctl "$F" audit verify)" "audit chain ok"

# An edited prev_hash (the row's own hash untouched): named by audit verify.
for _ in 1 2; do node "$F" n1 release vol-1 "$WRAP" >/dev/null; done
audit_signed "$F"
last=$(sql "SELECT max(seq) FROM audit")
seq=$((last - 1))
sql "UPDATE audit SET prev_hash = zeroblob(32) WHERE seq = $seq"
out=$(ctl "$F" audit verify 2>&1; echo "rc=$?")
expect_match "an edited prev_hash fails verification at that record, naming prev_hash" "$out" \
    "BROKEN at record $seq: its prev_hash does not match the previous record's hash.*rc=1"
sql "UPDATE audit SET prev_hash = (SELECT hash FROM audit WHERE seq = $((seq - 1))) WHERE seq = $seq"
expect_match "control: with prev_hash put back, the chain verifies" "$(ctl "$F" audit verify)" "audit chain ok"

stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
check_sanitizers
finish
