#!/usr/bin/env bash
# The vault-transit backend against the Vault stand-in (tests/kms-standin/vault_standin.py):
# enroll and release, AppRole and token-file auth with renewal, rotation then rewrap, and
# every failure the issue lists (down, slow, 429, 401/403, garbage, truncated, unknown key
# version, wrong key) failing closed with unavailable and an audit record, while the loop
# keeps serving other requests. Then issue #30's Vault findings (items 6 to 10), each against a
# fresh stand-in: login failures reported as Vault answered them, failed logins backed off
# (secret-id uses not burned), policy 403s told apart from expired tokens (no re-login), derived
# keys refused clearly, Retry-After honoured and redirects reported with their Location. Then
# issue #23's Vault items: namespaces and the AppRole mount, 412 and 429 without Retry-After,
# rotations sent once, keys that cannot encrypt, and the config checks.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
for n in web-1 web-2; do issue "$F" node "$n"; done
start_vault_standin "$F" 3

cat >>"$F/keyfleetd.yaml" <<YAML
limits:
  shutdown_grace: 5s
YAML
vault_kms_yaml 1s 3 >>"$F/keyfleetd.yaml"
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
sleep 1.1 # Vault's Retry-After: 1 holds keyfleetd's calls that long
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
sleep 0.3 # the release reaches the hanging Vault call
code=$(kcurl "$F" operator -o /dev/null -w "%{http_code}" "$URL/healthz")
expect_eq "while a Vault call hangs, healthz answers" "$code" "200"
out=$(ctl "$F" policy get)
expect_match "... and admin calls are served" "$out" "^# policy version"
# Behaviour, not speed: both answers came while the release still waited on Vault.
expect_eq "... while the hung release is still waiting" "$(kill -0 "$HUNG" 2>/dev/null && echo waiting)" "waiting"
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
# --- Issue #30, Vault items 6 to 10: each scenario a fresh stand-in and keyfleetd (AppRole). ---
# vault_run [STANDIN ARGS...]: a fresh Vault stand-in and keyfleetd on it; VLOG0 marks the
# stand-in's log so that logins/requests count from here. VKEY names the Transit key, VFAULT a
# fault in force before keyfleetd starts.
vault_run() {
    VLOG0=$(wc -l <"$F/vault_standin.log")
    start_standin "$F" vault_standin --root-token-file "$F/root.token" --role-id role-keyfleetd --token-ttl 30 "$@"
    fault "$F" "${VFAULT:-}"
    sed -i '/^limits:/,$d' "$F/keyfleetd.yaml"
    printf 'limits:\n  shutdown_grace: 5s\n' >>"$F/keyfleetd.yaml"
    vault_kms_yaml 2s 3 "${VKEY:-keyfleet}" >>"$F/keyfleetd.yaml" # 2 s: the stand-in is Python, on a loaded machine
    [ -z "${VEXTRA:-}" ] || printf '%s\n' "$VEXTRA" >>"$F/keyfleetd.yaml" # more kms.vault lines
    : >"$F/keyfleetd.log"
    start_kfd "$F"
}
vault_end() { stop_kfd; kill -9 "$STANDIN_PID" 2>/dev/null; wait "$STANDIN_PID" 2>/dev/null; }
# vcount PATTERN: requests to the current stand-in whose log line matches PATTERN.
vcount() { tail -n +"$((VLOG0 + 1))" "$F/vault_standin.log" | grep -c -- "$1"; }
logins() { vcount 'POST /v1/auth/approle/login'; }
klog() { cat "$F/keyfleetd.log"; }
readyz() { kcurl "$F" operator -w ' %{http_code}' "$URL/readyz"; }

# Item 6: Vault refuses the AppRole login (wrong secret id): say what Vault said, not "unreachable".
head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$F/other.id"
vault_run --secret-id-file "$F/other.id" --key keyfleet
sleep 0.3
out=$(node "$F" web-1 enroll vol-x data)
expect_match "#30.6 login refused (400): enroll fails closed with unavailable" "$out" '^code=unavailable'
expect_match "#30.6 ... and the log says what Vault said" "$(grep 'event=kms_failed' "$F/keyfleetd.log")" \
    'refused the AppRole login \(auth/approle/login\): HTTP 400: invalid role or secret ID'
expect_eq "#30.6 ... never \"vault unreachable\" while Vault answers" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | grep -c unreachable)" "0"
expect_match "#30.6 readyz is not ready and names Vault's answer" "$(readyz)" 'not usable: .*HTTP 400: invalid role or secret ID.* 503$'
# Item 7: after that failure, calls do not each start a login: one login per back-off period.
n0=$(logins)
for i in 1 2 3 4 5 6; do node "$F" web-1 enroll "vol-x$i" data >/dev/null; done
bg=()
for i in 1 2 3 4; do
    node "$F" web-1 enroll "vol-y$i" data >/dev/null &
    bg+=("$!")
