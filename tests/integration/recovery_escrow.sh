#!/usr/bin/env bash
# Recovery keys escrowed, revealed under approval and replaced (docs/recovery.md, issue #26
# section 2): enroll --recovery-key gives a LUKS2 file a keyslot whose passphrase is the escrowed
# key's text (checked with cryptsetup --test-passphrase, no keyfleet code) and escrows a ZFS
# dataset's key; another node's volume is refused; keyfleetctl volume recovery-key is held for
# two operators and shown to its proposer only, once; the agent's next heartbeat replaces a
# revealed key and the revealed one no longer opens (LUKS2: its keyslot killed; ZFS: the
# dataset's key rotated, and escrowing it again without a rotation is refused); every step is
# audited.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/recovery_lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
issue "$F" node n2
issue "$F" operator bob
issue "$F" operator carol
mkdir -p "$F/totp"
declare -A SECRET
for o in admin bob; do
    SECRET[$o]=$(head -c 20 /dev/urandom | base32 | tr -d '=')
    echo "${SECRET[$o]}" >"$F/totp/$o.b32"
done
code() { oathtool --totp -b "${SECRET[$1]}"; }
start_kfd "$F"
allow_nodes "$F" n1 n2
D=$WORK/disk.luks
luks_file "$D" "pw"
"$ZFS_STANDIN" __zpool_create tank
agent_config "$WORK/a.yaml" n1 "deadline: 5s" "volumes:" "  - luks: $D" "  - zfs: tank/r"
agent_config "$WORK/b.yaml" n2 "deadline: 5s"
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
B() { "$AGENT" -c "$WORK/b.yaml" "$@"; }
LID=$(cryptsetup luksUUID "$D")
# rec_slot: the keyslot the keyfleet-recovery token names ("" when none).
rec_slot() {
    luks_json "$D" | python3 -c '
import json, sys
t = [t for t in json.load(sys.stdin)["tokens"].values() if t["type"] == "keyfleet-recovery"]
print(t[0]["keyslots"][0] if len(t) == 1 else "")'
}
# reveal VOLUME_ID: proposed by admin, approved by bob, shown to admin; prints the key's text.

# --- escrow
out=$(printf pw | A enroll "luks:$D" --recovery-key 2>&1)
expect_match "enroll --recovery-key: a LUKS2 recovery keyslot, escrowed" "$out" "luks2 .*disk.luks: recovery key added \\(escrowed\\)"
S1=$(rec_slot)
expect_match "... recorded in a keyfleet-recovery token of its own" "$S1" "^[0-9]+$"
expect_match "... the keyfleet token is untouched (its strict parser)" "$(luks_json "$D")" '"type":"keyfleet","keyslots":\["[0-9]+"\]'
out=$(A enroll zfs:tank/r --recovery-key 2>&1)
expect_match "enroll --recovery-key on ZFS: the dataset's key escrowed" "$out" "tank/r: the dataset's keyfleet key is escrowed"
ZID=$("$ZFS_STANDIN" get -H -p -o value guid tank/r)
audit=$(ctl "$F" audit --action recovery_escrow --json)
expect_eq "two escrows audited" "$(printf '%s\n' "$audit" | grep -c '"decision":"allow"')" "2"

out=$(B recovery-key add zfs:tank/r 2>&1)
expect_eq "another node's volume: refused (exit 1)" "$?" "1"
expect_match "... saying why" "$out" "permission_denied: only the node that enrolled the volume may escrow its recovery key"
expect_match "... audited as denied" "$(ctl "$F" audit --action recovery_escrow --json)" '"node":"n2".*"decision":"deny"'

