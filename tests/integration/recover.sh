#!/usr/bin/env bash
# keyfleet-agent recover (docs/recovery.md): a recovery key typed at the console opens a LUKS2
# file (the keyslot whose passphrase is the key's canonical text; added here by hand, as the
# escrow that will add it is not built yet) and a ZFS dataset (whose recovery key is its keyfleet
# key), with no coordinator, no node certificate and the key typed loosely (case, spaces, O/I/L);
# a mistyped symbol names its group and opens nothing; a well-formed key of another volume opens
# nothing; the next contact reports the unlock, audited as offline_unlock by recovery key.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
start_kfd "$F"
allow_nodes "$F" n1
D=$WORK/disk.luks
luks_file "$D" "pw"
"$ZFS_STANDIN" __zpool_create tank
agent_config "$WORK/a.yaml" n1 "deadline: 2s" "call_timeout: 500ms"
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
check "enroll the LUKS2 file" sh -c "printf pw | '$AGENT' -c '$WORK/a.yaml' enroll luks:$D >/dev/null"
check "enroll the ZFS dataset" A enroll zfs:tank/r

# loosely TEXT: as a person might type it: upper case, spaces for dashes, 0 as O, 1 as l.
loosely() { printf '%s' "$1" | tr 'a-z-' 'A-Z ' | tr '01' 'Ol'; }

R1=$(recovery_text "$(openssl rand -hex 32)")
printf '%s' "$R1" >"$WORK/r1.txt"
printf 'pw' | cryptsetup luksAddKey --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file=- "$D" "$WORK/r1.txt"
rm -f "$WORK/r1.txt"
Z=$(node "$F" n1 release "$("$ZFS_STANDIN" get -H -p -o value guid tank/r)" "$("$ZFS_STANDIN" get -H -o value org.keyfleet:wrapped-key tank/r)")
RZ=$(recovery_text "$(field key "$Z")")
"$ZFS_STANDIN" unmount tank/r && "$ZFS_STANDIN" unload-key tank/r

# Break glass: no coordinator, and the node's key gone too.
stop_kfd TERM
mv "$F/n1.key" "$F/n1.key.away"
out=$(printf '%s\n' "$(loosely "$R1")" | A recover "luks:$D" 2>&1)
expect_eq "recover opens the LUKS2 file with the recovery key typed loosely (exit 0)" "$?" "0"
expect_match "... saying so" "$out" "luks2 .*disk.luks: unlocked with the recovery key \\(reported at the next contact"
expect_match "... and logging it" "$out" "event=recovery_unlock volume=\"$D\""
expect_eq "the status file records it" \
    "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["method"])' "$WORK/n1-state.json" "$(cryptsetup luksUUID "$D")")" "recovery"
out=$(printf '%s' "$RZ" | A recover zfs:tank/r 2>&1)
expect_match "recover loads the ZFS dataset's key" "$out" "zfs tank/r: unlocked with the recovery key"
expect_eq "... the key is loaded" "$("$ZFS_STANDIN" get -H -o value keystatus tank/r)" "available"
"$ZFS_STANDIN" unmount tank/r && "$ZFS_STANDIN" unload-key tank/r

# One symbol of group 7 mistyped: named, nothing opened.
bad=$(printf '%s' "$RZ" | python3 -c '
import sys
t = list(sys.stdin.read()); p = 6 * 6 + 2
t[p] = "0" if t[p] != "0" else "1"
print("".join(t))')
out=$(printf '%s' "$bad" | A recover zfs:tank/r 2>&1)
expect_eq "a mistyped symbol: exit 1" "$?" "1"
expect_match "... naming its group" "$out" "recover: the recovery key as typed: group 7 of 13 does not check"
expect_eq "... the key stays unloaded" "$("$ZFS_STANDIN" get -H -o value keystatus tank/r)" "unavailable"
out=$(printf '%s' "$R1" | A recover zfs:tank/r 2>&1)
expect_match "another volume's recovery key: well formed, opens nothing" "$out" "tank/r: the recovery key is well formed but does not open it"
expect_eq "... the key stays unloaded" "$("$ZFS_STANDIN" get -H -o value keystatus tank/r)" "unavailable"
out=$(printf 'pw' | A recover "luks:$D" 2>&1)
expect_match "a passphrase is not a recovery key" "$out" "recover: the recovery key as typed: .*symbols; a recovery key has 65"

# Back again: the next contact reports both recovery unlocks, audited as such.
mv "$F/n1.key.away" "$F/n1.key"
start_kfd "$F"
agent_config "$WORK/a.yaml" n1 "deadline: 2s" "call_timeout: 500ms"
expect_match "status shows the dataset's last unlock as recovery" "$(A status --json 2>/dev/null)" '"name":"tank/r","key":"locked","last_unlock":"recovery"'
audit=$(ctl "$F" audit --action offline_unlock --json)
expect_eq "the next contact reports the two recovery unlocks" "$(printf '%s\n' "$audit" | grep -c offline_unlock)" "2"
expect_match "... audited as unlocked with a recovery key" "$audit" \
    '"node":"n1".*"reason":"unlocked with a recovery key typed at the node.s console at [0-9]+: unlocked with a recovery key typed at the console"'
check_sanitizers
finish
