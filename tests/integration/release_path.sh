#!/usr/bin/env bash
# The release path on the embedded default: enroll, release under policy, denial, revocation,
# rate limiting, key rotation, and every bad input the release issue lists. No bad input
# releases a key; each gets a clear error and, where relevant, an audit record.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
for n in web-1 web-2 db-1 flood-1; do issue "$F" node "$n"; done
start_kfd "$F"

# Before any policy: deny by default, audited.
out=$(node "$F" web-1 enroll vol-a data env=prod)
expect_match "enroll with no policy is denied by default" "$out" "^code=permission_denied .*denied by default"

put_policy "$F" <<'YAML'
rules:
  - name: web
    match:
      volumes: {labels: {env: prod}}
      nodes: {names: ["web-*"]}
    effect: allow
    offline_fallback: true
  - name: flood
    match:
      nodes: {names: ["flood-*"]}
    effect: allow
    rate_limit: {per_minute: 6, burst: 3}
  - name: db-denied
    match:
      nodes: {names: ["db-*"]}
    effect: deny
YAML

out=$(node "$F" web-1 enroll vol-a data env=prod)
expect_match "enroll returns a wrapped key and an HPKE-sealed key" "$out" '^code=ok wrapped=kf:local:v1:[A-Za-z0-9+/=]+ key=[0-9a-f]{64} offline=1$'
KEY_A=$(field key "$out")
WRAP_A=$(field wrapped "$out")
out=$(node "$F" web-1 enroll vol-b data env=prod)
WRAP_B=$(field wrapped "$out")

out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "release opens to the enrolled key" "$out" "^code=ok status=released key=$KEY_A "
out=$(node "$F" web-2 release vol-a "$WRAP_A")
expect_match "another node allowed by policy gets the same key (migration)" "$out" "key=$KEY_A "

out=$(node "$F" db-1 release vol-a "$WRAP_A")
expect_match "a node a deny rule matches is refused" "$out" "^code=permission_denied .*rule 3 'db-denied'"

# Bad input: none releases a key.
out=$(node "$F" web-1 release vol-nope "$WRAP_A")
expect_match "an unknown volume: not_found" "$out" '^code=not_found message="unknown volume"'
out=$(node "$F" web-1 release vol-a "$WRAP_B")
expect_match "another volume's ciphertext: failed_precondition" "$out" '^code=failed_precondition .*does not belong to this volume'
out=$(node "$F" web-1 release vol-a "${WRAP_A:0:40}")
expect_match "a truncated ciphertext: failed_precondition" "$out" '^code=failed_precondition'
forged="${WRAP_A:0:20}$(printf '%s' "${WRAP_A:20:4}" | tr 'A-Za-z' 'N-ZA-Mn-za-m')${WRAP_A:24}"
out=$(node "$F" web-1 release vol-a "$forged")
expect_match "a forged ciphertext: failed_precondition" "$out" '^code=failed_precondition'
out=$(node "$F" web-1 release vol-a "kf:local:v9:$(printf 'A%.0s' $(seq 1 80))")
expect_match "an unknown KEK version: failed_precondition" "$out" '^code=failed_precondition'

# An ephemeral key of the wrong size, sent as raw protobuf: volume{id:"vol-a",kind:1},
# wrapped_key:"w", ephemeral_public_key: 5 bytes.
printf '\x0a\x09\x0a\x05vol-a\x10\x01\x12\x01w\x1a\x05\x01\x02\x03\x04\x05' >"$WORK/badkey.pb"
out=$(rpc "$F" web-1 NodeService/Release -H 'content-type: application/proto' --data-binary "@$WORK/badkey.pb")
expect_match "an ephemeral key of the wrong size: invalid_argument" "$out" '^400 \{"code":"invalid_argument","message":"ephemeral_public_key must be 32 bytes'
printf '\x0a\x0b\x0a\x05vol/a\x10\x07\x1a\x00' >"$WORK/badvol.pb"
out=$(rpc "$F" web-1 NodeService/Release -H 'content-type: application/proto' --data-binary "@$WORK/badvol.pb")
expect_match "a malformed volume reference: invalid_argument" "$out" '^400 \{"code":"invalid_argument"'

out=$(node "$F" web-2 enroll vol-a data env=prod)
expect_match "enrolling a volume id another node enrolled: already_exists" "$out" "^code=already_exists .*by another node"

# Operators only: a node certificate cannot approve.
out=$(rpc "$F" web-1 AdminService/Approve -H 'content-type: application/proto' --data-binary '')
expect_match "an approval sent with a node certificate: permission_denied" "$out" '^403 \{"code":"permission_denied"'

