#!/usr/bin/env bash
# Volume key rotation (keyfleet-agent rotate, NodeService.RotateKey) on a LUKS2 file and a ZFS
# stand-in dataset: the new key opens, the old wrapped key is refused and audited; the agent
# killed after every step (KEYFLEET_TEST_CRASH_AFTER, test builds only) leaves a volume that
# opens, and a second run completes the rotation. Refusals: another node's rotation, a COMMIT
# with a key that is not the rotation in progress, a policy that needs approval.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
for n in node-a node-b; do issue "$F" node "$n"; done
start_kfd "$F"
allow_nodes "$F" node-a node-b

D=$WORK/disk.luks
luks_file "$D" "old secret"
"$ZFS_STANDIN" __zpool_create tank
agent_config "$WORK/a.yaml" node-a "volumes:" "  - luks: $D"
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
check "enroll the LUKS2 file" sh -c "printf 'old secret' | '$AGENT' -c '$WORK/a.yaml' enroll luks:$D >/dev/null"
check "enroll the ZFS dataset" A enroll zfs:tank/r
UUID=$(cryptsetup luksUUID "$D")
GUID=$("$ZFS_STANDIN" get -H -p -o value guid tank/r)

# LUKS2 metadata: "keyslots tokens rotating-marks wrapped-key" of the volume.
luks_state() {
    luks_json "$D" | python3 -c '
import json, sys
m = json.load(sys.stdin)
toks = [t for t in m["tokens"].values() if t["type"] == "keyfleet"]
print(len(m["keyslots"]), len(toks), sum(1 for t in toks if t.get("keyfleet_rotating")),
      " ".join(t["keyfleet_wrapped_key"] for t in toks))'
}
luks_wrapped() { luks_state | awk '{print $4}'; }
zfs_prop() { "$ZFS_STANDIN" get -H -o value "org.keyfleet:$1" tank/r; }
# zfs_opens DESC: unload the dataset's key, then the agent must load it again.
zfs_opens() {
    "$ZFS_STANDIN" unmount tank/r
    "$ZFS_STANDIN" unload-key tank/r
    expect_match "$1" "$(A unlock zfs:tank/r 2>&1)" "zfs tank/r: unlocked"
}
luks_opens() { expect_match "$1" "$(A unlock "luks:$D" 2>&1)" "disk.luks: unlocked \(key verified"; }

# The first release records the key check value of a volume; rotating needs it, and the agent
# releases the key first anyway.
W1=$(luks_wrapped)
Z1=$(zfs_prop wrapped-key)
keys0=$(metric "$F" keyfleet_sealed_keys_total)
out=$(A rotate "luks:$D" zfs:tank/r 2>&1)
expect_eq "rotate both volumes: exit 0" "$?" "0"
expect_match "... both rotated" "$out" "luks2 .*disk.luks: rotated.*zfs tank/r: rotated"
W2=$(luks_wrapped)
Z2=$(zfs_prop wrapped-key)
check "the LUKS2 token holds a new wrapped key" test "$W2" != "$W1"
expect_eq "... one keyfleet keyslot beside the passphrase, one token, no rotating mark" "$(luks_state | cut -d' ' -f1-3)" "2 1 0"
check "the ZFS property holds a new wrapped key" test "$Z2" != "$Z1"
expect_eq "... and wrapped-next is gone" "$(zfs_prop wrapped-next)" "-"
expect_eq "the passphrase still opens the LUKS2 file" "$(printf 'old secret' | cryptsetup open --test-passphrase --key-file=- "$D" && echo yes)" "yes"
luks_opens "the new LUKS2 key opens it (the agent's unlock path)"
zfs_opens "the new ZFS key loads"
k1=$(node "$F" node-a release "$UUID" "$W2")
K2HEX=$(field key "$k1")
expect_eq "the released new key opens the LUKS2 file (cryptsetup, key on stdin)" \
    "$(printf '%s' "$K2HEX" | xxd -r -p | cryptsetup open --test-passphrase --key-file=- "$D" && echo yes)" "yes"

keys1=$(metric "$F" keyfleet_sealed_keys_total)
out=$(node "$F" node-a release "$UUID" "$W1")
expect_match "the old LUKS2 wrapped key is refused" "$out" "code=failed_precondition message=\"this key was retired by a rotation\""
out=$(node "$F" node-a release "$GUID" "$Z1")
expect_match "the old ZFS wrapped key is refused" "$out" "code=failed_precondition message=\"this key was retired by a rotation\""
expect_eq "... and no key was sealed for either (refused before sealing)" "$(metric "$F" keyfleet_sealed_keys_total)" "$keys1"
audit=$(ctl "$F" audit --volume "$UUID" --json)
expect_match "audit: rotate_begin, then rotate_commit" "$audit" "\"action\":\"rotate_begin\",\"actor\":\"node-a\".*\"action\":\"rotate_commit\",\"actor\":\"node-a\""
expect_match "audit: the retired key's refusal" "$audit" "\"action\":\"release\",\"actor\":\"node-a\".*\"decision\":\"deny\".*this key was retired by a rotation"
check "... counted keys were sealed for the rotation" test "$keys1" -gt "$keys0"

