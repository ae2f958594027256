#!/usr/bin/env bash
# The azure-keyvault backend where customers run it (#23): a Managed HSM (its own token audience),
# managed identity through IMDS and workload identity (a federated token), 401 versus 403, and
# the start-up key checks; and the Azure stand-in being at least as strict as Azure (tokens bound
# to their audience with the 401 challenge, api-versions, key_ops, RBAC denials, IMDS's header).
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node web-1
kms_tls "$F"
cp "$F/keyfleetd.yaml" "$F/base.yaml"
head -c 24 /dev/urandom | base64 | tr '/' '~' >"$F/client.secret"
# jwt AUD EXP: an unsigned-looking JWT as AKS projects it (the stand-in checks aud, exp and equality)
b64u() { base64 -w0 | tr '/+' '_-' | tr -d '='; }
jwt() {
    printf '%s.%s.%s' "$(printf '{"alg":"RS256","kid":"k1"}' | b64u)" \
        "$(printf '{"aud":"%s","exp":%s,"iss":"https://oidc.example/","sub":"system:serviceaccount:kf:keyfleetd","n":"%s"}' "$1" "$2" "$(head -c 9 /dev/urandom | b64u)" | b64u)" \
        "$(head -c 64 /dev/urandom | b64u)"
}
jwt api://AzureADTokenExchange $(($(date +%s) + 3600)) >"$F/federated.token"
start_standin "$F" azure_standin --tenant contoso --client-id kf-app --client-secret-file "$F/client.secret" \
    --federated-token-file "$F/federated.token" --msi-client-id kf-msi --resource https://managedhsm.azure.net \
    --deny rotate --issued-file "$F/issued" --imds-plain-port-file "$F/imds.port" \
    --key hsm-kek:RSA-HSM --key ec-kek:EC:sign,verify --key nowrap-kek:RSA:encrypt,decrypt,unwrapKey \
    --key off-kek:RSA-HSM::disabled --key exp-kek:RSA-HSM::expired --key nbf-kek:RSA-HSM::not-yet-valid
AZ=https://127.0.0.1:$SPORT
IMDS_PLAIN=http://127.0.0.1:$(cat "$F/imds.port")/metadata/identity/oauth2/token
HSM_SCOPE=https://managedhsm.azure.net/.default