done
wait "${bg[@]}"
# One login per back-off period (1 s, doubling per failure): ten calls start at most a few, however
# slowly they run (a loaded or sanitized build), never one each.
expect_eq "#30.7 ten calls during the login back-off start at most 3 logins, not one each" "$(($(logins) - n0 <= 3 ? 1 : 0))" "1"
expect_match "#30.7 ... and each is refused with the login's own cause" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | tail -n 1)" \
    'invalid role or secret ID.*next attempt in'
expect_match "#30.7 the back-off grows (failures counted in kms_token_failed)" "$(grep 'event=kms_token_failed' "$F/keyfleetd.log" | tail -n 1)" \
    'failures=[0-9]+ retry_in_ms=[0-9]+'
vault_end

# Item 6 and 10: a login answered 404 (no namespace or mount) or 307 (a standby) is named as such.
VFAULT="status 404 +login" vault_run --secret-id-file "$F/secret.id" --key keyfleet
out=$(node "$F" web-1 enroll vol-x data)
expect_match "#30.6 login answered 404: the log names HTTP 404, not unreachable" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | head -n 1)" \
    'error="vault refused the AppRole login \(auth/approle/login\): HTTP 404: login fault 404 \(no such auth mount'
vault_end
VFAULT="redirect +login" vault_run --secret-id-file "$F/secret.id" --key keyfleet
out=$(node "$F" web-1 enroll vol-x data)
expect_match "#30.10 login answered 307: reported with its Location, not followed" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | head -n 1)" \
    'redirect: HTTP 307 to https://127.0.0.1:9/v1/auth/approle/login; keyfleetd does not follow redirects'
expect_eq "#30.10 ... and nothing asked 127.0.0.1:9" "$(grep -c 'Connection refused\|port 9 ' "$F/keyfleetd.log")" "0"
vault_end

# Item 10: a key call answered 307, 503 with Retry-After, 429 with a Retry-After too long to wait.
vault_run --secret-id-file "$F/secret.id" --key keyfleet
WRAP_R=$(field wrapped "$(node "$F" web-1 enroll vol-r data)")
fault "$F" "redirect"
out=$(node "$F" web-1 release vol-r "$WRAP_R")
expect_match "#30.10 a release answered 307 fails closed" "$out" '^code=unavailable'
expect_match "#30.10 ... and the log names the Location" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | tail -n 1)" \
    'transit/decrypt/keyfleet: HTTP 307 to https://127.0.0.1:9/v1/transit/decrypt/keyfleet'
fault "$F" "status 503 1"
t0=$(date +%s%N)
out=$(node "$F" web-1 release vol-r "$WRAP_R")
t1=$(date +%s%N)
expect_match "#30.10 503 with Retry-After: 1 fails closed after the tries" "$out" '^code=unavailable'
expect_eq "#30.10 ... having waited Retry-After between tries (>= 1.9 s for 3 tries)" "$([ $(((t1 - t0) / 1000000)) -ge 1900 ] && echo yes)" "yes"
sleep 1.1
fault "$F" "status 429 8"
d0=$(vcount 'POST /v1/transit/decrypt')
t0=$(date +%s%N)
out=$(node "$F" web-1 release vol-r "$WRAP_R")
t1=$(date +%s%N)
fault "$F" ""
expect_match "#30.10 429 with Retry-After: 8 (longer than keyfleetd waits) fails at once" "$out" '^code=unavailable'
expect_eq "#30.10 ... without retrying in the meantime (under 1 s, one request)" \
    "$([ $(((t1 - t0) / 1000000)) -lt 1000 ] && [ "$(($(vcount 'POST /v1/transit/decrypt') - d0))" = 1 ] && echo yes)" "yes"
out=$(node "$F" web-1 release vol-r "$WRAP_R")
expect_match "#30.10 ... and the next call within those 8 s is held, not sent" "$out" '^code=unavailable'
expect_eq "#30.10 ... (no request reached Vault)" "$(($(vcount 'POST /v1/transit/decrypt') - d0))" "1"
expect_match "#30.10 ... the log says Vault asked to wait" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | tail -n 1)" \
    'HTTP 429 \(injected fault 429\) with Retry-After 8 s'
vault_end

# Item 8 (and 7): a policy without read on transit/keys/keyfleet, then without update on decrypt,
# with a secret id good for 3 logins: no re-login on a valid token's 403, the capability named,
# and the secret id still works afterwards.
VFAULT="deny transit/keys/keyfleet" vault_run --secret-id-file "$F/secret.id" --secret-id-num-uses 3 --key keyfleet
for _ in $(seq 1 40); do grep -q 'event=kms_describe_failed' "$F/keyfleetd.log" && break; sleep 0.05; done
expect_eq "#30.8 the start-up key read refused by policy: one login, no re-login" "$(logins)" "1"
expect_match "#30.8 ... and the log names the missing capability" "$(grep 'event=kms_describe_failed' "$F/keyfleetd.log")" \
    'lacks the \\"read\\" capability on path \\"transit/keys/keyfleet\\"'
