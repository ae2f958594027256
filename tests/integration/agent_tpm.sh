#!/usr/bin/env bash
# The agent's TPM2 fallback with a software TPM: where policy allows it, enrollment seals a
# copy under PCR 7; when no coordinator answers before the deadline, the agent unseals it and
# unlocks, records it, and reports it on its next contact (audited as offline_unlock). After
# PCR 7 changes the fallback is refused clearly; while a coordinator answers, it is not used.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
start_kfd "$F"
put_policy "$F" <<'YAML'
rules:
  - name: quarantined
    match: {volumes: {labels: {state: quarantined}}}
    effect: deny
  - name: gated
    match: {volumes: {labels: {gate: "yes"}}}
    effect: allow
    approval: {approvers: 1, timeout: 5m}
    offline_fallback: true
  - name: servers
    match: {nodes: {names: ["n*"]}}
    effect: allow
    offline_fallback: true
YAML
start_swtpm "$WORK/tpm"
luks_file "$WORK/disk.luks" "pw"
"$ZFS_STANDIN" __zpool_create tank
# Written again after each restart: keyfleetd listens on a new port each time.
write_config() {
    agent_config "$WORK/a.yaml" n1 "deadline: 2s" "call_timeout: 500ms" "tpm: {tcti: \"$TCTI\", pcrs: [7]}" \
        "volumes:" "  - luks: $WORK/disk.luks"
}
write_config
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }

out=$(printf 'pw' | A enroll "$WORK/disk.luks" 2>&1)
expect_match "enroll seals a TPM copy where policy allows it" "$out" "TPM-sealed copy stored for offline unlock"
expect_match "the LUKS2 token carries the sealed blob" "$(luks_json "$WORK/disk.luks")" '"keyfleet_tpm_sealed":"kftpm1:'
out=$(A enroll zfs:tank/data 2>&1)
expect_match "... and so does a ZFS dataset" "$("$ZFS_STANDIN" get -H -o value org.keyfleet:tpm-sealed tank/data)" "^kftpm1:"
"$ZFS_STANDIN" unmount tank/data && "$ZFS_STANDIN" unload-key tank/data

out=$(A unlock --all 2>&1)
expect_eq "with the coordinator up, unlock works normally" "$?" "0"
expect_match "... and does not touch the TPM" "$out" "disk.luks: unlocked \\(key verified"
"$ZFS_STANDIN" unmount tank/data && "$ZFS_STANDIN" unload-key tank/data

stop_kfd TERM
# Dead-man switch (review rev26): the watcher recorded a 60 s window and a last contact an hour
# ago, so the node is past its window: the TPM copy must not undo the dead-man lock.
cp "$WORK/n1-state.json" "$WORK/n1-state.saved" 2>/dev/null || echo '{}' >"$WORK/n1-state.saved"
python3 - "$WORK/n1-state.json" <<'PY'
import json, sys, time
try:
    state = json.load(open(sys.argv[1]))
except OSError:
    state = {}
state["dead_man"] = {"after_s": 60, "last_contact": int(time.time()) - 3600}
json.dump(state, open(sys.argv[1], "w"))
PY
out=$(A unlock --all 2>&1)
expect_eq "past the dead-man window, coordinator down: nothing is unlocked from the TPM (exit 1)" "$?" "1"
expect_match "... saying why" "$out" "offline fallback refused: no coordinator reached for 3[0-9]{3} s, past the dead-man window \\(dead_man.after 60 s\\)"
expect_eq "... and the dataset's key stays unloaded" "$("$ZFS_STANDIN" get -H -o value keystatus tank/data)" "unavailable"
# A clock set back behind the last contact cannot tell how long the node was silent: refused too.
python3 - "$WORK/n1-state.json" <<'PY'
import json, sys, time
state = json.load(open(sys.argv[1]))
state["dead_man"] = {"after_s": 60, "last_contact": int(time.time()) + 3600}
json.dump(state, open(sys.argv[1], "w"))
PY
out=$(A unlock --all 2>&1)
expect_eq "a clock an hour behind the last contact: nothing is unlocked from the TPM (exit 1)" "$?" "1"
expect_match "... saying why" "$out" "offline fallback refused: the clock is 3[0-9]{3} s behind the last contact"
cp "$WORK/n1-state.saved" "$WORK/n1-state.json"
out=$(A unlock --all 2>&1)
expect_eq "coordinator down: the TPM fallback unlocks everything (exit 0)" "$?" "0"
expect_match "... saying so" "$out" "disk.luks: unlocked from the TPM \\(no coordinator answered.*tank/data: unlocked from the TPM"
expect_eq "the dataset's key is loaded" "$("$ZFS_STANDIN" get -H -o value keystatus tank/data)" "available"
expect_match "status shows how it was unlocked" "$(A status --json 2>/dev/null)" '"last_unlock":"tpm"'
# The cryptroot keyscript (initramfs-tools) takes the same fallback and queues the same report.
printf '#!/bin/sh\necho "$1" >&2\nsleep 30\n' >"$WORK/askpass-wait" && chmod +x "$WORK/askpass-wait"
rm -f /run/keyfleet/keyscript-tpmroot.agent
CRYPTTAB_NAME=tpmroot CRYPTTAB_SOURCE=$WORK/disk.luks CRYPTTAB_TRIED=0 timeout 60 \
    "$AGENT" -c "$WORK/a.yaml" keyscript --askpass "$WORK/askpass-wait" >"$WORK/ks.key" 2>"$WORK/ks.console"
