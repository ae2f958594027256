#!/usr/bin/env bash
# The vault-transit backend against the Vault stand-in (tests/kms-standin/vault_standin.py):
# enroll and release, AppRole and token-file auth with renewal, rotation then rewrap, and
# every failure the issue lists (down, slow, 429, 401/403, garbage, truncated, unknown key
# version, wrong key) failing closed with unavailable and an audit record, while the loop
# keeps serving other requests.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
for n in web-1 web-2; do issue "$F" node "$n"; done
start_vault_standin "$F" 3
VAULT=https://127.0.0.1:$SPORT

cat >>"$F/keyfleetd.yaml" <<YAML
limits:
  shutdown_grace: 5s
kms:
  backend: vault-transit
  timeout: 1s
  attempts: 3
  vault:
    address: $VAULT
    ca: kms.crt
    key: keyfleet
    role_id_file: role.id
    secret_id_file: secret.id
YAML
start_kfd "$F"
allow_nodes "$F" "web-*"

for _ in $(seq 1 40); do
    out=$(kcurl "$F" operator -w ' %{http_code}' "$URL/readyz")
    case $out in *" 200") break ;; esac
    sleep 0.05
done
expect_match "readyz is ready once Vault answered" "$out" ' 200$'
out=$(node "$F" web-1 enroll vol-a data)
expect_match "enroll through Vault returns a vault-transit wrapped key" "$out" '^code=ok wrapped=kf:vault:v1:[A-Za-z0-9_-]{22}:[A-Za-z0-9+/=]+ key=[0-9a-f]{64}'
KEY_A=$(field key "$out")
WRAP_A=$(field wrapped "$out")
out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "release through Vault opens to the enrolled key" "$out" "^code=ok status=released key=$KEY_A "
out=$(node "$F" web-2 release vol-a "$WRAP_A")
expect_match "a second node (migration) gets the same key" "$out" "key=$KEY_A "
expect_match "keyfleetd logged in with AppRole" "$(cat "$F/keyfleetd.log")" "event=kms_token client=vault ttl_s=3"

# The token lives 3 s; keyfleetd logs in again before it lapses, and releases keep working.
sleep 4
out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "after the first token's lifetime, releases still work (renewed in time)" "$out" "key=$KEY_A "
expect_eq "... through more than one login" "$([ "$(grep -c 'event=kms_token client=vault' "$F/keyfleetd.log")" -ge 2 ] && echo yes)" "yes"

# Another volume's Vault ciphertext under this volume's id: the key check value refuses it.
WRAP_B=$(field wrapped "$(node "$F" web-1 enroll vol-b data)")
swapped="kf:vault:v1:$(echo "$WRAP_A" | cut -d: -f4):$(echo "$WRAP_B" | cut -d: -f5)"
out=$(node "$F" web-1 release vol-a "$swapped")
expect_match "another volume's ciphertext with this volume's check value: failed_precondition" "$out" '^code=failed_precondition'

# Rotation in keyfleetctl rotates the Vault key; old ciphertexts release and come back rewrapped.
out=$(ctl "$F" kms rotate)
expect_match "keyfleetctl kms rotate reports the new Vault key version" "$out" "vault-transit.*2"
out=$(node "$F" web-2 release vol-a "$WRAP_A")
expect_match "after rotation the v1 ciphertext still releases" "$out" "key=$KEY_A "
REWRAP=$(field rewrapped "$out")
expect_match "... and the answer carries it rewrapped under v2" "$REWRAP" '^kf:vault:v2:'
out=$(node "$F" web-2 release vol-a "$REWRAP")
expect_match "the rewrapped key releases the same key" "$out" "key=$KEY_A "

