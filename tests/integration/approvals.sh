#!/usr/bin/env bash
# Human approval: PENDING and polling, n-of-m distinct operators, deny, expiry, TOTP with
# replay protection, and the signed webhook (with retries) for each new pending request.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
for n in app-1 solo-1; do issue "$F" node "$n"; done
issue "$F" operator bob
issue "$F" operator carol

# With a TOTP directory every operator needs a secret there (a missing file is refused, not
# taken as "no second factor"); approval_controls.sh checks that refusal.
mkdir -p "$F/totp"
TOTP_SECRET=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP
echo "$TOTP_SECRET" >"$F/totp/carol.b32"
ADMIN_SECRET=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ
BOB_SECRET=MFRGGZDFMZTWQ2LKNNWG23TPOBYXE43U
echo "$ADMIN_SECRET" >"$F/totp/admin.b32"
echo "$BOB_SECRET" >"$F/totp/bob.b32"
acode() { oathtool --totp -b "$ADMIN_SECRET"; }
bcode() { oathtool --totp -b "$BOB_SECRET"; }
head -c 32 /dev/urandom | base64 >"$F/webhook.secret"
python3 "$(dirname "$0")/webhook_sink.py" "$F/webhook.secret" "$WORK/sink.port" "$WORK/sink.log" 1 &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/sink.port" ] && break; sleep 0.05; done
cat >>"$F/keyfleetd.yaml" <<YAML
approvals:
  poll_interval: 500ms
  totp_dir: totp
webhook:
  url: http://127.0.0.1:$(cat "$WORK/sink.port")/keyfleet
  secret_file: webhook.secret
YAML
start_kfd "$F"

put_policy "$F" <<'YAML'
rules:
  - name: two-person
    match: {nodes: {names: ["app-*"]}}
    effect: allow
    approval: {approvers: 2, timeout: 10s}
  - name: one-person
    match: {nodes: {names: ["solo-*"]}}
    effect: allow
    approval: {approvers: 1}
YAML

out=$(node "$F" app-1 enroll vol-x data)
KEY=$(field key "$out")
WRAP=$(field wrapped "$out")
expect_match "enrollment needs no approval" "$out" "^code=ok"

out=$(node "$F" app-1 release vol-x "$WRAP")
expect_match "release under an approval rule answers PENDING" "$out" "^code=ok status=pending request=[0-9a-f]{32} retry_ms=500"
R=$(field request "$out")
out=$(node "$F" app-1 release vol-x "$WRAP" "$R")
expect_eq "polling with the request id keeps the same request" "$(field request "$out")" "$R"
expect_eq "... and creates no new one" "$(ctl "$F" pending | grep -c app-1)" "1"

out=$(ctl "$F" approve "$R" --totp-fd 3 3< <(acode))
expect_match "first approval: 1 of 2" "$out" "1 of 2 approvals"
out=$(ctl "$F" approve "$R" --totp-fd 3 3< <(acode) 2>&1)
expect_match "the same operator approving twice: already_exists" "$out" "already_exists: operator admin already approved"
expect_match "... still pending" "$(node "$F" app-1 release vol-x "$WRAP" "$R")" "status=pending"
out=$(ctl_as "$F" bob approve "$R" --totp-fd 3 3< <(bcode) --comment "change 4711")
expect_match "a second, distinct operator approves: 2 of 2" "$out" "2 of 2 approvals; approved"
out=$(node "$F" app-1 release vol-x "$WRAP" "$R")
expect_match "the next poll is released with the enrolled key" "$out" "^code=ok status=released key=$KEY request=$R "

out=$(node "$F" app-1 release vol-x "$WRAP")
R2=$(field request "$out")
out=$(ctl_as "$F" bob deny "$R2" --reason "not in a change window" 2>&1)
expect_match "a denial needs a TOTP code as an approval does" "$out" "invalid_argument: a TOTP code is required"
# bob's code of this step went to his approval above: the next step's (within the +-1 window).
oathtool --totp -b "$BOB_SECRET" -N "now + 30 seconds" | ctl_as "$F" bob deny "$R2" --totp - --reason "not in a change window" >/dev/null
out=$(node "$F" app-1 release vol-x "$WRAP" "$R2")
expect_match "a denied request's poll: permission_denied" "$out" "^code=permission_denied .*denied by an operator"
out=$(ctl "$F" approve "$R2" --totp-fd 3 3< <(acode) 2>&1)
expect_match "approving a denied request: failed_precondition" "$out" "failed_precondition: request $R2 is no longer waiting"

out=$(ctl "$F" approve 0123456789abcdef0123456789abcdef 2>&1)
expect_match "approving an unknown request: not_found" "$out" "^keyfleetctl: not_found: no pending request"
out=$(ctl "$F" approve 'bad id!' 2>&1)
expect_match "approving a malformed id: invalid_argument" "$out" "invalid_argument"

