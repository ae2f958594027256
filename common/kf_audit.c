#include "kf_audit.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509_vfy.h>

#include "kf_identity.h"

typedef struct enc {
    uint8_t *buf;
    size_t size, len;
} enc;

static void put(enc *e, const void *p, size_t n)
{
    if (e->len + n <= e->size)
        memcpy(e->buf + e->len, p, n);
    e->len += n;
}

static void put_u32(enc *e, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    put(e, b, 4);
}

static void put_u64(enc *e, uint64_t v)
{
    put_u32(e, (uint32_t)(v >> 32));
    put_u32(e, (uint32_t)v);
}

static void put_str(enc *e, const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    put_u32(e, (uint32_t)n);
    put(e, s, n);
}

size_t kf_audit_canonical(const Keyfleet__V1__AuditRecord *r, uint8_t *buf, size_t size)
{
    enc e = {buf, size, 0};
    put(&e, "KFA1", 4);
    put_u64(&e, r->seq);
    put_u64(&e, (uint64_t)(r->time != NULL ? r->time->seconds : 0));
    put_u32(&e, (uint32_t)(r->time != NULL ? r->time->nanos : 0));
    put_str(&e, r->action);
    put_u32(&e, (uint32_t)(r->actor != NULL ? r->actor->kind : 0));
    put_str(&e, r->actor != NULL ? r->actor->name : "");
    put_str(&e, r->actor != NULL ? r->actor->auth : "");
    put_str(&e, r->node);
    put_str(&e, r->volume_id);
    put_str(&e, r->request_id);
    put_u32(&e, (uint32_t)r->decision);
    put_str(&e, r->reason);
    put_str(&e, r->source_address);
    return e.len;
}

void kf_audit_chain_hash(const uint8_t prev[KF_AUDIT_HASH], const uint8_t *canon, size_t len,
                         uint8_t out[KF_AUDIT_HASH])
{
    kf_sha256_parts(prev, KF_AUDIT_HASH, canon, len, NULL, 0, out);
}

void kf_hex(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
    out[2 * n] = '\0';
}

static int nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* lowercase only: one spelling per value */
}

