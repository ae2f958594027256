#!/usr/bin/env bash
# TPM and network, both required (policy require: [tpm_and_network], #26 section 3), with a
# software TPM, LUKS2 files and the ZFS stand-in: enroll seals a random TPM part and stores it as
# kftpmnet1: (never a kftpm1: copy of the key); the keyslot key is HKDF-SHA256(TPM part ||
# coordinator part), recomputed here independently (Python) and checked with cryptsetup, while
# either part alone opens nothing; with both parts unlock, the keyscript and the token plugin
# open the volume; another TPM, a changed PCR, a coordinator that is down and a revoked node each
# fail, without any fallback; a LUKS2 volume and a ZFS dataset rotate with both parts new (ZFS
# killed at each step still opens, and a rerun finishes); a rule with both tpm_and_network
# and offline_fallback is refused.
. "$(dirname "$0")/lib.sh"

TPM_PROBE=$BUILD/tests/tpm_probe
PLUGIN=$BUILD/agent/libcryptsetup-token-keyfleet.so
TPP=$BUILD/tests/token_plugin_probe
F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
start_kfd "$F"
node_rule "$F" two-factor tpm_and_network "n*"
start_swtpm "$WORK/tpm"
TCTI1=$TCTI
start_swtpm "$WORK/tpm-other"
TCTI2=$TCTI
TCTI=$TCTI1
luks_file "$WORK/disk.luks" "pw"
"$ZFS_STANDIN" __zpool_create tank
# Written again after each restart: keyfleetd listens on a new port each time.
write_config() { # [TCTI [PCRS]]
    agent_config "$WORK/a.yaml" n1 "deadline: 2s" "call_timeout: 500ms" "tpm: {tcti: \"${1:-$TCTI1}\", pcrs: ${2:-[7]}}" \
        "volumes:" "  - luks: $WORK/disk.luks"
}
write_config
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
# token_get FILE FIELD: the keyfleet token's FIELD in FILE ("-": none); token_field FIELD: disk.luks's.
token_get() {
    luks_json "$1" | python3 -c 'import json,sys; t=json.load(sys.stdin)["tokens"]
print([v for v in t.values() if v["type"]=="keyfleet"][0].get(sys.argv[1], "-"))' "$2"
}
token_field() { token_get "$WORK/disk.luks" "$1"; }
relock() { "$ZFS_STANDIN" unmount tank/data 2>/dev/null; "$ZFS_STANDIN" unload-key tank/data 2>/dev/null; }

out=$(ctl "$F" policy check n1 some-volume 2>&1)
expect_match "policy check says the rule asks for both parts" "$out" "TPM and network, both required"

out=$(printf 'pw' | A enroll "$WORK/disk.luks" 2>&1)
expect_eq "enroll under require: [tpm_and_network] succeeds" "$?" "0"
expect_match "... saying both parts are needed and there is no offline unlock" "$out" \
    "TPM and network both required \\(no offline unlock\\)"
PART=$(token_field keyfleet_tpm_sealed)
expect_match "the LUKS2 token carries the sealed TPM part" "$PART" "^kftpmnet1:[A-Za-z0-9+/=]+$"
case $(luks_json "$WORK/disk.luks") in
*kftpm1:*) not_ok "... and no TPM copy of the key (no offline fallback)" ;;
*) ok "... and no TPM copy of the key (no offline fallback)" ;;
esac
expect_match "the audit's enroll record names the mode" \
    "$(ctl "$F" audit --action enroll --json)" "TPM and network, both required"
out=$(A enroll zfs:tank/data 2>&1)
expect_match "a ZFS dataset enrolls the same way" "$out" "TPM and network both required"
expect_match "... its property holds the TPM part" \
    "$("$ZFS_STANDIN" get -H -o value org.keyfleet:tpm-sealed tank/data)" "^kftpmnet1:"
relock