# --- The stand-in itself, driven with curl as Azure would be.
sc() { curl -sS --max-time 5 --cacert "$F/kms.crt" "$@"; }
entra_token() { # SCOPE -> access token
    sc --data-urlencode client_id=kf-app --data-urlencode "client_secret=$(cat "$F/client.secret")" \
        --data-urlencode grant_type=client_credentials --data-urlencode "scope=$1" "$AZ/login/contoso/oauth2/v2.0/token" |
        python3 -c 'import json,sys; print(json.load(sys.stdin).get("access_token",""))'
}
vault_tok=$(entra_token https://vault.azure.net/.default)
hsm_tok=$(entra_token "$HSM_SCOPE")
out=$(sc -D - -o "$WORK/body" -H "Authorization: Bearer $vault_tok" "$AZ/keys/hsm-kek?api-version=7.4"; cat "$WORK/body")
expect_match "stand-in: a token for another audience is refused with 401 (AKV10022)" "$out" "^HTTP/1.1 401 .*AKV10022: Invalid audience"
expect_match "... with the challenge naming the resource" "$out" 'WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/contoso", resource="https://managedhsm.azure.net"'
out=$(sc -w ' %{http_code}' -H "Authorization: Bearer $hsm_tok" "$AZ/keys/hsm-kek?api-version=7.5")
expect_match "stand-in: the right audience reads the key, api-version 7.5 accepted" "$out" '"kty": "RSA-HSM".* 200$'
out=$(sc -w ' %{http_code}' -H "Authorization: Bearer $hsm_tok" "$AZ/keys/hsm-kek?api-version=2016-10-01")
expect_match "stand-in: ... and 2016-10-01" "$out" ' 200$'
out=$(sc -w ' %{http_code}' -H "Authorization: Bearer $hsm_tok" "$AZ/keys/hsm-kek?api-version=7.9")
expect_match "stand-in: an api-version Azure does not have is a 400" "$out" 'BadParameter.* 400$'
out=$(sc -w ' %{http_code}' -H "Authorization: Bearer $hsm_tok" -H 'Content-Type: application/json' \
    -d '{"alg":"RSA-OAEP-256","value":"AAAA"}' "$AZ/keys/nowrap-kek/wrapkey?api-version=7.4")
expect_match "stand-in: a wrapkey the key's key_ops lack is a 403 KeyOperationForbidden" "$out" 'KeyOperationForbidden.* 403$'
out=$(sc -w ' %{http_code}' -H "Authorization: Bearer $hsm_tok" -X POST -H 'Content-Type: application/json' -d '{}' \
    "$AZ/keys/hsm-kek/rotate?api-version=7.4")
expect_match "stand-in: a rotate without the role is a 403 ForbiddenByRbac" "$out" 'rotate/action.*ForbiddenByRbac.* 403$'
out=$(sc -w ' %{http_code}' "$IMDS_PLAIN?api-version=2018-02-01&resource=https://managedhsm.azure.net")
expect_match "stand-in: IMDS refuses a request without Metadata: true" "$out" 'metadata header.* 400$'
out=$(sc -w ' %{http_code}' -H 'Metadata: true' "$AZ/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://managedhsm.azure.net")
expect_match "stand-in: IMDS is plain HTTP only, as Azure's (not served over HTTPS)" "$out" ' 404$'
out=$(sc -w ' %{http_code}' -H 'Metadata: true' "$IMDS_PLAIN?api-version=2018-02-01&resource=https://vault.usgovcloudapi.net")
expect_match "stand-in (public cloud): IMDS refuses a US Government resource" "$out" 'AADSTS500011.* 400$'
out=$(sc -w ' %{http_code}' -X POST --data-urlencode client_id=kf-app --data-urlencode "client_secret=$(cat "$F/client.secret")" \
    --data-urlencode grant_type=client_credentials --data-urlencode scope=https://vault.azure.cn/.default \
    "$AZ/login/contoso/oauth2/v2.0/token")
expect_match "stand-in (public cloud): Entra ID refuses a scope of Azure China's vaults" "$out" 'invalid_resource.*AADSTS500011: The resource principal named https://vault.azure.cn was not found in the tenant named contoso.* 400$'
for spec in "off-kek:disabled" "exp-kek:expired" "nbf-kek:not yet valid"; do
    out=$(sc -w ' %{http_code}' -H "Authorization: Bearer $hsm_tok" -H 'Content-Type: application/json' \
        -d '{"alg":"RSA-OAEP-256","value":"AAAA"}' "$AZ/keys/${spec%%:*}/wrapkey?api-version=7.4")
    expect_match "stand-in: wrapkey with a ${spec#*:} key version is a 403 without an RBAC code" "$out" "\"Forbidden\", \"message\": \"Operation wrapKey is not allowed on an? ${spec#*:} key\.\"}} 403\$"
done
out=$(sc -w ' %{http_code}' -X POST --data-urlencode client_id=kf-app --data-urlencode "client_secret=$(cat "$F/client.secret")" \
    --data-urlencode grant_type=client_credentials --data-urlencode scope=https://example.com/.default \
    "$AZ/login/contoso/oauth2/v2.0/token")
expect_match "stand-in: Entra ID refuses a scope of no known resource" "$out" 'AADSTS500011.* 400$'

# azure_config LINES: keyfleetd.yaml with the azure section's identity lines (key $KEY or hsm-kek).
azure_config() {
    cp "$F/base.yaml" "$F/keyfleetd.yaml"
    azure_kms_yaml "${KEY:-hsm-kek}" "$1" >>"$F/keyfleetd.yaml"
}
# release_with LINES: keyfleetd with these identity lines makes one release of vol-a ($out), then stops.
release_with() {
    azure_config "$1"
    start_kfd "$F"
    out=$(node "$F" web-1 release vol-a "$WRAP_A")
    stop_kfd
}
tokens() { grep -c 'event=kms_token client=azure' "$F/keyfleetd.log"; }
readyz() {
    local out
    for _ in $(seq 1 50); do
        out=$(kcurl "$F" operator -w ' %{http_code}' "$URL/readyz")
        case $out in *"$1"*) break ;; esac
        sleep 0.1
    done
    printf '%s' "$out"
}
SECRET_LINES="    tenant: contoso
    client_id: kf-app
    client_secret_file: client.secret
    login_host: $AZ/login"