int kf_unhex(const char *in, size_t hex_len, uint8_t *out, size_t out_len)
{
    if (hex_len != 2 * out_len)
        return -EINVAL;
    for (size_t i = 0; i < out_len; i++) {
        int hi = nibble(in[2 * i]), lo = nibble(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

/* The v2 lines after signer (kf_audit.h), or "" for v1. */
static int format_v2(const kf_checkpoint *cp, char *buf, size_t size)
{
    if (cp->version < 2) {
        buf[0] = '\0';
        return 0;
    }
    if (cp->version != 2)
        return -EINVAL;
    char cert[2 * KF_AUDIT_HASH + 1], state[2 * KF_AUDIT_HASH + 1];
    kf_hex(cp->cert_hash, KF_AUDIT_HASH, cert);
    kf_hex(cp->state, KF_AUDIT_HASH, state);
    int n = cp->state_seq == 0 ? snprintf(buf, size, "cert %s\nstate none\n", cert)
                               : snprintf(buf, size, "cert %s\nstate %" PRIu64 " %" PRIu32 " %s\n", cert,
                                          cp->state_seq, cp->state_version, state);
    return n < 0 || (size_t)n >= size ? -ENOSPC : 0;
}

int kf_checkpoint_format(const kf_checkpoint *cp, char *buf, size_t size)
{
    if (cp->nanos < 0 || cp->nanos > 999999999 || cp->seconds < 0 || !kf_name_valid(cp->signer, strlen(cp->signer)) ||
        cp->cluster[0] == '\0' || strchr(cp->cluster, '\n') != NULL || strchr(cp->cluster, ' ') != NULL)
        return -EINVAL;
    char root[2 * KF_AUDIT_HASH + 1], chain[2 * KF_AUDIT_HASH + 1], extra[200];
    if (format_v2(cp, extra, sizeof(extra)) != 0)
        return -EINVAL;
    kf_hex(cp->root, KF_AUDIT_HASH, root);
    kf_hex(cp->chain, KF_AUDIT_HASH, chain);
    int n = snprintf(buf, size,
                     "%s\ncluster %s\nsize %" PRIu64 "\nroot %s\nchain %s\ntime %" PRId64 ".%09" PRId32 "\nsigner %s\n%s",
                     cp->version >= 2 ? KF_CHECKPOINT_MAGIC_V2 : KF_CHECKPOINT_MAGIC, cp->cluster, cp->size, root,
                     chain, cp->seconds, cp->nanos, cp->signer, extra);
    return n < 0 || (size_t)n >= size ? -ENOSPC : n;
}

/* The v2 lines (after "signer NAME\n" at rest): parsed loosely, the canonical check is after. */
static int parse_v2(const char *rest, kf_checkpoint *cp)
{
    char cert[80] = "", word[24] = "", state[80] = "";
    int used = 0;
    if (sscanf(rest, "cert %79s\nstate %23s%n", cert, word, &used) != 2 ||
        kf_unhex(cert, strlen(cert), cp->cert_hash, KF_AUDIT_HASH) != 0)
        return -EINVAL;
    cp->version = 2;
    if (strcmp(word, "none") == 0)
        return 0;
    char *end = NULL;
    unsigned long long seq = strtoull(word, &end, 10);
    unsigned long ver = 0;
    if (end == word || *end != '\0' || seq == 0 || sscanf(rest + used, " %lu %79s", &ver, state) != 2 ||
        ver == 0 || ver > UINT32_MAX || kf_unhex(state, strlen(state), cp->state, KF_AUDIT_HASH) != 0)
        return -EINVAL;
    cp->state_seq = seq;
    cp->state_version = (uint32_t)ver;
    return 0;
}

int kf_checkpoint_parse(const char *text, size_t len, kf_checkpoint *ret, kf_err *err)
{
    kf_checkpoint cp;
    memset(&cp, 0, sizeof(cp));
    char buf[KF_CHECKPOINT_TEXT_MAX], root[80] = "", chain[80] = "";
    unsigned long long size = 0;
    long long sec = 0;
    long ns = 0;
    int used = 0;
    if (len == 0 || len >= sizeof(buf) || memchr(text, '\0', len) != NULL)
        return kf_err_set(err, -EINVAL, "checkpoint text empty, too long or binary");
    memcpy(buf, text, len);
    buf[len] = '\0';
    bool v2 = strncmp(buf, KF_CHECKPOINT_MAGIC_V2 "\n", sizeof(KF_CHECKPOINT_MAGIC_V2)) == 0;
    const char *body = buf + sizeof(KF_CHECKPOINT_MAGIC_V2); /* both magics are as long */
    if (!v2 && strncmp(buf, KF_CHECKPOINT_MAGIC "\n", sizeof(KF_CHECKPOINT_MAGIC)) != 0)
        return kf_err_set(err, -EINVAL, "not a keyfleet checkpoint (v1 or v2)");
    int got = sscanf(body, "cluster %39s\nsize %llu\nroot %79s\nchain %79s\ntime %lld.%ld\nsigner %63s%n", cp.cluster,
                     &size, root, chain, &sec, &ns, cp.signer, &used);
    if (got != 7 || (v2 && (body[used] != '\n' || parse_v2(body + used + 1, &cp) != 0)))
        return kf_err_set(err, -EINVAL, "not a keyfleet checkpoint (%s)", v2 ? "v2" : "v1");
    /* A checkpoint over no records signs nothing (and would index the root before record 1). */
    if (size == 0)
        return kf_err_set(err, -EINVAL, "checkpoint signs no records (size 0)");
    cp.size = size;
    cp.seconds = sec;
    cp.nanos = (int32_t)ns;
    if (kf_unhex(root, strlen(root), cp.root, KF_AUDIT_HASH) != 0 ||
        kf_unhex(chain, strlen(chain), cp.chain, KF_AUDIT_HASH) != 0)
        return kf_err_set(err, -EINVAL, "checkpoint root or chain is not 64 lowercase hex digits");
    /* Canonical: formatting what was parsed gives back the very same bytes. */
    char again[KF_CHECKPOINT_TEXT_MAX];
    int n = kf_checkpoint_format(&cp, again, sizeof(again));
    if (n < 0 || (size_t)n != len || memcmp(again, text, len) != 0)
        return kf_err_set(err, -EINVAL, "checkpoint text is not in canonical form");
    if (ret != NULL)
        *ret = cp;
    return 0;
}

int kf_checkpoint_cluster_id(X509 *ca, char out[40])
{
    unsigned char *der = NULL;
    int n = i2d_X509(ca, &der);
    if (n <= 0)
        return -EINVAL;
    uint8_t h[SHA256_DIGEST_LENGTH];
    SHA256(der, (size_t)n, h);
    OPENSSL_free(der);
    memcpy(out, "fleet-", 6);
    kf_hex(h, 16, out + 6);
    return 0;
}

static const EVP_MD *digest_for(EVP_PKEY *key)
{
    int id = EVP_PKEY_get_base_id(key);
    return id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448 ? NULL : EVP_sha256();
}

static const char *ossl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    return r != NULL ? r : "unknown error";
}

int kf_checkpoint_sign(EVP_PKEY *key, const char *text, size_t len, uint8_t **ret_sig, size_t *ret_len, kf_err *err)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t n = 0;
    uint8_t *sig = NULL;
    int r = -EIO;
    if (ctx != NULL && EVP_DigestSignInit(ctx, NULL, digest_for(key), NULL, key) == 1 &&
        EVP_DigestSign(ctx, NULL, &n, (const uint8_t *)text, len) == 1 && (sig = OPENSSL_malloc(n)) != NULL &&
        EVP_DigestSign(ctx, sig, &n, (const uint8_t *)text, len) == 1)
        r = 0;
    EVP_MD_CTX_free(ctx);
    if (r != 0) {
        OPENSSL_free(sig);
        kf_err_set(err, r, "signing the checkpoint: %s", ossl_reason());
        ERR_clear_error();
        return r;
    }
    *ret_sig = sig;
    *ret_len = n;
    return 0;
}

/* A certificate that chained to the fleet CA (kf_checkpoint_cache). */
typedef struct cache_entry {
    uint8_t hash[KF_AUDIT_HASH];
    const X509_STORE *ca;
    int64_t from, until; /* every certificate of the chain is valid from..until */
    EVP_PKEY *key;
    char name[64];
} cache_entry;

#define CACHE_MAX 64 /* distinct signer certificates; more are verified in full each time */

struct kf_checkpoint_cache {
    cache_entry v[CACHE_MAX];
    size_t n;
};

kf_checkpoint_cache *kf_checkpoint_cache_new(void) { return calloc(1, sizeof(kf_checkpoint_cache)); }

void kf_checkpoint_cache_free(kf_checkpoint_cache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n; i++)
        EVP_PKEY_free(c->v[i].key);
    free(c);
}

