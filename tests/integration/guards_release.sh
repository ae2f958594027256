#!/usr/bin/env bash
# Guards on the node side of Release and Enroll, each asserted by its outcome (no key, the
# audit record and its reason) and by keyfleet_sealed_keys_total: a refused request must be
# refused before the KMS unwraps and a key is sealed, not only later at apply (store_guard.c),
# so a handler check that is lost shows here even where the apply-time check still refuses.
#   - another node polling a pending or an approved request: permission_denied, audited;
#     the owner polling it for another of its volumes: the same;
#   - an approved request past its expiry: failed_precondition, no key;
#   - an Enroll replay (same request id) by another node: refused, no key, audited;
#   - a revoked node's Enroll (new volume and replay) and Release: refused and audited.
# Each has a positive control, so a refusal is never a broken setup. tests/mutants/ names the
# mutants this file must kill.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
for n in n1 n2 n3; do issue "$F" node "$n"; done
start_kfd "$F"
put_policy "$F" <<'YAML'
rules:
  - name: gated
    match: {volumes: {names: ["gated-*"]}, nodes: {names: ["n*"]}}
    effect: allow
    approval: {approvers: 1, timeout: 10s}
  - name: open
    match: {nodes: {names: ["n*"]}}
    effect: allow
YAML
sealed() { metric "$F" keyfleet_sealed_keys_total; }
audit_json() { ctl "$F" audit --json; }
# no_key DESC LINE: the node_client line carries no key.
no_key() { case "$2" in *key=*) not_ok "$1" "a key was returned: $2" ;; *) ok "$1" ;; esac; }

out=$(node "$F" n1 enroll vol-g gated-g)
WRAP_G=$(field wrapped "$out")
KEY_G=$(field key "$out")
expect_match "n1 enrolls a gated volume" "$out" "^code=ok"
WRAP_H=$(field wrapped "$(node "$F" n1 enroll vol-h gated-h)")
WRAP_2=$(field wrapped "$(node "$F" n2 enroll vol-2 gated-2)")

# R1 stays pending; R2 is approved at once and left to expire (10 s) while the rest runs.
R1=$(field request "$(node "$F" n1 release vol-g "$WRAP_G")")
out=$(node "$F" n1 release vol-h "$WRAP_H")
R2=$(field request "$out")
R2_AT=$(date +%s)
expect_match "n1's releases are pending" "$R1 $R2" "^[0-9a-f]{32} [0-9a-f]{32}$"
ctl "$F" approve "$R2" >/dev/null
out=$(node "$F" n1 release vol-h "$WRAP_H" "$R2")
expect_match "control: the approved R2 would be released now" "$out" "^code=ok status=released"
# That consumed R2 (one release per approval); a second approved request is left to expire.
R2=$(field request "$(node "$F" n1 release vol-h "$WRAP_H")")
R2_AT=$(date +%s)
ctl "$F" approve "$R2" >/dev/null

# --- Polling someone else's request, or one's own for another volume.
s0=$(sealed)
out=$(node "$F" n2 release vol-g "$WRAP_G" "$R1")
expect_match "another node polling a pending request: permission_denied" "$out" \
    '^code=permission_denied message="request id belongs to another node or volume"'
out=$(node "$F" n1 release vol-h "$WRAP_H" "$R1")
expect_match "the owner polling its pending request for another volume: permission_denied" "$out" \
    '^code=permission_denied message="request id belongs to another node or volume"'
expect_match "control: the owner's own poll is still pending" "$(node "$F" n1 release vol-g "$WRAP_G" "$R1")" \
    "^code=ok status=pending request=$R1"
ctl "$F" approve "$R1" >/dev/null
out=$(node "$F" n2 release vol-g "$WRAP_G" "$R1")
expect_match "another node polling an approved request: permission_denied" "$out" \
    '^code=permission_denied message="request id belongs to another node or volume"'
no_key "... and no key" "$out"
out=$(node "$F" n2 release vol-2 "$WRAP_2" "$R1")
expect_match "another node polling it for its own volume: permission_denied" "$out" '^code=permission_denied'
out=$(node "$F" n1 release vol-h "$WRAP_H" "$R1")
expect_match "the owner polling its approved request for another volume: permission_denied" "$out" \
    '^code=permission_denied message="request id belongs to another node or volume"'
no_key "... and no key" "$out"
expect_eq "none of these unwrapped and sealed a key" "$(sealed)" "$s0"
a=$(audit_json)
for who in "n2\",\"volume\":\"vol-g" "n2\",\"volume\":\"vol-2" "n1\",\"volume\":\"vol-h"; do
    expect_match "audited: deny for node $who with $R1" "$a" \
        "\"action\":\"release\",\"actor\":\"${who%%\"*}\",\"node\":\"$who\".*\"request_id\":\"$R1\",\"decision\":\"deny\",\"reason\":\"request id belongs to another node or volume\""
