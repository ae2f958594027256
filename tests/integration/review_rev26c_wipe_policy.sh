#!/usr/bin/env bash
# Review rev26c W1 (docs/reviews/rev26c-recovery-erase-fixes.md): a node wipe needs
# admin.wipe_approvers operators (default 2), but a policy put needs only admin.approvers
# (default 1), so one operator put `admin: {wipe_approvers: 1}` and then wiped alone. A policy
# that lowers the operators a wipe needs is now held for as many as a wipe needs before it; one
# that keeps or raises it is not.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
issue "$F" operator bob
issue "$F" operator carol
start_kfd "$F"
rid_of() { printf '%s\n' "$1" | grep -Eo '[0-9a-f]{32}' | head -n 1; }
pol() { printf '%s\nrules:\n  - name: all\n    match: {nodes: {names: [n1]}}\n    effect: allow\n' "$1" >"$F/policy.yaml"
    ctl "$F" policy put "$F/policy.yaml" 2>&1; }
allow_nodes "$F" n1
check "n1 enrolls v1" node "$F" n1 enroll v1

out=$(pol "admin: {approvers: 1, wipe_approvers: 1}")
expect_match "lowering wipe_approvers to 1 is held for the two a wipe needs" "$out" \
    "waits for approval: request [0-9a-f]{32} needs 2 operators"
out=$(ctl "$F" node wipe n1 --volumes v1 --reason "alone")
expect_match "... so the wipe still needs two operators" "$out" "held as request .*: 2 approvals needed"
check "... that wipe denied" ctl_as "$F" bob deny "$(rid_of "$out")"
out=$(pol "admin: {approvers: 1, wipe_approvers: 3}")
expect_match "raising wipe_approvers is in force at once" "$out" "is in force"
out=$(pol "admin: {approvers: 1, wipe_approvers: 2}")
expect_match "lowering 3 -> 2 is held for three" "$out" "needs 3 operators"
R=$(rid_of "$out")
check "bob approves" ctl_as "$F" bob approve "$R"
check "carol approves" ctl_as "$F" carol approve "$R"
expect_match "... then in force (a wipe needs two)" "$(ctl "$F" node wipe n1 --volumes v1 --reason x)" \
    "held as request .*: 2 approvals needed"
check_sanitizers
finish