static const cache_entry *cache_find(const kf_checkpoint_cache *c, const uint8_t hash[KF_AUDIT_HASH],
                                     const X509_STORE *ca, int64_t at)
{
    for (size_t i = 0; c != NULL && i < c->n; i++)
        if (c->v[i].ca == ca && at >= c->v[i].from && at <= c->v[i].until &&
            memcmp(c->v[i].hash, hash, KF_AUDIT_HASH) == 0)
            return &c->v[i];
    return NULL;
}

static int64_t asn1_seconds(const ASN1_TIME *t, bool *ok)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        *ok = false;
        return 0;
    }
    return (int64_t)timegm(&tm);
}

/* Notes a chain that verified: valid wherever all of its certificates are. */
static void cache_add(kf_checkpoint_cache *c, const uint8_t hash[KF_AUDIT_HASH], const X509_STORE *ca,
                      X509_STORE_CTX *vctx, EVP_PKEY *key, const char *name)
{
    STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(vctx);
    if (c == NULL || c->n == CACHE_MAX || chain == NULL || sk_X509_num(chain) < 1)
        return;
    cache_entry e = {.ca = ca, .from = INT64_MIN, .until = INT64_MAX};
    bool ok = true;
    for (int i = 0; i < sk_X509_num(chain); i++) {
        X509 *x = sk_X509_value(chain, i);
        int64_t nb = asn1_seconds(X509_get0_notBefore(x), &ok), na = asn1_seconds(X509_get0_notAfter(x), &ok);
        e.from = nb > e.from ? nb : e.from;
        e.until = na < e.until ? na : e.until;
    }
    if (!ok || EVP_PKEY_up_ref(key) != 1)
        return;
    memcpy(e.hash, hash, KF_AUDIT_HASH);
    e.key = key;
    snprintf(e.name, sizeof(e.name), "%s", name);
    c->v[c->n++] = e;
}

/* The signer certificate chains to ca at the checkpoint's time and names a coordinator; its key
 * (up-ref'd) and that name. Noted in cache when it does. */
