/* The vault-transit KMS backend: HashiCorp Vault's (or OpenBao's) Transit engine over HTTPS.
 * generate = datakey/plaintext (256 bits), wrap = encrypt, unwrap = decrypt, rewrap = rewrap,
 * rotate = keys/KEY/rotate, describe = keys/KEY (read at start, after rotation and every
 * minute). Auth is a token file (renewed with renew-self, re-read at each renewal) or AppRole
 * (login again before the token expires). Wrapped keys: "kf:vault:vN:KCV:BODY", where
 * "vault:vN:BODY" is Vault's ciphertext (kms_wrapped.h).
 *
 * Errors say what Vault said (status and its "errors" text), never "unreachable" when it answered.
 * A 401/403 to a call is checked with auth/token/lookup-self: a valid token means the Vault policy
 * lacks a capability (named, and no new login, which could spend a use of the secret id); an
 * invalid one means a new login, at most once per back-off period (kfd_token_refused). Redirects
 * are reported with their Location, not followed. A Retry-After longer than the HTTP client waits
 * holds every call off until then. Derived Transit keys (derived: true) are refused: keyfleet
 * binds a key to its volume with its own key check value and sends no context; so are keys that
 * cannot encrypt (signing and asymmetric types). A namespace (Enterprise, HCP) goes in
 * X-Vault-Namespace on every request. A rotation is sent once, never retried. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_b64.h"
#include "kf_cleanup.h"
#include "kf_log.h"
#include "kf_secmem.h"
#include "kms/kms_remote.h"
#include "kms/kms_vault.h"
#include "kms/kms_wrapped.h"

#define SECRET_FILE_MAX 4096

typedef struct vault {
    kfd_remote_kms rk; /* first */
    char *base;        /* ADDRESS/v1 */
    char *mount, *key, *approle_mount;
    char *token_file, *role_id_file, *secret_id_file;
    kf_secbuf *file_token; /* token-file mode: the token being renewed */
    uint32_t latest, min_decrypt;
    bool unusable;         /* the last key read found a key keyfleet cannot use (derived, not for encryption) */
    char unusable_msg[400];
    uint64_t hold_until_ms; /* Vault's Retry-After: no calls before this (loop time) */
    char hold_msg[600];
} vault;

typedef enum { OP_GENERATE, OP_WRAP, OP_UNWRAP, OP_REWRAP, OP_ROTATE, OP_READ_KEY } op_kind;

typedef struct vcall {
    kfd_remote_call rc; /* first: the remote layer hands it back */
    vault *v;
    op_kind kind;
    char volume_id[256];
    char kcv[KFD_KCV_TEXT_LEN + 1];
    uint32_t in_version;
    bool rotated; /* a key read after Vault answered a rotation with success */
} vcall;

/* The auth/token/lookup-self check of a refused call's token. */
typedef struct lookup {
    kfd_remote_call rc; /* first */
    vcall *c;
    long code;          /* the refused call's answer */
    char why[300];
} lookup;

/* Vault's {"errors":[...]} as one line. */
static void vault_errors(const kfd_http_response *res, char *out, size_t size)
{
    json_t *j = kfd_remote_json(res);
    kfd_vault_errors(j, out, size);
    json_decref(j);
}

static void vcall_free(vcall *c)
{
    kfd_remote_clear(&c->rc);
    free(c);
}

static void fail_call(vcall *c, int status, const char *prefix, const char *detail)
{
    if (c->rotated) /* never "failed" for a rotation Vault made: an operator would rotate again */
        kfd_remote_kms_start(&c->v->rk);
    if (c->rc.cb != NULL)
        kfd_remote_fail(c->rc.cb, c->rc.arg, status, "%s%s%s",
                        c->rotated ? "vault rotated the key, but reading its new version failed (the key is read "
                                     "again at once; keyfleetctl status shows it): "
                                   : "",
                        prefix, detail);
    vcall_free(c);
}

static void note_version(vault *v, uint32_t version)
{
    if (version > v->latest)
        v->latest = version;
}

