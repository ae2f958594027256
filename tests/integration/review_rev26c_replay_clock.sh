#!/usr/bin/env bash
# Review rev26c L1 (docs/reviews/rev26c-recovery-erase-fixes.md): a repeated EnrollRecoveryKey
# must never return a recovery key that was revealed, whatever the coordinators' clocks. The
# check compared revealed_at with created_at, stamped by whichever coordinator led: escrowed under
# a clock 60 s ahead, revealed under a right one, repeated under the fast one again (within the
# 5 minutes), the revealed key went back to the node's certificate. Here one keyfleetd restarted
# with and without clock_shift.so plays the three leaders.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
issue "$F" operator bob
SHIM=$WORK/clock_shift.so
cc -shared -fPIC -O1 -o "$SHIM" "$(dirname "$0")/clock_shift.c" -ldl || exit 77
fast() { KF_CLOCK_SHIFT=60 ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" LD_PRELOAD=$SHIM \
    start_kfd "$F"; }
rid_of() { printf '%s\n' "$1" | grep -Eo '[0-9a-f]{32}' | head -n 1; }
fast
allow_nodes "$F" n1
RA=0123456789abcdef0123456789abcdef
check "n1 enrolls v1" node "$F" n1 enroll v1
K=$(field key "$(node "$F" n1 recovery v1 "$RA")")
expect_match "escrow under the fast clock" "$K" "^[0-9a-f]{64}$"
stop_kfd TERM
start_kfd "$F"
out=$(ctl "$F" volume recovery-key v1)
check "bob approves the reveal" ctl_as "$F" bob approve "$(rid_of "$out")"
out=$(ctl "$F" volume recovery-key v1 --request "$(rid_of "$out")")
expect_match "revealed under the right clock" "$out" "recovery key of v1"
stop_kfd TERM
fast
out=$(node "$F" n1 recovery v1 "$RA")
expect_match "a repeat under the fast clock does not return the revealed key" "$out" \
    "code=permission_denied .*was revealed"
check_sanitizers
finish
