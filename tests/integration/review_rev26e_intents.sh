#!/usr/bin/env bash
# Review rev26e (docs/reviews/rev26e-keyslot-intents.md): a keyslot number recorded as being
# added ("keyfleet_adding", review rev26c R3/R4) outlives the run that recorded it when the run
# stops before its keyslot (new crash points adding_record, recovery_record) or before the record
# is dropped (rotating_token); the number is then taken by another of keyfleet's keyslots (the
# recovery keyslot, a rotation's keyslot). A later run must not kill, or adopt, a keyslot another
# of keyfleet's tokens names: K1 (the recovery keyslot killed by the next rotation), K2 (the
# live keyfleet keyslot adopted as the recovery keyslot, then killed by the replacement), K3 (the
# live keyfleet keyslot killed by the next rotation after a record left behind).
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
issue "$F" operator bob
start_kfd "$F"
allow_nodes "$F" n1
agent_cfg() { agent_config "$WORK/$1.yaml" n1 "deadline: 5s" "volumes:" "  - luks: $2"
    sed -i "s|^zfs: {command: \(.*\)}$|zfs: {command: \1, discover: false}|" "$WORK/$1.yaml"; }
nslots() { cryptsetup luksDump "$1" | grep -cE '^ +[0-9]+: luks2$'; }
active() { cryptsetup luksDump "$1" | grep -qE "^ +$2: luks2$"; }
# The keyslot the token of type $2 names (empty: none).
token_slot() {
    cryptsetup luksDump --dump-json-metadata "$1" | /usr/bin/python3 -c '
import json, sys
o = json.load(sys.stdin)
for t in o.get("tokens", {}).values():
    if t.get("type") == sys.argv[1]:
        print((t.get("keyslots") or [""])[0])
        break' "$2"
}
expect_live() { # name device token-type
    local s
    s=$(token_slot "$2" "$3")
    if [ -n "$s" ] && active "$2" "$s"; then ok "$1"; else not_ok "$1" "the $3 token names keyslot '$s', not active: $(cryptsetup luksDump "$2" | grep -E '^ +[0-9]+: luks2$' | tr -d ' \n')"; fi
}

# --- K1: a rotation's record (keyfleet-adding) names keyslot 2, the run stops before the keyslot;
# the recovery keyslot takes 2; the next rotation must keep it.
D1=$WORK/d1.luks
luks_file "$D1" "pw"
agent_cfg a1 "$D1"
A1() { "$AGENT" -c "$WORK/a1.yaml" "$@"; }
printf pw | A1 enroll "luks:$D1" >/dev/null 2>&1
out=$(KEYFLEET_TEST_CRASH_AFTER=adding_record A1 rotate "luks:$D1" 2>&1 || true)
expect_match "K1: a rotation cut off after its record, before its keyslot" "$out" "test crash after adding_record"
A1 recovery-key add "luks:$D1" >/dev/null 2>&1 || not_ok "K1: recovery-key add" "failed"
expect_eq "K1: the recovery keyslot took the recorded number" "$(token_slot "$D1" keyfleet-recovery)" "2"
A1 rotate "luks:$D1" >/dev/null 2>&1 || true
expect_live "K1: the recovery keyslot survives the next rotation" "$D1" keyfleet-recovery
expect_live "K1: the keyfleet keyslot is live after it" "$D1" keyfleet
expect_eq "K1: three keyslots (passphrase, keyfleet, recovery)" "$(nslots "$D1")" "3"

# --- K2: a recovery add's record names keyslot 2, the run stops before the keyslot; a rotation's
# keyslot takes 2 (the live keyfleet keyslot once it finishes); the next recovery add must not
# adopt it as the recovery keyslot (and then kill it as the replaced one).
D2=$WORK/d2.luks
luks_file "$D2" "pw"
agent_cfg a2 "$D2"
A2() { "$AGENT" -c "$WORK/a2.yaml" "$@"; }
printf pw | A2 enroll "luks:$D2" >/dev/null 2>&1
out=$(KEYFLEET_TEST_CRASH_AFTER=recovery_record A2 recovery-key add "luks:$D2" 2>&1 || true)
expect_match "K2: a recovery add cut off after its record, before its keyslot" "$out" "test crash after recovery_record"
A2 rotate "luks:$D2" >/dev/null 2>&1 || not_ok "K2: rotate" "failed"
expect_eq "K2: the rotation's keyslot took the recorded number" "$(token_slot "$D2" keyfleet)" "2"
A2 recovery-key add "luks:$D2" >/dev/null 2>&1 || true
expect_live "K2: the keyfleet keyslot survives the recovery add" "$D2" keyfleet
expect_live "K2: the recovery keyslot is live" "$D2" keyfleet-recovery
expect_eq "K2: three keyslots (passphrase, keyfleet, recovery)" "$(nslots "$D2")" "3"