static void read_key_answer(vcall *c, json_t *j);

/* The call's Vault path without /v1/, as Vault policies name it: "transit/decrypt/keyfleet". */
static const char *vault_path(const vcall *c) { return c->rc.url + strlen(c->v->base) + 1; }

/* A 3xx is not followed (a standby node, a proxy): say where it pointed. */
static const char *redirect_text(const kfd_http_response *res)
{
    static char text[1100];
    snprintf(text, sizeof(text),
             "HTTP %ld to %s; keyfleetd does not follow redirects: point kms.vault.address at the Vault that "
             "serves the request (the active node, or a load balancer that forwards)",
             res->code, res->location != NULL ? res->location : "(no Location)");
    return text;
}

static void hold_off(vault *v, long code, const char *why, uint32_t seconds)
{
    v->hold_until_ms = uv_now(v->rk.super.loop) + (uint64_t)seconds * 1000;
    snprintf(v->hold_msg, sizeof(v->hold_msg), "vault answered HTTP %ld (%.300s) with Retry-After %u s; no calls until then",
             code, why, seconds);
}

static void policy_refusal(vcall *c, long code, const char *why, const char *how_known)
{
    char msg[900];
    snprintf(msg, sizeof(msg),
             "vault policy refuses %s %s: HTTP %ld: %s; keyfleetd's token is valid (%s), so its Vault policy lacks "
             "the \"%s\" capability on path \"%s\" (docs/kms-vault.md lists the policy)",
             c->rc.method, vault_path(c), code, why, how_known, strcmp(c->rc.method, "GET") == 0 ? "read" : "update",
             vault_path(c));
    fail_call(c, -EACCES, "", msg);
}

static void on_lookup(kfd_remote_call *rc, const kfd_http_response *res)
{
    lookup *l = (lookup *)rc;
    vcall *c = l->c;
    vault *v = c->v;
    long code = l->code;
    char why[300];
    memcpy(why, l->why, sizeof(why));
    kfd_remote_clear(rc);
    free(l);
    if (res->status == 0 && res->code == 200) {
        policy_refusal(c, code, why, "auth/token/lookup-self accepts it");
        return;
    }
    char lk[96], cause[500];
    if (res->status != 0)
        snprintf(lk, sizeof(lk), "no answer: %s", res->error != NULL ? res->error : "transport error");
    else
        snprintf(lk, sizeof(lk), "HTTP %ld", res->code);
    snprintf(cause, sizeof(cause), "vault refused the token: HTTP %ld: %s on %s (auth/token/lookup-self: %s)", code,
             why, vault_path(c), lk);
    if (kfd_token_refused(v->rk.token, cause)) {
        c->rc.auth_retried = true;
        kfd_remote_start(&c->rc);
        return;
    }
    fail_call(c, -EACCES, cause, "; a new login waits for the back-off period (one per period)");
}

/* A 401/403 to a call with the cached token: is the token invalid, or does the policy refuse? */
static void vault_refused(kfd_remote_call *rc, const kfd_http_response *res)
{
    vcall *c = (vcall *)rc;
    vault *v = c->v;
    kfd_remote_kms_answered(&v->rk, res);
    char why[300];
    vault_errors(res, why, sizeof(why));
    if (rc->auth_retried) {
        policy_refusal(c, res->code, why, "it comes from a login made after the first refusal");
        return;
    }
    const char *tok = kfd_token_current(v->rk.token);
    lookup *l = tok != NULL ? calloc(1, sizeof(*l)) : NULL;
    if (l == NULL) {
        fail_call(c, -EACCES, "vault refused the token: ", why);
        return;
    }
    l->c = c;
    l->code = res->code;
    memcpy(l->why, why, sizeof(l->why));
    l->rc.http = v->rk.http;
    l->rc.method = "GET";
    l->rc.fixed_token = tok;
    l->rc.auth_format = "X-Vault-Token: ";
    l->rc.done = on_lookup;
    snprintf(l->rc.url, sizeof(l->rc.url), "%s/auth/token/lookup-self", v->base);
    kfd_remote_start(&l->rc);
}

