#!/usr/bin/env bash
# Review rev16e, finding E2: a TPM clock past 2^63 ms switched the clone check off for that node.
# The store keeps the TPM clock in a signed integer; a quote whose clock is past INT64_MAX was
# recorded with counters only, and a record without a clock is checked by the counters only
# (rule 1). Whoever provisions a virtual TPM (or roots the node once) sets its clock there with
# TPM2_ClockSet; a later copy of its state then passes at the same counters with a clock behind
# the original's, which rule 2 refuses for any other TPM. Fixed: such a quote does not hold.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tpm_node_lib.sh"
command -v swtpm_setup >/dev/null || { echo "1..0 # SKIP swtpm_setup missing"; exit 77; }
command -v tpm2_setclock >/dev/null || { echo "1..0 # SKIP tpm2_setclock missing"; exit 77; }

tpm_node_prepare() {
    TPM2TOOLS_TCTI="$TCTI_A" tpm2_setclock 9223372036854800000 >/dev/null 2>&1
    expect_match "set-up: the TPM's clock is past 2^63 ms" "$(tpm_clock "$TCTI_A")" "^92233720368[0-9]{8}$"
}
tpm_node_setup "tpm_key"
n1_policy "tpm_key, attested"
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "a quote with a clock past 2^63 ms does not attest" "$out" "permission_denied.*past 2\\^63 ms"
show=$(ctl "$F" node attest show n1 2>&1)
expect_eq "... and records no TPM state without a clock" "$(printf '%s\n' "$show" | grep 'TPM counters' | grep -vc 'clock=')" "0"

# The machine powers off; its TPM state is copied. The original boots and requests a key, then
# the copy boots (the same counters, its clock behind the original's).
SWTPM_A_PID=$(cat "$WORK/tpm-a/pid")
stop_pid "$SWTPM_A_PID"
rm -rf "$WORK/tpm-c" && cp -a "$WORK/tpm-a" "$WORK/tpm-c"
rm -f "$WORK/tpm-a/pid"
start_swtpm "$WORK/tpm-a"
TCTI_A=$TCTI
boot_measurements "$TCTI_A"
tpm_config "$WORK/a/agent.yaml" "$TCTI_A"
A unlock "luks:$WORK/disk.luks" >/dev/null 2>&1
sleep 2
A unlock "luks:$WORK/disk.luks" >/dev/null 2>&1
rm -f "$WORK/tpm-c/pid"
start_swtpm "$WORK/tpm-c"
TCTI_C=$TCTI
boot_measurements "$TCTI_C"
tpm_config "$WORK/a/clone.yaml" "$TCTI_C"
out=$("$AGENT" -c "$WORK/a/clone.yaml" unlock "luks:$WORK/disk.luks" 2>&1)
expect_eq "the copy (clock behind the original's at the same counters) gets no key" \
    "$(printf '%s' "$out" | grep -c 'disk.luks: unlocked')" "0"
finish
