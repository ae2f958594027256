#!/usr/bin/env bash
# The controls approval and audit rest on, each tried the way the security review broke them
# (issue #22): a repeated Enroll with a forged name and labels, a TOTP brute force, a missing
# TOTP secret, an approved request reused, one operator rewriting policy alone, a revoked
# operator certificate, and a node revoked while the KMS is unwrapping its key. Runs on the
# Vault stand-in so that an unwrap can be held open (its "slow" fault).
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
for n in app-1 app-2 web-1 race-1; do issue "$F" node "$n"; done
OPS="bob carol dave erin frank grace heidi ivan judy ken lena mike nina olaf peggy"
for o in $OPS; do issue "$F" operator "$o"; done
start_vault_standin "$F" 600

# Every operator but dave has a TOTP secret; dave's missing file must not switch TOTP off. A
# code is accepted once, so each approval below is given by an operator who has not yet used
# one in this 30 s step.
mkdir -p "$F/totp"
declare -A SECRET
for o in admin $OPS; do
    [ "$o" = dave ] && continue
    SECRET[$o]=$(head -c 20 /dev/urandom | base32 | tr -d '=')
    echo "${SECRET[$o]}" >"$F/totp/$o.b32"
done
code() { oathtool --totp -b "${SECRET[$1]}"; }
# wrong_code OPERATOR: a well-formed code that is not valid in the current window (+-1 step).
wrong_code() {
    local good prev next c=100000
    good=$(code "$1")
    prev=$(oathtool --totp -b "${SECRET[$1]}" -N "now - 30 seconds")
    next=$(oathtool --totp -b "${SECRET[$1]}" -N "now + 30 seconds")
    while [ "$c" = "$good" ] || [ "$c" = "$prev" ] || [ "$c" = "$next" ]; do c=$((c + 1)); done
    echo "$c"
}
sed -i 's/client_auth: required/client_auth: optional/' "$F/keyfleetd.yaml" # AppRole logins (section 4)
cat >>"$F/keyfleetd.yaml" <<YAML
approvals:
  poll_interval: 200ms
  totp_dir: totp
YAML
vault_kms_yaml 3s 1 >>"$F/keyfleetd.yaml"
start_kfd "$F"
for _ in $(seq 1 60); do
    case $(kcurl "$F" operator -w ' %{http_code}' "$URL/readyz") in *" 200") break ;; esac
    sleep 0.05
done
# Checkpoint records (signed heads, docs/audit.md) come and go with time: not counted.
audit_count() { ctl "$F" audit --json | grep -v '"action":"checkpoint"' | grep -c '"seq"'; }

# rules [HEAD LINES...]: the test's policy, with HEAD LINES (an admin section) before its rules.
rules() {
    printf '%s\n' "$@" "rules:"
    cat <<'YAML'
  - name: quarantine
    match: {volumes: {labels: {quarantine: "yes"}}}
    effect: deny
  - name: two-person
    match: {nodes: {names: ["app-*"]}}
    effect: allow
    approval: {approvers: 2, timeout: 30s}
  - name: open
    match: {nodes: {names: ["web-*", "race-*"]}}
    effect: allow
YAML
}
rules | put_policy "$F"

# --- 1. A repeated Enroll is a release: recorded, decided on the enrolled volume.
RID=5f0c2a9e-enroll-replay-0001
out=$(NODE_CLIENT_REQUEST_ID=$RID node "$F" app-1 enroll vol-q quarantined quarantine=yes)
expect_match "enroll under a deny rule is refused" "$out" "^code=permission_denied"
out=$(NODE_CLIENT_REQUEST_ID=$RID node "$F" app-1 enroll vol-a data quarantine=no)
expect_match "app-1 enrolls vol-a" "$out" "^code=ok"
WRAP_A=$(field wrapped "$out")
before=$(audit_count)
out=$(NODE_CLIENT_REQUEST_ID=$RID node "$F" app-1 enroll vol-a forged-name quarantine=no)
expect_match "a replay under a two-person rule returns no key" "$out" "^code=failed_precondition .*needs approval"
expect_eq "... and is audited" "$(audit_count)" "$((before + 1))"
out=$(NODE_CLIENT_REQUEST_ID=$RID node "$F" app-2 enroll vol-a data quarantine=no)
expect_match "another node replaying the id gets no key" "$out" "^code=already_exists .*by another node"