/* A rotation is tried once: repeated after a lost answer it could rotate twice. Whether this one
 * took effect is learnt by reading the key again (the describe timer, at once). */
static void rotate_failed(vcall *c, const kfd_http_response *res)
{
    vault *v = c->v;
    static const char maybe[] = "; the rotation may have happened: it is not repeated, and the key is read again "
                                "(keyfleetctl status shows its latest version)";
    char why[1200], msg[1600];
    if (res->status != 0) {
        snprintf(msg, sizeof(msg), "%s: no answer: %s%s", vault_path(c),
                 res->error != NULL ? res->error : "transport error", maybe);
    } else if (res->code >= 200 && res->code < 300) {
        snprintf(msg, sizeof(msg), "%s: HTTP %ld, where Vault answers a rotation with 200 or 204", vault_path(c),
                 res->code);
    } else {
        if (res->code >= 300 && res->code < 400)
            snprintf(why, sizeof(why), "%s", redirect_text(res));
        else
            vault_errors(res, why, sizeof(why));
        if ((res->code == 429 || res->code == 503) && res->retry_after_s > 0)
            hold_off(v, res->code, why, res->retry_after_s);
        snprintf(msg, sizeof(msg), "%s: HTTP %ld: %s%s", vault_path(c), res->code, why, res->code >= 500 ? maybe : "");
    }
    kfd_remote_kms_start(&v->rk);
    fail_call(c, res->status != 0 ? res->status : res->code == 401 || res->code == 403 ? -EACCES : -EIO,
              "vault rotation failed: ", msg);
}

/* Vault answered with an error: the status says what the caller may do about it. */
static void error_answer(vcall *c, const kfd_http_response *res)
{
    vault *v = c->v;
    char why[400];
    vault_errors(res, why, sizeof(why));
    int status = -EIO;
    if (res->code == 401 || res->code == 403)
        status = -EACCES;
    else if (res->code == 400 && strstr(why, "context") != NULL)
        status = -ENOTSUP; /* a derived key: never "not this volume's key" */
    else if (res->code == 400 && (c->kind == OP_UNWRAP || c->kind == OP_REWRAP) &&
             strstr(why, "too new") == NULL && strstr(why, "disallowed by policy") == NULL &&
             strstr(why, "key not found") == NULL)
        status = -EBADMSG; /* the ciphertext the node presented does not decrypt */
    char msg[600], wait[96] = "";
    if ((res->code == 429 || res->code == 503) && res->retry_after_s > 0) {
        hold_off(v, res->code, why, res->retry_after_s);
        snprintf(wait, sizeof(wait), "; Vault asked to retry after %u s (Retry-After), calls held until then",
                 res->retry_after_s);
    }
    snprintf(msg, sizeof(msg), "%s: HTTP %ld: %s%s%s", vault_path(c), res->code, why, wait,
             status == -ENOTSUP ? "; the Transit key is derived, which keyfleet refuses (docs/kms-vault.md)" : "");
    fail_call(c, status, "vault refused: ", msg);
}

/* A rotation Vault accepted: the key's new versions, from its answer or read again. */
static void rotated(vcall *c, const kfd_http_response *res)
{
    vault *v = c->v;
    /* 200 carries the key as the active node has it (Vault 1.10+); 204 means read it (with
     * retries: reading twice is harmless). */
    c->kind = OP_READ_KEY;
    c->rotated = true;
    json_t *key = res->code == 200 ? kfd_remote_json(res) : NULL;
    if (json_is_object(json_object_get(json_object_get(key, "data"), "keys"))) {
        read_key_answer(c, key);
        json_decref(key);
        return;
    }
    json_decref(key);
    c->rc.once = false;
    c->rc.method = "GET";
    kfd_remote_clear(&c->rc);
    snprintf(c->rc.url, sizeof(c->rc.url), "%s/%s/keys/%s", v->base, v->mount, v->key);
    kfd_remote_start(&c->rc);
}

