#!/usr/bin/env bash
# Review rev26b (docs/reviews/rev26b-recovery-erase-tpmnet.md, F1; fixed on its branch, agent side):
# a LUKS2 volume enrolled under require: [tpm_and_network] must never get a recovery keyslot (a
# key the coordinators hold would open it without the TPM part). Here the rule later drops
# tpm_and_network; recovery-key add escrows a key (its keyslot then fails: the coordinator part
# alone does not open the volume), two operators reveal it, and the next unlock, which holds the
# combined keyslot key, "replaces" it: before the fix the keyslot it added opened the volume with no TPM.
# Review rev26e F1a: a volume whose mode is not recorded is revealed only while its rule does not
# require tpm_and_network.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/recovery_lib.sh"

recovery_fleet
node_rule "$F" two-factor tpm_and_network "n*"
start_swtpm "$WORK/tpm"
D=$WORK/disk.luks
luks_file "$D" "pw"
agent_config "$WORK/a.yaml" n1 "deadline: 2s" "call_timeout: 500ms" "tpm: {tcti: \"$TCTI\", pcrs: [7]}" \
    "volumes:" "  - luks: $D"
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
LID=$(cryptsetup luksUUID "$D")

out=$(printf 'pw' | A enroll "$D" 2>&1)
expect_match "enrolled with TPM and network both required" "$out" "TPM and network both required"
out=$(A recovery-key add "luks:$D" 2>&1) && rc=0 || rc=$?
expect_match "under the rule, recovery-key add is refused" "$out rc=$rc" "requires TPM and network.*rc=[1-9]"

node_rule "$F" plain "" "n*"
A recovery-key add "luks:$D" >"$WORK/add.out" 2>&1 || true
# The mode is the volume's, recorded at enroll (store migration 18): the coordinators refuse the
# escrow themselves once the rule no longer says tpm_and_network.
expect_match "F1: the coordinators refuse the escrow by the mode recorded at enroll" "$(cat "$WORK/add.out")" \
    "enrolled with TPM and network both required"
expect_match "F1: the refusal is audited" "$(ctl "$F" audit --action recovery_escrow --json)" \
    "\"decision\":\"deny\".*enrolled with TPM and network"
T0=$(reveal "$LID")
A unlock --all >"$WORK/unlock.out" 2>&1 || true
T1=$(reveal "$LID")
if [ -n "$T1" ] && opens "$D" "$T1"; then
    not_ok "F1: no recovery key opens a tpm_and_network volume (the revealed one does, without the TPM)"
else
    ok "F1: no recovery key opens a tpm_and_network volume"
fi

# Review rev26e F1a: a volume whose mode is not recorded (enrolled under a plain rule, as every
# volume enrolled before store migration 18) with a recovery key escrowed: once its rule requires
# tpm_and_network, the reveal is refused as the escrow would be; under a plain rule again, it is
# revealed.
D2=$WORK/disk2.luks
luks_file "$D2" "pw"
LID2=$(cryptsetup luksUUID "$D2")
printf 'pw' | A enroll "luks:$D2" >"$WORK/enroll2.out" 2>&1
check "a second volume enrolled under the plain rule" test $? -eq 0
check "... its recovery key escrowed" A recovery-key add "luks:$D2"
node_rule "$F" two-factor tpm_and_network "n*"
out=$(ctl "$F" volume recovery-key "$LID2" 2>&1) && rc=0 || rc=$?
expect_match "F1a: the rule now requires TPM and network: the reveal is refused" "$out rc=$rc" \
    "rule requires TPM and network: its recovery key is not revealed.*rc=[1-9]"
node_rule "$F" plain "" "n*"
T2=$(reveal "$LID2")
check "F1a: under a plain rule again, the revealed key opens the volume" opens "$D2" "$T2"
check_sanitizers
finish