# The keyslot key, recomputed apart from the agent: the coordinator part as a node gets it, the
# TPM part unsealed by the probe, HKDF-SHA256 with the documented label and the volume id.
UUID=$(cryptsetup luksUUID "$WORK/disk.luks")
rel=$(node "$F" n1 release "$UUID" "$(token_field keyfleet_wrapped_key)")
COORD=$(field key "$rel")
expect_match "a node can have the coordinator part" "$COORD" "^[0-9a-f]{64}$"
# stdout only: the probe's stderr (tss2 logs; under ASan a LeakSanitizer report) is in $WORK/probe.err.
TPMPART=$("$TPM_PROBE" "$TCTI1" unseal "kftpm1:${PART#kftpmnet1:}" 2>>"$WORK/probe.err")
expect_match "the TPM gives its part" "$TPMPART" "^[0-9a-f]{64}$"
hkdf() {
    python3 - "$1" "$2" "$3" <<'PY'
import hashlib, hmac, sys
ikm = bytes.fromhex(sys.argv[1]) + bytes.fromhex(sys.argv[2])
prk = hmac.new(b"\0" * 32, ikm, hashlib.sha256).digest()
info = b"keyfleet tpm_and_network keyslot key v1\0" + sys.argv[3].encode()
sys.stdout.buffer.write(hmac.new(prk, info + b"\x01", hashlib.sha256).digest())
PY
}
hkdf "$TPMPART" "$COORD" "$UUID" >"$WORK/derived.key"
check "HKDF-SHA256(TPM part || coordinator part) opens the volume" \
    cryptsetup open --test-passphrase --key-file="$WORK/derived.key" "$WORK/disk.luks"
printf '%s' "$COORD" | xxd -r -p >"$WORK/coord.key"
if cryptsetup open --test-passphrase --key-file="$WORK/coord.key" "$WORK/disk.luks" 2>/dev/null; then
    not_ok "the coordinator part alone (a compromised coordinator or KMS) does not open it"
else
    ok "the coordinator part alone (a compromised coordinator or KMS) does not open it"
fi
printf '%s' "$TPMPART" | xxd -r -p >"$WORK/tpm.key"
if cryptsetup open --test-passphrase --key-file="$WORK/tpm.key" "$WORK/disk.luks" 2>/dev/null; then
    not_ok "the TPM part alone does not open it"
else
    ok "the TPM part alone does not open it"
fi
mv "$WORK/derived.key" "$WORK/old.key"
rm -f "$WORK/coord.key" "$WORK/tpm.key"

out=$(A unlock --all 2>&1)
expect_eq "with both parts, unlock opens every volume (exit 0)" "$?" "0"
expect_match "... the LUKS2 file" "$out" "disk.luks: unlocked \\(key verified"
expect_eq "... and the ZFS dataset" "$("$ZFS_STANDIN" get -H -o value keystatus tank/data)" "available"
relock

printf '#!/bin/sh\necho "$1" >&2\nsleep 30\n' >"$WORK/askpass-wait" && chmod +x "$WORK/askpass-wait"
rm -f /run/keyfleet/keyscript-tnroot.agent
CRYPTTAB_NAME=tnroot CRYPTTAB_SOURCE=$WORK/disk.luks CRYPTTAB_TRIED=0 timeout 60 \
    "$AGENT" -c "$WORK/a.yaml" keyscript --askpass "$WORK/askpass-wait" >"$WORK/ks.key" 2>"$WORK/ks.console"
expect_match "the keyscript combines both parts, saying so" "$(cat "$WORK/ks.console")" \
    "keyfleet: tnroot: released by a coordinator, with the TPM's part"
check "... and its key opens the volume" cryptsetup open --test-passphrase --key-file="$WORK/ks.key" "$WORK/disk.luks"
rm -f "$WORK/ks.key" /run/keyfleet/keyscript-tnroot.agent

out=$(KEYFLEET_CONFIG=$WORK/a.yaml "$TPP" "$PLUGIN" open "$WORK/disk.luks" 2>&1)
expect_match "the token plugin combines both parts, and the key opens the volume" "$out" "open ok len=32 keyslot=[0-9]+ opens=yes"
out=$(KEYFLEET_CONFIG=$WORK/a.yaml "$TPP" "$PLUGIN" dump "$WORK/disk.luks" 2>&1)
expect_match "the token plugin's dump says there is no offline unlock" "$out" "TPM copy: +no; a TPM part: TPM and network both required"

# Without the TPM part: another TPM.
write_config "$TCTI2"
out=$(A unlock --all 2>&1)
expect_eq "another TPM: nothing unlocks (exit 1)" "$?" "1"
expect_match "... the TPM's refusal is named" "$out" "needs TPM and network, and the TPM did not give its part"
expect_eq "... the dataset stays locked" "$("$ZFS_STANDIN" get -H -o value keystatus tank/data)" "unavailable"
write_config