# --- Item 7: a Managed HSM takes tokens for its own audience; scope sets it.
azure_config "$SECRET_LINES
    scope: $HSM_SCOPE"
start_kfd "$F"
allow_nodes "$F" "web-*"
expect_match "Managed HSM: readyz once the key is read" "$(readyz ' 200')" ' 200$'
out=$(node "$F" web-1 enroll vol-a data)
expect_match "Managed HSM (scope managedhsm.azure.net): enroll wraps with the RSA-HSM key" "$out" '^code=ok wrapped=kf:azure:'
KEY_A=$(field key "$out")
WRAP_A=$(field wrapped "$out")
out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "... and release opens it" "$out" "^code=ok status=released key=$KEY_A "
expect_match "... the log names identity and scope" "$(grep event=kms_open "$F/keyfleetd.log" | tail -1)" "identity=client_secret scope=\"?$HSM_SCOPE"

# --- Item 9: a 403 is a denial, reported as such, and fetches no token; a 401 does.
n0=$(tokens)
out=$(ctl "$F" kms rotate 2>&1)
expect_match "a rotate the identity has no role for fails, saying so" "$out" "denied: HTTP 403 to POST rotate: Forbidden/ForbiddenByRbac.*lacks a role assignment"
fault "$F" firewall
out=$(node "$F" web-1 release vol-a "$WRAP_A")
fault "$F" ""
expect_match "the vault's firewall refuses: release fails closed with unavailable" "$out" '^code=unavailable'
expect_match "... and the log says firewall" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | tail -1)" "ForbiddenByFirewall.*firewall refuses this address"
expect_eq "... and neither 403 fetched a new token" "$(tokens)" "$n0"
fault "$F" revoke-tokens # revokes every token issued until 1 s from the next request
out=$(node "$F" web-1 release vol-a "$WRAP_A")
fault "$F" ""
expect_match "a 401 (token revoked) fetches a new token once; that one is revoked too: unavailable" "$out" '^code=unavailable'
expect_eq "... with one new token" "$(tokens)" "$((n0 + 1))"
sleep 1.1
out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "the next 401 (after the refusal period) fetches a token that works" "$out" "key=$KEY_A "
expect_eq "... one more token" "$(tokens)" "$((n0 + 2))"
stop_kfd

# --- Item 7: a scope for another audience is refused by the vault (401), and said so.
release_with "$SECRET_LINES
    scope: https://vault.azure.net/.default"
expect_match "a token for vault.azure.net at a Managed HSM: release fails closed" "$out" '^code=unavailable'
expect_match "... and the log names the audience problem" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | tail -1)" "HTTP 401: Unauthorized: AKV10022: Invalid audience"

# --- Item 8: managed identity through IMDS (plain HTTP on loopback; Azure's is http://169.254.169.254).
release_with "    identity: managed
    client_id: kf-msi
    imds_endpoint: $IMDS_PLAIN
    scope: $HSM_SCOPE"
expect_match "managed identity (IMDS, user-assigned client_id): release opens the key" "$out" "key=$KEY_A "
expect_match "... with the stand-in's IMDS answering" "$(cat "$F/azure_standin.log")" 'GET /metadata/identity/oauth2/token\?api-version=2018-02-01&resource=https%3A%2F%2Fmanagedhsm.azure.net&client_id=kf-msi HTTP/1.1" 200'
# With http_proxy set (corporate VMs), IMDS is still asked directly: a proxy would see the token
# in clear and could hand back its own. The "proxy" here is a closed port: going through it fails.
http_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 release_with "    identity: managed
    client_id: kf-msi
    imds_endpoint: $IMDS_PLAIN
    scope: $HSM_SCOPE"