/* A data key's answer (generate, wrap, unwrap, rewrap): the key checked against its volume, the
 * wrapped text formatted. Takes j. */
static void key_answer(vcall *c, json_t *j)
{
    vault *v = c->v;
    const char *pt = kfd_json_str(j, "data", "plaintext");
    const char *ct = kfd_json_str(j, "data", "ciphertext");
    KF_CLEANUP(kf_secbuf_freep) kf_secbuf *key = NULL;
    if (c->kind == OP_GENERATE || c->kind == OP_UNWRAP) {
        key = kf_secbuf_new(64);
        int n = key != NULL && pt != NULL ? kf_b64_decode(pt, strlen(pt), false, key->data, 64) : -EINVAL;
        if (n != KFD_DATA_KEY_LEN) {
            json_decref(j);
            fail_call(c, -EIO, "vault answer: ", "the plaintext is missing or not a 256-bit key");
            return;
        }
        key->len = KFD_DATA_KEY_LEN;
    }
    kfd_kms_result out = {.latest_version = v->latest};
    char wrapped[KFD_WRAPPED_MAX];
    int r = 0;
    if (c->kind == OP_UNWRAP) {
        r = kfd_kcv_check(c->volume_id, key->data, c->kcv);
        note_version(v, c->in_version);
        out.plaintext = key;
        out.key_version = c->in_version;
        out.latest_version = v->latest;
        out.stale = c->in_version < v->latest;
    } else {
        uint32_t version = 0;
        const char *body = NULL;
        r = kfd_vault_ciphertext(ct, &version, &body) == 0 ? 0 : -EPROTO;
        if (r == 0 && c->kind == OP_GENERATE)
            r = kfd_kcv(c->volume_id, key->data, c->kcv);
        if (r == 0)
            r = kfd_vault_wrapped(ct, c->kcv, wrapped, sizeof(wrapped), &version);
        note_version(v, version);
        out.plaintext = key;
        out.wrapped = wrapped;
        out.key_version = version;
        out.latest_version = v->latest;
    }
    json_decref(j);
    if (r == -EBADMSG) {
        fail_call(c, -EBADMSG, "", "the key Vault returned does not match the volume's key check value");
        return;
    }
    if (r != 0) {
        fail_call(c, -EIO, "vault answer: ", "the ciphertext has no valid key version");
        return;
    }
    c->rc.cb(c->rc.arg, &out);
    vcall_free(c);
}

static void on_done(kfd_remote_call *rc, const kfd_http_response *res)
{
    vcall *c = (vcall *)rc;
    vault *v = c->v;
    kfd_remote_kms_answered(&v->rk, res);
    if (c->kind == OP_ROTATE && (res->status != 0 || (res->code != 200 && res->code != 204))) {
        rotate_failed(c, res);
        return;
    }
    if (res->status != 0) {
        /* A failed login that Vault answered is reported as Vault answered it. */
        bool answered = rc->login_failed && v->rk.reachable;
        fail_call(c, res->status, answered ? "" : "vault unreachable: ",
                  res->error != NULL ? res->error : "transport error");
        return;
    }
    if (res->code >= 300 && res->code < 400) {
        char msg[1200];
        snprintf(msg, sizeof(msg), "%s: %s", vault_path(c), redirect_text(res));
        fail_call(c, -EPROTO, "vault answered a redirect: ", msg);
        return;
    }
    if (res->code >= 400) {
        error_answer(c, res);
        return;
    }
    if (c->kind == OP_ROTATE) {
        rotated(c, res);
        return;
    }
    json_t *j = kfd_remote_json(res);
    if (j == NULL) {
        fail_call(c, -EIO, "vault answer: ", "not a JSON object (garbage or truncated)");
        return;
    }
    if (c->kind == OP_READ_KEY) {
        read_key_answer(c, j);
        json_decref(j);
        return;
    }
    key_answer(c, j);
}