RIDW=5f0c2a9e-enroll-replay-0002
out=$(NODE_CLIENT_REQUEST_ID=$RIDW node "$F" web-1 enroll vol-w data)
KEY_W=$(field key "$out")
WRAP_W=$(field wrapped "$out")
before=$(audit_count)
out=$(NODE_CLIENT_REQUEST_ID=$RIDW node "$F" web-1 enroll vol-w forged quarantine=yes)
expect_eq "a replay is decided on the enrolled labels, not the request's: the key again" \
    "$(field key "$out"):$(field wrapped "$out")" "$KEY_W:$WRAP_W"
expect_eq "... and the audit count rises with the key that left" "$(audit_count)" "$((before + 1))"
expect_match "... recorded as enroll_replay before the answer" "$(ctl "$F" audit --json --action enroll_replay)" \
    "\"action\":\"enroll_replay\".*\"volume\":\"vol-w\".*\"decision\":\"allow\""
out=$(node "$F" web-1 release vol-w "$WRAP_W")
expect_match "a release of vol-w" "$out" "^code=ok status=released key=$KEY_W"
out=$(NODE_CLIENT_REQUEST_ID=$RIDW node "$F" web-1 enroll vol-w data)
expect_match "once released, a replay is refused" "$out" "^code=already_exists .*can no longer be enrolled again"

# --- 1b. Another node's wrapped key (from a stolen disk) does not escape its owner's rule.
out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "web-1 (open rule) releasing app-1's vol-a waits for app-1's two approvers" "$out" "status=pending"
expect_match "... and says why" "$(ctl "$F" audit --json --action pending | tail -1)" "enrolled by 'app-1'"

# --- 2. An approved request releases once.
out=$(node "$F" app-1 release vol-a "$WRAP_A")
R=$(field request "$out")
expect_match "release under two-person: pending" "$out" "status=pending"
ctl "$F" approve "$R" --totp-fd 3 3< <(code admin) >/dev/null
ctl_as "$F" bob approve "$R" --totp-fd 3 3< <(code bob) >/dev/null
out=$(node "$F" app-1 release vol-a "$WRAP_A" "$R")
expect_match "the approved request releases" "$out" "^code=ok status=released key=[0-9a-f]{64} request=$R "
before=$(audit_count)
out=$(node "$F" app-1 release vol-a "$WRAP_A" "$R")
expect_match "the same approved request a second time: no key" "$out" "^code=failed_precondition .*already used"
expect_eq "... audited" "$(audit_count)" "$((before + 1))"
expect_eq "one release recorded for the request" \
    "$(ctl "$F" audit --json --action release | grep "\"request_id\":\"$R\"" | grep -c '"decision":"allow"')" "1"

# --- 2b. Approvals given under a looser policy do not satisfy a tightened one.
out=$(node "$F" app-1 release vol-a "$WRAP_A")
R3=$(field request "$out")
ctl_as "$F" ivan approve "$R3" --totp-fd 3 3< <(code ivan) >/dev/null
ctl_as "$F" judy approve "$R3" --totp-fd 3 3< <(code judy) >/dev/null
rules | sed 's/approvers: 2, timeout/approvers: 3, timeout/' | put_policy "$F"
before=$(audit_count)
out=$(node "$F" app-1 release vol-a "$WRAP_A" "$R3")
expect_match "a request approved by 2 after the rule became 3: no key" "$out" \
    "^code=failed_precondition .*policy changed since approval: it now needs 3 approvals .* had 2"
expect_eq "... audited" "$(audit_count)" "$((before + 1))"
rules | put_policy "$F"