done
out=$(node "$F" n1 release vol-g "$WRAP_G" "$R1")
expect_match "control: the owner's poll of R1 for its volume is released" "$out" "^code=ok status=released key=$KEY_G request=$R1 "

# --- Enroll replay by another node: same volume id and request id, another certificate.
RID=enroll-replay-0123456789
out=$(NODE_CLIENT_REQUEST_ID=$RID node "$F" n1 enroll vol-r open-r)
KEY_R=$(field key "$out")
WRAP_R=$(field wrapped "$out")
expect_match "n1 enrolls vol-r with a known request id" "$out" "^code=ok"
s0=$(sealed)
out=$(NODE_CLIENT_REQUEST_ID=$RID node "$F" n2 enroll vol-r open-r)
expect_match "n2 replaying n1's enrollment: already_exists, by another node" "$out" \
    '^code=already_exists message="volume vol-r is already enrolled by another node"'
no_key "... and no key" "$out"
expect_eq "... none sealed" "$(sealed)" "$s0"
expect_match "... audited as a denied enroll by n2" "$(audit_json)" \
    "\"action\":\"enroll\",\"actor\":\"n2\",\"node\":\"n2\",\"volume\":\"vol-r\".*\"request_id\":\"$RID\",\"decision\":\"deny\",\"reason\":\"volume vol-r is already enrolled by another node\""
out=$(NODE_CLIENT_REQUEST_ID=$RID node "$F" n1 enroll vol-r open-r)
expect_eq "control: n1's own replay returns the enrolled key" "$(field code "$out") $(field key "$out")" "ok $KEY_R"

# --- A revoked node.
RID3=enroll-revoked-0123456789
out=$(NODE_CLIENT_REQUEST_ID=$RID3 node "$F" n3 enroll vol-3 open-3)
WRAP_3=$(field wrapped "$out")
expect_match "n3 enrolls before it is revoked" "$out" "^code=ok"
ctl "$F" node revoke n3 "guards test" >/dev/null
s0=$(sealed)
out=$(node "$F" n3 enroll vol-3b open-3b)
expect_match "a revoked node's Enroll of a new volume: permission_denied" "$out" '^code=permission_denied message="node is revoked"'
no_key "... and no key" "$out"
out=$(NODE_CLIENT_REQUEST_ID=$RID3 node "$F" n3 enroll vol-3 open-3)
expect_match "a revoked node's Enroll replay: permission_denied" "$out" '^code=permission_denied message="node is revoked"'
no_key "... and no key" "$out"
out=$(node "$F" n3 release vol-3 "$WRAP_3")
expect_match "a revoked node's Release: permission_denied" "$out" '^code=permission_denied message="node is revoked"'
expect_eq "none of these generated or unwrapped and sealed a key" "$(sealed)" "$s0"
a=$(audit_json)
expect_match "audited: the revoked node's enroll of the new volume" "$a" \
    '"action":"enroll","actor":"n3","node":"n3","volume":"vol-3b".*"decision":"deny","reason":"node is revoked"'
expect_match "audited: the revoked node's replay" "$a" \
    '"action":"enroll","actor":"n3","node":"n3","volume":"vol-3".*"decision":"deny","reason":"node is revoked"'
expect_match "audited: the revoked node's release" "$a" \
    '"action":"release","actor":"n3","node":"n3","volume":"vol-3".*"decision":"deny","reason":"node is revoked"'
db_has_audit "$F/state/keyfleet.db" "action = 'release' AND node = 'n3' AND volume_id = 'vol-3' AND reason = 'node is revoked'" ||
    not_ok "the refused release is in the database" "no audit record within 5 s"
expect_eq "the new volume was not enrolled" "$(sqlite3 -cmd ".timeout 5000" "$F/state/keyfleet.db" \
    "SELECT count(*) FROM volumes WHERE id = 'vol-3b'" 2>&1)" "0"

# --- The approved R2, past its expiry (10 s after it was created).
while [ "$(date +%s)" -le $((R2_AT + 11)) ]; do sleep 0.5; done
s0=$(sealed)
out=$(node "$F" n1 release vol-h "$WRAP_H" "$R2")
expect_match "an approved request past its expiry: failed_precondition" "$out" \
    "^code=failed_precondition message=\"approved request $R2 has expired\""
no_key "... and no key" "$out"
expect_eq "... none unwrapped and sealed" "$(sealed)" "$s0"
expect_eq "... and no release recorded for it" \
    "$(audit_json | grep -c "\"action\":\"release\".*\"request_id\":\"$R2\",\"decision\":\"allow\"")" "0"

expect_match "the audit chain verifies" "$(ctl "$F" audit verify)" "audit chain ok"
stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
check_sanitizers
finish