expect_match "managed identity over plain HTTP, as Azure's IMDS serves it (here on loopback), never through http_proxy" "$out" "key=$KEY_A "
release_with "    identity: managed
    client_id: not-assigned
    imds_endpoint: $IMDS_PLAIN
    scope: $HSM_SCOPE"
expect_match "managed identity with a client_id the VM does not have: unavailable" "$out" '^code=unavailable'
expect_match "... and the log says IMDS refused it" "$(grep 'event=kms_token_failed' "$F/keyfleetd.log" | tail -1)" 'managed identity token \(IMDS\): HTTP 400: invalid_request: Identity not found'

# --- Item 8: workload identity (AKS): the federated token file as client_assertion.
WORKLOAD="    identity: workload
    tenant: contoso
    client_id: kf-app
    federated_token_file: federated.token
    login_host: $AZ/login
    scope: $HSM_SCOPE"
release_with "$WORKLOAD"
expect_match "workload identity (federated token): release opens the key" "$out" "key=$KEY_A "
cp "$F/federated.token" "$WORK/good.jwt"
jwt api://AzureADTokenExchange $(($(date +%s) - 60)) >"$F/federated.token"
release_with "$WORKLOAD"
expect_match "an expired federated token: unavailable" "$out" '^code=unavailable'
expect_match "... and the log says Entra ID refused the assertion" "$(grep 'event=kms_token_failed' "$F/keyfleetd.log" | tail -1)" 'workload identity: federated token\): HTTP 400: invalid_client: AADSTS700024'
jwt api://AzureADTokenExchange $(($(date +%s) + 3600)) >"$F/federated.token"

# --- Item 10: the key must be RSA or RSA-HSM with wrapKey and unwrapKey.
# Review of #23, finding 7: and enabled, inside its nbf/exp window (Key Vault refuses wrapkey outside it).
for spec in "ec-kek:its kty is EC, not RSA or RSA-HSM" "nowrap-kek:its key_ops lack wrapKey" \
    "off-kek:it is disabled" "exp-kek:it expired at [0-9]+ \(attributes.exp" "nbf-kek:it is not valid before [0-9]+ \(attributes.nbf"; do
    KEY=${spec%%:*}
    azure_config "$WORKLOAD"
    start_kfd "$F"
    expect_match "key $KEY: readyz says why the key cannot be used" "$(readyz 'cannot be used')" "KMS not usable: azure key $KEY cannot be used: ${spec#*:}.* 503$"
    out=$(node "$F" web-1 enroll "vol-$KEY" data)
    expect_match "... and enroll fails closed" "$out" '^code=unavailable'
    expect_match "... logged once as kms_key_unusable" "$(grep -c "event=kms_key_unusable backend=azure-keyvault key=$KEY" "$F/keyfleetd.log")" '^1$'
    stop_kfd
done
KEY=
sed -i 's/^    key: .*/    key: hsm_kek/' "$F/keyfleetd.yaml"
out=$("$KFD" -c "$F/keyfleetd.yaml" --check-config 2>&1)
expect_match "a key name Key Vault does not allow (an underscore) is a config error with file:line" "$out" "keyfleetd.yaml:[0-9]+:[0-9]+: azure key must be 1..127 of \[0-9a-zA-Z-\]"

# --- Review of #23, finding 7: a 403 that names no role, policy or firewall code is reported with
# Key Vault's own reason, not as RBAC; the key is read again and says why. An expired version
# still unwraps.
azure_config "$SECRET_LINES
    scope: $HSM_SCOPE"