# --- 3. TOTP: a missing secret is refused, wrong codes lock the operator out.
out=$(node "$F" app-1 release vol-a "$WRAP_A")
R2=$(field request "$out")
out=$(ctl_as "$F" dave approve "$R2" --totp-fd 3 3< <(echo 123456) 2>&1)
expect_match "an operator without a TOTP secret cannot approve" "$out" "permission_denied: operator dave has no TOTP secret"
for i in 1 2 3 4 5; do
    out=$(ctl_as "$F" carol approve "$R2" --totp-fd 3 3< <(wrong_code carol) 2>&1)
    expect_match "wrong code $i is refused" "$out" "permission_denied: wrong TOTP code \($i of 5"
done
out=$(ctl_as "$F" carol approve "$R2" --totp-fd 3 3< <(code carol) 2>&1)
expect_match "after 5 wrong codes even the right code is refused" "$out" "permission_denied: operator carol is locked out"
expect_match "no approval was counted" "$(ctl "$F" pending)" "$R2 .* 0/2 "
expect_match "the lockout is audited" "$(ctl "$F" audit --json --action totp_lockout)" \
    "\"actor\":\"carol\".*\"decision\":\"deny\".*5 wrong TOTP codes in a row"
out=$(ctl_as "$F" erin approve "$R2" --totp-fd 3 3< <(code erin) 2>&1)
expect_match "another operator is not locked out" "$out" "1 of 2 approvals"

# --- 4. Policy changes need admin.approvers operators.
rules "admin: {approvers: 2}" | put_policy "$F"
V=$(ctl "$F" policy get | sed -n 's/^# policy version //p')
cat >"$F/lax.yaml" <<'YAML'
admin: {approvers: 2}
rules:
  - name: everyone
    match: {nodes: {names: ["*"]}}
    effect: allow
YAML
out=$(ctl_as "$F" frank policy put "$F/lax.yaml" --totp-fd 3 3< <(code frank) 2>&1)
expect_match "one operator's policy put is held" "$out" "waits for approval: request ([0-9a-f]{32}) needs 2 operators"
C=$(printf '%s' "$out" | sed -n 's/.*request \([0-9a-f]\{32\}\).*/\1/p')
expect_eq "... and the policy in force is unchanged" "$(ctl "$F" policy get | sed -n 's/^# policy version //p')" "$V"
out=$(node "$F" app-2 release vol-a "$WRAP_A")
expect_match "... so approval is still required" "$out" "status=pending"
out=$(ctl_as "$F" frank approve "$C" --totp-fd 3 3< <(code frank) 2>&1)
expect_match "the proposer cannot approve their own change again" "$out" "already_exists"
expect_match "the held change is listed" "$(ctl "$F" pending)" "$C +\(change\) +policy version"
out=$(ctl_as "$F" grace approve "$C" --totp-fd 3 3< <(code grace))
expect_match "a second operator approves the change" "$out" "2 of 2 approvals; approved"
expect_eq "the approved policy is in force" "$(ctl "$F" policy get | sed -n 's/^# policy version //p')" "$((V + 1))"
expect_match "the change is audited with both operators" "$(ctl "$F" audit --json)" \
    "\"action\":\"change_proposed\",\"actor\":\"frank\".*\"action\":\"approve\",\"actor\":\"grace\".*\"action\":\"policy_put\""
