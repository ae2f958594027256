#!/usr/bin/env bash
# Review rev40 F2 (docs/reviews/rev40-store-failover-client.md): a volume whose mode is not
# recorded (enrolled under a plain rule here, as every volume enrolled before store migration 18)
# has its recovery key revealed only while no rule for its node and labels requires
# tpm_and_network (review rev26e F1a). The reveal judged the rule with no source address, no
# TPM-bound key and no quote, so a two-part rule that also names networks (cidrs), or requires
# tpm_key or attested as well, or comes after a deny rule, did not count: the key was revealed.
# Under a plain rule (also one placed before a two-part catch-all) it still is.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/recovery_lib.sh"

recovery_fleet
plain() {
    put_policy "$F" <<'YAML'
rules:
  - name: plain
    match: {nodes: {names: ["n*"]}}
    effect: allow
YAML
}
plain
D=$WORK/disk.luks
luks_file "$D" "pw"
agent_config "$WORK/a.yaml" n1 "deadline: 2s" "call_timeout: 500ms" "volumes:" "  - luks: $D"
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
LID=$(cryptsetup luksUUID "$D")
refused() { # WHAT: the reveal is refused under the policy on stdin, and the refusal is audited
    put_policy "$F"
    local out rc
    out=$(ctl "$F" volume recovery-key "$LID" 2>&1) && rc=0 || rc=$?
    expect_match "$1: the reveal is refused" "$out rc=$rc" \
        "rule requires TPM and network: its recovery key is not revealed.*rc=[1-9]"
}

printf 'pw' | A enroll "luks:$D" >"$WORK/enroll.out" 2>&1
check "a volume enrolled under the plain rule" test $? -eq 0
check "... its recovery key escrowed" A recovery-key add "luks:$D"

refused "two-part rule that also requires tpm_key" <<'YAML'
rules:
  - name: two-factor
    match: {nodes: {names: ["n*"]}}
    effect: allow
    require: [tpm_key, tpm_and_network]
YAML
refused "two-part rule that also requires attested" <<'YAML'
rules:
  - name: two-factor
    match: {nodes: {names: ["n*"]}}
    effect: allow
    require: [attested, tpm_and_network]
YAML
refused "two-part rule for the node's network" <<'YAML'
rules:
  - name: two-factor
    match: {nodes: {names: ["n*"], cidrs: ["127.0.0.0/8"]}}
    effect: allow
    require: [tpm_and_network]
YAML
refused "two-part rule after a deny rule for the node" <<'YAML'
rules:
  - name: quarantine
    match: {nodes: {names: ["n1"]}}
    effect: deny
  - name: two-factor
    match: {nodes: {names: ["n*"]}}
    effect: allow
    require: [tpm_and_network]
YAML
expect_match "... the refusals are audited" "$(ctl "$F" audit --action recovery_reveal --json)" \
    "\"decision\":\"deny\".*rule requires TPM and network"

# No over-refusal: a plain rule for the node before a two-part catch-all decides.
put_policy "$F" <<'YAML'
rules:
  - name: plain
    match: {nodes: {names: ["n1"]}}
    effect: allow
  - name: two-factor
    match: {nodes: {names: ["n*"]}}
    effect: allow
    require: [tpm_and_network]
YAML
T=$(reveal "$LID")
check "a plain rule first: the revealed key opens the volume" opens "$D" "$T"
plain
T=$(reveal "$LID")
check "under the plain rule alone: the revealed key opens the volume" opens "$D" "$T"
check_sanitizers
finish
