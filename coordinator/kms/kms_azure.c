/* The azure-keyvault KMS backend: Azure Key Vault (or Managed HSM) keys over HTTPS, with an
 * Entra ID client-credentials token (scope https://vault.azure.net/.default) from a
 * configurable login host. generate = CSPRNG then wrap; wrap = wrapkey with RSA-OAEP-256 on
 * the configured version (or the latest); unwrap = unwrapkey on the key id kept from the wrap;
 * rewrap = unwrap then wrap; rotate = keys/NAME/rotate. Key versions are opaque ids, so
 * key_version is 0 and staleness compares ids. Wrapped keys: "kf:azure:B64URL(KID):KCV:VALUE". */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "kf_b64.h"
#include "kf_log.h"
#include "kf_secmem.h"
#include "kms/kms_remote.h"
#include "kms/kms_wrapped.h"

#define SECRET_FILE_MAX 4096
#define VERSION_MAX 128

typedef struct azure {
    kfd_remote_kms rk; /* first */
    char *vault_url, *key, *key_version, *tenant, *client_id, *client_secret_file, *login_host, *api_version;
    char key_prefix[700]; /* VAULT/keys/NAME/ : every kid we accept starts with it */
    char latest[VERSION_MAX];
} azure;

typedef enum { OP_WRAP, OP_UNWRAP, OP_ROTATE, OP_READ_KEY } op_kind;

typedef struct acall {
    kfd_remote_call rc; /* first */
    azure *a;
    op_kind kind;
    bool rewrap;          /* OP_UNWRAP whose key is wrapped again under the latest version */
    kf_secbuf *generated; /* OP_WRAP for generate: the plaintext handed back with the wrap */
    char volume_id[256];
    char kcv[KFD_KCV_TEXT_LEN + 1];
    char in_version[VERSION_MAX];
} acall;

static void wrap_key(azure *a, const char *volume_id, const kf_secbuf *key, kf_secbuf *generated, kfd_kms_cb cb,
                     void *arg);

