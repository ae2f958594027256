#!/usr/bin/env bash
# Second review of #17. F4: a copy of a genuine checkpoint appended after forged records (every
# hash recomputed) hid them: the tail was counted from the newest checkpoint record. Now the
# copy signs no more than the checkpoint before it, so the log fails at start and in `audit
# verify`. F2: a checkpoint a leader with a fast clock signed (genuine, dated an hour ahead) that
# this coordinator already applied is not judged by the clock again at its start. Review rev17,
# R3: the next checkpoint is dated by the clock again (its signer's certificate covered the fast
# date, so going back gains nothing), and `audit verify` refuses the log only while its newest
# checkpoint is ahead (docs/audit.md).
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
start_kfd "$F"
allow_nodes "$F" "n*"
WRAP=$(field wrapped "$(node "$F" n1 enroll vol-1 data)")
for i in 1 2 3; do node "$F" n1 release vol-1 "$WRAP" >/dev/null; done
check "the releases are signed" audit_signed "$F"
stop_kfd TERM
DB=$F/state/keyfleet.db
KEY=$(sed -n 's/^ *key: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$F/keyfleetd.yaml" | head -n 1)
[ -f "$KEY" ] || KEY=$(ls "$F"/coordinator*.key | head -n 1)
cp "$DB" "$WORK/pristine.db"
FORGE="python3 $(dirname "$0")/audit_forge.py"

# F4: forged records, then a copy of the newest genuine checkpoint.
LASTCP=$(sqlite3 "$DB" "SELECT max(seq) FROM audit_checkpoints")
$FORGE "$DB" append 5
$FORGE "$DB" replay "$LASTCP"
start_kfd "$F"
for _ in $(seq 1 50); do grep -q "event=audit_diverged" "$F/keyfleetd.log" && break; sleep 0.1; done
expect_match "the replayed checkpoint fails the coordinator's own check at start" \
    "$(grep "event=audit_diverged" "$F/keyfleetd.log" | tail -n 1)" "no more than the checkpoint before it"
expect_match "audit verify names it" "$(ctl "$F" audit verify 2>&1)" \
    "BROKEN at record [0-9]+: .*no more than the checkpoint before it"
stop_kfd TERM

# F2: a genuine checkpoint dated an hour ahead, applied before this start.
cp "$WORK/pristine.db" "$DB"
rm -f "$DB-wal" "$DB-shm"
AHEAD=$(($(date +%s) + 3600))
$FORGE "$DB" sign "$KEY" "$AHEAD"
: >"$F/keyfleetd.log"
start_kfd "$F"
CPS=$(sqlite3 -cmd ".timeout 5000" "$DB" "SELECT count(*) FROM audit_checkpoints")
# A leader just started confirms its audit head before it writes (retry, as the answer says).
for _ in $(seq 1 100); do
    out=$(node "$F" n1 release vol-1 "$WRAP")
    case $out in *"waiting for a majority"*) sleep 0.1 ;; *) break ;; esac
done
expect_match "its start did not judge the applied checkpoint by the clock: it serves" "$out" "^code=ok status=released"
grep -q "event=audit_diverged" "$F/keyfleetd.log"
check "no divergence logged" test $? -ne 0
for _ in $(seq 1 50); do
    [ "$(sqlite3 -cmd ".timeout 5000" "$DB" "SELECT count(*) FROM audit_checkpoints")" -gt "$CPS" ] && break
    sleep 0.1
done
check "it signs the next checkpoint" test "$(sqlite3 -cmd ".timeout 5000" "$DB" "SELECT count(*) FROM audit_checkpoints")" -gt "$CPS"
NEWEST=$(sqlite3 -cmd ".timeout 5000" "$DB" "SELECT reason FROM audit WHERE action = 'checkpoint' ORDER BY seq DESC LIMIT 1" |
    sed -n 's/^time \([0-9]*\)\..*/\1/p')
check "dated by its clock again, not pinned at the fast one ($NEWEST)" test "$NEWEST" -lt "$AHEAD"
expect_match "audit verify accepts the log once a later checkpoint is dated by a right clock" \
    "$(ctl "$F" audit verify 2>&1)" "audit chain ok"
stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
check_sanitizers
finish
