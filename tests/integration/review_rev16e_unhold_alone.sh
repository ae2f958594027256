#!/usr/bin/env bash
# Review rev16e, (d): one operator alone against a node held by attestation (review rev17, A1).
# Under admin.approvers: 2 a held node's unhold (and an acceptance) must wait for a second
# operator: the proposer alone, approving their own request, or a request for another hold
# time, must not lift it; the node stays refused meanwhile.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tpm_node_lib.sh"
command -v swtpm_setup >/dev/null || { echo "1..0 # SKIP swtpm_setup missing"; exit 77; }

tpm_node_setup "tpm_key, attested"
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "set-up: the node enrolled attested (tofu) and unlocks" "$out" "disk.luks: unlocked \\(key verified"

# A rolled-back TPM state: the node is held.
tpm_node_advance
restart_a "$WORK/tpm-a.saved"
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "set-up: a rolled-back TPM holds the node" "$out" "permission_denied.*counters went backwards"
issue "$F" operator op2
cat >"$F/policy.yaml" <<'YAML'
admin: {approvers: 2}
rules:
  - name: measured
    match: {nodes: {names: ["n1"]}}
    effect: allow
    require: [tpm_key, attested]
YAML
r=$(ctl "$F" policy put "$F/policy.yaml" 2>&1 | sed -n 's/.*request \([0-9a-f]\{16,\}\).*/\1/p')
ctl_as "$F" op2 approve "$r" >/dev/null 2>&1
s=$(ctl "$F" node attest show n1)
t=$(printf '%s' "$s" | sed -n 's/.*node attest unhold n1 \([0-9a-f]\{32\}\).*/\1/p')
out=$(ctl "$F" node attest unhold n1 "$t" 2>&1)
R=$(printf '%s' "$out" | sed -n 's/.*held as request \([0-9a-f]*\).*/\1/p')
expect_match "one operator's unhold under approvers: 2 is held for a second" "$R" "^[0-9a-f]+$"
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "... meanwhile the node stays held" "$out" "permission_denied.*node 'n1' is held \\(tpm\\)"
out=$(ctl "$F" approve "$R" 2>&1)
expect_eq "... the proposer cannot approve their own unhold (exit != 0)" "$([ "$(ctl "$F" node attest show n1 | grep -c 'HELD (tpm')" = 1 ] && echo held)" "held"
expect_match "... refused, saying why" "$out" "permission_denied|failed_precondition|already|own|another operator"
# A second unhold request by the same operator does not add up to two approvals.
out=$(ctl "$F" node attest unhold n1 "$t" 2>&1)
R2=$(printf '%s' "$out" | sed -n 's/.*held as request \([0-9a-f]*\).*/\1/p')
[ -n "$R2" ] && ctl "$F" approve "$R2" >/dev/null 2>&1
[ -n "$R2" ] && ctl "$F" approve "$R" >/dev/null 2>&1
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "... and two requests by one operator do not lift it" "$out" "permission_denied.*node 'n1' is held"
ctl_as "$F" op2 approve "$R" >/dev/null 2>&1
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "with a second operator's approval the hold is lifted and the node unlocks" "$out" "disk.luks: unlocked \\(key verified"
finish
