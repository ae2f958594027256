#!/usr/bin/env bash
# AppRole-style node authentication: roles, secret ids shown once and stored hashed, Login for
# a short-lived bearer token, an agent with `identity: approle` unlocking a real LUKS2
# container, and every bad input the issue lists: a wrong secret id, a spent one, an expired
# token, a token used from outside the role's CIDRs; failures get one generic error, are
# audited and rate limited.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
start_optional_auth_fleet "$F"
allow_nodes "$F" "web-*"

# Load-balancer probes (client_auth: optional): /healthz and /readyz answer without a client
# certificate, and say nothing more than ok; /metrics and every RPC need one.
anon() { curl -sS --max-time 10 --http2 --cacert "$F/ca.crt" -o "$WORK/anon.out" -w '%{http_code}' "$@"; printf ' %s' "$(head -c 200 "$WORK/anon.out")"; }
expect_match "/healthz without a client certificate: 200 ok" "$(anon "$URL/healthz")" "^200 ok"
expect_match "/readyz without a client certificate: 200 ok" "$(anon "$URL/readyz")" "^200 ok"
expect_match "/metrics without a client certificate: 401, no metrics" "$(anon "$URL/metrics")" "^401 a client certificate is required"
expect_match "control: /metrics with one" "$(kcurl "$F" operator "$URL/metrics")" "keyfleet_"
expect_match "an admin RPC without a client certificate: 401" \
    "$(anon -H 'content-type: application/proto' --data-binary '' "$URL/keyfleet.v1.AdminService/ListNodes")" "^401 "

out=$(ctl "$F" approle create web-role --node web-7 --cidr 127.0.0.1/32 --token-ttl 20m --secret-id-uses 3)
expect_match "approle create assigns a role_id (a UUID)" "$out" "role_id: [0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
ROLE_ID=$(printf '%s\n' "$out" | sed -n 's/^role_id: //p')
printf '%s\n' "$ROLE_ID" >"$F/role.id"
out=$(ctl "$F" approle secret-id web-role --out "$F/web.secret")
expect_match "approle secret-id writes the secret to a file, not the terminal" "$out" "secret_id: written to .*accessor: [0-9a-f]{32}"
expect_eq "... mode 0600" "$(stat -c %a "$F/web.secret")" "600"
SECRET=$(cat "$F/web.secret")
expect_match "... in keyfleet's secret id format" "$SECRET" '^kfs\.[A-Za-z0-9_-]{43}$'
if grep -rqa -F "$SECRET" "$F/state" "$F/keyfleetd.log"; then not_ok "the secret id is stored hashed only"; else ok "the secret id is stored hashed only"; fi
expect_match "approle show never shows a secret" "$(ctl "$F" approle show web-role)" "^name: web-role role_id: $ROLE_ID node: web-7 bound_cidrs: 127.0.0.1/32 token_ttl: 1200s"

# The secret id sealed to the TPM instead of a file (swtpm), refused once PCR 7 changes.
# (First: logins from 127.0.0.1 count against the per-source limit that is tested below.)
start_swtpm "$WORK/tpm"
ctl "$F" approle create tpm-role --node web-9 >/dev/null
ctl "$F" approle show tpm-role | sed -n 's/^role_id: //p' >"$F/tpm-role.id"
cat >"$WORK/tpm-agent.yaml" <<YAML
coordinators: ["127.0.0.1:$PORT"]
identity: {role_id_file: $F/tpm-role.id, secret_id_tpm_file: $F/secret.tpm, ca: $F/ca.crt}
tpm: {tcti: "$TCTI", pcrs: [7]}
state_file: $WORK/tpm-agent-state.json
luks: {activate: false}
deadline: 5s
YAML
out=$(ctl "$F" approle secret-id tpm-role | sed -n 's/^secret_id: //p' |
    "$AGENT" -c "$WORK/tpm-agent.yaml" seal-secret-id --out "$F/secret.tpm" 2>&1)
