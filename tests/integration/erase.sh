#!/usr/bin/env bash
# Remote crypto-erase (docs/operations.md, "Remote crypto-erase"): keyfleetctl node wipe, held for
# two operators under admin.approvers; once approved the volumes' keys are refused, and at its next
# heartbeat the agent (keyfleet-agent watch) destroys keyfleet's LUKS2 keyslot and token and the
# ZFS stand-in's wrapped-key and TPM properties, unloads the ZFS key, and reports back (audited
# volume_erased). The operator's passphrase still opens the LUKS2 file. Refusals: not approved, one
# approver only, an unknown volume, another node's volume, a node confirming another node's erase,
# a release after the erase; an erase never confirmed shows as pending. tests/mutants/ names the
# mutants this file must kill.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
for n in n1 n2 n3; do issue "$F" node "$n"; done
issue "$F" operator ken
start_kfd "$F"
put_policy "$F" <<'YAML'
admin: {approvers: 2}
groups:
  scrap: {nodes: ["n3"], wipe: {erase_all_keyslots: true}}
rules:
  - name: open
    match: {nodes: {names: ["n*"]}}
    effect: allow
YAML

D=$WORK/disk.luks
luks_file "$D" "op secret"
"$ZFS_STANDIN" __zpool_create tank
agent_config "$WORK/a.yaml" n1 "volumes:" "  - luks: $D"
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
check "n1 enrolls the LUKS2 file" sh -c "printf 'op secret' | '$AGENT' -c '$WORK/a.yaml' enroll luks:$D >/dev/null"
check "n1 enrolls the ZFS dataset" A enroll zfs:tank/e
# A TPM copy stand-in: the property is keyfleet's, whatever it holds.
"$ZFS_STANDIN" set org.keyfleet:tpm-sealed=kftpm1:standin tank/e
UUID=$(cryptsetup luksUUID "$D")
GUID=$("$ZFS_STANDIN" get -H -p -o value guid tank/e)
WRAP_L=$(luks_json "$D" | python3 -c 'import json,sys; m=json.load(sys.stdin); print([t for t in m["tokens"].values() if t["type"]=="keyfleet"][0]["keyfleet_wrapped_key"])')
WRAP_2=$(field wrapped "$(node "$F" n2 enroll vol-2 data-2)")
D3=$WORK/scrap.luks
luks_file "$D3" "op secret"
agent_config "$WORK/c.yaml" n3 "volumes:" "  - luks: $D3"
check "n3 enrolls a LUKS2 file" sh -c "printf 'op secret' | '$AGENT' -c '$WORK/c.yaml' enroll luks:$D3 >/dev/null"
UUID3=$(cryptsetup luksUUID "$D3")
zprop() { "$ZFS_STANDIN" get -H -o value "org.keyfleet:$1" tank/e; }
# "keyslots keyfleet-tokens" of the LUKS2 file.
luks_state() {
    luks_json "$D" | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(len(m["keyslots"]), sum(1 for t in m["tokens"].values() if t["type"] == "keyfleet"))'
}
expect_eq "before: the passphrase keyslot and keyfleet's, one keyfleet token" "$(luks_state)" "2 1"
expect_match "control: the LUKS2 key is released before the wipe" "$(node "$F" n1 release "$UUID" "$WRAP_L")" \
    "^code=ok status=released"
expect_match "control: the ZFS key loads" "$(A unlock zfs:tank/e 2>&1)" "zfs tank/e: (unlocked|already unlocked)"
expect_eq "... its key is loaded" "$("$ZFS_STANDIN" get -H -o value keystatus tank/e)" "available"

# --- refusals before anything is held
out=$(ctl "$F" node wipe n1 --volumes nosuch 2>&1) && rc=0 || rc=$?
expect_match "an unknown volume: not_found" "$out rc=$rc" "not_found: volume nosuch is not enrolled rc=1"
out=$(ctl "$F" node wipe n1 --volumes vol-2 2>&1) && rc=0 || rc=$?
expect_match "another node's volume: failed_precondition" "$out rc=$rc" \
    "failed_precondition: volume vol-2 was enrolled by node n2, not n1 rc=1"
out=$(ctl "$F" node wipe n9 2>&1) && rc=0 || rc=$?
expect_match "a node with no volume: failed_precondition" "$out rc=$rc" "failed_precondition: node n9 has no volume.* rc=1"

out=$(ctl "$F" node wipe n1 --erase-all-keyslots 2>&1) && rc=0 || rc=$?
expect_match "--erase-all-keyslots where no group of the node allows it: permission_denied" "$out rc=$rc" \
    "permission_denied: --erase-all-keyslots is not allowed for node n1.* rc=1"