static void read_key_answer(vcall *c, json_t *j)
{
    vault *v = c->v;
    kfd_vault_key k;
    kfd_vault_key_read(j, &k);
    v->unusable_msg[0] = '\0';
    if (k.derived)
        snprintf(v->unusable_msg, sizeof(v->unusable_msg),
                 "vault Transit key %s/keys/%s is derived (derived: true); keyfleet refuses derived keys (it binds "
                 "keys to volumes itself and sends no context): use a key created without derived=true",
                 v->mount, v->key);
    else if (k.no_encryption)
        snprintf(v->unusable_msg, sizeof(v->unusable_msg),
                 "vault Transit key %s/keys/%s is of type %s (supports_encryption: %s); keyfleet needs a symmetric "
                 "encryption key (aes256-gcm96, aes128-gcm96 or chacha20-poly1305) for datakey, encrypt and decrypt",
                 v->mount, v->key, k.type != NULL ? k.type : "(none)", k.encryption_false ? "false" : "true");
    if (v->unusable_msg[0] != '\0') {
        if (!v->unusable)
            kf_log_error("kms_key_unusable", "backend=vault-transit key=%s error=%s", v->key, kf_log_q(v->unusable_msg));
        v->unusable = true;
        fail_call(c, -ENOTSUP, "", v->unusable_msg);
        return;
    }
    v->unusable = false;
    if (k.latest == 0) {
        fail_call(c, -EIO, "vault answer: ", "the key lists no versions");
        return;
    }
    v->latest = k.latest;
    v->min_decrypt = k.min_decrypt;
    kfd_kms_result out = {.key_version = k.latest, .latest_version = k.latest};
    c->rc.cb(c->rc.arg, &out);
    vcall_free(c);
}

static vcall *vcall_new(vault *v, op_kind kind, const char *volume_id, kfd_kms_cb cb, void *arg, const char *op)
{
    vcall *c = calloc(1, sizeof(*c));
    if (c == NULL || (volume_id != NULL && strlen(volume_id) >= sizeof(c->volume_id))) {
        free(c);
        kfd_remote_fail(cb, arg, c == NULL ? -ENOMEM : -EINVAL, "%s", c == NULL ? "out of memory" : "volume id too long");
        return NULL;
    }
    uint64_t now = uv_now(v->rk.super.loop);
    if (now < v->hold_until_ms || (v->unusable && kind != OP_READ_KEY)) {
        bool held = now < v->hold_until_ms;
        free(c);
        kfd_remote_fail(cb, arg, held ? -EAGAIN : -ENOTSUP, "%s%s", held ? v->hold_msg : v->unusable_msg,
                        held ? "" : " (from the last key read)");
        return NULL;
    }
    c->v = v;
    c->kind = kind;
    c->rc.http = v->rk.http;
    c->rc.refused = vault_refused;
    c->rc.token = v->rk.token;
    c->rc.auth_format = "X-Vault-Token: ";
    c->rc.method = "POST";
    c->rc.done = on_done;
    c->rc.cb = cb;
    c->rc.arg = arg;
    if (volume_id != NULL)
        snprintf(c->volume_id, sizeof(c->volume_id), "%s", volume_id);
    snprintf(c->rc.url, sizeof(c->rc.url), "%s/%s/%s/%s", v->base, v->mount, op, v->key);
    return c;
}

static void send_or_fail(vcall *c, int r)
{
    if (r != 0) {
        fail_call(c, r, "", "cannot build the Vault request");
        return;
    }
    kfd_remote_start(&c->rc);
}

static void vault_generate(kfd_kms *base, const char *volume_id, kfd_kms_cb cb, void *arg)
{
    vcall *c = vcall_new((vault *)base, OP_GENERATE, volume_id, cb, arg, "datakey/plaintext");
    if (c != NULL)
        send_or_fail(c, kfd_remote_body(&c->rc, "{\"bits\":256}"));
}