start_kfd "$F"
expect_match "finding 7: readyz 200 with a usable key" "$(readyz ' 200')" ' 200$'
hsm_tok=$(entra_token "$HSM_SCOPE") # the one above was revoked by the revoke-tokens fault
kid=$(sc -H "Authorization: Bearer $hsm_tok" "$AZ/keys/hsm-kek?api-version=7.4" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["kid"])')
sc -o /dev/null -X PATCH -H "Authorization: Bearer $hsm_tok" -H 'Content-Type: application/json' \
    -d "{\"attributes\":{\"exp\":$(($(date +%s) - 5))}}" "$kid?api-version=7.4"
out=$(node "$F" web-1 enroll vol-exp data)
expect_match "an enroll after the key version expired (not yet read again) fails closed" "$out" '^code=unavailable'
line=$(grep 'event=kms_failed' "$F/keyfleetd.log" | tail -1)
expect_match "... the log carries Key Vault's code and message" "$line" "HTTP 403 to POST wrapkey: Forbidden: Operation wrapKey is not allowed on an expired key\..*Key Vault's own reason"
expect_eq "... and does not blame a role assignment or the firewall" "$(printf '%s' "$line" | grep -c -e 'role assignment' -e 'firewall refuses')" "0"
expect_match "... the key is read again: readyz says it expired" "$(readyz 'expired')" "cannot be used: it expired at [0-9]+.* 503$"
out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "finding 8: an expired version still unwraps (Key Vault allows it): release opens the key" "$out" "^code=ok status=released key=$KEY_A "
stop_kfd
sc -o /dev/null -X PATCH -H "Authorization: Bearer $hsm_tok" -H 'Content-Type: application/json' \
    -d '{"attributes":{"exp":null}}' "$kid?api-version=7.4"

# --- Review of #23, finding 9: a token endpoint that does not answer is not the vault being down.
azure_config "    identity: managed
    client_id: kf-msi
    imds_endpoint: http://127.0.0.1:1/metadata/identity/oauth2/token
    scope: $HSM_SCOPE"
start_kfd "$F"
out=$(readyz 'IMDS')
expect_match "IMDS unreachable: readyz names the token endpoint" "$out" "KMS not usable: managed identity token \(IMDS\): no answer \(from the token endpoint; Key Vault was not asked\).* 503$"
expect_eq "... and does not say the KMS is unreachable" "$(printf '%s' "$out" | grep -c 'KMS unreachable')" "0"
out=$(node "$F" web-1 release vol-a "$WRAP_A")
expect_match "... release fails closed with unavailable" "$out" '^code=unavailable'
expect_match "... the log says the token endpoint is unreachable" "$(grep 'event=kms_failed' "$F/keyfleetd.log" | tail -1)" 'azure token endpoint unreachable: managed identity token'
expect_eq "... never \"azure key vault unreachable\"" "$(grep -c 'azure key vault unreachable' "$F/keyfleetd.log")" "0"
stop_kfd

# --- Review of #23, finding 10: the stand-in plays one cloud; a scope of another is refused by Entra ID.
release_with "$SECRET_LINES
    scope: https://vault.usgovcloudapi.net/.default"
expect_match "a US Government scope against a public-cloud Entra ID: release fails closed" "$out" '^code=unavailable'
expect_match "... and the log carries AADSTS500011" "$(grep 'event=kms_token_failed' "$F/keyfleetd.log" | tail -1)" 'HTTP 400: invalid_resource: AADSTS500011: The resource principal named https://vault.usgovcloudapi.net was not found in the tenant named contoso'

# --- Item 8: no secret, assertion or token in keyfleetd's log.
leaked=no
while read -r t; do grep -q -F -e "$t" "$F/keyfleetd.log" && leaked=yes; done <"$F/issued"
grep -q -F -e "$(cat "$F/client.secret")" -e "$(cat "$WORK/good.jwt")" -e "$(cat "$F/federated.token")" "$F/keyfleetd.log" && leaked=yes
expect_eq "no client secret, federated token or access token in keyfleetd's log ($(wc -l <"$F/issued") tokens checked)" "$leaked" "no"
check_sanitizers
finish
