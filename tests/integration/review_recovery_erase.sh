#!/usr/bin/env bash
# Review rev26b (docs/reviews/rev26b-recovery-erase-tpmnet.md), failed before the fixes:
# F3: a replacement of a revealed recovery key cut off right after its escrow commit (crash point
# recovery_escrow) must still be finished by the next heartbeat: the revealed text must stop
# opening the volume. F2: a plain `node wipe` must destroy the recovery keyslot too: a revealed
# recovery key must not open a crypt-erased volume. F10: an erase cut off between its keyslots
# and its tokens (crash point erase_slots) is finished by the next heartbeat, no keyfleet
# keyslot left behind.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/recovery_lib.sh"

recovery_fleet
allow_nodes "$F" n1
D=$WORK/disk.luks
luks_file "$D" "pw"
agent_config "$WORK/a.yaml" n1 "deadline: 5s" "volumes:" "  - luks: $D"
# No ZFS here: each agent run would list datasets through the stand-in for nothing.
sed -i "s|^zfs: {command: \(.*\)}$|zfs: {command: \1, discover: false}|" "$WORK/a.yaml"
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
LID=$(cryptsetup luksUUID "$D")

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
wipe() {
    local out c
    out=$(ctl "$F" node wipe n1 --volumes "$LID" "$@") || return 1
    c=$(printf '%s' "$out" | sed -n 's/.*request \([0-9a-f]\{32\}\).*/\1/p')
    if [ -n "$c" ]; then ctl_as "$F" bob approve "$c" >/dev/null; fi
}
# An erase not confirmed yet can be cancelled (audited); the volume stays retired; wiped again.
check "node wipe (applied)" wipe --reason "stolen"
check "node wipe --cancel of an erase not confirmed" wipe --cancel --reason "found in the van"
show=$(ctl "$F" volume show "$LID")
if printf '%s\n' "$show" | grep -q '^erase:'; then not_ok "... the erase is dropped" "$show"; else ok "... the erase is dropped"; fi
expect_match "... the volume stays retired" "$show" "state: +retired"
expect_match "... audited" "$(ctl "$F" audit --action node_wipe_cancel --json)" '"decision":"allow".*found in the van'
check "node wipe again" wipe --reason "stolen after all"
# F10: cut off after the keyslots, before the tokens; the next heartbeat finishes and reports.
KEYFLEET_TEST_CRASH_AFTER=erase_slots A watch --count 1 >"$WORK/w4.out" 2>&1 || true
expect_match "the erase was cut off (crash point erase_slots)" "$(cat "$WORK/w4.out")" "test crash after erase_slots"
A watch --count 1 >"$WORK/w5.out" 2>&1 || true
A watch --count 1 >"$WORK/w6.out" 2>&1 || true
expect_match "the wipe is confirmed erased" "$(ctl "$F" volume show "$LID")" "erase: +erased"
slots=$(cryptsetup luksDump "$D" | grep -cE '^ +[0-9]+: luks2$')
expect_match "F10: only the operator's passphrase keyslot is left" "$slots" "^1$"
if opens "$D" "$T2"; then
    not_ok "F2: a revealed recovery key no longer opens a crypt-erased volume"
else
    ok "F2: a revealed recovery key no longer opens a crypt-erased volume"
fi
check "the operator's passphrase still opens it (plain wipe)" opens "$D" "pw"
if wipe --cancel 2>/dev/null; then not_ok "a confirmed erase cannot be cancelled"; else ok "a confirmed erase cannot be cancelled"; fi
check_sanitizers
finish