vl=$(ctl "$F" volume list)
expect_match "volume list: the ZFS dataset, its key age, no rotation in progress" "$vl" \
    "^VOLUME +KIND +NODE +KEY MADE +KEY AGE +MAX AGE +OVERDUE +ROTATION .*$GUID +zfs +node-a +[0-9T:-]+Z +0d +-( |$)"
expect_match "... and the LUKS2 file" "$vl" "$UUID +luks2 +node-a +[0-9T:-]+Z +0d +-( |$)"

# Refusals.
keys2=$(metric "$F" keyfleet_sealed_keys_total)
out=$(node "$F" node-b rotate-begin "$UUID" "rotate-by-node-b-0001")
expect_match "another node's BEGIN is refused" "$out" "code=permission_denied message=\"only the node that enrolled the volume may rotate its key\""
expect_eq "... before any key is made or sealed" "$(metric "$F" keyfleet_sealed_keys_total)" "$keys2"
out=$(node "$F" node-b rotate-commit "$UUID" "$W2")
expect_match "another node's COMMIT is refused" "$out" "code=permission_denied"
out=$(node "$F" node-a rotate-commit "$UUID" "$W1")
expect_match "a COMMIT with the retired key is refused" "$out" "code=failed_precondition message=\"the presented key is not this volume's rotation in progress\""
out=$(node "$F" node-a rotate-commit "$UUID" "$Z2")
expect_match "a COMMIT with another volume's key is refused" "$out" "code=failed_precondition message=\"the wrapped key does not belong to this volume\""
out=$(node "$F" node-a rotate-commit "$UUID" "$W2")
expect_eq "a repeated COMMIT of the current key is fine" "$(field code "$out") $(field wrapped "$out")" "ok $W2"
out=$(node "$F" node-a rotate-begin "$UUID" "short")
expect_match "BEGIN without a valid request id: invalid_argument" "$out" "code=invalid_argument"
audit=$(ctl "$F" audit --volume "$UUID" --json)
expect_match "audit: the refused rotations" "$audit" "\"action\":\"rotate_begin\",\"actor\":\"node-b\".*\"decision\":\"deny\".*\"action\":\"rotate_commit\",\"actor\":\"node-a\".*\"decision\":\"deny\""
put_policy "$F" <<'YAML'
rules:
  - name: cluster
    match: {nodes: {names: ["node-a", "node-b"]}}
    effect: allow
    approval: {approvers: 1}
YAML
out=$(node "$F" node-a rotate-begin "$UUID" "rotate-under-approval-1")
expect_match "a policy that needs approval: BEGIN is refused" "$out" "code=failed_precondition message=\"policy needs approval"
out=$(node "$F" node-a rotate-commit "$UUID" "$W2")
expect_match "... and so is COMMIT (review F4)" "$out" "code=failed_precondition message=\"policy needs approval"
put_policy "$F" <<'YAML'
rules:
  - name: cluster
    match: {nodes: {names: ["node-a", "node-b"]}}
    effect: allow
    rate_limit: {per_minute: 1, burst: 1}
YAML
out=$(node "$F" node-a rotate-commit "$UUID" "$W2")
expect_eq "under a rate limit of one a minute: the first COMMIT passes" "$(field code "$out")" "ok"
out=$(node "$F" node-a rotate-commit "$UUID" "$W2")
expect_match "... the second is refused (review F4)" "$out" "code=resource_exhausted"
allow_nodes "$F" node-b
out=$(node "$F" node-a rotate-commit "$UUID" "$W2")
expect_match "a policy that no longer allows the node: COMMIT is refused (review F4)" "$out" "code=permission_denied"
allow_nodes "$F" node-a node-b

# Killed after every step: the volume still opens (old key or new), and a second run completes.
# ONLY=STEP and ONLY_ZFS=STEP run one round each (a quick run while working on the other checks).
# The sanitized build (several times slower) takes the steps between which a crash leaves two
# keys on the volume; the release build takes them all.
LUKS_STEPS="release begin keyslot stage old-token retire commit"
ZFS_STEPS="release begin stage change-key wrapped retire commit"
if [ "${KF_SANITIZED:-0}" = 1 ]; then
    LUKS_STEPS="keyslot old-token"
    ZFS_STEPS="change-key wrapped"
