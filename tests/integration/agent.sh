#!/usr/bin/env bash
# keyfleet-agent against a real keyfleetd: LUKS2 containers in files (keys verified with
# libcryptsetup without activation; device-mapper is not available here) and the zfs stand-in.
# Enroll, unlock, status, migration to another node, approval while booting (with its countdown),
# rewrap after a KMS rotation (held for approval: said at once, or --wait), and the bad inputs: coordinator down, a key that does not open the volume,
# corrupted metadata, config errors.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
for n in node-a node-b node-c; do issue "$F" node "$n"; done
start_kfd "$F"
put_policy "$F" <<'YAML'
rules:
  - name: cluster
    match: {nodes: {names: ["node-a", "node-b"]}}
    effect: allow
YAML

luks_file "$WORK/disk1.luks" "old secret"
luks_file "$WORK/disk2.luks" "other secret"
"$ZFS_STANDIN" __zpool_create tank
agent_config "$WORK/a.yaml" node-a "volumes:" "  - luks: $WORK/disk1.luks" "  - luks: $WORK/disk2.luks"
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }

out=$(printf 'old secret' | A enroll "$WORK/disk1.luks" --label env=prod 2>&1)
expect_match "enroll a LUKS2 container (passphrase on stdin)" "$out" "^enrolled luks2 .*disk1.luks \(volume id [0-9a-f-]{36}\)"
UUID1=$(cryptsetup luksUUID "$WORK/disk1.luks")
dump=$(luks_json "$WORK/disk1.luks")
expect_match "the LUKS2 token holds the volume id and the wrapped key" "$dump" "\"type\":\"keyfleet\",\"keyslots\":\\[\"1\"\\].*\"keyfleet_volume_id\":\"$UUID1\",\"keyfleet_wrapped_key\":\"kf:local:v1:"
expect_match "the keyfleet keyslot uses PBKDF2-SHA512 (and a SHA-512 AF split) with few iterations" "$dump" \
    "\"1\":\\{\"type\":\"luks2\".*\"af\":\\{\"type\":\"luks1\",\"stripes\":4000,\"hash\":\"sha512\"\\}.*\"kdf\":\\{\"type\":\"pbkdf2\",\"hash\":\"sha512\",\"iterations\":1000"
echo "other secret" >"$WORK/disk2.pass"
printf 'other secret' >"$WORK/disk2.pass"
out=$(A enroll "luks:$WORK/disk2.luks" --auth-file "$WORK/disk2.pass" 2>&1)
expect_match "enroll with a key file" "$out" "^enrolled luks2"
if grep -q "^note:" <<<"$out"; then not_ok "a volume with a cheap digest gets no note" "$out"; else ok "a volume with a cheap digest gets no note"; fi
# A default-style format benchmarks its LUKS2 digest for 125 ms; every unlock pays it, so enroll says so.
truncate -s 20M "$WORK/slowdigest.luks"
printf 's4' | cryptsetup luksFormat --type luks2 --batch-mode --pbkdf pbkdf2 --iter-time 20 --key-file=- "$WORK/slowdigest.luks"
out=$(printf 's4' | "$AGENT" -c "$WORK/a.yaml" enroll "luks:$WORK/slowdigest.luks" 2>&1)
expect_match "enrolling a volume with a costly digest notes what each unlock will pay" "$out" \
    "^enrolled luks2 .*slowdigest.luks .*note: .*slowdigest.luks has a costly LUKS2 digest \(PBKDF2-sha256, [0-9]{5,} iterations, set when it was formatted\): opening it took [0-9]+ ms of CPU.*Formatting LUKS2 volumes for a fast unlock"
out=$(printf 'wrong' | A enroll "$WORK/disk1.luks" 2>&1)
expect_match "enrolling twice is refused" "$out" "already enrolled"
luks_file "$WORK/disk3.luks" "s3"
out=$(printf 'not it' | "$AGENT" -c "$WORK/a.yaml" enroll "luks:$WORK/disk3.luks" 2>&1)
expect_match "a wrong existing passphrase is refused" "$out" "the existing passphrase is wrong"
expect_eq "... and leaves no keyfleet token" "$(cryptsetup luksDump "$WORK/disk3.luks" | grep -c keyfleet)" "0"