WRAP_P=$(field wrapped "$(node "$F" web-1 enroll vol-p data)")
expect_match "#30.8 enroll (datakey allowed) works meanwhile" "$WRAP_P" '^kf:vault:v1:'
fault "$F" "deny transit/decrypt/keyfleet"
for i in 1 2 3 4 5; do
    out=$(node "$F" web-1 release vol-p "$WRAP_P")
done
expect_match "#30.8 releases refused by policy fail closed" "$out" '^code=unavailable'
expect_eq "#30.7/8 ... five of them, still one login (no secret-id use spent)" "$(logins)" "1"
expect_match "#30.8 ... the log names \"update\" on transit/decrypt/keyfleet" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | tail -n 1)" \
    'lacks the \\"update\\" capability on path \\"transit/decrypt/keyfleet\\"'
fault "$F" ""
out=$(node "$F" web-1 release vol-p "$WRAP_P")
expect_match "#30.8 once the policy allows it, releases work with the same token" "$out" '^code=ok'
expect_eq "#30.8 ... still one login of the secret id's three" "$(logins)" "1"
vault_end

# Item 9: a derived Transit key is refused at the key read, in readyz, and by every call, and a
# release never reads as "not this volume's key".
VKEY=dkey vault_run --secret-id-file "$F/secret.id" --derived-key dkey
for _ in $(seq 1 40); do grep -q 'event=kms_key_unusable' "$F/keyfleetd.log" && break; sleep 0.05; done
expect_match "#30.9 start-up: the derived key is named in an error" "$(klog)" 'event=kms_key_unusable .*is derived \(derived: true\)'
expect_match "#30.9 readyz is not ready: derived key" "$(readyz)" 'not usable: .*is derived.* 503$'
out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "#30.9 a release under a derived key: unavailable, not failed_precondition" "$out" '^code=unavailable'
expect_match "#30.9 ... and the log says why" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | tail -n 1)" 'derived'
vault_end

# --- Issue #23, Vault: Enterprise and HCP deployments. ---
# 1. A namespace (HCP Vault: admin) and an AppRole mount of another name: every request, the
# login included, carries X-Vault-Namespace; without the option the login is named a 404.
VEXTRA="    namespace: admin
    approle_mount: approle-kf" vault_run --secret-id-file "$F/secret.id" --key keyfleet --namespace admin \
    --approle-mount approle-kf
WRAP_N=$(field wrapped "$(node "$F" web-1 enroll vol-n data)")
expect_match "#23.1 with namespace admin, enroll works through the namespace's mounts" "$WRAP_N" '^kf:vault:v1:'
out=$(node "$F" web-1 release vol-n "$WRAP_N")
expect_match "#23.1 ... and so does release" "$out" '^code=ok status=released'
expect_eq "#23.1 ... the login went to auth/approle-kf/login" "$(vcount 'POST /v1/auth/approle-kf/login' | sed 's/^[1-9][0-9]*$/yes/')" "yes"
expect_match "#23.1 ... and the start-up log names the namespace" "$(klog)" 'event=kms_open .*namespace=admin'
vault_end
VEXTRA="    approle_mount: approle-kf" vault_run --secret-id-file "$F/secret.id" --key keyfleet --namespace admin \
    --approle-mount approle-kf
out=$(node "$F" web-1 enroll vol-n2 data)
expect_match "#23.1 without the namespace option: enroll fails closed" "$out" '^code=unavailable'
expect_match "#23.1 ... and the log names the 404 and the likely cause" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | head -n 1)" \
    'auth/approle-kf/login\): HTTP 404: no handler for route.*namespace Vault does not have'
vault_end

# 2. 412 (a performance standby behind on a write) is retried; so is a 429 without Retry-After.
vault_run --secret-id-file "$F/secret.id" --key keyfleet
WRAP_Q=$(field wrapped "$(node "$F" web-1 enroll vol-q data)")
for f in "status 412" "status 429 -"; do
    fault "$F" "$f"
    d0=$(vcount 'POST /v1/transit/decrypt')
    out=$(node "$F" web-1 release vol-q "$WRAP_Q")
    fault "$F" ""
    expect_match "#23.2 $f on every try: the release fails closed" "$out" '^code=unavailable'
    expect_eq "#23.2 ... after the configured 3 tries" "$(($(vcount 'POST /v1/transit/decrypt') - d0))" "3"
