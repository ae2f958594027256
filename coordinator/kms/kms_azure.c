/* The azure-keyvault KMS backend: Azure Key Vault (or Managed HSM) keys over HTTPS.
 * generate = CSPRNG then wrap; wrap = wrapkey with RSA-OAEP-256 on the configured version (or the
 * latest); unwrap = unwrapkey on the key id kept from the wrap; rewrap = unwrap then wrap;
 * rotate = keys/NAME/rotate. Key versions are opaque ids, so key_version is 0 and staleness
 * compares ids. Wrapped keys: "kf:azure:B64URL(KID):KCV:VALUE".
 *
 * The Entra ID token is for the configured scope (by default the vault's cloud and kind, from
 * its host: kms_config.c), fetched one of three ways: client credentials with a client secret,
 * a managed identity through IMDS (GET, "Metadata: true", api-version 2018-02-01, resource and an
 * optional client_id), or workload identity (the federated token file, read at each fetch, as
 * a client_assertion). Secrets and tokens live in secure memory and are never logged.
 *
 * Only a 401 fetches a new token (once per refusal period): Key Vault answers an invalid or
 * expired token, or one for another audience, with 401. A 403 is the vault's RBAC, access
 * policy or firewall refusing this identity or address, which a new token cannot change: it is
 * reported as such; a 403 without an RBAC, policy or firewall inner code (a disabled or expired
 * version) is reported with Key Vault's own code and message, and the key is read again. The key
 * version read at start and every minute must be RSA or RSA-HSM, allow wrapKey and unwrapKey, be
 * enabled and inside its nbf/exp window; otherwise wraps, generates and rewraps are refused with
 * the reason until a read finds it usable, and readyz says why. Unwraps go to the kid in the
 * wrapped key: only that very version, when Key Vault would refuse it too, is refused here.
 * Token endpoint failures (Entra ID, IMDS: another host) are not the vault's reachability. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "kf_b64.h"
#include "kf_cleanup.h"
#include "kf_log.h"
#include "kf_secmem.h"
#include "kms/kms_azure.h"
#include "kms/kms_remote.h"
#include "kms/kms_wrapped.h"

#define SECRET_FILE_MAX 4096
#define ASSERTION_FILE_MAX 6144
#define VERSION_MAX KFD_AZURE_VERSION_MAX

typedef struct azure {
    kfd_remote_kms rk; /* first */
    char *vault_url, *key, *key_version, *tenant, *client_id, *client_secret_file, *login_host, *api_version;
    char *scope, *federated_token_file, *imds_endpoint;
    int identity;         /* kfd_azure_identity */
    kfd_http *idp_http;   /* to the token endpoint: Entra ID, or IMDS (plain HTTP on its link-local address) */
    char key_prefix[700]; /* VAULT/keys/NAME/ : every kid we accept starts with it */
    char latest[VERSION_MAX];
    bool unusable;        /* the last key read found a version that cannot wrap now: no wrap, generate, rewrap */
    char unusable_msg[400];
    /* The version that read found (latest or key_version) and whether Key Vault would refuse to
     * unwrap with it too (disabled, no unwrapKey, not RSA): unwraps naming another version (an
     * older kid) still go to Key Vault, which decides for them. An expired or not-yet-valid
     * version still unwraps (Key Vault allows unwrap outside nbf/exp). */
    char read_version[VERSION_MAX];
    bool read_no_unwrap;
    /* The token endpoint (Entra ID or IMDS) is another host than the vault: its failures are not
     * the vault's. idp_down: the last token fetch got no answer from it. */
    bool idp_down;
    bool vault_asked; /* a call reached the vault (answered or not): rk.reachable is the vault's */
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

static int kid_version(const azure *a, const char *kid, char version[VERSION_MAX])
{
    return kfd_azure_kid_version(a->key_prefix, kid, version);
}