# --- reveal: held for two operators, shown to the proposer only, once
out=$(ctl "$F" volume recovery-key no-such-volume 2>&1)
expect_match "an unknown volume: not_found" "$out" "not_found: no such volume, or no recovery key"
out=$(ctl "$F" volume recovery-key "$LID")
expect_match "the reveal is proposed, needing two operators" "$out" "request [0-9a-f]+, 1 of 2 approvals"
RID=$(printf '%s\n' "$out" | sed -n 's/.*request \([0-9a-f-]*\),.*/\1/p')
out=$(ctl "$F" volume recovery-key "$LID" --request "$RID" 2>&1)
expect_match "not approved yet: refused" "$out" "permission_denied: the reveal is not approved yet"
out=$(ctl "$F" approve "$RID" 2>&1)
expect_match "the proposer counts once" "$out" "already"
out=$(ctl_as "$F" bob volume recovery-key "$LID" --request "$RID" 2>&1)
expect_match "another operator cannot use the proposer's request" "$out" "permission_denied: the reveal was proposed by another operator"
expect_match "bob approves: two of two" "$(ctl_as "$F" bob approve "$RID")" "2 of 2 approvals"
out=$(ctl_as "$F" carol volume recovery-key "$LID" --request "$RID" 2>&1)
expect_match "approved, still not for another operator" "$out" "proposed by another operator"
out=$(ctl "$F" volume recovery-key "$LID" --request "$RID")
T1=$(printf '%s\n' "$out" | sed -n 's/^    \([0-9a-z-]\{77\}\)$/\1/p')
expect_match "approved: the proposer is shown the key, in groups" "$T1" "^([0-9a-hjkmnp-tv-z]{5}-){12}[0-9a-hjkmnp-tv-z]{5}$"
check "... which opens the LUKS2 file at a plain cryptsetup prompt" opens "$D" "$T1"
out=$(ctl "$F" volume recovery-key "$LID" --request "$RID" 2>&1)
expect_match "a request reveals once" "$out" "failed_precondition: this request was already used"
audit=$(ctl "$F" audit --volume "$LID" --json)
expect_match "audited: the request" "$audit" '"action":"recovery_request".*"decision":"pending"'
expect_match "audited: the reveal, by admin" "$audit" '"action":"recovery_reveal","actor":"[^"]*admin[^"]*".*"decision":"allow"'
expect_match "audited: the refusals" "$audit" '"action":"recovery_reveal".*"decision":"deny".*proposed by another operator'

# --- replaced at the next contact; the revealed one refused
out=$(A watch --count 1 2>&1)
expect_match "the next heartbeat replaces the revealed key" "$out" "event=recovery_key_replaced volume=\"$D\""
S2=$(rec_slot)
expect_match "... a new recovery keyslot" "$S2" "^[0-9]+$"
if opens "$D" "$T1"; then not_ok "the revealed key no longer opens the LUKS2 file"; else ok "the revealed key no longer opens the LUKS2 file"; fi
expect_match "... its keyslot is killed" "$(luks_json "$D" | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin)["keyslots"]))')" "^\\[.*\\]$"
[ "$S1" = "$S2" ] || expect_eq "... the old keyslot number is free" "$(luks_json "$D" | python3 -c "import json,sys; print('$S1' in json.load(sys.stdin)['keyslots'])")" "False"
expect_match "the replacement is audited" "$(ctl "$F" audit --action recovery_escrow --json)" 'it replaces the escrowed one once the node confirms'
expect_match "... and its confirmation (the revealed keyslot killed)" "$(ctl "$F" audit --action recovery_replaced --json)" '"volume":"'"$LID"'".*"decision":"allow".*the node killed the revealed recovery key'
out=$(A watch --count 1 2>&1)
case $out in *recovery_key_replaced*) not_ok "a replaced key is not replaced again" ;; *) ok "a replaced key is not replaced again" ;; esac
T2=$(reveal "$LID")
expect_match "a second reveal shows the new key" "$T2" "^[0-9a-z-]{77}$"
[ "$T2" != "$T1" ] && ok "... not the revealed one" || not_ok "... not the revealed one"
check "... and it opens the file" opens "$D" "$T2"

# --- interrupted between the new keyslot's token and the old keyslot's kill: resumed by the next
# run, which kills the old keyslot only while its salt is the one recorded.
SB=$(rec_slot)
out=$(KEYFLEET_TEST_CRASH_AFTER=recovery_token A recovery-key add "luks:$D" 2>&1)
expect_eq "a replacement stopped after the new token (exit 86)" "$?" "86"
expect_match "... the token names the keyslot it replaces" "$(luks_json "$D")" "\"keyfleet_replaces\":\"$SB\""
check "... which still opens with the last revealed key" opens "$D" "$T2"
out=$(A recovery-key add "luks:$D" 2>&1)
expect_match "the next run finishes it" "$out" "recovery key replaced"
if opens "$D" "$T2"; then not_ok "... the old recovery key is refused"; else ok "... the old recovery key is refused"; fi
SC=$(rec_slot)
out=$(KEYFLEET_TEST_CRASH_AFTER=recovery_token A recovery-key add "luks:$D" 2>&1)
# An operator frees the old keyslot's number and puts a passphrase there before the run resumes.
printf 'pw' | cryptsetup luksKillSlot --batch-mode --key-file=- "$D" "$SC"
printf 'pw' >"$WORK/pw.txt"
printf 'op-pass' | cryptsetup luksAddKey --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-slot "$SC" \
    --key-file="$WORK/pw.txt" "$D" /dev/stdin