# Rotation (LUKS2): both parts new; the old keyslot key and the old wrapped key refused after.
# The agent's own tpm.pcrs name PCRs 0 and 7 here: the new part is sealed to what the
# coordinator's BEGIN answer names (PCR 7), as at enroll (review rev26z R4).
OLDWRAP=$(token_field keyfleet_wrapped_key)
write_config "$TCTI1" "[0, 7]"
out=$(A rotate "$WORK/disk.luks" 2>&1)
expect_eq "rotate a tpm_and_network LUKS2 volume (exit 0)" "$?" "0"
write_config
expect_match "... rotated" "$out" "disk.luks: rotated"
PART2=$(token_field keyfleet_tpm_sealed)
expect_match "... the token carries a TPM part" "$PART2" "^kftpmnet1:[A-Za-z0-9+/=]+$"
# The blob starts with its PCR count and numbers (agent/tpm2.c): one PCR, 7.
expect_eq "... sealed to the PCRs the coordinator named (7), not the agent's (0, 7)" \
    "$(printf '%s' "${PART2#kftpmnet1:}" | base64 -d 2>/dev/null | head -c 2 | xxd -p)" "0107"
[ "$PART2" != "$PART" ] && ok "... a new one" || not_ok "... a new one" "the TPM part did not change"
expect_eq "... one keyfleet token, not marked rotating" "$(token_field keyfleet_rotating)" "-"
COORD2=$(field key "$(node "$F" n1 release "$UUID" "$(token_field keyfleet_wrapped_key)")")
TPMPART2=$("$TPM_PROBE" "$TCTI1" unseal "kftpm1:${PART2#kftpmnet1:}" 2>>"$WORK/probe.err")
expect_match "... the new coordinator part and the new TPM part" "$COORD2$TPMPART2" "^[0-9a-f]{128}$"
hkdf "$TPMPART2" "$COORD2" "$UUID" >"$WORK/derived.key"
check "... HKDF of the two new parts opens the volume" \
    cryptsetup open --test-passphrase --key-file="$WORK/derived.key" "$WORK/disk.luks"
printf '%s' "$COORD2" | xxd -r -p >"$WORK/coord.key"
if cryptsetup open --test-passphrase --key-file="$WORK/coord.key" "$WORK/disk.luks" 2>/dev/null; then
    not_ok "... the new coordinator part alone does not"
else
    ok "... the new coordinator part alone does not"
fi
if cryptsetup open --test-passphrase --key-file="$WORK/old.key" "$WORK/disk.luks" 2>/dev/null; then
    not_ok "... the old keyslot key no longer opens it"
else
    ok "... the old keyslot key no longer opens it"
fi
rm -f "$WORK/derived.key" "$WORK/coord.key" "$WORK/old.key"
expect_match "... the old wrapped key is refused" "$(node "$F" n1 release "$UUID" "$OLDWRAP")" "code=(failed_precondition|permission_denied)"
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "... and unlock combines the new parts" "$out" "disk.luks: unlocked \\(key verified"
# Rotation (ZFS): both parts new. The new TPM part and wrapped key are staged in tpm-next and
# wrapped-next (one zfs set) before change-key; wrapped-key and tpm-sealed name them after.
zprop() { "$ZFS_STANDIN" get -H -o value "org.keyfleet:$1" tank/data; }
GUID=$("$ZFS_STANDIN" get -H -p -o value guid tank/data)
# zkey WRAPPED PART FILE: HKDF(TPM part || coordinator part), recomputed apart from the agent.
# Only the probe's hex line is the part: under ASan, LeakSanitizer's report on the probe's stderr
# (a libcrypto allocation, seen at times) is no part of it; a failed unseal is tried again
# (bounded: swtpm serves one connection at a time).
zkey() {
    local c t i
    c=$(field key "$(node "$F" n1 release "$GUID" "$1")")
    for i in 1 2 3 4 5 6 7 8 9 10; do
        t=$("$TPM_PROBE" "$TCTI1" unseal "kftpm1:${2#kftpmnet1:}" 2>"$WORK/zkey.err" | grep -E '^[0-9a-f]{64}$')
        [ -n "$t" ] && break
        sleep 0.5
    done
    [ -n "$t" ] || t="none: $(tr '\n' ' ' <"$WORK/zkey.err")"
    printf '%s%s' "$c" "$t" | grep -Eq '^[0-9a-f]{128}$' || echo "# zkey: coordinator part '$c', TPM part '$t'"
    hkdf "$t" "$c" "$GUID" >"$3"
}
# zopens FILE: the stand-in's dataset takes the key in FILE (a dry-run load-key).
zopens() { "$ZFS_STANDIN" load-key -n -L prompt tank/data <"$1" 2>/dev/null; }
# zrotated DESC OLDWRAP OLDKEY: the dataset is on a new two-part key, nothing staged is left, the
# old key no longer opens it and the coordinator refuses the old wrapped key.
zrotated() {
    local w p
    w=$(zprop wrapped-key)
    p=$(zprop tpm-sealed)
    expect_match "$1: tpm-sealed holds a TPM part" "$p" "^kftpmnet1:[A-Za-z0-9+/=]+$"
    expect_eq "$1: nothing staged is left" "$(zprop wrapped-next) $(zprop tpm-next)" "- -"
    zkey "$w" "$p" "$WORK/znew.key"
    check "$1: HKDF of the new parts opens the dataset" zopens "$WORK/znew.key"
    if zopens "$3"; then not_ok "$1: the old key no longer opens it"; else ok "$1: the old key no longer opens it"; fi
    expect_match "$1: the old wrapped key is refused" "$(node "$F" n1 release "$GUID" "$2")" \
        "code=(failed_precondition|permission_denied)"
    rm -f "$WORK/znew.key"
}
check "the tpm_and_network dataset unlocks (rotate needs its key loaded)" A unlock zfs:tank/data
ZW1=$(zprop wrapped-key)
ZP1=$(zprop tpm-sealed)
zkey "$ZW1" "$ZP1" "$WORK/z1.key"
check "... HKDF of its two parts opens it" zopens "$WORK/z1.key"
out=$(A rotate zfs:tank/data 2>&1)
expect_eq "rotate a tpm_and_network ZFS dataset (exit 0)" "$?" "0"
expect_match "... rotated" "$out" "tank/data: rotated"
ZW2=$(zprop wrapped-key)
ZP2=$(zprop tpm-sealed)
[ "$ZP2" != "$ZP1" ] && [ "$ZW2" != "$ZW1" ] && ok "... a new TPM part and a new wrapped key" ||
    not_ok "... a new TPM part and a new wrapped key" "tpm-sealed or wrapped-key did not change"
zrotated "... after rotate" "$ZW1" "$WORK/z1.key"
printf '%s' "$(field key "$(node "$F" n1 release "$GUID" "$ZW2")")" | xxd -r -p >"$WORK/zcoord.key"
if zopens "$WORK/zcoord.key"; then not_ok "... the new coordinator part alone does not open it"; else
    ok "... the new coordinator part alone does not open it"; fi
rm -f "$WORK/zcoord.key" "$WORK/z1.key"
relock
out=$(A unlock zfs:tank/data 2>&1)
expect_eq "... and unlock combines the new parts" "$("$ZFS_STANDIN" get -H -o value keystatus tank/data)" "available"
# Killed at each step: the dataset opens (with the old key or the new one), and a rerun finishes.
for step in begin stage change-key wrapped wrapped-next-dropped retire commit; do
    ZWb=$(zprop wrapped-key)
    zkey "$ZWb" "$(zprop tpm-sealed)" "$WORK/zold.key"
    KEYFLEET_TEST_CRASH_AFTER=$step A rotate zfs:tank/data >"$WORK/crash.out" 2>&1
    expect_eq "ZFS two-part rotation killed after $step (exit 86)" "$?" "86"
    relock
    A unlock zfs:tank/data >"$WORK/crash.out" 2>&1
    expect_eq "... the dataset still opens" "$("$ZFS_STANDIN" get -H -o value keystatus tank/data)" "available"
    out=$(A rotate zfs:tank/data 2>&1)
    expect_eq "... the rerun finishes (exit 0)" "$?" "0"
    zrotated "... killed after $step, rerun" "$ZWb" "$WORK/zold.key"
    relock
    A unlock zfs:tank/data >"$WORK/crash.out" 2>&1
    expect_eq "... and it unlocks after" "$("$ZFS_STANDIN" get -H -o value keystatus tank/data)" "available"
done
rm -f "$WORK/zold.key"
# A staged rotation whose TPM part is gone (tpm-next removed) is refused, changing nothing.
KEYFLEET_TEST_CRASH_AFTER=stage A rotate zfs:tank/data >"$WORK/crash.out" 2>&1
"$ZFS_STANDIN" inherit org.keyfleet:tpm-next tank/data
ZW3=$(zprop wrapped-key)
out=$(A rotate zfs:tank/data 2>&1)
expect_eq "a rotation staged without tpm-next: rotate refuses (exit 1)" "$?" "1"
expect_match "... saying the new key's TPM part is missing" "$out" "its staged rotation has no TPM part for the new key"
expect_eq "... wrapped-key unchanged" "$(zprop wrapped-key)" "$ZW3"
"$ZFS_STANDIN" inherit org.keyfleet:wrapped-next tank/data
check "... once wrapped-next is removed too, rotate starts over" A rotate zfs:tank/data
# An evil maid's staged rotation (review rev26z R1): wrapped-next a copy of wrapped-key, tpm-next a
# part she chose and sealed to this TPM herself. rotate must never change the key to one whose TPM
# part she knows (then the coordinator part alone would open the dataset).
ZW4=$(zprop wrapped-key)
zkey "$ZW4" "$(zprop tpm-sealed)" "$WORK/zold.key"
EVIL=$(printf '%064d' 0 | tr 0 e)
EBLOB=$("$TPM_PROBE" "$TCTI1" seal 7 "$EVIL" 2>/dev/null | grep '^kftpm1:')
expect_match "... (the evil maid seals her own part to this TPM)" "$EBLOB" "^kftpm1:"
"$ZFS_STANDIN" set "org.keyfleet:wrapped-next=$ZW4" "org.keyfleet:tpm-next=kftpmnet1:${EBLOB#kftpm1:}" tank/data
out=$(A rotate zfs:tank/data 2>&1)
expect_eq "... rotate stages a part of its own instead (exit 0)" "$?" "0"
expect_match "... saying so" "$out" "event=rotation_restaged"
c=$(field key "$(node "$F" n1 release "$GUID" "$(zprop wrapped-key)")")
hkdf "$EVIL" "$c" "$GUID" >"$WORK/zevil.key"
if zopens "$WORK/zevil.key"; then not_ok "an evil maid's staged TPM part never becomes the dataset's"; else
    ok "an evil maid's staged TPM part never becomes the dataset's"; fi
rm -f "$WORK/zevil.key"
zrotated "... the evil maid's staged rotation, rotated past" "$ZW4" "$WORK/zold.key"
rm -f "$WORK/zold.key"
relock

# A recovery key escrowed with the coordinators would open the volume without its TPM part.
out=$(A recovery-key add "$WORK/disk.luks" 2>&1)
expect_eq "recovery-key add refuses a tpm_and_network volume (not 0)" "$([ "$?" -ne 0 ] && echo refused)" "refused"
expect_match "... the coordinator says why" "$out" "requires TPM and network: a recovery key escrowed with the coordinators"
expect_match "... audited as denied" "$(ctl "$F" audit --action recovery_escrow --json)" '"decision":"deny"'

# Without the coordinator part: the coordinator down. No fallback by construction.
stop_kfd TERM
out=$(A unlock --all 2>&1)
expect_eq "coordinator down: nothing unlocks (exit 1)" "$?" "1"
case $out in
*"unlocked from the TPM"* | *offline_unlock*) not_ok "... and nothing falls back to the TPM" "$out" ;;
*) ok "... and nothing falls back to the TPM" ;;
esac
expect_eq "... the dataset stays locked" "$("$ZFS_STANDIN" get -H -o value keystatus tank/data)" "unavailable"
out=$(KEYFLEET_CONFIG=$WORK/a.yaml "$TPP" "$PLUGIN" open "$WORK/disk.luks" 2>&1)
expect_match "... the token plugin too fails, as unreachable" "$out" "coordinator unreachable"
start_kfd "$F"
write_config