static void vault_wrap(kfd_kms *base, const char *volume_id, const kf_secbuf *key, kfd_kms_cb cb, void *arg)
{
    if (key->len != KFD_DATA_KEY_LEN) {
        kfd_remote_fail(cb, arg, -EINVAL, "%s", "data keys are 32 bytes");
        return;
    }
    vcall *c = vcall_new((vault *)base, OP_WRAP, volume_id, cb, arg, "encrypt");
    if (c == NULL)
        return;
    char b64[64];
    int r = kfd_kcv(volume_id, key->data, c->kcv);
    if (r == 0 && kf_b64_encode(key->data, key->len, false, b64, sizeof(b64)) < 0)
        r = -EIO;
    if (r == 0)
        r = kfd_remote_body(&c->rc, "{\"plaintext\":\"%s\"}", b64);
    kf_wipe(b64, sizeof(b64));
    send_or_fail(c, r);
}

/* Shared by unwrap and rewrap: parses our wrapped text into a Vault ciphertext body. */
static void with_ciphertext(vault *v, op_kind kind, const char *op, const char *volume_id, const char *wrapped,
                            kfd_kms_cb cb, void *arg)
{
    kfd_wrapped w;
    uint32_t version = 0;
    const char *body = NULL;
    char ct[KFD_WRAPPED_MAX];
    if (kfd_wrapped_parse(wrapped, "vault", &w) != 0 ||
        snprintf(ct, sizeof(ct), "vault:%s:%s", w.ref, w.payload) >= (int)sizeof(ct) ||
        kfd_vault_ciphertext(ct, &version, &body) != 0) {
        kfd_remote_fail(cb, arg, -EINVAL, "%s", "wrapped key is not a well-formed vault-transit key");
        return;
    }
    if (version < v->min_decrypt) {
        kfd_remote_fail(cb, arg, -EIO, "vault key version v%u is below min_decryption_version %u", version,
                        v->min_decrypt);
        return;
    }
    vcall *c = vcall_new(v, kind, volume_id, cb, arg, op);
    if (c == NULL)
        return;
    memcpy(c->kcv, w.kcv, sizeof(c->kcv));
    c->in_version = version;
    send_or_fail(c, kfd_remote_body(&c->rc, "{\"ciphertext\":\"%s\"}", ct));
}

static void vault_unwrap(kfd_kms *base, const char *volume_id, const char *wrapped, kfd_kms_cb cb, void *arg)
{
    with_ciphertext((vault *)base, OP_UNWRAP, "decrypt", volume_id, wrapped, cb, arg);
}

static void vault_rewrap(kfd_kms *base, const char *volume_id, const char *wrapped, kfd_kms_cb cb, void *arg)
{
    with_ciphertext((vault *)base, OP_REWRAP, "rewrap", volume_id, wrapped, cb, arg);
}

static void vault_rotate(kfd_kms *base, kfd_kms_cb cb, void *arg)
{
    vault *v = (vault *)base;
    vcall *c = vcall_new(v, OP_ROTATE, NULL, cb, arg, "keys");
    if (c == NULL)
        return;
    snprintf(c->rc.url, sizeof(c->rc.url), "%s/%s/keys/%s/rotate", v->base, v->mount, v->key);
    c->rc.once = true;
    kfd_remote_start(&c->rc);
}

static void read_key(kfd_remote_kms *k, kfd_kms_cb cb, void *arg)
{
    vcall *c = vcall_new((vault *)k, OP_READ_KEY, NULL, cb, arg, "keys");
    if (c == NULL)
        return;
    c->rc.method = "GET";
    kfd_remote_start(&c->rc);
}

static void vault_describe(kfd_kms *base, kfd_kms_info *ret)
{
    vault *v = (vault *)base;
    ret->backend = "vault-transit";
    ret->latest_version = v->latest;
    ret->min_decrypt_version = v->min_decrypt;
    ret->reachable = v->rk.reachable;
    ret->problem = v->unusable ? v->unusable_msg : kfd_token_problem(v->rk.token);
}

