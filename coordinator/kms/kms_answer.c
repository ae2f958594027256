#include "kms/kms_answer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_b64.h"
#include "kms/kms_wrapped.h"

#define TTL_MAX_S (10ull * 365 * 86400)

json_t *kfd_json_object(const char *body, size_t len)
{
    if (body == NULL || len == 0)
        return NULL;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

const char *kfd_json_str(const json_t *obj, const char *key1, const char *key2)
{
    const json_t *v = json_object_get(obj, key1);
    if (key2 != NULL)
        v = json_object_get(v, key2);
    return json_string_value(v);
}

uint64_t kfd_token_ttl(long long ttl_s)
{
    if (ttl_s <= 0)
        return 0;
    return (unsigned long long)ttl_s > TTL_MAX_S ? TTL_MAX_S : (uint64_t)ttl_s;
}

int kfd_vault_ciphertext(const char *ct, uint32_t *version, const char **body)
{
    /* strtoul takes leading blanks and a sign: "vault:v  3:..." read as version 3 and never
     * round-tripped (found by fuzz_kms_answer). Digits only, no leading zero. */
    if (ct == NULL || strncmp(ct, "vault:v", 7) != 0 || ct[7] < '1' || ct[7] > '9')
        return -EINVAL;
    char *end = NULL;
    errno = 0;
    unsigned long n = strtoul(ct + 7, &end, 10);
    if (errno != 0 || end == ct + 7 || *end != ':' || n == 0 || n > UINT32_MAX || ct[7] == '0')
        return -EINVAL;
    const char *b = end + 1;
    if (*b == '\0')
        return -EINVAL;
    for (const char *p = b; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '+' ||
              *p == '/' || *p == '='))
            return -EINVAL;
    *version = (uint32_t)n;
    *body = b;
    return 0;
}

int kfd_vault_wrapped(const char *ct, const char *kcv, char *out, size_t out_size, uint32_t *version)
{
    const char *body = NULL;
    uint32_t v = 0;
    if (kfd_vault_ciphertext(ct, &v, &body) != 0)
        return -EINVAL;
    char ref[16];
    snprintf(ref, sizeof(ref), "v%u", v);
    int r = kfd_wrapped_format("vault", ref, kcv, body, out, out_size);
    if (r == 0)
        *version = v;
    return r;
}

void kfd_vault_errors(const json_t *j, char *out, size_t size)
{
    const json_t *errs = json_object_get(j, "errors");
    size_t used = 0, i;
    json_t *e;
    out[0] = '\0';
    json_array_foreach(errs, i, e)
    {
        const char *s = json_string_value(e);
        if (s != NULL && used < size) {
            int n = snprintf(out + used, size - used, "%s%s", used ? "; " : "", s);
            used += n > 0 ? (size_t)n : 0;
        }
    }
    if (out[0] == '\0')
        snprintf(out, size, "no error message");
}

void kfd_vault_key_read(const json_t *j, kfd_vault_key *ret)
{
    const json_t *data = json_object_get(j, "data");
    const json_t *keys = json_object_get(data, "keys");
    uint32_t latest = 0;
    const char *name;
    json_t *val;
    json_object_foreach((json_t *)keys, name, val)
    {
        char *end = NULL;
        unsigned long n = name[0] >= '0' && name[0] <= '9' ? strtoul(name, &end, 10) : 0;
        if (end != NULL && end != name && *end == '\0' && n <= UINT32_MAX && n > latest)
            latest = (uint32_t)n;
    }
    json_int_t lv = json_integer_value(json_object_get(data, "latest_version"));
    if (lv > 0 && lv <= UINT32_MAX && (uint32_t)lv > latest)
        latest = (uint32_t)lv;
    json_int_t mdv = json_integer_value(json_object_get(data, "min_decryption_version"));
    const char *type = json_string_value(json_object_get(data, "type"));
    const json_t *enc = json_object_get(data, "supports_encryption");
    ret->latest = latest;
    ret->min_decrypt = mdv > 0 && mdv <= UINT32_MAX ? (uint32_t)mdv : 1;
    ret->derived = json_is_true(json_object_get(data, "derived"));
    ret->encryption_false = json_is_false(enc);
    ret->no_encryption = json_is_false(enc) || (type != NULL && strcmp(type, "aes256-gcm96") != 0 &&
                                                strcmp(type, "aes128-gcm96") != 0 &&
                                                strcmp(type, "chacha20-poly1305") != 0);
    ret->type = type;
}

int kfd_vault_login_answer(const json_t *j, const char **ret_token, uint64_t *ret_ttl_s)
{
    const char *tok = kfd_json_str(j, "auth", "client_token");
    json_int_t ttl = json_integer_value(json_object_get(json_object_get(j, "auth"), "lease_duration"));
    if (tok == NULL || ttl < 0)
        return -EIO;
    *ret_token = tok;
    *ret_ttl_s = kfd_token_ttl(ttl);
    return 0;
}