static int check_cert(kf_checkpoint_cache *cache, const uint8_t hash[KF_AUDIT_HASH], const uint8_t *cert,
                      size_t cert_len, X509_STORE *ca, int64_t at, EVP_PKEY **ret_key, char name[64], kf_err *err)
{
    const unsigned char *p = cert;
    X509 *x = cert_len > 0 ? d2i_X509(NULL, &p, (long)cert_len) : NULL;
    if (x == NULL || p != cert + cert_len) {
        X509_free(x);
        ERR_clear_error();
        return kf_err_set(err, -EPERM, "checkpoint signer certificate missing or malformed");
    }
    X509_STORE_CTX *vctx = X509_STORE_CTX_new();
    kf_identity id;
    kf_err ierr = {0};
    EVP_PKEY *key = NULL;
    int r = -ENOMEM;
    if (vctx == NULL || X509_STORE_CTX_init(vctx, ca, x, NULL) != 1) {
        kf_err_set(err, r, "out of memory");
        goto out;
    }
    X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(vctx), (time_t)at);
    if (X509_verify_cert(vctx) != 1) {
        r = kf_err_set(err, -EPERM, "checkpoint signer certificate does not chain to the fleet CA: %s",
                       X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
        goto out;
    }
    if (kf_identity_from_cert(x, &id, &ierr) != 0 || id.kind != KF_PEER_COORDINATOR) {
        r = kf_err_set(err, -EPERM, "checkpoint signer certificate does not name a coordinator");
        goto out;
    }
    if ((key = X509_get0_pubkey(x)) == NULL || EVP_PKEY_up_ref(key) != 1) {
        key = NULL;
        r = kf_err_set(err, -EPERM, "checkpoint signer key unusable");
        goto out;
    }
    snprintf(name, 64, "%s", id.name);
    cache_add(cache, hash, ca, vctx, key, id.name);
    *ret_key = key;
    r = 0;
out:
    X509_STORE_CTX_free(vctx);
    X509_free(x);
    ERR_clear_error();
    return r;
}

static int verify(kf_checkpoint_cache *cache, const char *text, size_t len, const uint8_t *sig, size_t sig_len,
                  const uint8_t *cert, size_t cert_len, X509_STORE *ca, const char *cluster, bool clock,
                  kf_checkpoint *ret, kf_err *err)
{
    kf_checkpoint cp;
    int r = kf_checkpoint_parse(text, len, &cp, err);
    if (r != 0)
        return r;
    if (cluster != NULL && strcmp(cluster, cp.cluster) != 0)
        return kf_err_set(err, -EPERM, "checkpoint is of cluster %s, not of this fleet (%s)", cp.cluster, cluster);
    /* The certificate is checked at this time: one far ahead of now is not a time it was signed. */
    if (clock && cp.seconds > (int64_t)time(NULL) + KF_CHECKPOINT_SKEW_S)
        return kf_err_set(err, -EPERM, "checkpoint time %lld is in the future", (long long)cp.seconds);
    uint8_t hash[KF_AUDIT_HASH];
    kf_sha256_parts(cert, cert_len, NULL, 0, NULL, 0, hash);
    const cache_entry *e = cache_find(cache, hash, ca, cp.seconds);
    EVP_PKEY *key = NULL;
    char name[64];
    if (e != NULL) {
        if (EVP_PKEY_up_ref(e->key) != 1)
            return kf_err_set(err, -ENOMEM, "out of memory");
        key = e->key;
        memcpy(name, e->name, sizeof(name));
    } else if ((r = check_cert(cache, hash, cert, cert_len, ca, cp.seconds, &key, name, err)) != 0) {
        return r;
    }
    EVP_MD_CTX *mctx = NULL;
    /* v2 signs the certificate's hash (review rev17, R6): the blob stored beside the signature is
     * covered too, not only whatever key happens to verify. */
    if (cp.version >= 2 && CRYPTO_memcmp(hash, cp.cert_hash, KF_AUDIT_HASH) != 0) {
        r = kf_err_set(err, -EPERM, "checkpoint signer certificate is not the one its text names");
    } else if (strcmp(name, cp.signer) != 0) {
        r = kf_err_set(err, -EPERM, "checkpoint names signer %s but is signed by coordinator %s", cp.signer, name);
    } else if ((mctx = EVP_MD_CTX_new()) == NULL ||
               EVP_DigestVerifyInit(mctx, NULL, digest_for(key), NULL, key) != 1) {
        r = kf_err_set(err, -EPERM, "checkpoint signer key unusable");
    } else if (EVP_DigestVerify(mctx, sig, sig_len, (const uint8_t *)text, len) != 1) {
        r = kf_err_set(err, -EPERM, "checkpoint signature does not verify");
    } else if (ret != NULL) {
        *ret = cp;
    }
    EVP_MD_CTX_free(mctx);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return r;
}