/* Token fetch: AppRole login, or the token file plus renew-self. */
static void on_login(kfd_remote_call *rc, const kfd_http_response *res)
{
    vault *v = (vault *)kfd_remote_kms_of_login(rc);
    kfd_remote_clear(rc);
    kf_secbuf *file_token = v->file_token;
    v->file_token = NULL;
    char what[160];
    if (file_token != NULL)
        snprintf(what, sizeof(what), "token renewal (auth/token/renew-self)");
    else
        snprintf(what, sizeof(what), "AppRole login (auth/%.128s/login)", v->approle_mount);
    char msg[1500];
    if (res->status != 0) {
        snprintf(msg, sizeof(msg), "vault unreachable: %s: %s", what, res->error != NULL ? res->error : "transport error");
        kfd_token_fetched(v->rk.token, res->status, NULL, 0, 0, msg);
    } else if (file_token != NULL && res->code == 400) {
        /* A token that cannot be renewed (a root or batch token) is used as it is. */
        kfd_token_fetched(v->rk.token, 0, (const char *)file_token->data, file_token->len, 0, NULL);
    } else if (res->code >= 300 && res->code < 400) {
        snprintf(msg, sizeof(msg), "vault answered the %s with a redirect: %s", what, redirect_text(res));
        kfd_token_fetched(v->rk.token, -EPROTO, NULL, 0, 0, msg);
    } else if (res->code != 200) {
        char why[400], wait[64] = "";
        vault_errors(res, why, sizeof(why));
        int status = res->code == 400 || res->code == 401 || res->code == 403 ? -EACCES
                     : res->code == 429 || res->code >= 500              ? -EAGAIN
                                                                         : -EPROTO;
        if (status == -EAGAIN && res->retry_after_s > 0) {
            kfd_token_hold_off(v->rk.token, res->retry_after_s);
            snprintf(wait, sizeof(wait), " (Retry-After %u s)", res->retry_after_s);
        }
        snprintf(msg, sizeof(msg), "vault %s the %s: HTTP %ld: %s%s%s",
                 status == -EAGAIN ? "could not serve" : "refused", what, res->code, why, wait,
                 res->code == 404 ? " (no such auth mount, or a namespace Vault does not have)" : "");
        kfd_token_fetched(v->rk.token, status, NULL, 0, 0, msg);
    } else {
        json_t *j = kfd_remote_json(res);
        const char *tok = NULL;
        uint64_t ttl = 0;
        if (kfd_vault_login_answer(j, &tok, &ttl) != 0)
            kfd_token_fetched(v->rk.token, -EIO, NULL, 0, 0, "the login answer has no auth.client_token");
        else
            kfd_token_fetched(v->rk.token, 0, tok, strlen(tok), ttl, NULL);
        json_decref(j);
    }
    kf_secbuf_free(file_token);
}