rm -f "$WORK/pw.txt"
out=$(A recovery-key add "luks:$D" 2>&1)
expect_match "resumed again" "$out" "recovery key"
check "... the operator's passphrase in the old number survives (its salt differs)" opens "$D" "op-pass"

# --- or at the next unlock (LUKS2), with the key just released
T3=$(reveal "$LID")
check "a third reveal opens the file" opens "$D" "$T3"
out=$(A unlock "luks:$D" 2>&1)
expect_match "the next unlock replaces the revealed key" "$out" "event=recovery_key_replaced volume=\"$D\""
if opens "$D" "$T3"; then not_ok "... which no longer opens"; else ok "... which no longer opens"; fi

# --- ZFS: the revealed key is the dataset's own, so replacing it rotates the dataset's key
W0=$("$ZFS_STANDIN" get -H -o value org.keyfleet:wrapped-key tank/r)
KZ=$(field key "$(node "$F" n1 release "$ZID" "$W0")")
TZ=$(reveal "$ZID")
expect_eq "ZFS: the revealed key is the dataset's keyfleet key" "$TZ" "$(recovery_text "$KZ")"
out=$(A recovery-key add zfs:tank/r 2>&1)
expect_match "escrowing a revealed dataset key again without rotating: refused" "$out" "rotate it first"
A unlock zfs:tank/r >/dev/null 2>&1
out=$(A watch --count 1 2>&1)
expect_match "the next heartbeat rotates and escrows the dataset's key" "$out" "event=recovery_key_replaced volume=\"tank/r\""
[ "$("$ZFS_STANDIN" get -H -o value org.keyfleet:wrapped-key tank/r)" != "$W0" ] && ok "... the dataset's key changed" || not_ok "... the dataset's key changed"
"$ZFS_STANDIN" unmount tank/r >/dev/null 2>&1; "$ZFS_STANDIN" unload-key tank/r
out=$(printf '%s' "$TZ" | A recover zfs:tank/r 2>&1)
expect_match "the revealed ZFS key no longer opens the dataset" "$out" "does not open it"
TZ2=$(reveal "$ZID")
out=$(printf '%s' "$TZ2" | A recover zfs:tank/r 2>&1)
expect_match "the new one does" "$out" "zfs tank/r: unlocked with the recovery key"
# --- TOTP where admin.totp says: the proposer's code, each approver's, none reused
stop_kfd TERM
printf 'approvals:\n  totp_dir: totp\n' >>"$F/keyfleetd.yaml"
start_kfd "$F"
put_policy "$F" <<'YAML'
admin: {approvers: 1, totp: true}
rules:
  - name: all
    match: {nodes: {names: ["n1", "n2"]}}
    effect: allow
YAML
out=$(ctl "$F" volume recovery-key "$LID" 2>&1)
expect_match "admin.totp: a proposal without a code is refused" "$out" "invalid_argument"
C=$(code admin)
W=$(( (10#$C + 1) % 1000000 )); W=$(printf '%06d' "$W")
out=$(printf '%s\n' "$W" | ctl "$F" volume recovery-key "$LID" --totp - 2>&1)
expect_match "... with a wrong code too" "$out" "permission_denied"
out=$(printf '%s\n' "$C" | ctl "$F" volume recovery-key "$LID" --totp -)
expect_match "... with the right one it is held, still for two operators" "$out" "1 of 2 approvals"
R4=$(printf '%s\n' "$out" | sed -n 's/.*request \([0-9a-f-]*\),.*/\1/p')
out=$(printf '%s\n' "$C" | ctl "$F" volume recovery-key "$LID" --totp - 2>&1)
expect_match "the same code again is refused (replay)" "$out" "permission_denied"
out=$(ctl_as "$F" bob approve "$R4" 2>&1)
expect_match "an approval without a code is refused" "$out" "invalid_argument"
expect_match "bob approves with his code" "$(ctl_as "$F" bob approve "$R4" --totp-fd 3 3< <(code bob))" "2 of 2 approvals"
out=$(oathtool --totp -b "${SECRET[admin]}" -N "now + 30 seconds" |
    ctl "$F" volume recovery-key "$LID" --request "$R4" --totp -)
expect_match "then the proposer is shown the key, with a fresh code of his" "$out" "recovery key of $LID"
expect_match "the refused codes are audited" "$(ctl "$F" audit --action approve --json)" '"decision":"deny"'
check_sanitizers
finish