int kf_checkpoint_verify_cached(kf_checkpoint_cache *cache, bool clock, const char *text, size_t len,
                                const uint8_t *sig, size_t sig_len, const uint8_t *cert, size_t cert_len,
                                X509_STORE *ca, const char *cluster, kf_checkpoint *ret, kf_err *err)
{
    return verify(cache, text, len, sig, sig_len, cert, cert_len, ca, cluster, clock, ret, err);
}

int kf_checkpoint_verify(const char *text, size_t len, const uint8_t *sig, size_t sig_len, const uint8_t *cert,
                         size_t cert_len, X509_STORE *ca, const char *cluster, kf_checkpoint *ret, kf_err *err)
{
    return verify(NULL, text, len, sig, sig_len, cert, cert_len, ca, cluster, true, ret, err);
}

int kf_checkpoint_verify_applied(const char *text, size_t len, const uint8_t *sig, size_t sig_len, const uint8_t *cert,
                                 size_t cert_len, X509_STORE *ca, const char *cluster, kf_checkpoint *ret, kf_err *err)
{
    return verify(NULL, text, len, sig, sig_len, cert, cert_len, ca, cluster, false, ret, err);
}

/* The certificate (DER) is valid at t: notAfter not before it. */
static bool cert_valid_until(const uint8_t *cert, size_t cert_len, int64_t t)
{
    const unsigned char *p = cert;
    X509 *x = cert != NULL && cert_len > 0 ? d2i_X509(NULL, &p, (long)cert_len) : NULL;
    time_t at = (time_t)t;
    /* X509_cmp_time: -1 notAfter before at, 1 at or after, 0 on error (counted as before). */
    bool ok = x != NULL && X509_cmp_time(X509_get0_notAfter(x), &at) > 0;
    X509_free(x);
    ERR_clear_error();
    return ok;
}

int kf_checkpoint_follows(const kf_checkpoint *prev, const kf_checkpoint *next, const uint8_t *cert, size_t cert_len,
                          kf_err *err)
{
    if (prev == NULL)
        return 0;
    if (next->size <= prev->size)
        return kf_err_set(err, -EPERM,
                          "checkpoint signs %" PRIu64 " records, no more than the checkpoint before it (%" PRIu64
                          "): a replayed or reordered checkpoint",
                          next->size, prev->size);
    if ((next->seconds < prev->seconds || (next->seconds == prev->seconds && next->nanos < prev->nanos)) &&
        !cert_valid_until(cert, cert_len, prev->seconds))
        return kf_err_set(err, -EPERM,
                          "checkpoint time %" PRId64 " is before the checkpoint before it (%" PRId64
                          "), and its signer's certificate had expired by then",
                          next->seconds, prev->seconds);
    return 0;
}

bool kf_audit_cert_predates(X509 *x, int64_t removed_at)
{
    time_t cut = (time_t)(removed_at - KF_CHECKPOINT_READD_SLACK_S);
    const ASN1_TIME *nb = x != NULL ? X509_get0_notBefore(x) : NULL;
    /* X509_cmp_time: -1 before cut, 1 at or after, 0 on error (counted as before). */
    int c = nb != NULL ? X509_cmp_time(nb, &cut) : 0;
    ERR_clear_error();
    return c <= 0;
}

int kf_checkpoint_ca_load(const char *ca_file, X509_STORE **ret_store, char cluster[40], kf_err *err)
{
    FILE *f = fopen(ca_file, "r");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: %s", ca_file, strerror(errno));
    X509 *first = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    X509_STORE *st = X509_STORE_new();
    int r = 0;
    if (first == NULL || st == NULL || X509_STORE_load_file(st, ca_file) != 1 ||
        kf_checkpoint_cluster_id(first, cluster) != 0)
        r = kf_err_set(err, -EINVAL, "%s: no CA certificate could be read", ca_file);
    X509_free(first);
    ERR_clear_error();
    if (r != 0) {
        X509_STORE_free(st);
        return r;
    }
    *ret_store = st;
    return 0;
}