out=$(A enroll zfs:tank/secure --label role=db 2>&1)
expect_match "enroll a ZFS encryption root (created with keyformat=raw)" "$out" "^enrolled zfs tank/secure \(volume id [0-9]+\)"
GUID=$("$ZFS_STANDIN" get -H -p -o value guid tank/secure)
expect_eq "org.keyfleet:volume-id is the dataset GUID" "$("$ZFS_STANDIN" get -H -o value org.keyfleet:volume-id tank/secure)" "$GUID"
expect_match "org.keyfleet:wrapped-key holds the wrapped key" "$("$ZFS_STANDIN" get -H -o value org.keyfleet:wrapped-key tank/secure)" "^kf:local:v1:"
"$ZFS_STANDIN" unmount tank/secure
"$ZFS_STANDIN" unload-key tank/secure

ctx0=$(metric "$F" keyfleet_seal_contexts_total)
keys0=$(metric "$F" keyfleet_sealed_keys_total)
out=$(A unlock --all 2>&1)
rc=$?
expect_eq "unlock --all: every volume unlocked (exit 0)" "$rc" "0"
expect_eq "... three keys sealed over one connection" "$(($(metric "$F" keyfleet_sealed_keys_total) - keys0))" "3"
expect_eq "... under one HPKE context (one X25519 key generation and DH for the run)" \
    "$(($(metric "$F" keyfleet_seal_contexts_total) - ctx0))" "1"
open_ctx=""
for _ in $(seq 1 40); do # the context goes with the agent's connection
    open_ctx=$(metric "$F" keyfleet_seal_contexts_open)
    [ "$open_ctx" = 0 ] && break
    sleep 0.05
done
expect_eq "... and is wiped when the agent's connection closes" "$open_ctx" "0"
expect_match "... both LUKS2 keys verified" "$out" "disk1.luks: unlocked \(key verified.*disk2.luks: unlocked"
expect_match "... and the discovered ZFS dataset unlocked" "$out" "zfs tank/secure: unlocked"
expect_eq "the dataset's key is loaded" "$("$ZFS_STANDIN" get -H -o value keystatus tank/secure)" "available"
expect_eq "... and it is mounted" "$("$ZFS_STANDIN" get -H -o value mounted tank/secure)" "yes"
st=$(A status --json)
expect_match "status --json: coordinators reachable, volumes with last unlock" "$st" "\"coordinators_reachable\":true,\"node_revoked\":false.*\"id\":\"$UUID1\".*\"last_unlock\":\"coordinator\""
expect_match "status (table)" "$(A status)" "zfs +$GUID +tank/secure +unlocked +coordinator"

# Migration: the pool and the disks move to node-b, which policy allows; node-c is refused.
"$ZFS_STANDIN" unmount tank/secure && "$ZFS_STANDIN" unload-key tank/secure
agent_config "$WORK/b.yaml" node-b "volumes:" "  - luks: $WORK/disk1.luks"
out=$("$AGENT" -c "$WORK/b.yaml" unlock --all 2>&1)
expect_eq "node-b unlocks the moved volumes" "$?" "0"
expect_match "... the LUKS2 disk and the pool" "$out" "disk1.luks: unlocked.*tank/secure: unlocked"
"$ZFS_STANDIN" unmount tank/secure && "$ZFS_STANDIN" unload-key tank/secure
agent_config "$WORK/c.yaml" node-c "volumes:" "  - luks: $WORK/disk1.luks"
out=$("$AGENT" -c "$WORK/c.yaml" unlock --all 2>&1)
expect_eq "node-c, not allowed by policy, unlocks nothing (exit 1)" "$?" "1"
expect_match "... with a clear refusal" "$out" "permission_denied: no rule matches node 'node-c'"
expect_eq "the dataset stays locked" "$("$ZFS_STANDIN" get -H -o value keystatus tank/secure)" "unavailable"
audit=$(ctl "$F" audit --volume "$GUID" --json)
expect_match "audit: node-b's release of the pool" "$audit" "\"action\":\"release\",\"actor\":\"node-b\",\"node\":\"node-b\",\"volume\":\"$GUID\".*\"decision\":\"allow\""
expect_match "audit: node-c's refusal" "$audit" "\"action\":\"policy_deny\",\"actor\":\"node-c\".*\"volume\":\"$GUID\""