expect_match "the keyscript unseals from the TPM, saying so" "$(cat "$WORK/ks.console")" \
    "keyfleet: tpmroot: unsealed from the TPM \\(no coordinator answered; reported at the next contact\\)"
check "... and its key opens the volume" cryptsetup open --test-passphrase --key-file="$WORK/ks.key" "$WORK/disk.luks"
rm -f "$WORK/ks.key" /run/keyfleet/keyscript-tpmroot.agent

start_kfd "$F"
write_config
A status >/dev/null 2>&1
audit=$(ctl "$F" audit --action offline_unlock --json)
expect_eq "on the next contact all three offline unlocks are reported and audited" "$(printf '%s\n' "$audit" | grep -c offline_unlock)" "3"
expect_match "... with the reason" "$audit" '"actor":"n1","node":"n1".*"reason":"unlocked from the node.s TPM at [0-9]+: no coordinator answered before the deadline'
A status >/dev/null 2>&1
expect_eq "... exactly once" "$(ctl "$F" audit --action offline_unlock --json | grep -c offline_unlock)" "3"

# A coordinator that answers and refuses: the TPM copy is not used.
ctl "$F" node revoke n1 "lost" >/dev/null
"$ZFS_STANDIN" unmount tank/data && "$ZFS_STANDIN" unload-key tank/data
out=$(A unlock zfs:tank/data 2>&1)
expect_eq "while a coordinator answers (here: refuses), the fallback is not used (exit 1)" "$?" "1"
expect_match "... the refusal is reported" "$out" "permission_denied: node is revoked"
expect_eq "the dataset stays locked" "$("$ZFS_STANDIN" get -H -o value keystatus tank/data)" "unavailable"

# PCR 7 changes (say, Secure Boot state): the fallback is refused, clearly.
stop_kfd TERM
TPM2TOOLS_TCTI="$TCTI" tpm2_pcrextend 7:sha256=$(printf '%064d' 7) >/dev/null 2>&1
out=$(A unlock zfs:tank/data 2>&1)
expect_eq "after PCR 7 is extended the fallback is refused (exit 1)" "$?" "1"
expect_match "... with a clear message" "$out" "offline fallback refused: .*PCR values changed since the key was sealed"

# A wrong TCTI at enrollment: enrollment still succeeds, without an offline copy, and says so.
start_kfd "$F"
ctl "$F" policy put "$F/policy.yaml" >/dev/null
issue "$F" node n2
agent_config "$WORK/b.yaml" n2 "tpm: {tcti: \"swtpm:host=127.0.0.1,port=1\"}"
luks_file "$WORK/disk2.luks" "pw"
out=$(printf 'pw' | "$AGENT" -c "$WORK/b.yaml" enroll "luks:$WORK/disk2.luks" 2>&1)
expect_match "a wrong TCTI: enrolled without an offline copy, said clearly" "$out" "event=tpm_seal_failed .*cannot open TCTI.*no TPM copy"

# A coordinator that answered PENDING and then went silent (a network attacker cutting the line
# during the approval wait): the wait ends at the deadline, and the TPM copy is not used.
agent_config "$WORK/c.yaml" n2 "deadline: 6s" "call_timeout: 500ms" "tpm: {tcti: \"$TCTI\", pcrs: [7]}"
luks_file "$WORK/gated.luks" "pw"
out=$(printf 'pw' | "$AGENT" -c "$WORK/c.yaml" enroll "luks:$WORK/gated.luks" --label gate=yes 2>&1)
expect_match "a volume under an approval rule with offline fallback gets a TPM copy" "$out" "TPM-sealed copy stored"
"$AGENT" -c "$WORK/c.yaml" unlock "luks:$WORK/gated.luks" >"$WORK/gated.out" 2>&1 &
gated=$!
for _ in $(seq 1 80); do grep -q waiting_for_approval "$WORK/gated.out" && break; sleep 0.05; done
kill -STOP "$KFD_PID"
wait "$gated"
rc=$?
kill -CONT "$KFD_PID"
expect_eq "PENDING, then silence: no unlock (exit 1)" "$rc" "1"
expect_match "... it waited for the approval first" "$(cat "$WORK/gated.out")" "waiting_for_approval"
if grep -q "unlocked from the TPM" "$WORK/gated.out"; then
    not_ok "... and did not fall back to the TPM copy" "$(cat "$WORK/gated.out")"
else
    ok "... and did not fall back to the TPM copy"
fi
check_sanitizers
finish
