#!/usr/bin/env bash
# Approval guards asserted by their outcome, not only by an error string (approvals.sh matches
# the messages; SQLite's primary keys would refuse both cases even if the checks were gone):
#   - the same operator approving twice: refused, the second approval is not counted, the
#     request stays pending, no key is released, and the refusal names the operator;
#   - a TOTP code used twice: refused, the approval is not counted, no key is released;
#   - both refusals are audited as denied approvals, with their reasons.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node app-1
issue "$F" node solo-1
issue "$F" operator bob
issue "$F" operator carol
mkdir -p "$F/totp"
ADMIN_SECRET=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ
BOB_SECRET=MFRGGZDFMZTWQ2LKNNWG23TPOBYXE43U
CAROL_SECRET=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP
echo "$ADMIN_SECRET" >"$F/totp/admin.b32"
echo "$BOB_SECRET" >"$F/totp/bob.b32"
echo "$CAROL_SECRET" >"$F/totp/carol.b32"
cat >>"$F/keyfleetd.yaml" <<YAML
approvals:
  poll_interval: 500ms
  totp_dir: totp
YAML
start_kfd "$F"
put_policy "$F" <<'YAML'
rules:
  - name: two-person
    match: {nodes: {names: ["app-*"]}}
    effect: allow
    approval: {approvers: 2}
  - name: one-person
    match: {nodes: {names: ["solo-*"]}}
    effect: allow
    approval: {approvers: 1, totp: true}
YAML
code() { oathtool --totp -b "$1"; }
sealed() { metric "$F" keyfleet_sealed_keys_total; }
DB=$F/state/keyfleet.db
approvals_of() { sqlite3 -cmd ".timeout 5000" "$DB" "SELECT count(*) FROM approvals WHERE request_id = '$1'"; }

# --- Double approval.
out=$(node "$F" app-1 enroll vol-x data)
WRAP=$(field wrapped "$out")
KEY=$(field key "$out")
R=$(field request "$(node "$F" app-1 release vol-x "$WRAP")")
expect_match "first approval: 1 of 2" "$(ctl "$F" approve "$R" --totp-fd 3 3< <(code $ADMIN_SECRET))" "1 of 2 approvals"
s0=$(sealed)
out=$(ctl "$F" approve "$R" --totp-fd 3 3< <(code $ADMIN_SECRET) 2>&1)
expect_match "the same operator again: refused, naming the operator" "$out" "already_exists: operator admin already approved $R"
db_has_audit "$DB" "action = 'approve' AND request_id = '$R' AND reason LIKE '%already approved%'" ||
    not_ok "the refusal is in the database" "no audit record within 5 s"
expect_eq "... the second approval is not counted" "$(approvals_of "$R")" "1"
expect_match "... the request still waits for 1 of 2" "$(ctl "$F" pending)" "$R.*1/2|$R.*1 of 2"
out=$(node "$F" app-1 release vol-x "$WRAP" "$R")
expect_match "... its poll is still pending" "$out" "^code=ok status=pending request=$R"
expect_eq "... no key was unwrapped and sealed" "$(sealed)" "$s0"
expect_eq "... and no release recorded" "$(ctl "$F" audit --json | grep -c "\"action\":\"release\".*\"request_id\":\"$R\",\"decision\":\"allow\"")" "0"
out=$(ctl_as "$F" bob approve "$R" --totp-fd 3 3< <(code $BOB_SECRET))
expect_match "control: a second, distinct operator completes it" "$out" "2 of 2 approvals; approved"
expect_match "... and the poll is released" "$(node "$F" app-1 release vol-x "$WRAP" "$R")" "^code=ok status=released key=$KEY "

# --- TOTP replay.
out=$(node "$F" solo-1 enroll vol-s data)
WRAP_S=$(field wrapped "$out")
R4=$(field request "$(node "$F" solo-1 release vol-s "$WRAP_S")")
R5=$(field request "$(node "$F" solo-1 release vol-s "$WRAP_S")")
CODE=$(code $CAROL_SECRET)
expect_match "carol approves R4 with a code" "$(ctl_as "$F" carol approve "$R4" --totp-fd 3 3< <(echo "$CODE"))" "1 of 1 approvals; approved"
s0=$(sealed)
out=$(ctl_as "$F" carol approve "$R5" --totp-fd 3 3< <(echo "$CODE") 2>&1)
expect_match "the same code again for R5: refused as a replay" "$out" "permission_denied: TOTP code already used"
db_has_audit "$DB" "action = 'approve' AND request_id = '$R5' AND reason LIKE '%already used%'" ||
    not_ok "the refusal is in the database" "no audit record within 5 s"
expect_eq "... R5's approval is not counted" "$(approvals_of "$R5")" "0"
out=$(node "$F" solo-1 release vol-s "$WRAP_S" "$R5")
expect_match "... R5's poll is still pending" "$out" "^code=ok status=pending request=$R5"
expect_eq "... no key was unwrapped and sealed" "$(sealed)" "$s0"
denied=$(ctl "$F" audit --json --action approve | grep '"decision":"deny"')
expect_match "... the replay is audited as a denied approval, with its reason" "$denied" \
    "\"actor\":\"carol\".*\"request_id\":\"$R5\".*TOTP code already used"
expect_match "... as is the double approval" "$denied" \
    "\"actor\":\"admin\".*\"request_id\":\"$R\".*operator admin already approved $R"

expect_match "the audit chain verifies" "$(ctl "$F" audit verify)" "audit chain ok"
stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
check_sanitizers
finish