expect_match "seal-secret-id seals the secret id to the TPM" "$out" "sealed the secret id to this TPM \\(PCRs 7\\)"
expect_match "... into a kftpm1 blob in a 0600 file" "$(stat -c %a "$F/secret.tpm") $(cat "$F/secret.tpm")" "^600 kftpm1:"
luks_file "$WORK/disk9.luks" "nine"
out=$(printf 'nine' | "$AGENT" -c "$WORK/tpm-agent.yaml" enroll "luks:$WORK/disk9.luks" 2>&1)
expect_match "an agent with a TPM-sealed secret id logs in and enrolls" "$out" "event=login node=web-9 .*enrolled luks2"
out=$("$AGENT" -c "$WORK/tpm-agent.yaml" unlock "luks:$WORK/disk9.luks" 2>&1)
expect_match "... and unlocks" "$out" "unlocked"
TPM2TOOLS_TCTI="$TCTI" tpm2_pcrextend 7:sha256=$(printf '%064d' 7) >/dev/null 2>&1
out=$("$AGENT" -c "$WORK/tpm-agent.yaml" unlock "luks:$WORK/disk9.luks" 2>&1)
expect_match "after PCR 7 changes the sealed secret id does not open, said clearly" "$out" "AppRole secret id sealed in .*PCR values changed"