# Malformed policy: clear error with line:column, nothing changes.
printf 'rules:\n  - name: x\n    effect: maybe\n' >"$WORK/bad.yaml"
out=$(ctl "$F" policy put "$WORK/bad.yaml" 2>&1)
expect_match "a malformed policy is refused naming line:column" "$out" "invalid_argument: policy:3:13: effect must be allow or deny"
printf 'rules:\n  - name: x\n    effect: allow\n    match: {nodes: {cidrs: [10.0.0.0/33]}}\n' >"$WORK/bad.yaml"
out=$(ctl "$F" policy put "$WORK/bad.yaml" 2>&1)
expect_match "a bad CIDR is refused naming its line" "$out" "invalid_argument: policy:4:"
expect_match "the policy in force is unchanged" "$(ctl "$F" policy get)" "^# policy version 1"

out=$(ctl "$F" policy check web-1 vol-a) && rc=0 || rc=$?
expect_match "policy check names the deciding rule and why, and exits 0 on allow" "$out rc=$rc" "decision: allow rule: web .*label env=prod.* rc=0"
out=$(ctl "$F" policy check db-1 vol-a) && rc=0 || rc=$?
expect_match "policy check explains a denial, and exits 4 on deny" "$out rc=$rc" "decision: deny.*rule: db-denied.* rc=4"
out=$(ctl "$F" policy check db-1 vol-a --json) && rc=0 || rc=$?
expect_match "policy check --json: the same decision, one JSON object" "$out rc=$rc" '^\{"decision":"deny","rule":"db-denied",.* rc=4$'
out=$(ctl "$F" policy check web-1 vol-a --json)
check "... whose fields parse (python3 json)" python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["decision"]=="allow" and d["rule"]=="web", d' "$out"

# Rate limit: burst 3 at 6/min; a flood gets resource_exhausted with a retry delay.
WRAP_F=$(field wrapped "$(node "$F" flood-1 enroll vol-f data)")
codes=""
for i in $(seq 1 6); do codes="$codes $(field code "$(node "$F" flood-1 release vol-f "$WRAP_F")")"; done
expect_eq "a flood of releases from one node: the burst passes, then resource_exhausted" "$codes" " ok ok resource_exhausted resource_exhausted resource_exhausted resource_exhausted"
out=$(node "$F" flood-1 release vol-f "$WRAP_F")
expect_match "... with a retry delay" "$out" "retry after [0-9]+ ms"
out=$(node "$F" web-1 release vol-b "$WRAP_B")
expect_match "other nodes are not limited by it" "$out" "^code=ok status=released"

# KMS rotation: new wraps use v2, old ciphertexts still open, and the answer carries a rewrap.
ctl "$F" kms rotate >/dev/null
out=$(node "$F" web-2 release vol-a "$WRAP_A")
expect_match "after rotation the v1 ciphertext still releases" "$out" "key=$KEY_A "
REWRAP=$(field rewrapped "$out")
expect_match "... and the answer carries it rewrapped under v2" "$REWRAP" '^kf:local:v2:'
out=$(node "$F" web-2 release vol-a "$REWRAP")
expect_match "the rewrapped key releases the same key" "$out" "key=$KEY_A "
expect_eq "rotation wrote a 0600 KEK file" "$(stat -c %a "$F/state/kek/kek-2.key")" "600"

# Revocation: at once, whatever the certificate.
ctl "$F" node revoke web-2 "laptop stolen" >/dev/null
out=$(node "$F" web-2 release vol-a "$WRAP_A")
expect_match "a revoked node gets nothing" "$out" '^code=permission_denied message="node is revoked"'
out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "other nodes are unaffected" "$out" "key=$KEY_A "

audit=$(ctl "$F" audit --json)
expect_match "the audit has the enrollment" "$audit" '"action":"enroll".*"decision":"allow"'
expect_match "the audit has the default denial" "$audit" '"action":"policy_deny","actor":"web-1","node":"web-1","volume":"vol-a".*denied by default'
expect_match "the audit has the forged-ciphertext refusal" "$audit" '"action":"release".*"decision":"deny","reason":"the wrapped key does not belong to this volume"'
expect_match "the audit has the revocation" "$audit" '"action":"revoke","actor":"admin","node":"web-2".*"reason":"laptop stolen"'
expect_match "the audit has the revoked node's refusal" "$audit" '"node":"web-2","volume":"vol-a".*"decision":"deny","reason":"node is revoked"'
expect_match "the audit has the rotation" "$audit" '"action":"kms_rotate"'
expect_match "the audit has the policy change" "$audit" '"action":"policy_put"'
n_rel=$(ctl "$F" audit --action release --decision allow --json | wc -l)
check "filters: every successful release is one record ($n_rel)" test "$n_rel" -ge 6
expect_eq "filters: by node and volume" "$(ctl "$F" audit --node db-1 --volume vol-a --json | wc -l)" "1"
expect_eq "filters: until the past finds nothing" "$(ctl "$F" audit --until 2000-01-01T00:00:00Z --json | wc -l)" "0"
expect_match "audit verify passes" "$(ctl "$F" audit verify)" "audit chain ok"

stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
check_sanitizers
finish