# Without the coordinator part: the node revoked.
ctl "$F" node revoke n1 "stolen" >/dev/null
out=$(A unlock --all 2>&1)
expect_eq "node revoked: nothing unlocks (exit 1)" "$?" "1"
expect_match "... the refusal is reported" "$out" "permission_denied: node is revoked"

# Without the TPM part: PCR 7 changed.
issue "$F" node n2
agent_config "$WORK/b.yaml" n2 "deadline: 2s" "call_timeout: 500ms" "tpm: {tcti: \"$TCTI1\", pcrs: [7]}"
luks_file "$WORK/disk2.luks" "pw"
out=$(printf 'pw' | "$AGENT" -c "$WORK/b.yaml" enroll "luks:$WORK/disk2.luks" 2>&1)
expect_match "a second node enrolls under the same rule" "$out" "TPM and network both required"
TPM2TOOLS_TCTI="$TCTI1" tpm2_pcrextend 7:sha256=$(printf '%064d' 7) >/dev/null 2>&1
out=$("$AGENT" -c "$WORK/b.yaml" unlock "luks:$WORK/disk2.luks" 2>&1)
expect_eq "after PCR 7 changes, the volume does not unlock (exit 1)" "$?" "1"
expect_match "... the PCR change is named" "$out" "PCR values changed since the key was sealed"

