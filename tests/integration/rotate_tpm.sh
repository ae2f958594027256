#!/usr/bin/env bash
# Rotation and the TPM fallback (#26 review F3): a volume with a TPM-sealed copy gets a copy of
# the new key where policy still allows one, stored with the new key (LUKS2: in the token of the
# new key from the moment it is staged; ZFS: set with wrapped-key in one `zfs set`), so offline
# unlock keeps working after a rotation, also one resumed after the agent was killed mid-way.
# Policy that no longer allows the copy: it is dropped. A volume that had none gets none, unless
# `rotate --tpm` asks for one.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
start_kfd "$F"
policy() {
    put_policy "$F" <<YAML
rules:
  - name: servers
    match: {nodes: {names: ["n*"]}}
    effect: allow
    offline_fallback: $1
YAML
}
policy true
start_swtpm "$WORK/tpm"
D=$WORK/disk.luks
luks_file "$D" "pw"
"$ZFS_STANDIN" __zpool_create tank
# Written again after each restart: keyfleetd listens on a new port each time.
write_config() {
    agent_config "$WORK/a.yaml" n1 "deadline: 2s" "call_timeout: 500ms" "tpm: {tcti: \"$TCTI\", pcrs: [7]}"
}
write_config
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }

# The TPM copies: every keyfleet token's keyfleet_tpm_sealed ("-" for none), rotating ones marked.
luks_tpm() {
    luks_json "$D" | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(" ".join(("R:" if t.get("keyfleet_rotating") else "") + t.get("keyfleet_tpm_sealed", "-")
               for t in m["tokens"].values() if t["type"] == "keyfleet"))'
}
zfs_prop() { "$ZFS_STANDIN" get -H -o value "org.keyfleet:$1" tank/r; }
zfs_lock() { "$ZFS_STANDIN" unmount tank/r >/dev/null 2>&1; "$ZFS_STANDIN" unload-key tank/r >/dev/null 2>&1; }
# offline DESC: with the coordinator stopped, both volumes open from their TPM copies (the
# LUKS2 check opens the keyfleet keyslot the token names; ZFS loads the key).
offline() {
    zfs_lock
    stop_kfd TERM
    local out
    out=$(A unlock "luks:$D" zfs:tank/r 2>&1)
    expect_match "$1" "$out" "disk.luks: unlocked from the TPM .*tank/r: unlocked from the TPM"
    expect_eq "... the dataset's key is loaded" "$("$ZFS_STANDIN" get -H -o value keystatus tank/r)" "available"
    start_kfd "$F"
    write_config
}

out=$(printf 'pw' | A enroll "luks:$D" 2>&1)
expect_match "enroll the LUKS2 file with a TPM copy" "$out" "TPM-sealed copy stored"
out=$(A enroll zfs:tank/r 2>&1)
expect_match "enroll the ZFS dataset with a TPM copy" "$out" "TPM-sealed copy stored"
L0=$(luks_tpm)
Z0=$(zfs_prop tpm-sealed)

out=$(A rotate "luks:$D" zfs:tank/r 2>&1)
expect_eq "rotate both: exit 0" "$?" "0"
L1=$(luks_tpm)
Z1=$(zfs_prop tpm-sealed)
expect_match "the LUKS2 token carries a TPM copy after the rotation" "$L1" "^kftpm1:[^ ]+$"
check "... a new one (the old sealed the retired key)" test "$L1" != "$L0"
expect_match "the ZFS dataset carries a TPM copy after the rotation" "$Z1" "^kftpm1:"
check "... a new one" test "$Z1" != "$Z0"
offline "after a rotation, offline unlock opens both with the new keys"
expect_eq "the offline unlocks are reported (next contact)" "$(A status >/dev/null 2>&1; ctl "$F" audit --action offline_unlock --json | grep -c offline_unlock)" "2"

# Killed after staging (LUKS2: the new token, with its TPM copy, beside the old one): the old
# copy still opens the volume offline; the resumed run keeps the staged copy.
KEYFLEET_TEST_CRASH_AFTER=stage A rotate "luks:$D" >"$WORK/crash.out" 2>&1
expect_eq "LUKS2 killed after stage (exit 86)" "$?" "86"
expect_match "... the staged token carries the new key's TPM copy beside the old one" "$(luks_tpm)" \
    "^(kftpm1:[^ ]+ R:kftpm1:[^ ]+|R:kftpm1:[^ ]+ kftpm1:[^ ]+)$"