fi
for step in ${ONLY:-$LUKS_STEPS}; do
    before=$(luks_wrapped)
    KEYFLEET_TEST_CRASH_AFTER=$step A rotate "luks:$D" >"$WORK/crash.out" 2>&1
    expect_eq "LUKS2 killed after $step (exit 86)" "$?" "86"
    if [ "$step" = stage ]; then
        expect_match "volume list: the rotation in progress" "$(ctl "$F" volume list --json)" \
            "\"volume\":\"$UUID\",\"kind\":\"luks2\",\"node\":\"node-a\",\"key_created_at\":[0-9]+,\"key_age_days\":0,\"rotation_in_progress\":true"
    fi
    luks_opens "... the volume opens"
    out=$(A rotate "luks:$D" 2>&1)
    expect_match "... a second run completes" "$? $out" "^0 .*disk.luks: rot"
    after=$(luks_wrapped)
    expect_eq "... one keyfleet keyslot and one unmarked token left" "$(luks_state | cut -d' ' -f1-3)" "2 1 0"
    check "... with a new key" test "$after" != "$before"
    luks_opens "... which opens"
    expect_match "... the key before this round is refused" "$(node "$F" node-a release "$UUID" "$before")" "code=failed_precondition"
done

# Review F1: a run cut off after the old keyslot was killed, an operator's passphrase added in its
# number, then the run resumed: the passphrase must survive. After "retire" the token no longer
# names the old keyslot; after "old-slot" it still does, with the old keyslot's KDF salt, which
# the operator's keyslot does not have.
printf 'operator two' >"$WORK/pass2"
luks_token() { luks_json "$D" | python3 -c '
import json, sys
t = next(t for t in json.load(sys.stdin)["tokens"].values() if t["type"] == "keyfleet")
print(t["keyslots"][0], t.get("keyfleet_replaces", "-"), "salt" if "keyfleet_replaces_salt" in t else "-")'; }
for step in retire old-slot; do
    old_slot=$(luks_token | cut -d' ' -f1)
    KEYFLEET_TEST_CRASH_AFTER=$step A rotate "luks:$D" >"$WORK/crash.out" 2>&1
    expect_eq "LUKS2 killed after $step (exit 86)" "$?" "86"
    if [ "$step" = retire ]; then
        expect_eq "... the token no longer names the killed keyslot" "$(luks_token | cut -d' ' -f2-)" "- -"
    else
        expect_eq "... the token names the killed keyslot $old_slot and its salt" "$(luks_token | cut -d' ' -f2-)" "$old_slot salt"
    fi
    out=$(printf 'old secret' | cryptsetup luksAddKey --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file=- "$D" "$WORK/pass2" && cryptsetup open --test-passphrase -v --key-file "$WORK/pass2" "$D" 2>&1)
    expect_match "... an operator's passphrase takes keyslot $old_slot" "$out" "Key slot $old_slot unlocked"
    out=$(A rotate "luks:$D" 2>&1)
    expect_match "... a second run completes" "$? $out" "^0 .*disk.luks: rot"
    expect_eq "... the operator's passphrase still opens the volume" \
        "$(cryptsetup open --test-passphrase --key-file "$WORK/pass2" "$D" && echo yes)" "yes"
    luks_opens "... and so does the new key"
    cryptsetup luksRemoveKey --batch-mode --key-file "$WORK/pass2" "$D"
    expect_eq "... one keyfleet keyslot and one unmarked token left" "$(luks_state | cut -d' ' -f1-3)" "2 1 0"
done

for step in ${ONLY_ZFS:-$ZFS_STEPS}; do
    before=$(zfs_prop wrapped-key)
    KEYFLEET_TEST_CRASH_AFTER=$step A rotate zfs:tank/r >"$WORK/crash.out" 2>&1
    expect_eq "ZFS killed after $step (exit 86)" "$?" "86"
    zfs_opens "... the dataset opens"
    out=$(A rotate zfs:tank/r 2>&1)
    expect_match "... a second run completes" "$? $out" "^0 .*tank/r: rot"
    after=$(zfs_prop wrapped-key)
    expect_eq "... and leaves no wrapped-next" "$(zfs_prop wrapped-next)" "-"
    check "... with a new key" test "$after" != "$before"
    zfs_opens "... which opens"
    expect_match "... the key before this round is refused" "$(node "$F" node-a release "$GUID" "$before")" "code=failed_precondition"
done

# Review F2: overlapping runs. A run paused after staging holds the volume's lock: a second run
# is refused. A run under another config (another state directory, so no shared lock) finishes
# that rotation and makes another; the paused run, resumed, finds the dataset on neither its old
# key nor its new one and changes nothing (it would have put the dataset on a retired key).
PF=$WORK/pause
KEYFLEET_TEST_PAUSE_AFTER=stage KEYFLEET_TEST_PAUSE_FILE=$PF A rotate zfs:tank/r >"$WORK/paused.out" 2>&1 &
paused=$!
for _ in $(seq 1 150); do [ -e "$PF" ] && break; sleep 0.2; done
check "a rotate run is paused after staging" test -e "$PF"
out=$(A rotate zfs:tank/r 2>&1)
expect_match "... a second run on the volume is refused" "$? $out" "^[1-9].*another keyfleet-agent rotate is working on it"
mkdir -p "$WORK/other"
sed "s|^state_file: .*|state_file: $WORK/other/state.json|" "$WORK/a.yaml" >"$WORK/other.yaml"
out=$("$AGENT" -c "$WORK/other.yaml" rotate zfs:tank/r 2>&1)
expect_match "... a run with another state directory finishes the rotation" "$? $out" "^0 .*tank/r: rotation resumed"
out=$("$AGENT" -c "$WORK/other.yaml" rotate zfs:tank/r 2>&1)
expect_match "... and makes another" "$? $out" "^0 .*tank/r: rotated"
latest=$(zfs_prop wrapped-key)
rm -f "$PF"
wait "$paused"
expect_match "the paused run, resumed, changes nothing" "$? $(cat "$WORK/paused.out")" \
    "^[1-9].*neither the key this rotation replaces nor its new key"
expect_eq "... wrapped-key is the latest rotation's" "$(zfs_prop wrapped-key)" "$latest"
zfs_opens "... and the dataset opens with it"

# Review F6: user properties are inherited in ZFS. A child encryption root under tank/r reads
# only its own org.keyfleet properties: it enrolls (its parent's volume-id is not its own), and
# a wrapped-next on the parent is no rotation of the child's.
head -c 32 /dev/urandom | "$ZFS_STANDIN" create -o encryption=on -o keyformat=raw -o keylocation=prompt tank/r/child
expect_eq "the stand-in shows the parent's wrapped-key on the child, inherited (as zfs does)" \
    "$("$ZFS_STANDIN" get -H -o value,source org.keyfleet:wrapped-key tank/r/child)" "$(zfs_prop wrapped-key)	inherited from tank/r"
out=$(A enroll zfs:tank/r/child 2>&1)
expect_match "a child encryption root of an enrolled dataset enrolls" "$? $out" "^0 enrolled zfs tank/r/child"
"$ZFS_STANDIN" set "org.keyfleet:wrapped-next=$(zfs_prop wrapped-key)" tank/r
out=$(A rotate zfs:tank/r/child 2>&1)
expect_match "... and rotates afresh, with its parent's wrapped-next not taken as its own" "$? $out" "^0 .*tank/r/child: rotated$"
"$ZFS_STANDIN" inherit org.keyfleet:wrapped-next tank/r

# The strict token parser: the rotating mark is accepted only as true.
TID=$(luks_json "$D" | python3 -c 'import json, sys; print(next(k for k, t in json.load(sys.stdin)["tokens"].items() if t["type"] == "keyfleet"))')
cryptsetup token export --token-id "$TID" "$D" | sed 's/}$/,"keyfleet_rotating":"yes"}/' >"$WORK/t.json"
cryptsetup token import --token-id "$TID" --token-replace --json-file "$WORK/t.json" "$D"
expect_match "a rotating mark that is not true is refused" "$(A unlock "luks:$D" 2>&1)" "keyfleet_rotating must be true"
cryptsetup token export --token-id "$TID" "$D" | sed 's/,"keyfleet_rotating":"yes"}$/,"keyfleet_replaces":"0"}/' >"$WORK/t.json"
cryptsetup token import --token-id "$TID" --token-replace --json-file "$WORK/t.json" "$D"
expect_match "keyfleet_replaces without the rotating mark is refused" "$(A unlock "luks:$D" 2>&1)" "keyfleet_replaces must name another keyslot"
cryptsetup token export --token-id "$TID" "$D" | sed 's/,"keyfleet_replaces":"0"}$/,"keyfleet_rotated":true}/' >"$WORK/t.json"
cryptsetup token import --token-id "$TID" --token-replace --json-file "$WORK/t.json" "$D"
expect_match "... and unknown fields still are" "$(A unlock "luks:$D" 2>&1)" "unknown field keyfleet_rotated"
check_sanitizers
finish