# Without a TPM at enroll: nothing is enrolled.
agent_config "$WORK/c.yaml" n2 "tpm: {tcti: \"swtpm:host=127.0.0.1,port=1\"}"
luks_file "$WORK/disk3.luks" "pw"
out=$(printf 'pw' | "$AGENT" -c "$WORK/c.yaml" enroll "luks:$WORK/disk3.luks" 2>&1)
expect_eq "no TPM at enroll: enroll fails (exit 1)" "$?" "1"
expect_match "... saying the policy needs one" "$out" "policy requires TPM and network for .*disk3.luks: sealing the TPM part"
expect_eq "... and leaves no keyfleet token" "$(luks_json "$WORK/disk3.luks" | grep -c '"keyfleet"')" "0"

# The policy change: both at once is refused, naming the line; the policy in force stays.
cat >"$WORK/both.yaml" <<'YAML'
rules:
  - name: both
    match: {nodes: {names: ["n*"]}}
    effect: allow
    offline_fallback: true
    require: [tpm_and_network]
YAML
out=$(ctl "$F" policy put "$WORK/both.yaml" 2>&1)
expect_match "a rule with offline_fallback and tpm_and_network is refused, naming the line" "$out" \
    "5:23: offline_fallback: true contradicts require: \\[tpm_and_network\\]"
