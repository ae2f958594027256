#!/usr/bin/env bash
# Review rev16e, finding E1: a cloned virtual TPM set forward with TPM2_ClockSet.
# A thief copies a VM's disk and its swtpm state while it is off. The original boots (reset R+1)
# and unlocks. The thief boots the copy (also reset R+1, the same PCRs: the same disk image),
# and, before the initramfs asks for the key, moves the copy's TPM clock forward with
# TPM2_ClockSet to a little more than the original's (estimated from the copy's clock and the
# time since the copy: a TPM clock runs with real time; the check allows up to 300 s ahead).
# Docs (attestation.md "TPM clock", threat-model.md) say a cloned TPM "is refused as soon as
# both copies quote, whichever came second"; rule 4 is said to catch a clone "set forward with
# TPM2_ClockSet to pass rule 2". Here both copies quote and neither is refused.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tpm_node_lib.sh"
command -v swtpm_setup >/dev/null || { echo "1..0 # SKIP swtpm_setup missing"; exit 77; }
command -v tpm2_setclock >/dev/null || { echo "1..0 # SKIP tpm2_setclock missing"; exit 77; }

tpm_node_setup "tpm_key, attested"
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "set-up: the node enrolled attested (tofu) and unlocks" "$out" "disk.luks: unlocked \\(key verified"

# The machine powers off; the thief copies its disk and TPM state.
SWTPM_A_PID=$(cat "$WORK/tpm-a/pid")
stop_pid "$SWTPM_A_PID"
rm -rf "$WORK/tpm-c" && cp -a "$WORK/tpm-a" "$WORK/tpm-c"
COPIED_AT=$(date +%s)
# The original boots again and unlocks (reset R+1).
rm -f "$WORK/tpm-a/pid"
start_swtpm "$WORK/tpm-a"
TCTI_A=$TCTI
boot_measurements "$TCTI_A"
tpm_config "$WORK/a/agent.yaml" "$TCTI_A"
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "the original, booted again, unlocks" "$out" "disk.luks: unlocked \\(key verified"
sleep 2
# The thief boots the copy (reset R+1 too, the same measurements) and sets its clock forward to
# the original's estimated clock plus a margin D (its own clock at the copy, plus the seconds
# since the copy: no access to the original needed).
rm -f "$WORK/tpm-c/pid"
start_swtpm "$WORK/tpm-c"
TCTI_C=$TCTI
boot_measurements "$TCTI_C"
D_MS=4000
c0=$(tpm_clock "$TCTI_C")
target=$((c0 + ($(date +%s) - COPIED_AT + 1) * 1000 + D_MS))
TPM2TOOLS_TCTI="$TCTI_C" tpm2_setclock "$target" >/dev/null 2>&1
ca=$(tpm_clock "$TCTI_A")
cc=$(tpm_clock "$TCTI_C")
expect_eq "the copy's clock was set ahead of the original's (no more than a few seconds)" \
    "$([ -n "$cc" ] && [ -n "$ca" ] && [ "$cc" -gt "$ca" ] && [ $((cc - ca)) -lt 60000 ] && echo yes)" "yes"
tpm_config "$WORK/a/clone.yaml" "$TCTI_C"
out=$("$AGENT" -c "$WORK/a/clone.yaml" unlock "luks:$WORK/disk.luks" 2>&1)
CLONE_GOT=$(printf '%s' "$out" | grep -c 'disk.luks: unlocked')
sleep $((D_MS / 1000 + 2))
# The original's next request (or heartbeat) comes a few seconds later.
out2=$(A unlock "luks:$WORK/disk.luks" 2>&1)
ORIG_GOT=$(printf '%s' "$out2" | grep -c 'disk.luks: unlocked')
show=$(ctl "$F" node attest show n1 2>&1)
expect_eq "both copies quoted: at most one of them gets the key (clone=$CLONE_GOT original=$ORIG_GOT)" \
    "$((CLONE_GOT + ORIG_GOT))" "1"
expect_match "... and the node is held once both copies quoted (docs: 'refused as soon as both copies quote')" \
    "$show" "HELD \\(tpm"
finish