# --- K3: a rotation stops after its token names the new keyslot, before its record is dropped;
# the next run finishes it (the record names the live keyslot); the rotation after must keep it.
D3=$WORK/d3.luks
luks_file "$D3" "pw"
agent_cfg a3 "$D3"
A3() { "$AGENT" -c "$WORK/a3.yaml" "$@"; }
printf pw | A3 enroll "luks:$D3" >/dev/null 2>&1
out=$(KEYFLEET_TEST_CRASH_AFTER=rotating_token A3 rotate "luks:$D3" 2>&1 || true)
expect_match "K3: a rotation cut off after its token, before its record is dropped" "$out" "test crash after rotating_token"
A3 rotate "luks:$D3" >/dev/null 2>&1 || not_ok "K3: the resumed rotation" "failed"
A3 rotate "luks:$D3" >/dev/null 2>&1 || not_ok "K3: the next rotation" "failed"
expect_live "K3: the keyfleet keyslot is live after the next rotation" "$D3" keyfleet
expect_eq "K3: two keyslots (passphrase, keyfleet)" "$(nslots "$D3")" "2"

# --- K4: a rotation's record names keyslot 2, the run stops before the keyslot; keyslot 2 then
# holds a key with keyfleet's KDF that no token names and the new key does not open (what a run
# cut off after its keyslot leaves once the coordinators dropped that key; made here by hand).
# The next rotation must kill it (find_adding read its record after freeing it: ignored).
D4=$WORK/d4.luks
luks_file "$D4" "pw"
agent_cfg a4 "$D4"
A4() { "$AGENT" -c "$WORK/a4.yaml" "$@"; }
printf pw | A4 enroll "luks:$D4" >/dev/null 2>&1
KEYFLEET_TEST_CRASH_AFTER=adding_record A4 rotate "luks:$D4" >/dev/null 2>&1 || true
printf 'dropped-key' >"$WORK/dropped.txt"
printf pw | cryptsetup luksAddKey --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --hash sha512 \
    --key-slot 2 --key-file=- "$D4" "$WORK/dropped.txt"
out=$(A4 rotate "luks:$D4" 2>&1 || true)
expect_match "K4: the next rotation kills the recorded keyslot" "$out" "event=adding_keyslot_killed.*keyslot=2"
if printf 'dropped-key' | cryptsetup open --test-passphrase --key-file=- "$D4" >/dev/null 2>&1; then
    not_ok "K4: the dropped key no longer opens the volume" "it still does"
else
    ok "K4: the dropped key no longer opens the volume"
fi
expect_live "K4: the keyfleet keyslot is live after it" "$D4" keyfleet
expect_eq "K4: two keyslots (passphrase, keyfleet)" "$(nslots "$D4")" "2"

# --- E1: an enroll cut off after its keyslot, before its keyfleet token (crash point
# enroll_keyslot): the coordinators hold the key (the enroll committed first). After the enroll
# is run again and the volume wiped, the erase must be confirmed with only the operator's
# passphrase keyslot left (before: the unnamed keyslot was never killed, and the erase never
# confirmed).
D5=$WORK/d5.luks
luks_file "$D5" "pw"
agent_cfg a5 "$D5"
A5() { "$AGENT" -c "$WORK/a5.yaml" "$@"; }
L5=$(cryptsetup luksUUID "$D5")
out=$(printf pw | KEYFLEET_TEST_CRASH_AFTER=enroll_keyslot A5 enroll "luks:$D5" 2>&1 || true)
expect_match "E1: an enroll cut off after its keyslot, before its token" "$out" "test crash after enroll_keyslot"
printf pw | A5 enroll "luks:$D5" >/dev/null 2>&1 || not_ok "E1: the enroll run again" "failed"
expect_live "E1: the keyfleet keyslot is live" "$D5" keyfleet
expect_eq "E1: two keyslots after the enroll run again (passphrase, keyfleet)" "$(nslots "$D5")" "2"
out=$(ctl "$F" node wipe n1 --volumes "$L5" --reason "stolen")
ctl_as "$F" bob approve "$(printf '%s' "$out" | grep -Eo '[0-9a-f]{32}' | head -n 1)" >/dev/null
A5 watch --count 1 >/dev/null 2>&1 || true
expect_match "E1: the wipe is confirmed erased" "$(ctl "$F" volume show "$L5")" "erase: +erased"
expect_eq "E1: only the operator's passphrase keyslot is left" "$(nslots "$D5")" "1"
check_sanitizers
finish
