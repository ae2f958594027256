#!/usr/bin/env bash
# Review rev17, R3: checkpoints signed while a coordinator's clock ran far ahead (a wrong RTC at
# boot, or an NTP attacker). Leaders date each checkpoint no earlier than the one before it, and
# verifiers judge the signer's certificate at the checkpoint's date, so one dated past the
# signer's notAfter made every replica diverge at its next start. Now a coordinator signs no
# checkpoint its own certificate does not cover at that date: started three years ahead it signs
# nothing, and with its clock right again it starts clean, dates by its clock and verifies.
#
# Then a date ahead but within the certificate (a day): it no longer pins every later checkpoint
# (a signer whose certificate covered that date may date the next one back, by its clock), so
# `audit verify` and snapshot checks accept the log again at the next checkpoint.
. "$(dirname "$0")/lib.sh"
SHIM=$WORK/clock_shift.so
cc -shared -fPIC -O1 -o "$SHIM" "$(dirname "$0")/clock_shift.c" -ldl || exit 77

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
start_kfd "$F"
allow_nodes "$F" "n*"
WRAP=$(field wrapped "$(node "$F" n1 enroll vol-1 data)")
node "$F" n1 release vol-1 "$WRAP" >/dev/null
check "the releases are signed" audit_signed "$F"
stop_kfd TERM
DB=$F/state/keyfleet.db
FORGE="python3 $(dirname "$0")/audit_forge.py"
newest_time() {
    sqlite3 -cmd ".timeout 5000" "$DB" "SELECT reason FROM audit WHERE action = 'checkpoint' ORDER BY seq DESC LIMIT 1" |
        sed -n 's/^time \([0-9]*\)\..*/\1/p'
}
# shifted SECONDS: one start of keyfleetd with its clock SECONDS ahead, with one record no
# checkpoint covers yet to sign; stopped after 2 s.
shifted() {
    $FORGE "$DB" append 1
    KF_CLOCK_SHIFT=$1 ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" LD_PRELOAD=$SHIM \
        start_kfd "$F"
    sleep 2
    stop_kfd TERM
}

# Three years ahead, past the coordinator certificate's notAfter (825 days from init).
shifted $((3 * 365 * 86400))
grep -q "event=audit_checkpoint_failed error=\"the checkpoint's time [0-9]* is outside this coordinator's certificate" \
    "$F/keyfleetd.log"
check "ahead of its certificate, it signs nothing and says why" test $? -eq 0
check "no checkpoint is dated past now" test "$(newest_time)" -le "$(($(date +%s) + 300))"
: >"$F/keyfleetd.log"
start_kfd "$F"
sleep 1
grep -q "event=audit_diverged" "$F/keyfleetd.log"
check "with its clock right again it is not diverged at start" test $? -ne 0
expect_match "it serves" "$(node "$F" n1 release vol-1 "$WRAP" 2>&1)" "^code=ok status=released"
check "it signs" audit_signed "$F"
check "its checkpoints are dated by its clock (newest: $(newest_time))" test "$(newest_time)" -le "$(($(date +%s) + 300))"
expect_match "audit verify accepts the log" "$(ctl "$F" audit verify 2>&1)" "audit chain ok"
stop_kfd TERM

# A day ahead, within the certificate.
shifted 86400
check "a day ahead, it signed one checkpoint (newest: $(newest_time))" test "$(newest_time)" -gt "$(($(date +%s) + 300))"
: >"$F/keyfleetd.log"
start_kfd "$F"
node "$F" n1 release vol-1 "$WRAP" >/dev/null
for _ in $(seq 1 30); do [ "$(newest_time)" -le "$(($(date +%s) + 300))" ] && break; sleep 0.1; done
check "checkpoints are dated by the clock again, not pinned (newest: $(newest_time))" \
    test "$(newest_time)" -le "$(($(date +%s) + 300))"
expect_match "audit verify accepts the log" "$(ctl "$F" audit verify 2>&1)" "audit chain ok"
stop_kfd TERM
check_sanitizers
finish