static void azure_error(const kfd_http_response *res, char *out, size_t size)
{
    json_t *j = kfd_remote_json(res);
    kfd_azure_error(j, out, size);
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

/* The Key Vault operation a call makes, for messages. */
static const char *op_name(const acall *c)
{
    static const char *const names[] = {[OP_WRAP] = "wrapkey", [OP_UNWRAP] = "unwrapkey", [OP_ROTATE] = "rotate",
                                        [OP_READ_KEY] = "get key"};
    return names[c->kind];
}

static void answer_key_bundle(acall *c, json_t *j)
{
    azure *a = c->a;
    char version[VERSION_MAX];
    if (kid_version(a, kfd_json_str(j, "key", "kid"), version) != 0) {
        fail_call(c, -EIO, "azure answer: ", "key.kid is missing or not this key's");
        return;
    }
    char why[300];
    bool no_unwrap = false;
    memcpy(a->read_version, version, sizeof(version));
    if (kfd_azure_key_unusable(j, (long long)time(NULL), why, sizeof(why), &no_unwrap) != NULL) {
        bool was = a->unusable;
        a->read_no_unwrap = no_unwrap;
        snprintf(a->unusable_msg, sizeof(a->unusable_msg), "azure key %s%s%s cannot be used: %s", a->key,
                 a->key_version != NULL ? "/" : "", a->key_version != NULL ? a->key_version : "", why);
        a->unusable = true;
        if (!was)
            kf_log_error("kms_key_unusable", "backend=azure-keyvault key=%s error=%s", a->key, kf_log_q(a->unusable_msg));
        fail_call(c, -ENOTSUP, "", a->unusable_msg);
        return;
    }
    a->unusable = false;
    a->read_no_unwrap = false;
    if (a->key_version == NULL)
        memcpy(a->latest, version, sizeof(version));
    kfd_kms_result out = {.message = version};
    c->rc.cb(c->rc.arg, &out);
    acall_free(c);
}

/* A 403 from the vault: fails the call with the reason and a hint. */
static void denied(acall *c, const kfd_http_response *res)
{
    azure *a = c->a;
    char why[400], msg[700];
    azure_error(res, why, sizeof(why));
    /* The hint follows Key Vault's inner error code; without one of the codes that name a role,
     * policy or firewall refusal, Key Vault's own code and message (above) are the reason: a
     * disabled version or one outside its nbf/exp window answers 403 that way. */
    const char *hint;
    if (strstr(why, "/KeyOperationForbidden:") != NULL)
        hint = "the key's key_ops do not allow this operation";
    else if (strstr(why, "/ForbiddenByRbac:") != NULL || strstr(why, "/ForbiddenByPolicy:") != NULL)
        hint = "keyfleetd's identity lacks a role assignment (or access policy) for this operation";
    else if (strstr(why, "/ForbiddenByFirewall:") != NULL)
        hint = "the vault's firewall refuses this address";
    else
        hint = "Key Vault's own reason, not a role, policy or firewall refusal (a disabled key version, or one "
               "outside its nbf/exp window, is refused this way); the key is read again";
    bool reread = strstr(hint, "read again") != NULL;
    snprintf(msg, sizeof(msg), "HTTP 403 to %s %s: %s; %s (docs/kms-azure.md); a new token would not help, so none was fetched",
             c->rc.method, op_name(c), why, hint);
    if (reread && c->kind != OP_READ_KEY)
        kfd_remote_kms_start(&a->rk);
    fail_call(c, -EACCES, "azure key vault denied: ", msg);
}

/* OP_UNWRAP's answer (kid checked, version its version): the key must come from the version
 * asked and match the volume's key check value; then it is answered, or rewrapped. */
static void unwrap_answer(acall *c, json_t *j, const char *version, const char *value)
{
    azure *a = c->a;
    /* OP_UNWRAP: the answer must come from the version we asked */
    if (strcmp(version, c->in_version) != 0) {
        json_decref(j);
        fail_call(c, -EIO, "azure answer: ", "the kid names another key version than the request");
        return;
    }
    KF_CLEANUP(kf_secbuf_freep) kf_secbuf *key = kf_secbuf_new(64);
    int n = key != NULL ? kf_b64_decode(value, strlen(value), true, key->data, 64) : -ENOMEM;
    json_decref(j);
    if (n != KFD_DATA_KEY_LEN || kfd_kcv_check(c->volume_id, key->data, c->kcv) != 0) {
        fail_call(c, n == KFD_DATA_KEY_LEN ? -EBADMSG : -EIO, "azure answer: ",
                  n == KFD_DATA_KEY_LEN ? "the key does not match the volume's key check value"
                                        : "the unwrapped value is not a 256-bit key");
        return;
    }
    key->len = KFD_DATA_KEY_LEN;
    if (c->rewrap) {
        wrap_key(a, c->volume_id, key, NULL, c->rc.cb, c->rc.arg);
        acall_free(c);
        return;
    }
    /* Stale only when a rewrap can follow: not while the version read cannot wrap. */
    kfd_kms_result out = {.plaintext = key,
                          .stale = !a->unusable && a->latest[0] != '\0' && strcmp(c->in_version, a->latest) != 0};
    c->rc.cb(c->rc.arg, &out);
    acall_free(c);
}

static void on_done(kfd_remote_call *rc, const kfd_http_response *res)
{
    acall *c = (acall *)rc;
    azure *a = c->a;
    /* Only a call that went to the vault says whether the vault answers: a failed token fetch went
     * to Entra ID or IMDS, and says nothing about the vault (kfd_remote_kms_answered counts a
     * refused login as the KMS answering, which is right for Vault, whose logins it serves). */
    if (!rc->login_failed) {
        a->vault_asked = true;
        kfd_remote_kms_answered(&a->rk, res);
    }
    if (c->kind == OP_ROTATE && !rc->login_failed && (res->status != 0 || res->code >= 500)) {
        /* Sent once (a retry could rotate twice): the outcome is unknown, so say so and read the
         * key again at once rather than report a failed rotation. */
        char msg[600];
        snprintf(msg, sizeof(msg), "%s; the rotation may have happened: it is not repeated, and the key is read again "
                 "(keyfleetctl status shows its latest version)",
                 res->status != 0 ? (res->error != NULL ? res->error : "no answer") : "a server error answered it");
        kfd_remote_kms_start(&a->rk);
        fail_call(c, res->status != 0 ? res->status : -EIO, "azure key vault rotation: ", msg);
        return;
    }
    if (res->status != 0) {
        /* A failed token fetch is reported as the token endpoint's failure (answered or not); the
         * vault was not asked. */
        fail_call(c, res->status,
                  !rc->login_failed ? "azure key vault unreachable: "
                  : a->idp_down     ? "azure token endpoint unreachable: "
                                    : "",
                  res->error != NULL ? res->error : "transport error");
        return;
    }
    if (res->code == 403) {
        denied(c, res);
        return;
    }
    if (res->code >= 400) {
        char why[400], msg[440];
        azure_error(res, why, sizeof(why));
        snprintf(msg, sizeof(msg), "HTTP %ld: %s", res->code, why);
        int status = res->code == 401 ? -EACCES : res->code == 400 && c->kind == OP_UNWRAP ? -EBADMSG : -EIO;
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
        char wrapped[KFD_WRAPPED_MAX];
        int r = kfd_azure_wrapped(a->key_prefix, j, c->kcv, wrapped, sizeof(wrapped), version);
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
    unwrap_answer(c, j, version, value);
}

/* A 401 or 403 to a call with the cached token: only a 401 can be cured by a new token. */
static void azure_refused(kfd_remote_call *rc, const kfd_http_response *res)
{
    char why[96];
    snprintf(why, sizeof(why), "HTTP %ld to a call with the cached token", res->code);
    if (res->code == 401 && !rc->auth_retried && kfd_token_refused(rc->token, why)) {
        rc->auth_retried = true;
        kfd_remote_start(rc);
        return;
    }
    rc->done(rc, res);
}

static acall *acall_new(azure *a, op_kind kind, const char *volume_id, kfd_kms_cb cb, void *arg)
{
    acall *c = calloc(1, sizeof(*c));
    if (c == NULL || (volume_id != NULL && strlen(volume_id) >= sizeof(c->volume_id))) {
        kfd_remote_fail(cb, arg, c == NULL ? -ENOMEM : -EINVAL, "%s", c == NULL ? "out of memory" : "volume id too long");
        free(c);
        return NULL;
    }
    /* A version that cannot wrap blocks wraps (and generate, rewrap: unwrap_key); a rotation may
     * cure it, and unwraps are decided per kid in unwrap_key. */
    if (a->unusable && kind == OP_WRAP) {
        free(c);
        kfd_remote_fail(cb, arg, -ENOTSUP, "%s (from the last key read)", a->unusable_msg);
        return NULL;
    }
    c->a = a;
    c->kind = kind;
    c->rc.http = a->rk.http;
    c->rc.refused = azure_refused;
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
    /* A rewrap ends in a wrap: refused up front when the version read cannot wrap. An unwrap is
     * refused only when its kid names that very version and Key Vault would refuse it too
     * (disabled, no unwrapKey); an older kid goes to Key Vault, which decides for its version. */
    if (a->unusable && (rewrap || (a->read_no_unwrap && strcmp(version, a->read_version) == 0))) {
        kfd_remote_fail(cb, arg, -ENOTSUP, "%s (from the last key read)", a->unusable_msg);
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
    c->rc.once = true;
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
    const char *token_problem = kfd_token_problem(a->rk.token);
    /* "Unreachable" is the vault's state only: while no token can be had and no call has found
     * the vault down, readyz names the token endpoint's failure (problem) instead. */
    ret->reachable = a->rk.reachable || (!a->vault_asked && token_problem != NULL);
    ret->problem = a->unusable ? a->unusable_msg : token_problem;
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

static const char *const identity_what[] = {
    [KFD_AZURE_CLIENT_SECRET] = "Entra ID token (client secret)",
    [KFD_AZURE_MANAGED] = "managed identity token (IMDS)",
    [KFD_AZURE_WORKLOAD] = "Entra ID token (workload identity: federated token)",
};

static void on_login(kfd_remote_call *rc, const kfd_http_response *res)
{
    azure *a = (azure *)kfd_remote_kms_of_login(rc);
    kfd_remote_clear(rc);
    const char *what = identity_what[a->identity];
    char msg[600];
    a->idp_down = res->status != 0;
    if (res->status != 0) {
        snprintf(msg, sizeof(msg), "%s: no answer (from the token endpoint; Key Vault was not asked): %s", what,
                 res->error != NULL ? res->error : "transport error");
        kfd_token_fetched(a->rk.token, res->status, NULL, 0, 0, msg);
        return;
    }
    if (res->code != 200) {
        char why[400];
        azure_error(res, why, sizeof(why));
        /* IMDS asks for retries on 404 and 410 too (it is starting or updating) */
        bool wait = res->code == 429 || res->code >= 500 ||
                    (a->identity == KFD_AZURE_MANAGED && (res->code == 404 || res->code == 410));
        int status = wait ? -EAGAIN : res->code == 400 || res->code == 401 || res->code == 403 ? -EACCES : -EPROTO;
        if (wait && res->retry_after_s > 0)
            kfd_token_hold_off(a->rk.token, res->retry_after_s);
        snprintf(msg, sizeof(msg), "%s: HTTP %ld: %s", what, res->code, why);
        kfd_token_fetched(a->rk.token, status, NULL, 0, 0, msg);
        return;
    }
    json_t *j = kfd_remote_json(res);
    const char *tok = NULL;
    uint64_t ttl = 0;
    if (kfd_azure_login_answer(j, &tok, &ttl) != 0) {
        snprintf(msg, sizeof(msg), "%s: the answer has no access_token or expires_in", what);
        kfd_token_fetched(a->rk.token, -EPROTO, NULL, 0, 0, msg);
    } else {
        kfd_token_fetched(a->rk.token, 0, tok, strlen(tok), ttl, NULL);
    }
    json_decref(j);
}

/* IMDS: GET ENDPOINT?api-version=2018-02-01&resource=RESOURCE[&client_id=ID] with "Metadata: true". */
static int imds_request(azure *a, kfd_remote_call *rc, kf_err *err)
{
    char resource[300], res_esc[900], id_esc[400] = "";
    size_t n = strlen(a->scope) - strlen("/.default"); /* kms_config.c checked the suffix */
    if (n >= sizeof(resource))
        return kf_err_set(err, -ENOSPC, "scope too long");
    memcpy(resource, a->scope, n);
    resource[n] = '\0';
    if (form_escape(resource, res_esc, sizeof(res_esc)) != 0 ||
        (a->client_id != NULL && form_escape(a->client_id, id_esc, sizeof(id_esc)) != 0))
        return kf_err_set(err, -ENOSPC, "scope or client_id too long");
    int w = snprintf(rc->url, sizeof(rc->url), "%s?api-version=2018-02-01&resource=%s%s%s", a->imds_endpoint, res_esc,
                     a->client_id != NULL ? "&client_id=" : "", id_esc);
    if (w < 0 || (size_t)w >= sizeof(rc->url))
        return kf_err_set(err, -ENOSPC, "the IMDS URL is too long");
    rc->method = "GET";
    /* IMDS takes no bearer token, but refuses requests without this header (an SSRF guard): it
     * goes where a token would. */
    rc->auth_format = "Metadata: ";
    rc->fixed_token = "true";
    return 0;
}

/* Entra ID client credentials, with a client secret or a federated token as client_assertion,
 * as application/x-www-form-urlencoded. The file is read at each fetch (both rotate). */
static int entra_request(azure *a, kfd_remote_call *rc, kf_err *err)
{
    bool workload = a->identity == KFD_AZURE_WORKLOAD;
    size_t max = workload ? ASSERTION_FILE_MAX : SECRET_FILE_MAX;
    rc->method = "POST";
    rc->content_type = "Content-Type: application/x-www-form-urlencoded";
    snprintf(rc->url, sizeof(rc->url), "%s/%s/oauth2/v2.0/token", a->login_host, a->tenant);
    kf_secbuf *secret = NULL, *escaped = kf_secbuf_new(3 * max + 1);
    int r = escaped != NULL ? kf_secbuf_read_file(workload ? a->federated_token_file : a->client_secret_file, max,
                                                  &secret, err)
                            : kf_err_set(err, -ENOMEM, "out of memory");
    char id[400], scope[800];
    if (r == 0 && (form_escape((const char *)secret->data, (char *)escaped->data, escaped->cap) != 0 ||
                   form_escape(a->client_id, id, sizeof(id)) != 0 || form_escape(a->scope, scope, sizeof(scope)) != 0))
        r = kf_err_set(err, -ENOSPC, "client_id or scope too long");
    if (r == 0 && workload)
        r = kfd_remote_body(rc,
                            "client_id=%s&client_assertion=%s"
                            "&client_assertion_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Aclient-assertion-type%%3Ajwt-bearer"
                            "&grant_type=client_credentials&scope=%s",
                            id, (const char *)escaped->data, scope);
    else if (r == 0)
        r = kfd_remote_body(rc, "client_id=%s&client_secret=%s&grant_type=client_credentials&scope=%s", id,
                            (const char *)escaped->data, scope);
    if (r != 0 && err->msg[0] == '\0')
        kf_err_set(err, r, "the token request does not fit");
    kf_secbuf_free(secret);
    kf_secbuf_free(escaped);
    return r;
}

static void fetch_token(void *ctx, kfd_token *t)
{
    azure *a = ctx;
    kfd_remote_call *rc = &a->rk.login;
    memset(rc, 0, sizeof(*rc));
    rc->http = a->idp_http;
    rc->done = on_login;
    kf_err err = {0};
    int r = a->identity == KFD_AZURE_MANAGED ? imds_request(a, rc, &err) : entra_request(a, rc, &err);
    if (r != 0) {
        char msg[600];
        snprintf(msg, sizeof(msg), "%s: %s", identity_what[a->identity], err.msg[0] ? err.msg : "cannot build the request");
        kfd_remote_clear(rc);
        kfd_token_fetched(t, r, NULL, 0, 0, msg);
        return;
    }
    kfd_remote_start(rc);
}

static void azure_destroy(kfd_kms *base)
{
    azure *a = (azure *)base;
    free(a->vault_url), free(a->key), free(a->key_version), free(a->tenant), free(a->client_id);
    free(a->client_secret_file), free(a->login_host), free(a->api_version);
    free(a->scope), free(a->federated_token_file), free(a->imds_endpoint);
    kfd_http_free(a->idp_http);
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
    a->scope = kfd_strdup_opt(cfg->scope, &ok), a->federated_token_file = kfd_strdup_opt(cfg->federated_token_file, &ok);
    a->imds_endpoint = kfd_strdup_opt(cfg->imds_endpoint, &ok);
    a->identity = cfg->azure_identity;
    bool managed = a->identity == KFD_AZURE_MANAGED;
    if (ok && (a->api_version == NULL || a->scope == NULL || (managed ? a->imds_endpoint == NULL : a->login_host == NULL)))
        ok = false;
    if (ok)
        snprintf(a->key_prefix, sizeof(a->key_prefix), "%s/keys/%s/", a->vault_url, a->key);
    if (ok && a->key_version != NULL)
        snprintf(a->latest, sizeof(a->latest), "%s", a->key_version);
    int r = kfd_remote_kms_init(&a->rk, loop, &azure_ops, cfg, "azure", 10000, fetch_token, read_key, err);
    if (r == 0 && !ok)
        r = kf_err_set(err, -EINVAL, "azure-keyvault: the configuration lacks scope, api_version, or the token endpoint");
    if (r == 0) {
        /* IMDS is plain HTTP (link-local; kms_config.c allows http:// only there and on loopback) */
        kfd_http_opts opts = {.name = "azure-login",
                              .ca_file = cfg->ca_file,
                              .protocols = managed && strncmp(a->imds_endpoint, "http://", 7) == 0 ? "http" : "https",
                              .timeout_ms = (uint32_t)cfg->timeout_ms,
                              .first_backoff_ms = 200,
                              .max_retry_after_ms = 10000,
                              .max_attempts = (int)cfg->attempts,
                              .max_response = 64 * 1024,
                              /* Microsoft: IMDS requests must bypass proxies (a proxy would see, and
                               * could replace, the token) */
                              .no_proxy = managed};
        r = kfd_http_new(loop, &opts, &a->idp_http, err);
    }
    if (r != 0) {
        azure_destroy(&a->rk.super);
        return r;
    }
    kfd_remote_kms_start(&a->rk);
    kf_log_info("kms_open", "backend=azure-keyvault vault=%s key=%s version=%s identity=%s scope=%s token_endpoint=%s",
                kf_log_q(a->vault_url), a->key, a->key_version != NULL ? a->key_version : "latest",
                managed ? "managed" : a->identity == KFD_AZURE_WORKLOAD ? "workload" : "client_secret",
                kf_log_q(a->scope), kf_log_q(managed ? a->imds_endpoint : a->login_host));
    *ret = &a->rk.super;
    return 0;
}