# --- held for a second operator
out=$(ctl "$F" node wipe n1 --reason "stolen in transit")
expect_match "node wipe is held for a second operator, covering both volumes" "$out" \
    "wipe of node n1 \(.*$UUID.*\) held as request [0-9a-f]{32}: 2 approvals needed"
expect_match "... both volumes named" "$out" "$GUID"
C=$(printf '%s' "$out" | sed -n 's/.*request \([0-9a-f]\{32\}\).*/\1/p')
expect_match "... pending lists the change" "$(ctl "$F" pending --json)" "\"request_id\":\"$C\".*\"change\":\"crypt-erase keyfleet's keys of node n1:"
A watch --count 1 >"$WORK/w0.out" 2>&1
expect_eq "not approved: the heartbeat orders no erase (the keyfleet keyslot and token stay)" "$(luks_state)" "2 1"
check "... the ZFS wrapped key stays" test "$(zprop wrapped-key)" != "-"
expect_match "... and the key is still released" "$(node "$F" n1 release "$UUID" "$WRAP_L")" "^code=ok status=released"
out=$(ctl "$F" approve "$C" 2>&1) && rc=0 || rc=$?
expect_match "one approver only: the proposer cannot approve it again" "$out rc=$rc" "already_exists.*rc=1"
A watch --count 1 >"$WORK/w1.out" 2>&1
expect_eq "... still nothing erased" "$(luks_state)" "2 1"
expect_match "... volume show: no erase yet" "$(ctl "$F" volume show "$UUID" --json)" '"erase":null'

# --- approved: keys refused at once, erase pending until the node reports
expect_match "a second operator approves" "$(ctl_as "$F" ken approve "$C")" "2 of 2 approvals; approved"
expect_match "volume show: erase pending, retired" "$(ctl "$F" volume show "$UUID")" \
    "state: +retired .*crypt-erase: .*erase: +PENDING since"
expect_match "volume list --json: pending" "$(ctl "$F" volume list --json)" "\"volume\":\"$UUID\".*\"erase\":\"pending\""
expect_match "volume list: an ERASE column" "$(ctl "$F" volume list)" "ROTATION +ERASE .*$UUID .* pending"
expect_match "the key is refused from the approval on, before the erase" "$(node "$F" n1 release "$UUID" "$WRAP_L")" \
    "^code=permission_denied.*retired"

# A node reporting another node's erase: refused and audited, the erase stays pending.
# erased_body ID: a HeartbeatRequest with one VolumeErased{ID, at, ok, "forged"} (protobuf).
erased_body() {
    python3 - "$1" <<'PY'
import sys
def varint(n):
    out = b""
    while True:
        b, n = n & 0x7f, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])
def field(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data
e = field(1, sys.argv[1].encode()) + field(2, varint(1 << 3) + varint(1700000000)) + varint(3 << 3) + varint(1) + field(4, b"forged")
sys.stdout.buffer.write(field(5, e))
PY
}
PROTO=(-H 'content-type: application/proto')
erased_body "$UUID" >"$WORK/forged"
: >"$WORK/empty"
out=$(rpc "$F" n2 NodeService/Heartbeat "${PROTO[@]}" --data-binary "@$WORK/forged" | tr -cd '[:print:]')
expect_match "n2 confirming n1's erase: the heartbeat is answered" "$out" "^200 "
expect_match "... the report is refused and audited" "$(ctl "$F" audit --action erase_confirm_refused --json)" \
    "\"node\":\"n2\".*\"volume\":\"$UUID\".*not being erased for node n2"
expect_match "... and the erase is still pending" "$(ctl "$F" volume show "$UUID" --json)" '"erase":"pending","erase_requested_at":"[^"]+","erased_at":null'
out=$(rpc "$F" n2 NodeService/Heartbeat "${PROTO[@]}" --data-binary "@$WORK/empty" | tr -cd '[:print:]')
check "n2's heartbeat orders no erase of n1's volumes" sh -c "! printf '%s' \"\$1\" | grep -aq '$UUID'" _ "$out"

# --- the agent's heartbeat erases and reports
A watch --count 1 >"$WORK/w2.out" 2>&1
expect_match "watch: both volumes crypt-erased" "$(cat "$WORK/w2.out")" "$UUID: crypt-erased \(luks2: 1 keyfleet keyslot\(s\) killed, 1 token\(s\) removed.*$GUID: crypt-erased \(zfs: 2 keyfleet properties removed \(wrapped key, TPM copy\); locked\)|$GUID: crypt-erased .*$UUID: crypt-erased"
expect_eq "LUKS2: the keyfleet keyslot and token are gone, the passphrase keyslot stays" "$(luks_state)" "1 0"
expect_eq "... the operator passphrase still opens it" \
    "$(printf 'op secret' | cryptsetup open --test-passphrase --key-file=- "$D" && echo yes)" "yes"