void kf_audit_signers_init(kf_audit_signers *h) { memset(h, 0, sizeof(*h)); }

void kf_audit_signers_free(kf_audit_signers *h)
{
    free(h->revoked);
    free(h->removed);
    memset(h, 0, sizeof(*h));
}

static kf_audit_member *member(const kf_audit_signers *h, const char *name)
{
    for (size_t i = 0; i < h->n_removed; i++)
        if (strcmp(h->removed[i].name, name) == 0)
            return &h->removed[i];
    return NULL;
}

int kf_audit_signers_note(kf_audit_signers *h, const Keyfleet__V1__AuditRecord *r)
{
    char word[64];
    if (r->action == NULL || r->reason == NULL)
        return 0;
    if (strcmp(r->action, "cert_revoke") == 0) {
        /* rpc_admin.c: "certificate SERIAL[ of KIND NAME] revoked: REASON" */
        char serial[KF_SERIAL_MAX];
        if (sscanf(r->reason, "certificate %63s", word) != 1 || kf_serial_normalize(word, serial) != 0)
            return 0;
        for (size_t i = 0; i < h->n_revoked; i++)
            if (strcmp(h->revoked[i], serial) == 0)
                return 0;
        if (h->n_revoked == h->cap_revoked) {
            size_t cap = h->cap_revoked ? h->cap_revoked * 2 : 16;
            char(*v)[KF_SERIAL_MAX] = realloc(h->revoked, cap * sizeof(*v));
            if (v == NULL)
                return -ENOMEM;
            h->revoked = v;
            h->cap_revoked = cap;
        }
        memcpy(h->revoked[h->n_revoked++], serial, KF_SERIAL_MAX);
        return 0;
    }
    bool add = strcmp(r->action, "cluster_add") == 0;
    if ((!add && strcmp(r->action, "cluster_remove") != 0) || sscanf(r->reason, "member %63s", word) != 1)
        return 0;
    /* rpc_cluster.c: "member NAME" (remove), "member NAME raft=... rpc=..." (add). A coordinator
     * added back stays listed with its removal time: its older certificates count for nothing. */
    kf_audit_member *m = member(h, word);
    if (add) {
        if (m != NULL)
            m->out = false;
        return 0;
    }
    if (m == NULL) {
        if (h->n_removed == h->cap_removed) {
            size_t cap = h->cap_removed ? h->cap_removed * 2 : 8;
            kf_audit_member *v = realloc(h->removed, cap * sizeof(*v));
            if (v == NULL)
                return -ENOMEM;
            h->removed = v;
            h->cap_removed = cap;
        }
        m = &h->removed[h->n_removed++];
        memcpy(m->name, word, sizeof(m->name));
    }
    m->out = true;
    m->removed_at = r->time != NULL ? r->time->seconds : 0;
    return 0;
}

int kf_audit_signers_check(const kf_audit_signers *h, const uint8_t *cert, size_t cert_len, kf_err *err)
{
    const unsigned char *p = cert;
    X509 *x = cert_len > 0 ? d2i_X509(NULL, &p, (long)cert_len) : NULL;
    kf_identity id;
    kf_err ierr = {0};
    int r = x != NULL && kf_identity_from_cert(x, &id, &ierr) == 0 ? 0 : -EPERM;
    const kf_audit_member *m = r == 0 ? member(h, id.name) : NULL;
    bool predates = m != NULL && kf_audit_cert_predates(x, m->removed_at);
    X509_free(x);
    ERR_clear_error();
    if (r != 0)
        return kf_err_set(err, -EPERM, "checkpoint signer certificate unreadable");
    for (size_t i = 0; i < h->n_revoked; i++)
        if (strcmp(h->revoked[i], id.serial) == 0)
            return kf_err_set(err, -EPERM, "checkpoint signer certificate %s of %s was revoked earlier in the log",
                              id.serial, id.name);
    if (m != NULL && m->out)
        return kf_err_set(err, -EPERM, "checkpoint signer %s was removed from the cluster earlier in the log", id.name);
    if (predates)
        return kf_err_set(err, -EPERM, "checkpoint signer certificate %s of %s was issued before %s was removed from "
                          "the cluster (at %" PRId64 "); added back, it signs only with a newer certificate",
                          id.serial, id.name, id.name, m->removed_at);
    return 0;
}