/* Checks that kid is VAULT/keys/NAME/VERSION of our key and copies VERSION. */
static int kid_version(const azure *a, const char *kid, char version[VERSION_MAX])
{
    size_t plen = strlen(a->key_prefix);
    if (kid == NULL || strncmp(kid, a->key_prefix, plen) != 0)
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

static void azure_error(const kfd_http_response *res, char *out, size_t size)
{
    json_t *j = kfd_remote_json(res);
    const char *code = kfd_json_str(j, "error", "code"), *msg = kfd_json_str(j, "error", "message");
    if (code == NULL) /* Entra ID: {"error":"invalid_client","error_description":"..."} */
        code = kfd_json_str(j, "error", NULL), msg = kfd_json_str(j, "error_description", NULL);
    snprintf(out, size, "%s: %s", code != NULL ? code : "no error code", msg != NULL ? msg : "no message");
    json_decref(j);
}

static void acall_free(acall *c)
{
    kfd_remote_clear(&c->rc);
    kf_secbuf_free(c->generated);
    free(c);
}

static void fail_call(acall *c, int status, const char *prefix, const char *detail)
{
    kfd_remote_fail(c->rc.cb, c->rc.arg, status, "%s%s", prefix, detail);
    acall_free(c);
}

static void answer_key_bundle(acall *c, json_t *j)
{
    azure *a = c->a;
    char version[VERSION_MAX];
    if (kid_version(a, kfd_json_str(j, "key", "kid"), version) != 0) {
        fail_call(c, -EIO, "azure answer: ", "key.kid is missing or not this key's");
        return;
    }
    if (a->key_version == NULL)
        memcpy(a->latest, version, sizeof(version));
    kfd_kms_result out = {.message = version};
    c->rc.cb(c->rc.arg, &out);
    acall_free(c);
}

static void on_done(kfd_remote_call *rc, const kfd_http_response *res)
{
    acall *c = (acall *)rc;
    azure *a = c->a;
    kfd_remote_kms_answered(&a->rk, res);
    if (res->status != 0) {
        fail_call(c, res->status, "azure key vault unreachable: ", res->error != NULL ? res->error : "transport error");
        return;
    }
    if (res->code >= 400) {
        char why[400], msg[440];
        azure_error(res, why, sizeof(why));
        snprintf(msg, sizeof(msg), "HTTP %ld: %s", res->code, why);
        int status = res->code == 401 || res->code == 403 ? -EACCES
                     : res->code == 400 && c->kind == OP_UNWRAP ? -EBADMSG
                                                                : -EIO;
        fail_call(c, status, "azure key vault refused: ", msg);
        return;
    }
    json_t *j = kfd_remote_json(res);
    if (j == NULL) {
        fail_call(c, -EIO, "azure answer: ", "not a JSON object (garbage or truncated)");
        return;
    }
    if (c->kind == OP_ROTATE || c->kind == OP_READ_KEY) {
        answer_key_bundle(c, j);
        json_decref(j);
        return;
    }
    char version[VERSION_MAX];
    const char *kid = kfd_json_str(j, "kid", NULL), *value = kfd_json_str(j, "value", NULL);
    if (kid_version(a, kid, version) != 0 || value == NULL || value[0] == '\0') {
        json_decref(j);
        fail_call(c, -EIO, "azure answer: ", "kid or value is missing, or the kid is not this key's");
        return;
    }
    if (c->kind == OP_WRAP) {
        char ref[512], wrapped[KFD_WRAPPED_MAX];
        int r = kf_b64_encode((const uint8_t *)kid, strlen(kid), true, ref, sizeof(ref)) > 0 ? 0 : -ENOSPC;
        if (r == 0 && !kfd_json_safe(value))
            r = -EINVAL;
        if (r == 0)
            r = kfd_wrapped_format("azure", ref, c->kcv, value, wrapped, sizeof(wrapped));
        json_decref(j);
        if (r != 0) {
            fail_call(c, -EIO, "azure answer: ", "the wrapped value cannot be stored");
            return;
        }
        if (a->key_version == NULL)
            memcpy(a->latest, version, sizeof(version));
        kfd_kms_result out = {.plaintext = c->generated, .wrapped = wrapped};
        c->rc.cb(c->rc.arg, &out);
        acall_free(c);
        return;
    }
    /* OP_UNWRAP: the answer must come from the version we asked */
    if (strcmp(version, c->in_version) != 0) {
        json_decref(j);
        fail_call(c, -EIO, "azure answer: ", "the kid names another key version than the request");
        return;
    }
    kf_secbuf *key = kf_secbuf_new(64);
    int n = key != NULL ? kf_b64_decode(value, strlen(value), true, key->data, 64) : -ENOMEM;
    json_decref(j);
    if (n != KFD_DATA_KEY_LEN || kfd_kcv_check(c->volume_id, key->data, c->kcv) != 0) {
        kf_secbuf_free(key);
        fail_call(c, n == KFD_DATA_KEY_LEN ? -EBADMSG : -EIO, "azure answer: ",
                  n == KFD_DATA_KEY_LEN ? "the key does not match the volume's key check value"
                                        : "the unwrapped value is not a 256-bit key");
        return;
    }
    key->len = KFD_DATA_KEY_LEN;
    if (c->rewrap) {
        wrap_key(a, c->volume_id, key, NULL, c->rc.cb, c->rc.arg);
        kf_secbuf_free(key);
        acall_free(c);
        return;
    }
    kfd_kms_result out = {.plaintext = key, .stale = a->latest[0] != '\0' && strcmp(c->in_version, a->latest) != 0};
    c->rc.cb(c->rc.arg, &out);
    kf_secbuf_free(key);
    acall_free(c);
}

static acall *acall_new(azure *a, op_kind kind, const char *volume_id, kfd_kms_cb cb, void *arg)
{
    acall *c = calloc(1, sizeof(*c));
    if (c == NULL || (volume_id != NULL && strlen(volume_id) >= sizeof(c->volume_id))) {
        kfd_remote_fail(cb, arg, c == NULL ? -ENOMEM : -EINVAL, "%s", c == NULL ? "out of memory" : "volume id too long");
        free(c);
        return NULL;
    }
    c->a = a;
    c->kind = kind;
    c->rc.http = a->rk.http;
    c->rc.token = a->rk.token;
    c->rc.auth_format = "Authorization: Bearer ";
    c->rc.method = "POST";
    c->rc.done = on_done;
    c->rc.cb = cb;
    c->rc.arg = arg;
    if (volume_id != NULL)
        snprintf(c->volume_id, sizeof(c->volume_id), "%s", volume_id);
    return c;
}

static void start_or_fail(acall *c, int r)
{
    if (r != 0)
        fail_call(c, r, "", "cannot build the Key Vault request");
    else
        kfd_remote_start(&c->rc);
}

static void wrap_key(azure *a, const char *volume_id, const kf_secbuf *key, kf_secbuf *generated, kfd_kms_cb cb,
                     void *arg)
{
    acall *c = acall_new(a, OP_WRAP, volume_id, cb, arg);
    if (c == NULL) {
        kf_secbuf_free(generated);
        return;
    }
    c->generated = generated;
    if (a->key_version != NULL)
        snprintf(c->rc.url, sizeof(c->rc.url), "%s%s/wrapkey?api-version=%s", a->key_prefix, a->key_version,
                 a->api_version);
    else /* the latest version: VAULT/keys/NAME/wrapkey */
        snprintf(c->rc.url, sizeof(c->rc.url), "%s/keys/%s/wrapkey?api-version=%s", a->vault_url, a->key,
                 a->api_version);
    char b64[64];
    int r = kfd_kcv(volume_id, key->data, c->kcv);
    if (r == 0 && kf_b64_encode(key->data, key->len, true, b64, sizeof(b64)) < 0)
        r = -EIO;
    if (r == 0)
        r = kfd_remote_body(&c->rc, "{\"alg\":\"RSA-OAEP-256\",\"value\":\"%s\"}", b64);
    kf_wipe(b64, sizeof(b64));
    start_or_fail(c, r);
}

static void azure_wrap(kfd_kms *base, const char *volume_id, const kf_secbuf *key, kfd_kms_cb cb, void *arg)
{
    if (key->len != KFD_DATA_KEY_LEN) {
        kfd_remote_fail(cb, arg, -EINVAL, "%s", "data keys are 32 bytes");
        return;
    }
    wrap_key((azure *)base, volume_id, key, NULL, cb, arg);
}

static void azure_generate(kfd_kms *base, const char *volume_id, kfd_kms_cb cb, void *arg)
{
    kf_secbuf *key = kf_secbuf_new(KFD_DATA_KEY_LEN);
    if (key == NULL || RAND_priv_bytes(key->data, KFD_DATA_KEY_LEN) != 1) {
        kf_secbuf_free(key);
        kfd_remote_fail(cb, arg, -EIO, "%s", "no randomness for a data key");
        return;
    }
    wrap_key((azure *)base, volume_id, key, key, cb, arg);
}

static void unwrap_key(azure *a, bool rewrap, const char *volume_id, const char *wrapped, kfd_kms_cb cb, void *arg)
{
    kfd_wrapped w;
    char kid[512], version[VERSION_MAX];
    int n = kfd_wrapped_parse(wrapped, "azure", &w) == 0
                ? kf_b64_decode(w.ref, strlen(w.ref), true, (uint8_t *)kid, sizeof(kid) - 1)
                : -EINVAL;
    if (n > 0)
        kid[n] = '\0';
    if (n <= 0 || kid_version(a, kid, version) != 0 || !kfd_json_safe(w.payload)) {
        /* Never call a URL taken from the input unless it is our own key's. */
        kfd_remote_fail(cb, arg, -EINVAL, "%s", "wrapped key is not a well-formed azure-keyvault key for this key");
        return;
    }
    acall *c = acall_new(a, OP_UNWRAP, volume_id, cb, arg);
    if (c == NULL)
        return;
    c->rewrap = rewrap;
    memcpy(c->kcv, w.kcv, sizeof(c->kcv));
    memcpy(c->in_version, version, sizeof(version));
    snprintf(c->rc.url, sizeof(c->rc.url), "%s/unwrapkey?api-version=%s", kid, a->api_version);
    start_or_fail(c, kfd_remote_body(&c->rc, "{\"alg\":\"RSA-OAEP-256\",\"value\":\"%s\"}", w.payload));
}

static void azure_unwrap(kfd_kms *base, const char *volume_id, const char *wrapped, kfd_kms_cb cb, void *arg)
{
    unwrap_key((azure *)base, false, volume_id, wrapped, cb, arg);
}

static void azure_rewrap(kfd_kms *base, const char *volume_id, const char *wrapped, kfd_kms_cb cb, void *arg)
{
    unwrap_key((azure *)base, true, volume_id, wrapped, cb, arg);
}

static void azure_rotate(kfd_kms *base, kfd_kms_cb cb, void *arg)
{
    azure *a = (azure *)base;
    acall *c = acall_new(a, OP_ROTATE, NULL, cb, arg);
    if (c == NULL)
        return;
    snprintf(c->rc.url, sizeof(c->rc.url), "%s/keys/%s/rotate?api-version=%s", a->vault_url, a->key, a->api_version);
    start_or_fail(c, kfd_remote_body(&c->rc, "{}"));
}

static void read_key(kfd_remote_kms *k, kfd_kms_cb cb, void *arg)
{
    azure *a = (azure *)k;
    acall *c = acall_new(a, OP_READ_KEY, NULL, cb, arg);
    if (c == NULL)
        return;
    c->rc.method = "GET";
    snprintf(c->rc.url, sizeof(c->rc.url), "%s/keys/%s%s%s?api-version=%s", a->vault_url, a->key,
             a->key_version != NULL ? "/" : "", a->key_version != NULL ? a->key_version : "", a->api_version);
    kfd_remote_start(&c->rc);
}

static void azure_describe(kfd_kms *base, kfd_kms_info *ret)
{
    azure *a = (azure *)base;
    ret->backend = "azure-keyvault";
    ret->latest_version = 0;
    ret->min_decrypt_version = 0;
    ret->reachable = a->rk.reachable;
}

/* Entra ID client credentials, as application/x-www-form-urlencoded. */
static int form_escape(const char *in, char *out, size_t size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        if (o + 4 > size)
            return -ENOSPC;
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
            *p == '.' || *p == '_' || *p == '~') {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return 0;
}

static void on_login(kfd_remote_call *rc, const kfd_http_response *res)
{
    azure *a = (azure *)kfd_remote_kms_of_login(rc);
    kfd_remote_clear(rc);
    if (res->status != 0) {
        kfd_token_fetched(a->rk.token, res->status, NULL, 0, 0, res->error);
        return;
    }
    if (res->code != 200) {
        char why[400], msg[460];
        azure_error(res, why, sizeof(why));
        snprintf(msg, sizeof(msg), "Entra ID token: HTTP %ld: %s", res->code, why);
        kfd_token_fetched(a->rk.token, res->code == 400 || res->code == 401 ? -EACCES : -EIO, NULL, 0, 0, msg);
        return;
    }
    json_t *j = kfd_remote_json(res);
    const char *tok = kfd_json_str(j, "access_token", NULL);
    const json_t *exp = json_object_get(j, "expires_in");
    json_int_t ttl = json_is_integer(exp) ? json_integer_value(exp)
                     : json_is_string(exp) ? strtoll(json_string_value(exp), NULL, 10)
                                           : -1;
    if (tok == NULL || ttl <= 0)
        kfd_token_fetched(a->rk.token, -EIO, NULL, 0, 0, "the token answer has no access_token or expires_in");
    else
        kfd_token_fetched(a->rk.token, 0, tok, strlen(tok), (uint64_t)ttl, NULL);
    json_decref(j);
}

static void fetch_token(void *ctx, kfd_token *t)
{
    azure *a = ctx;
    kfd_remote_call *rc = &a->rk.login;
    memset(rc, 0, sizeof(*rc));
    rc->http = a->rk.http;
    rc->method = "POST";
    rc->done = on_login;
    rc->content_type = "Content-Type: application/x-www-form-urlencoded";
    snprintf(rc->url, sizeof(rc->url), "%s/%s/oauth2/v2.0/token", a->login_host, a->tenant);
    kf_err err = {0};
    kf_secbuf *secret = NULL, *escaped = kf_secbuf_new(3 * SECRET_FILE_MAX + 1);
    int r = escaped != NULL ? kf_secbuf_read_file(a->client_secret_file, SECRET_FILE_MAX, &secret, &err)
                            : kf_err_set(&err, -ENOMEM, "out of memory");
    char id[400];
    if (r == 0)
        r = form_escape((const char *)secret->data, (char *)escaped->data, escaped->cap);
    if (r == 0)
        r = form_escape(a->client_id, id, sizeof(id));
    if (r == 0)
        r = kfd_remote_body(rc,
                            "client_id=%s&client_secret=%s&grant_type=client_credentials"
                            "&scope=https%%3A%%2F%%2Fvault.azure.net%%2F.default",
                            id, (const char *)escaped->data);
    kf_secbuf_free(secret);
    kf_secbuf_free(escaped);
    if (r != 0) {
        kfd_token_fetched(t, r, NULL, 0, 0, err.msg[0] ? err.msg : "cannot build the token request");
        return;
    }
    kfd_remote_start(rc);
}

static void azure_destroy(kfd_kms *base)
{
    azure *a = (azure *)base;
    free(a->vault_url), free(a->key), free(a->key_version), free(a->tenant), free(a->client_id);
    free(a->client_secret_file), free(a->login_host), free(a->api_version);
    kfd_remote_kms_destroy(&a->rk);
}

static const kfd_kms_ops azure_ops = {
    .name = "azure-keyvault",
    .generate = azure_generate,
    .wrap = azure_wrap,
    .unwrap = azure_unwrap,
    .rewrap = azure_rewrap,
    .describe = azure_describe,
    .rotate = azure_rotate,
    .destroy = azure_destroy,
};

int kfd_kms_azure_open(uv_loop_t *loop, const kfd_kms_config *cfg, kfd_kms **ret, kf_err *err)
{
    azure *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    bool ok = true;
    a->vault_url = kfd_strdup_opt(cfg->address, &ok), a->key = kfd_strdup_opt(cfg->key, &ok);
    a->key_version = kfd_strdup_opt(cfg->key_version, &ok), a->tenant = kfd_strdup_opt(cfg->tenant, &ok);
    a->client_id = kfd_strdup_opt(cfg->client_id, &ok), a->client_secret_file = kfd_strdup_opt(cfg->client_secret_file, &ok);
    a->login_host = kfd_strdup_opt(cfg->login_host, &ok), a->api_version = kfd_strdup_opt(cfg->api_version, &ok);
    if (ok && (a->login_host == NULL || a->api_version == NULL))
        ok = false;
    if (ok)
        snprintf(a->key_prefix, sizeof(a->key_prefix), "%s/keys/%s/", a->vault_url, a->key);
    if (ok && a->key_version != NULL)
        snprintf(a->latest, sizeof(a->latest), "%s", a->key_version);
    int r = kfd_remote_kms_init(&a->rk, loop, &azure_ops, cfg, "azure", 10000, fetch_token, read_key, err);
    if (r == 0 && !ok)
        r = kf_err_set(err, -ENOMEM, "out of memory");
    if (r != 0) {
        azure_destroy(&a->rk.super);
        return r;
    }
    kfd_remote_kms_start(&a->rk);
    kf_log_info("kms_open", "backend=azure-keyvault vault=%s key=%s version=%s login_host=%s",
                kf_log_q(a->vault_url), a->key, a->key_version != NULL ? a->key_version : "latest",
                kf_log_q(a->login_host));
    *ret = &a->rk.super;
    return 0;
}