int kfd_azure_kid_version(const char *prefix, const char *kid, char version[KFD_AZURE_VERSION_MAX])
{
    size_t plen = strlen(prefix);
    if (kid == NULL || strncmp(kid, prefix, plen) != 0)
        return -EINVAL;
    const char *v = kid + plen;
    size_t n = strlen(v);
    if (n != 32) /* Key Vault and Managed HSM key versions are 32 hex digits */
        return -EINVAL;
    for (const char *p = v; *p; p++)
        if (!((*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F') || (*p >= '0' && *p <= '9')))
            return -EINVAL;
    memcpy(version, v, n + 1);
    return 0;
}

void kfd_azure_error(const json_t *j, char *out, size_t size)
{
    const char *code = kfd_json_str(j, "error", "code"), *msg = kfd_json_str(j, "error", "message");
    /* Key Vault's 403s name the cause here: ForbiddenByRbac, ForbiddenByFirewall, ForbiddenByPolicy */
    const char *inner = kfd_json_str(json_object_get(j, "error"), "innererror", "code");
    if (code == NULL) /* Entra ID and IMDS: {"error":"invalid_client","error_description":"..."} */
        code = kfd_json_str(j, "error", NULL), msg = kfd_json_str(j, "error_description", NULL);
    snprintf(out, size, "%s%s%s: %s", code != NULL ? code : "no error code", inner != NULL ? "/" : "",
             inner != NULL ? inner : "", msg != NULL ? msg : "no message");
}

static bool has_op(const json_t *ops, const char *op)
{
    size_t i;
    const json_t *v;
    json_array_foreach(ops, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), op) == 0)
            return true;
    }
    return false;
}

bool kfd_json_safe(const char *s)
{
    for (; *s; s++)
        if (*s < ' ' || *s > '~' || *s == '"' || *s == '\\')
            return false;
    return true;
}

const char *kfd_azure_key_unusable(const json_t *j, long long now, char *buf, size_t size, bool *no_unwrap)
{
    const json_t *key = json_object_get(j, "key");
    const char *kty = json_string_value(json_object_get(key, "kty"));
    const json_t *ops = json_object_get(key, "key_ops");
    const json_t *attrs = json_object_get(j, "attributes");
    const json_t *enabled = json_object_get(attrs, "enabled");
    const json_t *exp = json_object_get(attrs, "exp"), *nbf = json_object_get(attrs, "nbf");
    bool rsa = kty != NULL && (strcmp(kty, "RSA") == 0 || strcmp(kty, "RSA-HSM") == 0);
    *no_unwrap = !rsa || !has_op(ops, "unwrapKey") || json_is_false(enabled);
    if (kty == NULL || (strcmp(kty, "RSA") != 0 && strcmp(kty, "RSA-HSM") != 0))
        snprintf(buf, size, "its kty is %s, not RSA or RSA-HSM (keyfleet wraps with RSA-OAEP-256)",
                 kty != NULL && kfd_json_safe(kty) && strlen(kty) < 32 ? kty : "missing or odd");
    else if (!has_op(ops, "wrapKey") || !has_op(ops, "unwrapKey"))
        snprintf(buf, size, "its key_ops lack %s (set them with az keyvault key set-attributes --ops wrapKey unwrapKey)",
                 !has_op(ops, "wrapKey") && !has_op(ops, "unwrapKey") ? "wrapKey and unwrapKey"
                 : !has_op(ops, "wrapKey")                           ? "wrapKey"
                                                                     : "unwrapKey");
    else if (json_is_false(enabled))
        snprintf(buf, size, "it is disabled (attributes.enabled: false; enable it, or rotate to a new version)");
    else if (json_is_integer(exp) && now >= (long long)json_integer_value(exp))
        snprintf(buf, size, "it expired at %lld (attributes.exp, Unix time): Key Vault refuses wrapkey with it, "
                 "unwraps still work; rotate to a new version or move exp", (long long)json_integer_value(exp));
    else if (json_is_integer(nbf) && now < (long long)json_integer_value(nbf))
        snprintf(buf, size, "it is not valid before %lld (attributes.nbf, Unix time): Key Vault refuses wrapkey "
                 "with it until then", (long long)json_integer_value(nbf));
    else
        return NULL;
    return buf;
}

int kfd_azure_wrapped(const char *prefix, const json_t *j, const char *kcv, char *out, size_t out_size,
                      char version[KFD_AZURE_VERSION_MAX])
{
    const char *kid = kfd_json_str(j, "kid", NULL), *value = kfd_json_str(j, "value", NULL);
    char v[KFD_AZURE_VERSION_MAX], ref[512];
    /* Sent back as JSON to unwrap, and stored in a wrapped key that must read back. */
    if (kfd_azure_kid_version(prefix, kid, v) != 0 || value == NULL || !kfd_json_safe(value) ||
        !kfd_wrapped_payload_ok(value))
        return -EINVAL;
    if (kf_b64_encode((const uint8_t *)kid, strlen(kid), true, ref, sizeof(ref)) <= 0)
        return -ENOSPC;
    int r = kfd_wrapped_format("azure", ref, kcv, value, out, out_size);
    if (r == 0)
        memcpy(version, v, sizeof(v));
    return r;
}

int kfd_azure_login_answer(const json_t *j, const char **ret_token, uint64_t *ret_ttl_s)
{
    const char *tok = kfd_json_str(j, "access_token", NULL);
    const json_t *exp = json_object_get(j, "expires_in"); /* a number from Entra ID, a string from IMDS */
    json_int_t ttl = json_is_integer(exp) ? json_integer_value(exp)
                     : json_is_string(exp) ? strtoll(json_string_value(exp), NULL, 10)
                                           : -1;
    if (tok == NULL || ttl <= 0)
        return -EPROTO;
    *ret_token = tok;
    *ret_ttl_s = kfd_token_ttl(ttl);
    return 0;
}