expect_match "... and the policy in force is unchanged" "$(ctl "$F" policy check n2 v 2>&1)" "two-factor"

# The rule tightened after a volume was enrolled without it: the mode is fixed at enroll, so the
# volume still opens with the coordinator's key, and the agent warns.
issue "$F" node n3
put_policy "$F" <<'YAML'
rules:
  - name: plain
    match: {nodes: {names: ["n3"]}}
    effect: allow
  - name: two-factor
    match: {nodes: {names: ["n*"]}}
    effect: allow
    require: [tpm_and_network]
YAML
agent_config "$WORK/d.yaml" n3 "deadline: 2s" "call_timeout: 500ms" "tpm: {tcti: \"$TCTI1\", pcrs: [7]}"
luks_file "$WORK/disk4.luks" "pw"
out=$(printf 'pw' | "$AGENT" -c "$WORK/d.yaml" enroll "luks:$WORK/disk4.luks" 2>&1)
expect_eq "under a rule without the requirement, a volume enrolls with one part" "$(token_get "$WORK/disk4.luks" keyfleet_tpm_sealed)" "-"
node_rule "$F" two-factor tpm_and_network "n*"
out=$("$AGENT" -c "$WORK/d.yaml" unlock "luks:$WORK/disk4.luks" 2>&1)
expect_eq "the rule tightened later: the volume still unlocks (exit 0)" "$?" "0"
expect_match "... and the agent warns that its key is the coordinator's alone" "$out" \
    "event=tpm_and_network_not_enrolled .*enrolled with the coordinator's key alone; the mode is fixed at enroll"

# A wipe of a tpm_and_network dataset removes its TPM part too (tpm-sealed, kftpmnet1:), as the
# docs say of tpm-sealed (review rev26z R2).
issue "$F" node n4
issue "$F" operator ken
agent_config "$WORK/e.yaml" n4 "deadline: 2s" "call_timeout: 500ms" "tpm: {tcti: \"$TCTI1\", pcrs: [7]}"
out=$("$AGENT" -c "$WORK/e.yaml" enroll zfs:tank/w 2>&1)
expect_match "wipe: n4 enrolls a tpm_and_network dataset" \
    "$("$ZFS_STANDIN" get -H -o value org.keyfleet:tpm-sealed tank/w)" "^kftpmnet1:"
out=$(ctl "$F" node wipe n4 --reason "rev26z" 2>&1)
C=$(printf '%s' "$out" | sed -n 's/.*request \([0-9a-f]\{32\}\).*/\1/p')
expect_match "... a second operator approves the wipe" "$(ctl_as "$F" ken approve "$C" 2>&1)" "approved"
"$AGENT" -c "$WORK/e.yaml" watch --count 1 >"$WORK/wipe.out" 2>&1
expect_eq "... the wipe removes wrapped-key and the TPM part" \
    "$("$ZFS_STANDIN" get -H -o value org.keyfleet:wrapped-key tank/w) $("$ZFS_STANDIN" get -H -o value org.keyfleet:tpm-sealed tank/w)" "- -"
check_sanitizers
finish