staged=$(luks_tpm | tr ' ' '\n' | sed -n 's/^R://p')
zfs_lock
stop_kfd TERM
expect_match "... offline, the old key's copy still opens it" "$(A unlock "luks:$D" 2>&1)" "disk.luks: unlocked from the TPM"
start_kfd "$F"
write_config
check "... the resumed run completes" A rotate "luks:$D"
expect_eq "... and the token carries the copy staged with the new key" "$(luks_tpm)" "$staged"
A unlock zfs:tank/r >/dev/null 2>&1
# Killed after the old token went (the new key alone, still marked rotating).
KEYFLEET_TEST_CRASH_AFTER=old-token A rotate "luks:$D" >"$WORK/crash.out" 2>&1
expect_eq "LUKS2 killed after the old token went (exit 86)" "$?" "86"
expect_match "... the one token left, marked rotating, carries a TPM copy" "$(luks_tpm)" "^R:kftpm1:[^ ]+$"
check "... the resumed run completes" A rotate "luks:$D"
# ZFS killed after staging (the new TPM copy was only in memory) and after change-key (the
# dataset is on the new key, wrapped-key and tpm-sealed still name the old one): the resumed run
# asks BEGIN again, seals the new key and stores it with wrapped-key.
for step in stage change-key; do
    before=$(zfs_prop tpm-sealed)
    KEYFLEET_TEST_CRASH_AFTER=$step A rotate zfs:tank/r >"$WORK/crash.out" 2>&1
    expect_eq "ZFS killed after $step (exit 86)" "$?" "86"
    expect_eq "... tpm-sealed not yet changed" "$(zfs_prop tpm-sealed)" "$before"
    check "... the resumed run completes" A rotate zfs:tank/r
    check "... tpm-sealed now holds another copy" test "$(zfs_prop tpm-sealed)" != "$before"
done
offline "after resumed rotations, offline unlock opens both"

# Policy no longer allows a TPM copy: the rotation drops it and says so.
policy false
out=$(A rotate "luks:$D" zfs:tank/r 2>&1)
expect_eq "rotate under a policy without offline_fallback: exit 0" "$?" "0"
expect_match "... the TPM copies are dropped, logged" "$out" "event=tpm_copy_dropped .*disk.luks.*event=tpm_copy_dropped .*tank/r"
expect_eq "... the LUKS2 token has none" "$(luks_tpm)" "-"
expect_eq "... the ZFS dataset has none" "$(zfs_prop tpm-sealed)" "-"
# A volume that has no copy gets none, even where policy allows one.
policy true
check "rotate again with offline_fallback allowed" A rotate "luks:$D" zfs:tank/r
expect_eq "... a volume without a TPM copy gets none" "$(luks_tpm) $(zfs_prop tpm-sealed)" "- -"
zfs_lock
stop_kfd TERM
out=$(A unlock "luks:$D" 2>&1)
expect_eq "offline, a volume without a copy does not open (exit 1)" "$?" "1"
if printf '%s' "$out" | grep -q "unlocked from the TPM"; then not_ok "... not from the TPM" "$out"; else ok "... not from the TPM"; fi
start_kfd "$F"
write_config
A unlock zfs:tank/r >/dev/null 2>&1
# rotate --tpm gives such a volume a copy again, where policy allows it (and not where it does not).
policy false
out=$(A rotate --tpm "luks:$D" 2>&1)
expect_match "rotate --tpm under a rule without offline_fallback: rotated, no copy, said so" "$out" \
    "event=tpm_copy_not_allowed .*disk.luks.*disk.luks: rotated"
expect_eq "... the LUKS2 token has none" "$(luks_tpm)" "-"
policy true
check "rotate --tpm where the rule allows a copy" A rotate --tpm "luks:$D" zfs:tank/r
expect_match "... the LUKS2 token carries one" "$(luks_tpm)" "^kftpm1:[^ ]+$"
expect_match "... and the ZFS dataset" "$(zfs_prop tpm-sealed)" "^kftpm1:"
offline "after rotate --tpm, offline unlock opens both again"
out=$(A rotate --tpm 2>&1)
expect_eq "rotate --tpm without a volume is a usage error (exit 2)" "$?" "2"
check_sanitizers
finish