expect_eq "ZFS: wrapped-key removed" "$(zprop wrapped-key)" "-"
expect_eq "... the TPM copy removed" "$(zprop tpm-sealed)" "-"
expect_eq "... the key unloaded" "$("$ZFS_STANDIN" get -H -o value keystatus tank/e)" "unavailable"
expect_match "volume show: erased, with the node's report" "$(ctl "$F" volume show "$UUID")" \
    "erase: +erased [0-9T:-]+Z \(asked [0-9T:-]+Z\): luks2: 1 keyfleet keyslot"
expect_match "volume list: both erased" "$(ctl "$F" volume list --json)" \
    "\"volume\":\"$GUID\".*\"erase\":\"erased\".*\"volume\":\"$UUID\".*\"erase\":\"erased\"|\"volume\":\"$UUID\".*\"erase\":\"erased\".*\"volume\":\"$GUID\".*\"erase\":\"erased\""
expect_eq "audit: two volume_erased records by n1" \
    "$(ctl "$F" audit --action volume_erased --json | grep -c '"node":"n1"')" "2"
expect_match "audit: node_wipe with the operator's reason" "$(ctl "$F" audit --action node_wipe --json)" \
    "\"node\":\"n1\".*stolen in transit"
expect_match "a release after the erase is refused" "$(node "$F" n1 release "$UUID" "$WRAP_L")" \
    "^code=permission_denied.*retired"
A watch --count 1 >"$WORK/w3.out" 2>&1
expect_eq "the next heartbeat orders nothing more" "$(grep -c crypt-erased "$WORK/w3.out")" "0"
expect_eq "... and nothing is audited again" "$(ctl "$F" audit --action volume_erased --json | grep -c '"node":"n1"')" "2"
out=$(ctl "$F" node wipe n1 --volumes "$UUID" 2>&1) && rc=0 || rc=$?
expect_match "wiping an erased volume again: failed_precondition" "$out rc=$rc" "already erased rc=1"

# --- an erase never confirmed stays pending
out=$(ctl "$F" node wipe n2 --volumes vol-2)
C2=$(printf '%s' "$out" | sed -n 's/.*request \([0-9a-f]\{32\}\).*/\1/p')
expect_match "n2's wipe approved" "$(ctl_as "$F" ken approve "$C2")" "approved"
out=$(rpc "$F" n2 NodeService/Heartbeat "${PROTO[@]}" --data-binary "@$WORK/empty" | tr -cd '[:print:]')
expect_match "n2's heartbeat answer orders the erase of vol-2" "$out" "^200 .*vol-2"
expect_match "unconfirmed: pending in volume list" "$(ctl "$F" volume list)" "vol-2 .* pending"
expect_match "... and its key is refused" "$(node "$F" n2 release vol-2 "$WRAP_2")" "^code=permission_denied"
# --- --erase-all-keyslots where the policy allows it (LUKS2 luksErase): the passphrase goes too
out=$(ctl "$F" node wipe n3 --erase-all-keyslots --reason "scrapped")
C3=$(printf '%s' "$out" | sed -n 's/.*request \([0-9a-f]\{32\}\).*/\1/p')
expect_match "--erase-all-keyslots for n3 (group scrap allows it): held" "$out" "held as request"
expect_match "n3's wipe approved" "$(ctl_as "$F" ken approve "$C3")" "approved"
expect_match "volume show: pending, every keyslot" "$(ctl "$F" volume show "$UUID3")" "PENDING since .*\(every keyslot\)"
"$AGENT" -c "$WORK/c.yaml" watch --count 1 >"$WORK/w4.out" 2>&1
expect_match "watch: every keyslot erased" "$(cat "$WORK/w4.out")" "$UUID3: crypt-erased \(luks2: every keyslot erased \(1 keyfleet, 1 other\)"
expect_eq "no keyslot and no token left" "$(luks_json "$D3" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(len(m["keyslots"]), len(m["tokens"]))')" "0 0"
check "the operator passphrase no longer opens it" sh -c "! printf 'op secret' | cryptsetup open --test-passphrase --key-file=- '$D3' 2>/dev/null"
expect_match "audit: volume_erased says the data is unrecoverable" "$(ctl "$F" audit --action volume_erased --json)" \
    "\"node\":\"n3\".*unrecoverable"
expect_match "the audit chain verifies" "$(ctl "$F" audit verify)" "ok"
stop_kfd
expect_eq "keyfleetd stops cleanly" "$KFD_EXIT" "0"
check_sanitizers
finish
