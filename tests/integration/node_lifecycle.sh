#!/usr/bin/env bash
# Node and volume lifecycle (docs/operations.md): node list (state, last seen, identity,
# certificate expiry and serial, volumes), node unrevoke held for approval under admin.approvers,
# volume show and volume retire (its key refused from then on, audited), pending showing a
# volume's name and labels. Each refusal has a positive control. tests/mutants/ names the mutants
# this file must kill.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
for n in n1 n2; do issue "$F" node "$n"; done
issue "$F" operator ken
start_kfd "$F"
put_policy "$F" <<'YAML'
admin: {approvers: 2}
rules:
  - name: gated
    match: {volumes: {names: ["gated-*"]}, nodes: {names: ["n*"]}}
    effect: allow
    approval: {approvers: 1, timeout: 60s}
  - name: open
    match: {nodes: {names: ["n*"]}}
    effect: allow
YAML

out=$(node "$F" n1 enroll vol-a data-a tier=db)
expect_match "n1 enrolls vol-a" "$out" "^code=ok"
WRAP_A=$(field wrapped "$out")
WRAP_2=$(field wrapped "$(node "$F" n2 enroll vol-2 data-2)")
WRAP_G=$(field wrapped "$(node "$F" n2 enroll vol-g gated-g site=ams)")

# --- node list
out=$(ctl "$F" node list --json)
expect_match "node list --json: n1 active, its certificate's serial and expiry, mtls, its volume" "$out" \
    '"node":"n1","last_seen_at":0,"dead_man_after_s":0,"dead_man_past":false,"revoked":false,"state":"active","revoked_at":null,"revoked_reason":"","last_request":"20[0-9-]+T[0-9:]+Z","cert_serial":"[0-9a-f]+","cert_expires":"20[0-9-]+T[0-9:]+Z","cert_days_left":36[45],"identity":"mtls","volumes":\["vol-a"\]'
expect_match "node list: a table with a header" "$(ctl "$F" node list)" "^NODE +STATE +LAST SEEN +DEAD MAN +PAST +LAST REQUEST.* n1 +active +never +- +- +20[0-9-]+T[0-9:]+Z +mtls .* n2 +active "

# --- pending shows the volume's name and labels
R=$(field request "$(node "$F" n2 release vol-g "$WRAP_G")")
expect_match "pending --json: the volume's name and labels" "$(ctl "$F" pending --json)" \
    "\"request_id\":\"$R\".*\"volume_name\":\"gated-g\".*\"labels\":\\{\"site\":\"ams\"\\}"
expect_match "pending: the table names the volume" "$(ctl "$F" pending)" "$R +n2 +gated-g "

# --- volume show / retire
expect_match "volume show NAME" "$(ctl "$F" volume show data-a)" "volume: +vol-a .*labels: +tier=db .*state: +in service"
expect_match "control: vol-a is released before it is retired" "$(node "$F" n1 release vol-a "$WRAP_A")" \
    "^code=ok status=released"
out=$(ctl "$F" volume retire vol-a --reason "disk destroyed")
expect_match "volume retire" "$out" "volume vol-a retired"
S0=$(metric "$F" keyfleet_sealed_keys_total)
expect_match "a retired volume's key is refused" "$(node "$F" n1 release vol-a "$WRAP_A")" "^code=permission_denied.*retired"
expect_eq "... by the handler, before the KMS unwraps it and a key is sealed" "$(metric "$F" keyfleet_sealed_keys_total)" "$S0"
expect_match "volume show --json: retired, with the reason" "$(ctl "$F" volume show vol-a --json)" \
    '"retired_at":"20[0-9-]+T[0-9:]+Z","retired_reason":"disk destroyed","retired":true'
out=$(ctl "$F" volume retire vol-a 2>&1) && rc=0 || rc=$?
expect_match "retiring it again: failed_precondition" "$out rc=$rc" "failed_precondition: volume vol-a is already retired rc=1"
out=$(ctl "$F" volume retire nosuch 2>&1) && rc=0 || rc=$?
expect_match "an unknown volume: not_found" "$out rc=$rc" "not_found: .*rc=1"
out=$(ctl "$F" volume show nosuch 2>&1) && rc=0 || rc=$?
expect_match "volume show of an unknown volume: exit 1" "$out rc=$rc" "no enrolled volume .*rc=1"

# --- revoke, then unrevoke held for a second operator
expect_match "control: n2 is released before it is revoked" "$(node "$F" n2 release vol-2 "$WRAP_2")" "^code=ok status=released"
ctl "$F" node revoke n2 "lost laptop" >/dev/null
expect_match "node list: n2 revoked" "$(ctl "$F" node list --json)" '"node":"n2",[^}]*"revoked":true,"state":"revoked","revoked_at":"20[^"]*","revoked_reason":"lost laptop"'
expect_match "a revoked node gets nothing" "$(node "$F" n2 release vol-2 "$WRAP_2")" "^code=permission_denied"
out=$(ctl "$F" node unrevoke n1 2>&1) && rc=0 || rc=$?
expect_match "unrevoking a node that is not revoked: failed_precondition" "$out rc=$rc" "failed_precondition: node n1 is not revoked rc=1"
out=$(ctl "$F" node unrevoke n2 --reason "found it")
expect_match "node unrevoke is held for a second operator" "$out" "held as request [0-9a-f]{32}: 2 approvals needed"
C=$(printf '%s' "$out" | sed -n 's/.*request \([0-9a-f]\{32\}\).*/\1/p')
expect_match "... pending lists the change" "$(ctl "$F" pending --json)" "\"request_id\":\"$C\".*\"change\":\"unrevoke node n2: found it\""
expect_match "... and until it is approved n2 still gets nothing" "$(node "$F" n2 release vol-2 "$WRAP_2")" "^code=permission_denied"
out=$(ctl "$F" approve "$C" 2>&1) && rc=0 || rc=$?
expect_match "the proposer cannot approve it again" "$out rc=$rc" "already_exists.*rc=1"
expect_match "a second operator approves" "$(ctl_as "$F" ken approve "$C")" "2 of 2 approvals; approved"
expect_match "n2 is released again" "$(node "$F" n2 release vol-2 "$WRAP_2")" "^code=ok status=released"
expect_match "node list: n2 active again" "$(ctl "$F" node list --json)" '"node":"n2",[^}]*"state":"active"'
expect_match "audit: unrevoke and volume_retire" "$(ctl "$F" audit --json)" \
    '"action":"volume_retire",.*"volume":"vol-a".*"reason":"disk destroyed".*"action":"unrevoke",.*"node":"n2"'
expect_match "the audit chain verifies" "$(ctl "$F" audit verify)" "ok"
stop_kfd
expect_eq "keyfleetd stops cleanly" "$KFD_EXIT" "0"
check_sanitizers
finish
