#!/usr/bin/env bash
# Review rev26c (docs/reviews/rev26c-recovery-erase-fixes.md), registered in
# tests/CMakeLists.txt: each check below failed on main at c1885f6 and passes with fix26c
# (review rev26c R1, R2). R1: a replacement of a recovery key that was not revealed (`recovery-key add`) cut off
# right after its escrow commit (crash point recovery_escrow) leaves the escrow holding a key no
# keyslot has: the break-glass reveal must still show a key that opens the volume. R2: a revealed
# key's replacement cut off after the old keyslot's kill, before the confirmation (crash point
# recovery_killed): a reveal then must show a key that opens the volume. R1b: the node's
# certificate alone replaces the escrowed key by one that opens nothing (no crash needed).
# R3 and R4 are in review_rev26c_orphan.sh.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/recovery_lib.sh"

recovery_fleet
allow_nodes "$F" n1
agent_cfg() { agent_config "$WORK/$1.yaml" n1 "deadline: 5s" "volumes:" "  - luks: $2"
    sed -i "s|^zfs: {command: \(.*\)}$|zfs: {command: \1, discover: false}|" "$WORK/$1.yaml"; }
expect_opens() { if opens "$2" "$3"; then ok "$1"; else not_ok "$1" "the text does not open $2"; fi; }
expect_closed() { if opens "$2" "$3"; then not_ok "$1" "the text still opens $2"; else ok "$1"; fi; }

# --- R1: a non-revealed replacement cut off after its escrow
D1=$WORK/d1.luks
luks_file "$D1" "pw"
agent_cfg a1 "$D1"
A1() { "$AGENT" -c "$WORK/a1.yaml" "$@"; }
L1=$(cryptsetup luksUUID "$D1")
out=$(printf pw | A1 enroll "luks:$D1" --recovery-key 2>&1)
expect_match "R1: enroll --recovery-key" "$out" "recovery key added"
out=$(KEYFLEET_TEST_CRASH_AFTER=recovery_escrow A1 recovery-key add "luks:$D1" 2>&1 || true)
expect_match "R1: recovery-key add cut off after its escrow" "$out" "test crash after recovery_escrow"
A1 watch --count 1 >/dev/null 2>&1 || true
T=$(reveal "$L1")
expect_opens "R1: the break-glass reveal shows a key that opens the volume" "$D1" "$T"

# R1b: the node's certificate alone (no disk, no agent) does the same on purpose: one
# EnrollRecoveryKey with a new request id replaces the escrowed key by one no keyslot has.
D4=$WORK/d4.luks
luks_file "$D4" "pw"
agent_cfg a4 "$D4"
L4=$(cryptsetup luksUUID "$D4")
printf pw | "$AGENT" -c "$WORK/a4.yaml" enroll "luks:$D4" --recovery-key >/dev/null 2>&1
out=$(node "$F" n1 recovery "$L4" 00112233445566778899aabbccddeeff)
expect_match "R1b: a stolen node certificate escrows a new key" "$out" "key=[0-9a-f]{64}"
T=$(reveal "$L4")
expect_opens "R1b: the break-glass reveal still shows a key that opens the volume" "$D4" "$T"
# The reveal showed the pending key too: once the node confirms it, the volume stays marked
# revealed (a repeated request does not return it; the node replaces it again).
out=$(node "$F" n1 recovery-confirm "$L4" 00112233445566778899aabbccddeeff)
expect_match "R2: the shown pending key is confirmed" "$out" "code=ok"
out=$(node "$F" n1 recovery "$L4" 00112233445566778899aabbccddeeff || true)
expect_match "R2: a promoted pending key that a reveal showed stays marked revealed" "$out" "was revealed"

# --- R2: a revealed key's replacement cut off after the kill, before the confirmation
D2=$WORK/d2.luks
luks_file "$D2" "pw"
agent_cfg a2 "$D2"
A2() { "$AGENT" -c "$WORK/a2.yaml" "$@"; }
L2=$(cryptsetup luksUUID "$D2")
printf pw | A2 enroll "luks:$D2" --recovery-key >/dev/null 2>&1
T1=$(reveal "$L2")
expect_opens "R2: the first reveal opens" "$D2" "$T1"
out=$(KEYFLEET_TEST_CRASH_AFTER=recovery_killed A2 watch --count 1 2>&1 || true)
expect_match "R2: the replacement cut off after its kill" "$out" "test crash after recovery_killed"
expect_closed "R2: the revealed key's keyslot is killed" "$D2" "$T1"
T2=$(reveal "$L2")
expect_opens "R2: a reveal before the node's next contact shows a key that opens the volume" "$D2" "$T2"

check_sanitizers
finish