# TOTP: carol must give a code; a code is accepted once.
out=$(node "$F" solo-1 enroll vol-s data)
WRAP_S=$(field wrapped "$out")
R4=$(field request "$(node "$F" solo-1 release vol-s "$WRAP_S")")
out=$(ctl_as "$F" carol approve "$R4" 2>&1)
expect_match "an operator with TOTP must give a code" "$out" "invalid_argument: a TOTP code is required"
out=$(ctl_as "$F" carol approve "$R4" --totp-fd 3 3< <(echo 000000) 2>&1)
expect_match "a wrong TOTP code is refused" "$out" "permission_denied"
CODE=$(oathtool --totp -b "$TOTP_SECRET")
out=$(ctl_as "$F" carol approve "$R4" --totp-fd 3 3< <(echo "$CODE"))
expect_match "a right TOTP code approves" "$out" "1 of 1 approvals; approved"
R5=$(field request "$(node "$F" solo-1 release vol-s "$WRAP_S")")
out=$(ctl_as "$F" carol approve "$R5" --totp-fd 3 3< <(echo "$CODE") 2>&1)
expect_match "a replayed TOTP code is refused" "$out" "permission_denied: TOTP code already used"

# Expiry: the two-person rule's requests expire after 10 s.
R3=$(field request "$(node "$F" app-1 release vol-x "$WRAP")")
sleep 11.5
out=$(node "$F" app-1 release vol-x "$WRAP" "$R3")
expect_match "an expired request's poll: failed_precondition" "$out" "^code=failed_precondition .*expired"
out=$(ctl "$F" approve "$R3" --totp-fd 3 3< <(acode) 2>&1)
expect_match "approving an expired request: failed_precondition" "$out" "failed_precondition: .*(expired|no longer waiting)"

audit=$(ctl "$F" audit --json)
expect_match "audit: pending" "$audit" "\"action\":\"pending\".*\"request_id\":\"$R\""
expect_match "audit: both approvals, by name" "$audit" "\"action\":\"approve\",\"actor\":\"admin\".*\"request_id\":\"$R\".*\"action\":\"approve\",\"actor\":\"bob\".*\"reason\":\"approved with TOTP: change 4711\""
expect_match "audit: the release names the request" "$audit" "\"action\":\"release\".*\"request_id\":\"$R\",\"decision\":\"allow\""
expect_match "audit: the denial" "$audit" "\"action\":\"deny\",\"actor\":\"bob\".*\"reason\":\"not in a change window\""
expect_match "audit: the expiry" "$audit" "\"action\":\"expire\",\"actor\":\"keyfleetd\".*\"request_id\":\"$R3\""
expect_match "audit: the refused TOTP" "$audit" "\"action\":\"approve\",\"actor\":\"carol\".*\"decision\":\"deny\",\"reason\":\"wrong TOTP code \(1 of 5 in a row"
expect_match "audit verify passes" "$(ctl "$F" audit verify)" "audit chain ok"

# Webhook: one signed notification per pending request; the first delivery failed and was retried.
for _ in $(seq 1 100); do [ "$(grep -c '"status": 200' "$WORK/sink.log" 2>/dev/null)" -ge 5 ] && break; sleep 0.1; done
expect_eq "every pending request was delivered ($R $R2 $R4 $R5 $R3)" "$(grep -c '"status": 200' "$WORK/sink.log")" "5"
expect_eq "every delivery carried a valid HMAC-SHA256 signature" "$(grep -c '"valid": false' "$WORK/sink.log")" "0"
expect_match "the notification names the request and node" "$(cat "$WORK/sink.log")" "\"request_id\": \"$R\", \"node\": \"app-1\""
expect_match "a failed delivery was retried" "$(cat "$F/keyfleetd.log")" "event=http_retry client=webhook method=POST url=[^ ]+ status=500"
m=$(kcurl "$F" operator "$URL/metrics")
expect_match "webhook deliveries are counted" "$m" 'keyfleet_webhook_total\{result="delivered"\} 5'
expect_match "webhook retries are counted" "$m" 'keyfleet_webhook_total\{result="retry"\} 1'

# A TOTP code is never taken from argv (every local user sees it in ps while it is valid): each
# command that takes --totp refuses a literal code there, names the safe forms, and sends nothing.
for cmd in "approve $R" "deny $R" "node wipe app-1" "policy put $F/policy.yaml" "node unrevoke app-1" \
    "approle secret-id r1" "approle create r1 --node app-1" "node attest unhold app-1 tok"; do
    out=$(ctl "$F" $cmd --totp 123456 2>&1) && rc=0 || rc=$?
    expect_match "a code in argv is refused: $cmd" "$rc $out" "^2 keyfleetctl: --totp takes '-' \(the code on stdin\) or use --totp-fd N"
done
out=$(ctl "$F" policy put "$F/policy.yaml" --totp-fd 7 2>&1) && rc=0 || rc=$?
expect_match "policy put reads --totp-fd (none open here)" "$out" "no TOTP code on --totp-fd"

stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
check_sanitizers
finish