static void fetch_token(void *ctx, kfd_token *t)
{
    vault *v = ctx;
    kfd_remote_call *rc = &v->rk.login;
    memset(rc, 0, sizeof(*rc));
    rc->http = v->rk.http;
    rc->method = "POST";
    rc->done = on_login;
    kf_err err = {0};
    int r;
    if (v->token_file != NULL) {
        /* Re-read at every renewal: Vault Agent or an operator may have replaced the token. */
        r = kf_secbuf_read_file(v->token_file, SECRET_FILE_MAX, &v->file_token, &err);
        if (r == 0 && !kfd_json_safe((const char *)v->file_token->data))
            r = kf_err_set(&err, -EINVAL, "%s: not a Vault token", v->token_file);
        if (r == 0) {
            rc->fixed_token = (const char *)v->file_token->data;
            rc->auth_format = "X-Vault-Token: ";
            snprintf(rc->url, sizeof(rc->url), "%s/auth/token/renew-self", v->base);
            r = kfd_remote_body(rc, "{}");
        }
    } else {
        kf_secbuf *role_id = NULL, *secret_id = NULL;
        r = kf_secbuf_read_file(v->role_id_file, SECRET_FILE_MAX, &role_id, &err);
        if (r == 0)
            r = kf_secbuf_read_file(v->secret_id_file, SECRET_FILE_MAX, &secret_id, &err);
        if (r == 0 && (!kfd_json_safe((const char *)role_id->data) || !kfd_json_safe((const char *)secret_id->data)))
            r = kf_err_set(&err, -EINVAL, "AppRole role_id or secret_id file holds invalid characters");
        if (r == 0) {
            snprintf(rc->url, sizeof(rc->url), "%s/auth/%s/login", v->base, v->approle_mount);
            r = kfd_remote_body(rc, "{\"role_id\":\"%s\",\"secret_id\":\"%s\"}", (const char *)role_id->data,
                                (const char *)secret_id->data);
        }
        kf_secbuf_free(role_id);
        kf_secbuf_free(secret_id);
    }
    if (r != 0) {
        kf_secbuf_free(v->file_token);
        v->file_token = NULL;
        kfd_remote_clear(rc);
        kfd_token_fetched(t, r == -EACCES ? -EACCES : r, NULL, 0, 0, err.msg[0] ? err.msg : "cannot build the login");
        return;
    }
    kfd_remote_start(rc);
}

static void vault_destroy(kfd_kms *base)
{
    vault *v = (vault *)base;
    kf_secbuf_free(v->file_token);
    free(v->base), free(v->mount), free(v->key), free(v->approle_mount);
    free(v->token_file), free(v->role_id_file), free(v->secret_id_file);
    kfd_remote_kms_destroy(&v->rk);
}

static const kfd_kms_ops vault_ops = {
    .name = "vault-transit",
    .generate = vault_generate,
    .wrap = vault_wrap,
    .unwrap = vault_unwrap,
    .rewrap = vault_rewrap,
    .describe = vault_describe,
    .rotate = vault_rotate,
    .destroy = vault_destroy,
};

int kfd_kms_vault_open(uv_loop_t *loop, const kfd_kms_config *cfg, kfd_kms **ret, kf_err *err)
{
    vault *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    v->min_decrypt = 1;
    bool ok = asprintf(&v->base, "%s/v1", cfg->address) > 0;
    if (!ok)
        v->base = NULL;
    v->mount = kfd_strdup_opt(cfg->mount != NULL ? cfg->mount : "transit", &ok);
    v->key = kfd_strdup_opt(cfg->key, &ok);
    v->approle_mount = kfd_strdup_opt(cfg->approle_mount != NULL ? cfg->approle_mount : "approle", &ok);
    v->token_file = kfd_strdup_opt(cfg->token_file, &ok);
    v->role_id_file = kfd_strdup_opt(cfg->role_id_file, &ok);
    v->secret_id_file = kfd_strdup_opt(cfg->secret_id_file, &ok);
    int r = kfd_remote_kms_init(&v->rk, loop, &vault_ops, cfg, "vault", 5000, fetch_token, read_key, err);
    if (r == 0 && !ok)
        r = kf_err_set(err, -ENOMEM, "out of memory");
    if (r == 0 && cfg->vault_namespace != NULL) {
        /* Every request, logins and lookups included, runs in the namespace (HCP Vault: admin). */
        char line[300];
        snprintf(line, sizeof(line), "X-Vault-Namespace: %s", cfg->vault_namespace);
        if (kfd_http_set_header(v->rk.http, line) != 0)
            r = kf_err_set(err, -ENOMEM, "out of memory");
    }
    if (r != 0) {
        vault_destroy(&v->rk.super);
        return r;
    }
    kfd_remote_kms_start(&v->rk);
    kf_log_info("kms_open", "backend=vault-transit address=%s namespace=%s mount=%s key=%s auth=%s",
                kf_log_q(cfg->address), cfg->vault_namespace != NULL ? cfg->vault_namespace : "-", v->mount, v->key,
                v->token_file != NULL ? "token" : "approle");
    *ret = &v->rk.super;
    return 0;
}