out=$(ctl_as "$F" heidi approle create r1 --node app-1 --totp-fd 3 3< <(code heidi) 2>&1)
expect_match "a role creation is held too" "$out" "waits for approval"
expect_match "... the role does not exist yet" "$(ctl "$F" approle show r1 2>&1)" "not_found"
CR=$(printf '%s' "$out" | sed -n 's/.*request \([0-9a-f]\{32\}\).*/\1/p')
ctl_as "$F" nina approve "$CR" --totp-fd 3 3< <(code nina) >/dev/null
RID1=$(ctl "$F" approle show r1 | sed -n 's/^role_id: //p')
out=$(ctl_as "$F" olaf approle secret-id r1 --totp-fd 3 3< <(code olaf) 2>&1)
expect_match "one operator's secret id (it makes its holder app-1) is held" "$out" "waits for approval: request"
S1=$(printf '%s' "$out" | sed -n 's/^secret_id: //p')
CS=$(printf '%s' "$out" | sed -n 's/.*request \([0-9a-f]\{32\}\).*/\1/p')
expect_match "... and does not log in before approval" "$(approle_login "$RID1" "$S1")" "^401 "
ctl_as "$F" peggy approve "$CS" --totp-fd 3 3< <(code peggy) >/dev/null
expect_match "... it logs in once a second operator approved" "$(approle_login "$RID1" "$S1")" "^200 "

# --- 4b. With one approver and TOTP, the proposal itself applies the change, and it is in force.
rules "admin: {approvers: 1, totp: true}" >"$F/one.yaml"
out=$(ctl_as "$F" ken policy put "$F/one.yaml" --totp-fd 3 3< <(code ken) 2>&1)
C2=$(printf '%s' "$out" | sed -n 's/.*request \([0-9a-f]\{32\}\).*/\1/p')
out=$(ctl_as "$F" lena approve "$C2" --totp-fd 3 3< <(code lena))
expect_match "admin.approvers 1 with TOTP, approved by two" "$out" "2 of 2 approvals; approved"
cat >"$F/open.yaml" <<'YAML'
admin: {approvers: 1, totp: true}
rules:
  - name: everyone
    match: {nodes: {names: ["*"]}}
    effect: allow
YAML
out=$(ctl_as "$F" mike policy put "$F/open.yaml" --totp-fd 3 3< <(code mike) 2>&1)
expect_match "one operator with TOTP: the policy is in force at once" "$out" "^policy version [0-9]+ is in force"
out=$(node "$F" app-2 release vol-a "$WRAP_A")
expect_match "... and decides the next release (no approval now)" "$out" "^code=ok status=released"

# --- 5. A revoked operator certificate is refused, whatever it presents.
SERIAL=$(openssl x509 -in "$F/bob.crt" -noout -serial)
out=$(ctl "$F" cert revoke --cert "$F/bob.crt" --reason "laptop stolen")
expect_match "keyfleetctl cert revoke" "$out" "revoked"
out=$(ctl_as "$F" bob pending 2>&1)
expect_match "the revoked operator is refused" "$out" "unauthenticated: certificate serial [0-9a-f]+ is revoked"
expect_match "the refusal is audited" "$(ctl "$F" audit --json --action auth_fail)" "\"node\":\"bob\".*certificate is revoked"
out=$(ctl "$F" cert revoke "$SERIAL" 2>&1)
expect_match "revoking twice: already_exists" "$out" "already_exists"
out=$(ctl "$F" cert revoke 'not-hex' 2>&1)
expect_match "a malformed serial is refused before any call" "$out" "not a certificate serial"

# --- 6. A node revoked while its unwrap is in flight gets no key.
out=$(node "$F" race-1 enroll vol-r data)
WRAP_R=$(field wrapped "$out")
fault "$F" "slow 1500"
node "$F" race-1 release vol-r "$WRAP_R" >"$WORK/race.out" &
RPID=$!
sleep 0.5
ctl "$F" node revoke race-1 "revoked during the unwrap" >/dev/null
wait "$RPID"
fault "$F" ""
out=$(cat "$WORK/race.out")
expect_match "a revoke landing during a slow unwrap: no key" "$out" "^code=permission_denied .*revoked"
expect_eq "no release of vol-r was recorded as allowed" \
    "$(ctl "$F" audit --json --action release | grep '"volume":"vol-r"' | grep -c '"decision":"allow"')" "0"

expect_match "audit verify passes" "$(ctl "$F" audit verify)" "audit chain ok"
stop_kfd TERM
check_sanitizers
finish
