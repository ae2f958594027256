#!/usr/bin/env bash
# Review rev16e, E4: an operator accepts a quote whose TPM counters went backwards (attestation
# rollback: audit, so the node is not held; its PCR values changed too, so there is a quote to
# accept). The accepted quote's counters become the node's record, and so must its TPM clock:
# before store migration 19 the record was left with counters and no clock, and the clock rules
# (a clone behind at the same counters) were off until the node's next quote.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tpm_node_lib.sh"
command -v swtpm_setup >/dev/null || { echo "1..0 # SKIP swtpm_setup missing"; exit 77; }

tpm_node_setup "tpm_key, attested"
n1_policy "tpm_key, attested" "attestation: {rollback: audit}"
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "set-up: the node enrolled attested (tofu) and unlocks" "$out" "disk.luks: unlocked \\(key verified"

tpm_node_advance
expect_match "set-up: the record has counters and a clock" "$(ctl "$F" node attest show n1)" \
    "TPM counters \\(highest quoted\\): reset=[0-9]+ restart=0 clock=[0-9]+"
# The saved state (counters behind), booted with another boot loader: a quote to accept.
restart_a "$WORK/tpm-a.saved" "another boot loader"
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "set-up: the changed PCR values are refused (not held: rollback: audit)" "$out" "permission_denied"
s=$(ctl "$F" node attest show n1)
expect_match "set-up: the quote to accept went backwards" "$s" "BACKWARDS"
t=$(printf '%s' "$s" | sed -n 's/.*node attest accept n1 \([0-9a-f]\{32\}\).*/\1/p')
e=$(printf '%s\n' "$s" | sed -n '/^last quote not accepted/,/^[^ ]/p' |
    sed -n 's/^  PCR *\([0-9]*\)  \([0-9a-f]\{64\}\).*/\1=\2/p' | tr '\n' ' ' | sed 's/ $//')
out=$(ctl "$F" node attest accept n1 "$t" --expect "$e" 2>&1)
expect_match "the operator accepts it" "$out" "the PCR values shown are accepted"
seen_clock=$(TPM2TOOLS_TCTI="$TCTI_A" tpm2_readclock 2>/dev/null | sed -n 's/^ *clock: *\([0-9]*\).*/\1/p' | head -n 1)
rec=$(ctl "$F" node attest show n1 | sed -n 's/^TPM counters (highest quoted): //p')
expect_match "E4: the record now has the accepted quote's counters and its clock" "$rec" \
    "^reset=[0-9]+ restart=0 clock=[0-9]+ safe=(yes|no)$"
c=$(printf '%s' "$rec" | sed -n 's/.* clock=\([0-9]*\).*/\1/p')
check "... the clock is the accepted quote's (at most the TPM's clock now: $c <= $seen_clock)" \
    test "${c:-0}" -gt 0 -a "${c:-0}" -le "${seen_clock:-0}"
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "... and the node unlocks" "$out" "disk.luks: unlocked \\(key verified"
check_sanitizers
finish
