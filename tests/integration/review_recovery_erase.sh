#!/usr/bin/env bash
# Review rev26b (docs/reviews/rev26b-recovery-erase-tpmnet.md), expected to FAIL until fixed:
# F3: a replacement of a revealed recovery key cut off right after its escrow commit (crash point
# recovery_escrow) must still be finished by the next heartbeat: the revealed text must stop
# opening the volume. F2: a plain `node wipe` must destroy the recovery keyslot too: a revealed
# recovery key must not open a crypt-erased volume.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
issue "$F" operator bob
start_kfd "$F"
allow_nodes "$F" n1
D=$WORK/disk.luks
luks_file "$D" "pw"
agent_config "$WORK/a.yaml" n1 "deadline: 5s" "volumes:" "  - luks: $D"
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
LID=$(cryptsetup luksUUID "$D")
opens() { printf '%s' "$2" | cryptsetup open --test-passphrase --key-file=- "$1" >/dev/null 2>&1; }
reveal() {
    local out rid
    out=$(ctl "$F" volume recovery-key "$1") || return 1
    rid=$(printf '%s\n' "$out" | sed -n 's/.*request \([0-9a-f-]*\),.*/\1/p')
    ctl_as "$F" bob approve "$rid" >/dev/null || return 1
    ctl "$F" volume recovery-key "$1" --request "$rid" | sed -n 's/^    \([0-9a-z-]\{77\}\)$/\1/p'
}

out=$(printf pw | A enroll "luks:$D" --recovery-key 2>&1)
expect_match "enroll --recovery-key" "$out" "recovery key added \\(escrowed\\)"

# --- F3: crash after the replacement's escrow commit
T1=$(reveal "$LID")
check "a revealed key opens the file" opens "$D" "$T1"
KEYFLEET_TEST_CRASH_AFTER=recovery_escrow A watch --count 1 >"$WORK/w1.out" 2>&1 || true
A watch --count 1 >"$WORK/w2.out" 2>&1 || true
A watch --count 1 >"$WORK/w3.out" 2>&1 || true
if opens "$D" "$T1"; then
    not_ok "F3: after a crash between escrow and keyslot, the next heartbeats retire the revealed key"
else
    ok "F3: after a crash between escrow and keyslot, the next heartbeats retire the revealed key"
fi

# --- F2: a plain wipe leaves the recovery keyslot
A recovery-key add "luks:$D" >/dev/null 2>&1 || true
T2=$(reveal "$LID")
check "a second reveal opens the file" opens "$D" "$T2"
out=$(ctl "$F" node wipe n1 --volumes "$LID" --reason "stolen")
C=$(printf '%s' "$out" | sed -n 's/.*request \([0-9a-f]\{32\}\).*/\1/p')
if [ -n "$C" ]; then ctl_as "$F" bob approve "$C" >/dev/null; fi
A watch --count 1 >"$WORK/w4.out" 2>&1 || true
A watch --count 1 >"$WORK/w5.out" 2>&1 || true
expect_match "the wipe is confirmed erased" "$(ctl "$F" volume show "$LID")" "erase: +erased"
if opens "$D" "$T2"; then
    not_ok "F2: a revealed recovery key no longer opens a crypt-erased volume"
else
    ok "F2: a revealed recovery key no longer opens a crypt-erased volume"
fi
check "the operator's passphrase still opens it (plain wipe)" opens "$D" "pw"
check_sanitizers
finish
