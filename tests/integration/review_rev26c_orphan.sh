#!/usr/bin/env bash
# Review rev26c (docs/reviews/rev26c-recovery-erase-fixes.md), NOT registered in
# tests/CMakeLists.txt: each check below fails on main at c1885f6 and passes once its finding is
# fixed. A keyslot no token names is never killed, by a replacement or an erase. R3: a recovery
# keyslot with no keyfleet-recovery token (a run cut off between kfa_luks2_recovery_set's
# add_keyslot and write_recovery: crash point recovery_keyslot): once revealed, the replacement
# must still retire it. R4: the keyfleet keyslot of
# a rotation cut off before its token (crash point keyslot): a confirmed wipe must not leave it.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
issue "$F" operator bob
start_kfd "$F"
allow_nodes "$F" n1
agent_cfg() { agent_config "$WORK/$1.yaml" n1 "deadline: 5s" "volumes:" "  - luks: $2"
    sed -i "s|^zfs: {command: \(.*\)}$|zfs: {command: \1, discover: false}|" "$WORK/$1.yaml"; }
opens() { printf '%s' "$2" | cryptsetup open --test-passphrase --key-file=- "$1" >/dev/null 2>&1; }
reveal() {
    local out rid
    out=$(ctl "$F" volume recovery-key "$1") || return 1
    rid=$(printf '%s\n' "$out" | sed -n 's/.*request \([0-9a-f-]*\),.*/\1/p')
    ctl_as "$F" bob approve "$rid" >/dev/null || return 1
    ctl "$F" volume recovery-key "$1" --request "$rid" | sed -n 's/^    \([0-9a-z-]\{77\}\)$/\1/p'
}
expect_opens() { if opens "$2" "$3"; then ok "$1"; else not_ok "$1" "the text does not open $2"; fi; }
expect_closed() { if opens "$2" "$3"; then not_ok "$1" "the text still opens $2"; else ok "$1"; fi; }

# --- R3: a recovery keyslot no token names survives its replacement
D3=$WORK/d3.luks
luks_file "$D3" "pw"
agent_cfg a3 "$D3"
A3() { "$AGENT" -c "$WORK/a3.yaml" "$@"; }
L3=$(cryptsetup luksUUID "$D3")
printf pw | A3 enroll "luks:$D3" >/dev/null 2>&1
out=$(KEYFLEET_TEST_CRASH_AFTER=recovery_keyslot A3 recovery-key add "luks:$D3" 2>&1 || true)
expect_match "R3: recovery-key add cut off after its keyslot, before its token" "$out" \
    "test crash after recovery_keyslot"
T3=$(reveal "$L3")
expect_opens "R3: the revealed key opens" "$D3" "$T3"
A3 watch --count 1 >/dev/null 2>&1 || true
A3 watch --count 1 >/dev/null 2>&1 || true
expect_match "R3: the coordinators record the revealed key as replaced" \
    "$(ctl "$F" audit --action recovery_replaced --json)" "\"volume\":\"$L3\".*\"decision\":\"allow\""
expect_closed "R3: the revealed key no longer opens the volume once replaced" "$D3" "$T3"

# --- R4: the keyfleet keyslot of a rotation cut off before its token (crash point keyslot)
# opens with the coordinators' staged key (volumes.next_wrapped_key, kept at the wipe); the
# erase kills only the keyslots tokens name, so it survives a confirmed wipe.
D5=$WORK/d5.luks
luks_file "$D5" "pw"
agent_cfg a5 "$D5"
A5() { "$AGENT" -c "$WORK/a5.yaml" "$@"; }
L5=$(cryptsetup luksUUID "$D5")
printf pw | A5 enroll "luks:$D5" >/dev/null 2>&1
out=$(KEYFLEET_TEST_CRASH_AFTER=keyslot A5 rotate "luks:$D5" 2>&1 || true)
expect_match "R4: a rotation cut off after its keyslot" "$out" "test crash after keyslot"
out=$(ctl "$F" node wipe n1 --volumes "$L5" --reason "stolen")
ctl_as "$F" bob approve "$(printf '%s' "$out" | grep -Eo '[0-9a-f]{32}' | head -n 1)" >/dev/null
A5 watch --count 1 >/dev/null 2>&1 || true
A5 watch --count 1 >/dev/null 2>&1 || true
expect_match "R4: the wipe is confirmed erased" "$(ctl "$F" volume show "$L5")" "erase: +erased"
slots=$(cryptsetup luksDump "$D5" | grep -cE '^ +[0-9]+: luks2$')
expect_eq "R4: only the operator's passphrase keyslot is left after a confirmed erase" "$slots" "1"
check_sanitizers
finish