# The agent logs in with role_id + secret_id and unlocks a LUKS2 container.
luks_file "$WORK/disk.luks" "old secret"
cat >"$WORK/agent.yaml" <<YAML
coordinators: ["127.0.0.1:$PORT"]
identity: {role_id_file: $F/role.id, secret_id_file: $F/web.secret, ca: $F/ca.crt}
state_file: $WORK/agent-state.json
luks: {activate: false}
deadline: 5s
YAML
out=$(printf "old secret" | "$AGENT" -c "$WORK/agent.yaml" enroll "luks:$WORK/disk.luks" 2>&1)
expect_match "an AppRole agent enrolls a LUKS2 container" "$out" "event=login node=web-7 .*enrolled luks2"
out=$("$AGENT" -c "$WORK/agent.yaml" unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "an AppRole agent unlocks it" "$out" "unlocked"
audit=$(ctl "$F" audit)
expect_match "the login is audited as the role's node" "$audit" "login .*web-7"
expect_match "the release is recorded for the role's node" "$(ctl "$F" audit --json)" '"action":"release","actor":"web-7"'

# Raw Login over HTTP/2 (LoginRequest: 1=role_id, 2=secret_id).
login_pb() { printf '\x0a\x24%s\x12%b%s' "$1" "$(printf '\\x%02x' "${#2}")" "$2"; }
login() { # login ROLE_ID SECRET [curl args] -> prints "HTTP_CODE TOKEN-or-body"
    local rid=$1 sec=$2
    shift 2
    login_pb "$rid" "$sec" >"$WORK/login.pb"
    curl -sS --max-time 5 --http2 --cacert "$F/ca.crt" -H 'content-type: application/proto' \
        --data-binary "@$WORK/login.pb" -o "$WORK/login.out" -w '%{http_code}' "$@" "$URL/keyfleet.v1.NodeService/Login"
    printf ' '
    python3 -c 'import sys
d=open(sys.argv[1],"rb").read()
print(d[2:2+d[1]].decode() if d[:1]==b"\x0a" else d.decode(errors="replace"))' "$WORK/login.out"
}
bearer_release() { # bearer_release TOKEN [curl args] -> HTTP code and body
    local tok=$1
    shift
    curl -sS --max-time 5 --http2 --cacert "$F/ca.crt" -H 'content-type: application/proto' -H "authorization: Bearer $tok" \
        --data-binary '' -w ' %{http_code}' "$@" "$URL/keyfleet.v1.NodeService/Heartbeat"
}

out=$(login "$ROLE_ID" "kfs.$(printf 'A%.0s' $(seq 1 43))")
expect_match "a wrong secret id: one generic error" "$out" '^401 \{"code":"unauthenticated","message":"invalid role or secret ID"\}'
out=$(login "00000000-0000-4000-8000-000000000000" "$SECRET")
expect_match "an unknown role_id: the same generic error" "$out" '^401 \{"code":"unauthenticated","message":"invalid role or secret ID"\}'
# Malformed requests are refused before any lookup (rpc_check.c), naming the field and never
# echoing the secret; the format is public, so this says nothing of which roles exist.
out=$(login "0F1E2D3C-4B5A-4697-8877-665544332211" "$SECRET" --interface 127.0.0.3)
expect_match "a role_id that is not a lowercase UUID: invalid_argument naming role_id" "$out" \
    '^400 \{"code":"invalid_argument","message":"role_id must be the role.s 36-character lowercase UUID"\}'
out=$(login "$ROLE_ID" "kfs.$(printf 'A%.0s' $(seq 1 42))=" --interface 127.0.0.3)
expect_match "a secret_id of the wrong shape: invalid_argument naming secret_id" "$out" \
    '^400 \{"code":"invalid_argument","message":"secret_id must be kfs. and 43 base64url characters"\}'
out=$(login "$ROLE_ID" "$SECRET" --interface 127.0.0.2)
expect_match "a login from outside the role's CIDRs: the same generic error" "$out" '^401 .*invalid role or secret ID'

out=$(login "$ROLE_ID" "$SECRET")
expect_match "the third use of the secret id logs in" "$out" '^200 kft\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$'
TOKEN=${out#200 }
out=$(login "$ROLE_ID" "$SECRET")
expect_match "a spent secret id (3 uses): the generic error" "$out" '^401 .*invalid role or secret ID'
out=$("$AGENT" -c "$WORK/agent.yaml" unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "... and the agent says so" "$out" "invalid role or secret ID"

out=$(bearer_release "$TOKEN")
expect_match "the token authenticates an RPC" "$out" ' 200$'
out=$(bearer_release "$TOKEN" --interface 127.0.0.2)
expect_match "the token used from outside the role's CIDRs: unauthenticated" "$out" 'outside its role.s bound CIDRs.* 401$'
out=$(bearer_release "kft.0123456789abcdef.$(printf 'B%.0s' $(seq 1 43))")
expect_match "an unknown token: unauthenticated" "$out" 'unknown bearer token.* 401$'
out=$(bearer_release "${TOKEN%?}x")
expect_match "a token with a changed last character: unauthenticated" "$out" 'unknown bearer token.* 401$'

# Expiry: a role whose tokens live 4 s (generous: ASan under load is slow).
ctl "$F" approle create short --node web-8 --token-ttl 4s >/dev/null
SHORT_ID=$(ctl "$F" approle show short | sed -n 's/^role_id: //p')
SHORT_SECRET=$(ctl "$F" approle secret-id short | sed -n 's/^secret_id: //p')
out=$(login "$SHORT_ID" "$SHORT_SECRET")
STOKEN=${out#200 }
expect_match "a short-lived token works at once" "$(bearer_release "$STOKEN")" ' 200$'
sleep 4.2
expect_match "an expired token: unauthenticated" "$(bearer_release "$STOKEN")" 'bearer token expired.* 401$'

# Revoking one credential: a token by its id, a secret id by its accessor; the rest of the role
# keeps working. (Logins from 127.0.0.4: 127.0.0.1's rate-limit bucket is tested below.)
ctl "$F" approle create solo --node web-8 >/dev/null
SOLO_ID=$(ctl "$F" approle show solo | sed -n 's/^role_id: //p')
out=$(ctl "$F" approle secret-id solo)
SOLO_A=$(printf '%s\n' "$out" | sed -n 's/^secret_id: //p')
SOLO_A_ACC=$(printf '%s\n' "$out" | sed -n 's/^accessor: //p')
SOLO_B=$(ctl "$F" approle secret-id solo | sed -n 's/^secret_id: //p')
T1=$(login "$SOLO_ID" "$SOLO_A" --interface 127.0.0.4)
T1=${T1#200 }
T2=$(login "$SOLO_ID" "$SOLO_A" --interface 127.0.0.4)
T2=${T2#200 }
T1_ID=$(printf '%s' "$T1" | cut -d. -f2)
expect_match "the login audit names the token id" "$(ctl "$F" audit --action login)" "approle solo secret id $SOLO_A_ACC token $T1_ID"
out=$(ctl "$F" approle revoke solo --token "$T1_ID")
expect_eq "approle revoke --token revokes one token" "$out" "role solo: token $T1_ID revoked"
expect_match "... it is refused at once" "$(bearer_release "$T1")" 'unknown bearer token.* 401$'
expect_match "... another token of the role still works" "$(bearer_release "$T2")" ' 200$'
out=$(ctl "$F" approle revoke solo --token "$T1_ID" 2>&1) && rc=0 || rc=$?
expect_match "revoking it again: not_found, and a failure exit" "$out rc=$rc" "not_found: role solo has no token $T1_ID rc=1"
out=$(ctl "$F" approle revoke solo --secret-id "$SOLO_A_ACC")
expect_eq "approle revoke --secret-id revokes one secret id" "$out" "role solo: secret id $SOLO_A_ACC revoked"
expect_match "... it no longer logs in" "$(login "$SOLO_ID" "$SOLO_A" --interface 127.0.0.4)" '^401 .*invalid role or secret ID'
expect_match "... the role's other secret id does" "$(login "$SOLO_ID" "$SOLO_B" --interface 127.0.0.4)" '^200 kft\.'
expect_match "... a token it bought earlier lives out its TTL (revoke it by id)" "$(bearer_release "$T2")" ' 200$'
out=$(ctl "$F" approle revoke solo --token "$T1_ID" --secret-id "$SOLO_A_ACC" 2>&1) && rc=0 || rc=$?
expect_match "both handles at once: usage error" "$out rc=$rc" "usage: .*revoke NAME \[--secret-id ACCESSOR \| --token TOKEN_ID\].* rc=2"
out=$(ctl "$F" approle revoke solo --token "kft.$T1_ID" 2>&1) && rc=0 || rc=$?
expect_match "a malformed token id: invalid_argument, nothing changes" "$out rc=$rc" "invalid_argument: token_id must be 16 lowercase hex digits .* rc=1"
out=$(ctl "$F" approle revoke nosuch --secret-id "$SOLO_A_ACC" 2>&1) && rc=0 || rc=$?
expect_match "an unknown role: not_found" "$out rc=$rc" "not_found: role nosuch has no secret id with accessor $SOLO_A_ACC rc=1"
expect_match "each revocation is audited" "$(ctl "$F" audit --action approle_revoke)" \
    "approle solo token $T1_ID revoked.*approle solo secret id $SOLO_A_ACC revoked"

# Revoking the role revokes its tokens at once.
ctl "$F" approle revoke web-role >/dev/null
expect_match "after approle revoke, its token is refused" "$(bearer_release "$TOKEN")" '401$'
out=$(ctl "$F" approle show web-role 2>&1)
expect_match "... and the role is gone" "$out" "not_found"

# Failed logins are audited and rate limited per source address.
expect_match "failed logins are audited" "$(ctl "$F" audit)" "auth_fail.*approle login: wrong, expired or spent secret id"
# The bucket holds 10 and refills one every 2 s. The 30 logins go at once, so the limit shows
# however slow the machine is (sequential logins under load could be slower than the refill):
# it would take more than 40 s for all 30 to arrive for none to be refused.
login_pb "$SHORT_ID" "kfs.nope" >"$WORK/flood.pb"
flood=()
for i in $(seq 1 30); do
    curl -sS --max-time 60 --http2 --cacert "$F/ca.crt" -H 'content-type: application/proto' \
        --data-binary "@$WORK/flood.pb" -o /dev/null -w '%{http_code}\n' \
        "$URL/keyfleet.v1.NodeService/Login" >"$WORK/flood.$i" 2>/dev/null &
    flood+=($!)
done
wait "${flood[@]}"
codes=$(cat "$WORK"/flood.[0-9]* | tr '\n' ' ')
expect_match "a login flood from one address is rate limited" "$codes" "429"
expect_match "... while another address still gets answers" \
    "$(login "$SHORT_ID" "kfs.$(printf 'N%.0s' $(seq 1 43))" --interface 127.0.0.3)" '^401 '

# Bad role definitions are refused and change nothing.
out=$(ctl "$F" approle create bad --node web-9 --cidr 10.0.0.0/33 2>&1)
expect_match "a bad CIDR is refused" "$out" "invalid_argument: bound CIDR '10.0.0.0/33'"
out=$(ctl "$F" approle create "bad/name" --node web-9 2>&1)
expect_match "a bad role name is refused" "$out" "invalid_argument: role name"
out=$(ctl "$F" approle create short --node web-9 2>&1)
expect_match "a duplicate role is refused" "$out" "already_exists"
if grep -q -F -e "$SECRET" -e "$TOKEN" -e "$SHORT_SECRET" "$F/keyfleetd.log"; then
    not_ok "no secret id or token in keyfleetd's log"
else
    ok "no secret id or token in keyfleetd's log"
fi
expect_match "the audit chain verifies" "$(ctl "$F" audit verify)" "ok"
stop_kfd
expect_eq "keyfleetd stops cleanly" "$KFD_EXIT" "0"
check_sanitizers
finish