# Failures: every one fails closed with unavailable and an audit record.
n_err_before=$(ctl "$F" audit --json | grep -c '"decision":"error"')
try_fault() {
    local desc=$1 line=$2
    fault "$F" "$line"
    out=$(node "$F" web-1 release vol-a "$WRAP_A")
    fault "$F" ""
    expect_match "$desc: release fails closed with unavailable" "$out" '^code=unavailable .*no key was released'
}
try_fault "Vault answers 429 on every try" "status 429"
try_fault "Vault answers 503 (sealed)" "status 503"
try_fault "Vault refuses the token (403) even after a new login" "status 403"
try_fault "Vault answers garbage" "garbage"
try_fault "Vault's answer is truncated" "truncate"
try_fault "Vault is slower than the timeout" "slow 1500"
fault "$F" "wrong-key"
out=$(node "$F" web-1 release vol-a "$WRAP_A")
fault "$F" ""
expect_match "Vault answers with the wrong key: refused by the key check value" "$out" '^code=failed_precondition'
fault "$F" "bad-version"
out=$(node "$F" web-1 enroll vol-c data)
fault "$F" ""
expect_match "Vault's answer names an unknown key version: enroll fails closed" "$out" '^code=unavailable'
n_err_after=$(ctl "$F" audit --json | grep -c '"decision":"error"')
expect_eq "each KMS failure left an audit record" "$((n_err_after - n_err_before))" "7"

# A revoked token: keyfleetd logs in again and carries on.
fault "$F" "revoke-tokens"
sleep 1.1
fault "$F" ""
out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "after Vault revokes keyfleetd's token, it logs in again and releases" "$out" "key=$KEY_A "

# One hanging Vault call does not block the loop.
fault "$F" "hang"
node "$F" web-1 release vol-a "$WRAP_A" >"$WORK/hung.out" &
HUNG=$!
sleep 0.3
t0=$(date +%s%N)
code=$(kcurl "$F" operator -o /dev/null -w "%{http_code}" "$URL/healthz")
t1=$(date +%s%N)
expect_eq "while a Vault call hangs, healthz answers" "$code" "200"
expect_eq "... at once (under 200 ms)" "$([ $(((t1 - t0) / 1000000)) -lt 200 ] && echo yes)" "yes"
out=$(ctl "$F" policy get)
expect_match "... and admin calls are served" "$out" "^# policy version"
wait "$HUNG"
fault "$F" ""
expect_match "the hung release ends unavailable after the timeouts" "$(cat "$WORK/hung.out")" '^code=unavailable'

# Vault down: unavailable, and back when it returns.
kill -9 "$STANDIN_PID"
out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "Vault down: release fails closed with unavailable" "$out" '^code=unavailable'
out=$(kcurl "$F" operator -w ' %{http_code}' "$URL/readyz")
expect_match "... and readyz says the KMS is unreachable" "$out" 'KMS unreachable.* 503$'

if grep -q -F -e "$(cat "$F/secret.id")" -e "hvs." "$F/keyfleetd.log"; then
    not_ok "no secret id or Vault token in keyfleetd's log"
else
    ok "no secret id or Vault token in keyfleetd's log"
fi
stop_kfd
expect_eq "keyfleetd stops cleanly" "$KFD_EXIT" "0"

# Token-file auth, and config errors.
start_standin "$F" vault_standin --root-token-file "$F/root.token" --role-id role-keyfleetd \
    --secret-id-file "$F/secret.id" --token-ttl 3 --key keyfleet
sed -i -e "s#address: .*#address: https://127.0.0.1:$SPORT#" -e '/role_id_file/d' \
    -e 's#secret_id_file: secret.id#token_file: root.token#' "$F/keyfleetd.yaml"
start_kfd "$F"
out=$(node "$F" web-1 enroll vol-t data)
expect_match "token-file auth: enroll works" "$out" '^code=ok wrapped=kf:vault:v1:'
stop_kfd
cp "$F/keyfleetd.yaml" "$WORK/bad.yaml"
sed -i 's#address: https://#address: http://#' "$WORK/bad.yaml"
out=$("$KFD" -c "$WORK/bad.yaml" --check-config 2>&1)
expect_match "an http:// Vault address is refused with file:line" "$out" "bad.yaml:[0-9]+:[0-9]+: vault address must be an https:// URL"
cp "$F/keyfleetd.yaml" "$WORK/bad.yaml"
sed -i 's#token_file: root.token#token_file: root.token\n    role_id_file: role.id#' "$WORK/bad.yaml"
out=$("$KFD" -c "$WORK/bad.yaml" --check-config 2>&1)
expect_match "token and AppRole together are refused" "$out" "vault needs token_file, or role_id_file and secret_id_file"
check_sanitizers
finish