# Approval while booting: the agent polls until an operator approves.
put_policy "$F" <<'YAML'
rules:
  - name: cluster
    match: {nodes: {names: ["node-a", "node-b"]}}
    effect: allow
    approval: {approvers: 1}
YAML
( for _ in $(seq 1 100); do
      id=$(ctl "$F" pending | awk 'NR > 1 {print $1; exit}')
      if [ -n "$id" ]; then ctl "$F" approve "$id" >/dev/null; break; fi
      sleep 0.1
  done ) &
approver=$!
out=$(A unlock "zfs:tank/secure" 2>&1)
rc=$?
wait "$approver"
expect_eq "unlock waits for approval, then unlocks (exit 0)" "$rc" "0"
expect_match "... and says it is waiting" "$out" "event=waiting_for_approval"

# While it waits, the agent counts down: without a terminal (the journal), a line every
# approval_log_interval with the time left; on a terminal, one line, then a live countdown.
# approve_after SECONDS: approves the first pending request SECONDS after it appears.
approve_after() {
    ( id=""
      for _ in $(seq 1 100); do
          id=$(ctl "$F" pending | awk 'NR > 1 {print $1; exit}')
          [ -n "$id" ] && break
          sleep 0.1
      done
      sleep "$1"
      [ -z "$id" ] || ctl "$F" approve "$id" >/dev/null ) &
    approver=$!
}
lock_pool() { "$ZFS_STANDIN" unmount tank/secure && "$ZFS_STANDIN" unload-key tank/secure; }
lock_pool
cp "$WORK/a.yaml" "$WORK/a-log.yaml"
echo "approval_log_interval: 1s" >>"$WORK/a-log.yaml"
approve_after 3.5
out=$("$AGENT" -c "$WORK/a-log.yaml" unlock "zfs:tank/secure" 2>&1)
rc=$?
wait "$approver"
expect_eq "approved after 3.5 s: unlocked (exit 0)" "$rc" "0"
n=$(grep -c "event=waiting_for_approval" <<<"$out")
check "without a terminal: a waiting_for_approval line at each poll once approval_log_interval (1 s) passed ($n lines)" \
    test "$n" -ge 2
expect_match "... each with the seconds left and the request's expiry" "$out" \
    "event=waiting_for_approval volume=.*tank/secure.* request=[0-9a-f]+ seconds_left=[0-9]+ expires_at=[0-9]{10}"
expect_eq "... and no terminal control characters" "$(tr -d -c '\r\033' <<<"$out" | wc -c)" "0"
lock_pool
approve_after 2.5
out=$(script -qec "$AGENT -c $WORK/a.yaml unlock zfs:tank/secure" /dev/null 2>&1)
rc=$?
wait "$approver"
expect_eq "on a terminal: unlocked once approved (exit 0)" "$rc" "0"
expect_eq "... one waiting_for_approval line (the default interval is 15 s)" \
    "$(grep -c "event=waiting_for_approval" <<<"$out")" "1"
expect_match "... then a live countdown, redrawn in place" "$out" \
    $'\r\e\\[Ktank/secure: waiting for approval \\(keyfleetctl approve [0-9a-f]+\\): [0-9]+:[0-9]{2} left\r\e\\[K'