done
out=$(node "$F" web-1 release vol-q "$WRAP_Q")
expect_match "#23.2 once Vault serves again, the release works" "$out" '^code=ok'

# 6. A rotation is sent once: an answer lost after Vault rotated is not retried (which would
# rotate twice); the key is read again instead.
r0=$(vcount 'POST /v1/transit/keys/keyfleet/rotate')
fault "$F" "rotate-lost"
out=$(ctl "$F" kms rotate 2>&1)
fault "$F" ""
expect_match "#23.6 a rotation whose answer is lost is reported as maybe done" "$out" 'rotation may have happened'
expect_eq "#23.6 ... and was sent once (3 tries allowed for other calls)" "$(($(vcount 'POST /v1/transit/keys/keyfleet/rotate') - r0))" "1"
for _ in $(seq 1 40); do [ "$(vcount 'GET /v1/transit/keys/keyfleet')" -ge 2 ] && break; sleep 0.05; done
expect_eq "#23.6 ... the key was read again at once" "$([ "$(vcount 'GET /v1/transit/keys/keyfleet')" -ge 2 ] && echo yes)" "yes"
expect_match "#23.6 ... and audited as an error (the KMS may have rotated)" \
    "$(ctl "$F" audit --json --action kms_rotate --decision error)" 'rotation may have happened'
out=$(ctl "$F" kms rotate 2>&1)
expect_match "#23.6 a rotation answered 200 with the key (Vault 1.10+) is accepted: version 3" "$out" "vault-transit.*3"
fault "$F" "rotate-204-read-fails"
out=$(ctl "$F" kms rotate 2>&1)
fault "$F" ""
expect_match "#23.6 a rotation answered 204 whose key read fails is not reported as a failed rotation" "$out" \
    'vault rotated the key, but reading its new version failed'
vault_end

# 5. A key that cannot encrypt (a signing key) is refused at the start-up read, like a derived one.
VKEY=skey vault_run --secret-id-file "$F/secret.id" --signing-key skey
for _ in $(seq 1 40); do grep -q 'event=kms_key_unusable' "$F/keyfleetd.log" && break; sleep 0.05; done
expect_match "#23.5 a signing key (ed25519) is named unusable" "$(klog)" 'event=kms_key_unusable .*of type ed25519 \(supports_encryption: false\)'
expect_match "#23.5 readyz is not ready" "$(readyz)" 'not usable: .*ed25519.* 503$'
vault_end

sed -i -e "s#key: skey#key: keyfleet#" -e '/role_id_file/d' -e 's#secret_id_file: secret.id#token_file: root.token#' \
    "$F/keyfleetd.yaml"

cp "$F/keyfleetd.yaml" "$WORK/bad.yaml"
sed -i 's#address: https://#address: http://#' "$WORK/bad.yaml"
out=$("$KFD" -c "$WORK/bad.yaml" --check-config 2>&1)
expect_match "an http:// Vault address is refused with file:line" "$out" "bad.yaml:[0-9]+:[0-9]+: vault address must be an https:// URL"
cp "$F/keyfleetd.yaml" "$WORK/bad.yaml"
sed -i 's#token_file: root.token#token_file: root.token\n    role_id_file: role.id#' "$WORK/bad.yaml"
out=$("$KFD" -c "$WORK/bad.yaml" --check-config 2>&1)
expect_match "token and AppRole together are refused" "$out" "vault needs token_file, or role_id_file and secret_id_file"
# bad_vault DESC SED-EXPR MESSAGE: keyfleetd --check-config refuses the edited config at file:line.
bad_vault() {
    cp "$F/keyfleetd.yaml" "$WORK/bad.yaml"
    sed -i "$2" "$WORK/bad.yaml"
    out=$("$KFD" -c "$WORK/bad.yaml" --check-config 2>&1)
    expect_match "#23.10 $1 is refused with file:line" "$out" "bad.yaml:[0-9]+:[0-9]+: $3"
}
bad_vault "a key name ending in '.'" 's#^    key: keyfleet$#    key: keyfleet.#' "vault key must be 1..127 of .*starting and ending with"
bad_vault "a key name starting with '-'" 's#^    key: keyfleet$#    key: -keyfleet#' "vault key must be 1..127 of .*starting and ending with"
bad_vault "a namespace with a leading /" 's#^    key: keyfleet$#    key: keyfleet\n    namespace: /admin#' "vault namespace must be segments"
bad_vault "a mount with an empty segment" 's#^    key: keyfleet$#    key: keyfleet\n    mount: a//b#' "vault mount must be segments"
bad_vault "approle_mount with token_file auth" 's#^    key: keyfleet$#    key: keyfleet\n    approle_mount: x#' "vault approle_mount is for AppRole"
check_sanitizers
finish