tail=${out##*" left"}
expect_eq "... cleared once the key came" "${tail:0:4}" $'\r\e[K'
expect_match "... then the result" "$tail" "tank/secure: unlocked"

# rewrap after a KMS rotation: where a release needs approval it says so at once, leaving no
# pending request; --wait asks for the approval and waits.
ctl "$F" kms rotate >/dev/null
start=$(date +%s)
out=$(A rewrap 2>&1)
rc=$?
expect_eq "rewrap with every volume held for approval: exit 1 (none)" "$rc" "1"
check "... at once, not at the deadline (60 s)" test $(($(date +%s) - start)) -lt 20
expect_match "... naming the approvals needed and the way on" "$out" \
    "rewrap: .*disk1.luks: failed_precondition: release needs 1 approval\\(s\\) under rule cluster; no request was made.*rewrap --wait"
expect_eq "... and leaves no pending request" "$(ctl "$F" pending | awk 'NR > 1' | wc -l)" "0"
expect_match "... its refusals are audited" "$(ctl "$F" audit --action release --decision deny --json)" \
    "\"reason\":\"release needs 1 approval\\(s\\) under rule cluster; no request was made\""
( for _ in $(seq 1 300); do
      for id in $(ctl "$F" pending | awk 'NR > 1 {print $1}'); do ctl "$F" approve "$id" >/dev/null; done
      sleep 0.1
  done ) &
approver=$!
out=$(A rewrap --wait 2>&1)
rc=$?
kill "$approver" 2>/dev/null
wait "$approver" 2>/dev/null
expect_eq "rewrap --wait: every volume rewrapped once approved (exit 0)" "$rc" "0"
expect_match "rewrap after a KMS rotation" "$out" "disk1.luks: rewrapped.*tank/secure: rewrapped"
put_policy "$F" <<'YAML'
rules:
  - name: cluster
    match: {nodes: {names: ["node-a", "node-b"]}}
    effect: allow
YAML
expect_match "the ZFS property now holds a v2 wrapped key" "$("$ZFS_STANDIN" get -H -o value org.keyfleet:wrapped-key tank/secure)" "^kf:local:v2:"
expect_match "the LUKS2 token too" "$(luks_json "$WORK/disk1.luks")" '"keyfleet_wrapped_key":"kf:local:v2:'
expect_match "a second rewrap has nothing to do" "$(A rewrap 2>&1)" "disk1.luks: already current"

# Bad input: a key that does not open the volume changes nothing.
# Point disk2's keyfleet token at the passphrase keyslot: the released key cannot open that one.
cryptsetup token export --token-id 0 "$WORK/disk2.luks" | sed 's/"keyslots":\["1"\]/"keyslots":["0"]/' >"$WORK/t.json"
cryptsetup token import --token-id 0 --token-replace --json-file "$WORK/t.json" "$WORK/disk2.luks"
out=$(A unlock "$WORK/disk1.luks" "$WORK/disk2.luks" 2>&1)
expect_eq "one good and one bad volume: exit 3 (some)" "$?" "3"
expect_match "the bad one says the released key does not open it" "$out" "disk2.luks: the released key does not open the volume"
expect_eq "the other passphrase still opens it (nothing changed)" "$(printf 'other secret' | cryptsetup open --test-passphrase --key-file=- "$WORK/disk2.luks" && echo yes)" "yes"

# Corrupted metadata.
"$ZFS_STANDIN" set org.keyfleet:volume-id=12345 tank/secure
out=$(A unlock "zfs:tank/secure" 2>&1)
expect_eq "a corrupted ZFS property: exit 1" "$?" "1"
expect_match "... naming the problem" "$out" "org.keyfleet:volume-id is 12345, not this dataset's GUID"
"$ZFS_STANDIN" set "org.keyfleet:volume-id=$GUID" tank/secure
# An evil maid's ZFS properties are checked as strictly as the LUKS2 token's (issue #18).
good_wrapped=$("$ZFS_STANDIN" get -H -o value org.keyfleet:wrapped-key tank/secure)
"$ZFS_STANDIN" set "org.keyfleet:wrapped-key=kf:local" tank/secure
out=$(A unlock "zfs:tank/secure" 2>&1)
expect_eq "a wrapped-key property that is not kf:BACKEND:REF:DATA: exit 1" "$?" "1"
expect_match "... naming the property and the form" "$out" \
    "org.keyfleet:wrapped-key holds no valid wrapped key: malformed: keyfleet_wrapped_key is not kf:BACKEND:REF:DATA"
"$ZFS_STANDIN" set "org.keyfleet:wrapped-key=$good_wrapped" tank/secure
"$ZFS_STANDIN" set "org.keyfleet:tpm-sealed=kftpm1:not base64!" tank/secure
out=$(A unlock "zfs:tank/secure" 2>&1)
expect_eq "a tpm-sealed property that is not kftpm1:BASE64: exit 1" "$?" "1"
expect_match "... naming it" "$out" "org.keyfleet:tpm-sealed holds no valid TPM-sealed copy"
"$ZFS_STANDIN" set "org.keyfleet:tpm-sealed=-" tank/secure
luks_file "$WORK/disk4.luks" "s4"
printf '{"type":"keyfleet","keyslots":[],"keyfleet_volume_id":"nope"}' >"$WORK/bad-token.json"
cryptsetup token import --json-file "$WORK/bad-token.json" "$WORK/disk4.luks" 2>/dev/null ||
    cryptsetup token import --json-file "$WORK/bad-token.json" --token-id 0 "$WORK/disk4.luks"
out=$(A unlock "luks:$WORK/disk4.luks" 2>&1)
expect_eq "a corrupted LUKS2 token: exit 1" "$?" "1"
expect_match "... naming the problem" "$out" "keyfleet token .*(malformed|names volume)"

# The coordinator is down: backoff, then a clear failure at the deadline.
stop_kfd TERM
agent_config "$WORK/down.yaml" node-a "deadline: 2s" "call_timeout: 500ms" "volumes:" "  - luks: $WORK/disk1.luks"
start=$(date +%s%N)
out=$("$AGENT" -c "$WORK/down.yaml" unlock "$WORK/disk1.luks" 2>&1)
rc=$?
ms=$((($(date +%s%N) - start) / 1000000))
expect_eq "coordinator down: exit 1" "$rc" "1"
expect_match "... retried with backoff" "$out" "event=release_retry .*backoff_ms=200.*event=release_retry .*backoff_ms=400"
expect_match "... and fails clearly at the deadline" "$out" "no coordinator released the key before the deadline"
check "... within the deadline (${ms} ms)" test "$ms" -lt 3500

# Config errors name file:line.
printf 'coordinators: ["127.0.0.1:1"]\nidentity: {cert: a, key: b, ca: c}\ncolour: red\n' >"$WORK/bad.yaml"
out=$("$AGENT" -c "$WORK/bad.yaml" status 2>&1)
expect_eq "a config error exits 2" "$?" "2"
expect_match "... naming file:line:column" "$out" "bad.yaml:3:1: unknown key 'colour'"
printf 'coordinators: ["127.0.0.1:1"]\nidentity: {cert: a, key: b, ca: c}\nvolumes:\n  - {luks: /x, zfs: y}\n' >"$WORK/bad.yaml"
expect_match "a volume with two kinds is refused" "$("$AGENT" -c "$WORK/bad.yaml" status 2>&1)" "bad.yaml:4:5: each volume needs exactly one of luks or zfs"
agent_config "$WORK/nocert.yaml" no-such-node
expect_match "a missing certificate is named, with the reason (not OpenSSL's 'system lib')" \
    "$("$AGENT" -c "$WORK/nocert.yaml" status 2>&1)" "certificate $F/no-such-node.crt: No such file or directory"
expect_match "an operator certificate is not a node identity" "$(agent_config "$WORK/op.yaml" operator && "$AGENT" -c "$WORK/op.yaml" status 2>&1)" "not a node certificate"
check_sanitizers
finish
