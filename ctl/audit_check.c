#include "audit_check.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "kf_audit_json.h"
#include "kf_b64.h"
#include "kf_merkle.h"

int kfctl_trust_load(const char *ca_file, kfctl_trust *ret)
{
    kf_err err = {0};
    memset(ret, 0, sizeof(*ret));
    if (kf_checkpoint_ca_load(ca_file, &ret->ca, ret->cluster, &err) != 0) {
        fprintf(stderr, "keyfleetctl: fleet CA: %s\n", err.msg);
        return -1;
    }
    ret->cache = kf_checkpoint_cache_new(); /* NULL: every checkpoint verified in full */
    return 0;
}

void kfctl_trust_free(kfctl_trust *t)
{
    X509_STORE_free(t->ca);
    t->ca = NULL;
    kf_checkpoint_cache_free(t->cache);
    t->cache = NULL;
}

void kfctl_cp_clear(kfctl_cp *cp)
{
    free(cp->sig);
    free(cp->cert);
    memset(cp, 0, sizeof(*cp));
}

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
    uint8_t *d = malloc(n > 0 ? n : 1);
    if (d != NULL && n > 0)
        memcpy(d, p, n);
    return d;
}

int kfctl_cp_from_record(const Keyfleet__V1__AuditRecord *r, kfctl_cp *ret, char *why, size_t why_size)
{
    memset(ret, 0, sizeof(*ret));
    size_t n = strlen(r->reason);
    if (strcmp(r->action, KF_AUDIT_CHECKPOINT_ACTION) != 0 || n >= sizeof(ret->text)) {
        snprintf(why, why_size, "record %" PRIu64 " is not a checkpoint", r->seq);
        return -1;
    }
    ret->seq = r->seq;
    memcpy(ret->text, r->reason, n + 1);
    ret->sig = dup_bytes(r->signature.data, r->signature.len);
    ret->cert = dup_bytes(r->signer_cert.data, r->signer_cert.len);
    ret->sig_len = r->signature.len;
    ret->cert_len = r->signer_cert.len;
    if (ret->sig == NULL || ret->cert == NULL) {
        kfctl_cp_clear(ret);
        snprintf(why, why_size, "out of memory");
        return -1;
    }
    return 0;
}

static json_t *b64_json(const uint8_t *p, size_t n)
{
    size_t size = kf_b64_encoded_len(n, false) + 1;
    char *s = malloc(size);
    json_t *j = s != NULL && kf_b64_encode(p, n, false, s, size) >= 0 ? json_string(s) : NULL;
    free(s);
    return j;
}

static int b64_from_json(const json_t *o, const char *key, uint8_t **ret, size_t *ret_len)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (s == NULL)
        return -1;
    size_t n = strlen(s);
    uint8_t *buf = malloc(n + 1);
    int len = buf != NULL ? kf_b64_decode(s, n, false, buf, n + 1) : -ENOMEM;
    if (len < 0) {
        free(buf);
        return -1;
    }
    *ret = buf;
    *ret_len = (size_t)len;
    return 0;
}

json_t *kfctl_cp_to_json(const kfctl_cp *cp)
{
    kf_checkpoint p;
    kf_err err = {0};
    if (kf_checkpoint_parse(cp->text, strlen(cp->text), &p, &err) != 0)
        return NULL;
    char root[2 * KF_AUDIT_HASH + 1];
    kf_hex(p.root, KF_AUDIT_HASH, root);
    return json_pack("{s:s, s:I, s:I, s:s, s:I, s:s, s:s, s:s, s:o, s:o}", "format", KF_CHECKPOINT_MAGIC, "seq",
                     (json_int_t)cp->seq, "size", (json_int_t)p.size, "root", root, "time", (json_int_t)p.seconds,
                     "signer", p.signer, "cluster", p.cluster, "text", cp->text, "signature",
                     b64_json(cp->sig, cp->sig_len), "cert", b64_json(cp->cert, cp->cert_len));
}

int kfctl_cp_from_json(const json_t *o, kfctl_cp *ret, char *why, size_t why_size)
{
    memset(ret, 0, sizeof(*ret));
    const char *format = json_string_value(json_object_get(o, "format"));
    const char *text = json_string_value(json_object_get(o, "text"));
    json_t *seq = json_object_get(o, "seq");
    if (format == NULL || strcmp(format, KF_CHECKPOINT_MAGIC) != 0 || text == NULL || !json_is_integer(seq) ||
        json_integer_value(seq) <= 0 || strlen(text) >= sizeof(ret->text)) {
        snprintf(why, why_size, "not a saved keyfleet checkpoint (format, seq, text)");
        return -1;
    }
    ret->seq = (uint64_t)json_integer_value(seq);
    snprintf(ret->text, sizeof(ret->text), "%s", text);
    if (b64_from_json(o, "signature", &ret->sig, &ret->sig_len) != 0 ||
        b64_from_json(o, "cert", &ret->cert, &ret->cert_len) != 0) {
        kfctl_cp_clear(ret);
        snprintf(why, why_size, "checkpoint signature or cert is not base64");
        return -1;
    }
    return 0;
}

/* clock: refuse a time far ahead of now; without it the caller judges that (a log's checkpoints). */
static int cp_verify(const kfctl_trust *t, kfctl_cp *cp, bool clock, char *why, size_t why_size)
{
    kf_err err = {0};
    if (kf_checkpoint_verify_cached(t->cache, clock, cp->text, strlen(cp->text), cp->sig, cp->sig_len, cp->cert,
                                    cp->cert_len, t->ca, t->cluster, &cp->parsed, &err) != 0) {
        snprintf(why, why_size, "%s", err.msg);
        return -1;
    }
    if (cp->parsed.size >= cp->seq) {
        snprintf(why, why_size, "checkpoint record %" PRIu64 " signs %" PRIu64 " records, which cannot precede it",
                 cp->seq, cp->parsed.size);
        return -1;
    }
    return 0;
}

int kfctl_cp_verify(const kfctl_trust *t, kfctl_cp *cp, char *why, size_t why_size)
{
    return cp_verify(t, cp, true, why, why_size);
}

int kfctl_cp_read_file(const char *path, kfctl_cp **ret, size_t *ret_n, char *why, size_t why_size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(why, why_size, "%s: %s", path, strerror(errno));
        return -1;
    }
    kfctl_cp *v = NULL;
    size_t n = 0;
    int rc = 0;
    json_error_t jerr;
    for (;;) {
        json_t *o = json_loadf(f, JSON_DISABLE_EOF_CHECK, &jerr);
        if (o == NULL) {
            int c;
            while ((c = fgetc(f)) == ' ' || c == '\n' || c == '\t' || c == '\r')
                ;
            if (c != EOF) {
                snprintf(why, why_size, "%s: not JSON: %s", path, jerr.text);
                rc = -1;
            }
            break;
        }
        kfctl_cp *nv = realloc(v, (n + 1) * sizeof(*v));
        if (nv == NULL) {
            json_decref(o);
            snprintf(why, why_size, "out of memory");
            rc = -1;
            break;
        }
        v = nv;
        char w[200];
        if (kfctl_cp_from_json(o, &v[n], w, sizeof(w)) != 0) {
            int k = snprintf(why, why_size, "%s: %s", path, w);
            (void)k;
            json_decref(o);
            rc = -1;
            break;
        }
        n++;
        json_decref(o);
    }
    fclose(f);
    if (rc == 0 && n == 0) {
        snprintf(why, why_size, "%s: no checkpoint in it", path);
        rc = -1;
    }
    if (rc != 0) {
        for (size_t i = 0; i < n; i++)
            kfctl_cp_clear(&v[i]);
        free(v);
        return -1;
    }
    *ret = v;
    *ret_n = n;
    return 0;
}

struct kfctl_log_check {
    const kfctl_trust *trust;
    uint64_t n;
    bool allow_partial;
    uint64_t max_unsigned; /* records allowed after the newest checkpoint */
    uint64_t base; /* records before the copy starts (0: it starts at record 1) */
    uint8_t prev[KF_AUDIT_HASH];
    kf_merkle_frontier tree;
    /* roots[i] and chains[i]: the tree and chain after record i + 1 (for anchors and checkpoints). */
    kf_merkle_hash *roots, *chains;
    size_t cap;
    bool failed;
    uint64_t bad_seq;
    char problem[400];
    uint64_t checkpoints, newest_cp_size, newest_cp_seq;
    kf_checkpoint newest;
    /* The first checkpoint dated far ahead of the clock with none after it dated within the skew
     * (review rev17, R3): 0, or its record. Fails the log only if no later checkpoint went back. */
    uint64_t future_seq;
    int64_t future_time;
    char signers[256];
    /* checkpoint records seen: seq and text, for anchors */
    kfctl_cp *seen;
    size_t n_seen;
    kf_audit_signers who; /* revoked certificates and removed coordinators so far */
    /* The coordinator's state digest at a checkpoint record (kfctl_log_check_state); seq 0: none. */
    uint64_t state_seq;
    uint32_t state_version;
    uint8_t state[KF_AUDIT_HASH];
};

void kfctl_log_check_state(kfctl_log_check *c, uint64_t seq, const uint8_t *state, size_t len, uint32_t version)
{
    if (c == NULL || seq == 0 || len != KF_AUDIT_HASH)
        return;
    c->state_seq = seq;
    c->state_version = version;
    memcpy(c->state, state, KF_AUDIT_HASH);
}

/* The state root the log signed for record seq (the newest such checkpoint), or NULL. */
static const kf_checkpoint *signed_state_at(const kfctl_log_check *c, uint64_t seq)
{
    for (size_t i = c->n_seen; i > 0; i--)
        if (c->seen[i - 1].parsed.version >= 2 && c->seen[i - 1].parsed.state_seq == seq)
            return &c->seen[i - 1].parsed;
    return NULL;
}

/* Compares the coordinator's own state digest with the state root signed for that record:
 * 0 (matches, or nothing to compare: said in note), 1 (differs: printed). */
static int check_state(const kfctl_log_check *c, FILE *out, char *note, size_t note_size)
{
    note[0] = '\0';
    const kf_checkpoint *p = c->state_seq != 0 ? signed_state_at(c, c->state_seq) : NULL;
    if (p == NULL || p->state_version != c->state_version)
        return 0;
    if (CRYPTO_memcmp(p->state, c->state, KF_AUDIT_HASH) != 0) {
        fprintf(out, "audit chain BROKEN at record %" PRIu64 ": the coordinator's replicated state at checkpoint "
                "record %" PRIu64 " differs from the state root %s signed\n", c->state_seq, c->state_seq, p->signer);
        return 1;
    }
    snprintf(note, note_size, "; the replicated state at checkpoint record %" PRIu64 " matches its signed state root",
             c->state_seq);
    return 0;
}

kfctl_log_check *kfctl_log_check_new(const kfctl_trust *t)
{
    kfctl_log_check *c = calloc(1, sizeof(*c));
    if (c != NULL) {
        c->trust = t;
        c->max_unsigned = KFCTL_AUDIT_MAX_UNSIGNED;
        kf_audit_signers_init(&c->who);
        kf_merkle_frontier_init(&c->tree);
    }
    return c;
}

void kfctl_log_check_allow_partial(kfctl_log_check *c) { c->allow_partial = true; }

void kfctl_log_check_max_unsigned(kfctl_log_check *c, uint64_t n) { c->max_unsigned = n; }

void kfctl_log_check_free(kfctl_log_check *c)
{
    if (c == NULL)
        return;
    free(c->roots);
    free(c->chains);
    for (size_t i = 0; i < c->n_seen; i++)
        kfctl_cp_clear(&c->seen[i]);
    free(c->seen);
    kf_audit_signers_free(&c->who);
    free(c);
}

__attribute__((format(printf, 3, 4))) static bool fail(kfctl_log_check *c, uint64_t seq, const char *fmt, ...)
{
    c->failed = true;
    c->bad_seq = seq;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->problem, sizeof(c->problem), fmt, ap);
    va_end(ap);
    return false;
}

static void add_signer(kfctl_log_check *c, const char *name)
{
    char needle[80];
    snprintf(needle, sizeof(needle), " %s,", name);
    char list[260];
    snprintf(list, sizeof(list), " %s", c->signers);
    if (strstr(list, needle) != NULL)
        return;
    size_t len = strlen(c->signers);
    snprintf(c->signers + len, sizeof(c->signers) - len, "%s,", name);
}

bool kfctl_log_check_add(kfctl_log_check *c, const Keyfleet__V1__AuditRecord *r)
{
    if (c->failed)
        return false;
    if (c->n == 0 && c->allow_partial && r->seq > 1 && r->prev_hash.len == KF_AUDIT_HASH) {
        c->base = c->n = r->seq - 1;
        memcpy(c->prev, r->prev_hash.data, KF_AUDIT_HASH);
    }
    uint64_t want = c->n + 1;
    if (r->seq != want)
        return fail(c, r->seq > want ? want : r->seq, "%s",
                    r->seq > want ? "a record is missing here" : "records are out of order");
    if (r->prev_hash.len != KF_AUDIT_HASH || CRYPTO_memcmp(r->prev_hash.data, c->prev, KF_AUDIT_HASH) != 0)
        return fail(c, r->seq, "its prev_hash does not match the previous record's hash");
    uint8_t canon[KF_AUDIT_CANON_MAX], hash[KF_AUDIT_HASH];
    size_t len = kf_audit_canonical(r, canon, sizeof(canon));
    if (len > sizeof(canon))
        return fail(c, r->seq, "record too large");
    kf_audit_chain_hash(c->prev, canon, len, hash);
    if (r->hash.len != KF_AUDIT_HASH || CRYPTO_memcmp(r->hash.data, hash, KF_AUDIT_HASH) != 0)
        return fail(c, r->seq, "its content does not match its hash (edited)");
    kf_merkle_hash leaf, root;
    kf_merkle_leaf_hash(canon, len, leaf);
    kf_merkle_frontier_append(&c->tree, leaf);
    kf_merkle_frontier_root(&c->tree, root);
    if (c->base == 0 && r->root.len != 0 &&
        (r->root.len != KF_AUDIT_HASH || CRYPTO_memcmp(r->root.data, root, KF_AUDIT_HASH) != 0))
        return fail(c, r->seq, "its Merkle root does not match the records");
    size_t at = (size_t)(c->n - c->base);
    if (at == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 1024;
        kf_merkle_hash *a = realloc(c->roots, cap * sizeof(*a));
        if (a != NULL)
            c->roots = a;
        kf_merkle_hash *b = realloc(c->chains, cap * sizeof(*b));
        if (b != NULL)
            c->chains = b;
        if (a == NULL || b == NULL)
            return fail(c, r->seq, "out of memory");
        c->cap = cap;
    }
    memcpy(c->roots[at], root, KF_AUDIT_HASH);
    memcpy(c->chains[at], hash, KF_AUDIT_HASH);
    memcpy(c->prev, hash, KF_AUDIT_HASH);
    c->n++;
    if (strcmp(r->action, KF_AUDIT_CHECKPOINT_ACTION) != 0)
        return kf_audit_signers_note(&c->who, r) == 0 || fail(c, r->seq, "out of memory");
    /* A signed head: valid signature by a coordinator of this fleet, over exactly this tree. */
    kfctl_cp cp;
    char why[300];
    if (kfctl_cp_from_record(r, &cp, why, sizeof(why)) != 0 || cp_verify(c->trust, &cp, false, why, sizeof(why)) != 0) {
        kfctl_cp_clear(&cp);
        return fail(c, r->seq, "checkpoint: %s", why);
    }
    kf_err serr = {0};
    if (kf_audit_signers_check(&c->who, cp.cert, cp.cert_len, &serr) != 0) {
        kfctl_cp_clear(&cp);
        return fail(c, r->seq, "checkpoint: %s", serr.msg);
    }
    const kf_checkpoint *p = &cp.parsed;
    /* In a copy that starts late: the chain hash when it holds that record, the root never. */
    bool ok = p->size <= c->base ||
              (CRYPTO_memcmp(c->chains[p->size - 1 - c->base], p->chain, KF_AUDIT_HASH) == 0 &&
               (c->base != 0 || CRYPTO_memcmp(c->roots[p->size - 1], p->root, KF_AUDIT_HASH) == 0));
    if (!ok) {
        uint64_t size = p->size;
        kfctl_cp_clear(&cp);
        return fail(c, size, "the records up to here differ from what checkpoint record %" PRIu64 " signed (recomputed?)",
                    r->seq);
    }
    /* Each signs more than the one before it, no earlier (F4): a replayed copy of a genuine
     * checkpoint after forged records signs nothing new. */
    if (kf_checkpoint_follows(c->checkpoints > 0 ? &c->newest : NULL, p, cp.cert, cp.cert_len, &serr) != 0) {
        kfctl_cp_clear(&cp);
        return fail(c, r->seq, "checkpoint: %s", serr.msg);
    }
    /* Dated far ahead of the clock: not a time it was signed. Still valid once a later checkpoint
     * is dated by a right clock again (going back is allowed only to a signer whose certificate
     * covered the fast date, kf_checkpoint_follows); the newest must not be ahead (review rev17, R3). */
    if (p->seconds > (int64_t)time(NULL) + KF_CHECKPOINT_SKEW_S) {
        if (c->future_seq == 0) {
            c->future_seq = r->seq;
            c->future_time = p->seconds;
        }
    } else
        c->future_seq = 0;
    c->checkpoints++;
    c->newest_cp_size = p->size;
    c->newest_cp_seq = r->seq;
    c->newest = *p;
    add_signer(c, p->signer);
    kfctl_cp *nv = realloc(c->seen, (c->n_seen + 1) * sizeof(*nv));
    if (nv == NULL) {
        kfctl_cp_clear(&cp);
        return fail(c, r->seq, "out of memory");
    }
    c->seen = nv;
    c->seen[c->n_seen++] = cp;
    return true;
}

static const kfctl_cp *seen_at(const kfctl_log_check *c, uint64_t seq)
{
    for (size_t i = 0; i < c->n_seen; i++)
        if (c->seen[i].seq == seq)
            return &c->seen[i];
    return NULL;
}

int kfctl_log_check_finish(kfctl_log_check *c, const kfctl_cp *anchors, size_t n_anchors, FILE *out)
{
    if (c->failed) {
        fprintf(out, "audit chain BROKEN at record %" PRIu64 ": %s\n", c->bad_seq, c->problem);
        return 1;
    }
    if (c->future_seq != 0) {
        fprintf(out, "audit chain BROKEN at record %" PRIu64 ": checkpoint: checkpoint time %lld is in the future\n",
                c->future_seq, (long long)c->future_time);
        return 1;
    }
    for (size_t i = 0; i < n_anchors; i++) {
        kfctl_cp a = anchors[i];
        char why[300];
        if (kfctl_cp_verify(c->trust, &a, why, sizeof(why)) != 0) {
            fprintf(out, "audit anchor INVALID (checkpoint record %" PRIu64 "): %s\n", a.seq, why);
            return 1;
        }
        const kfctl_cp *s = seen_at(c, a.seq);
        if (a.seq > c->n || a.parsed.size > c->n) {
            fprintf(out,
                    "audit chain BROKEN at record %" PRIu64 ": the log ends at record %" PRIu64
                    ", before the anchored checkpoint %" PRIu64 " (truncated)\n",
                    c->n + 1, c->n, a.seq);
            return 1;
        }
        if (s == NULL || strcmp(s->text, a.text) != 0 || a.parsed.size == 0 ||
            (c->base == 0 && CRYPTO_memcmp(c->roots[a.parsed.size - 1], a.parsed.root, KF_AUDIT_HASH) != 0)) {
            fprintf(out,
                    "audit chain BROKEN at record %" PRIu64 ": the log no longer holds the anchored checkpoint "
                    "(size %" PRIu64 ") at record %" PRIu64 "\n",
                    a.parsed.size, a.parsed.size, a.seq);
            return 1;
        }
    }
    /* Records after the newest signed size are vouched for by nothing signed: an attacker can
     * edit, add or delete them with the hashes recomputed. Counted from the size, not from the
     * checkpoint record (F4: a copy of a genuine one can be put anywhere), the newest checkpoint
     * record itself aside. The leader signs within 200 ms or 1000 records, so a longer tail
     * means checkpoints stopped, or records were added. */
    uint64_t signed_to = c->checkpoints > 0 && c->newest_cp_size >= c->base ? c->newest_cp_size + 1 : c->base;
    uint64_t tail = c->n > signed_to ? c->n - signed_to : 0;
    if (tail > c->max_unsigned) {
        fprintf(out,
                "audit chain UNSIGNED TAIL: %" PRIu64 " records after %s are not signed by any checkpoint "
                "(at most %" PRIu64 " expected); they could have been changed with the hashes recomputed\n",
                tail, c->checkpoints > 0 ? "the newest checkpoint's signed size" : "the start", c->max_unsigned);
        return 1;
    }
    char state_note[160];
    if (check_state(c, out, state_note, sizeof(state_note)) != 0)
        return 1;
    size_t sl = strlen(c->signers);
    if (sl > 0)
        c->signers[sl - 1] = '\0';
    fprintf(out, "audit chain ok: %" PRIu64 " records verified", c->n - c->base);
    if (c->base > 0)
        fprintf(out, " (records %" PRIu64 "..%" PRIu64 ")", c->base + 1, c->n);
    fprintf(out, ", %" PRIu64 " signed checkpoints (by %s)", c->checkpoints, c->checkpoints > 0 ? c->signers : "nobody");
    if (c->checkpoints > 0)
        fprintf(out, "; the newest signs %" PRIu64 " records (%" PRIu64 " after it not yet signed)",
                c->newest_cp_size, tail);
    else if (tail > 0)
        fprintf(out, "; %" PRIu64 " records not yet signed", tail);
    if (n_anchors > 0)
        fprintf(out, "; %zu anchor%s held", n_anchors, n_anchors == 1 ? "" : "s");
    fprintf(out, "%s\n", state_note);
    return 0;
}

static int path_from_json(const json_t *a, kf_merkle_hash *path, size_t *ret_n)
{
    if (!json_is_array(a) || json_array_size(a) > KF_MERKLE_MAX_PROOF)
        return -1;
    for (size_t i = 0; i < json_array_size(a); i++) {
        const char *h = json_string_value(json_array_get(a, i));
        if (h == NULL || kf_unhex(h, strlen(h), path[i], KF_MERKLE_HASH) != 0)
            return -1;
    }
    *ret_n = json_array_size(a);
    return 0;
}

/* The anchor file's last checkpoint, verified, must be the proof's. */
static int check_anchor(const kfctl_trust *t, const char *path, const kfctl_cp *cp, char *why, size_t why_size)
{
    kfctl_cp *v = NULL;
    size_t n = 0;
    if (kfctl_cp_read_file(path, &v, &n, why, why_size) != 0)
        return -1;
    kfctl_cp an = v[n - 1];
    for (size_t i = 0; i + 1 < n; i++)
        kfctl_cp_clear(&v[i]);
    free(v);
    int rc = kfctl_cp_verify(t, &an, why, why_size);
    if (rc == 0 && strcmp(an.text, cp->text) != 0) {
        snprintf(why, why_size,
                 "the proof is against the checkpoint of size %" PRIu64 ", the anchor signs %" PRIu64
                 " (ask for one against it: audit prove ID --checkpoint ANCHOR)",
                 cp->parsed.size, an.parsed.size);
        rc = -1;
    }
    kfctl_cp_clear(&an);
    return rc;
}

int kfctl_proof_verify(const kfctl_trust *t, const json_t *doc, const char *anchor_path, FILE *out, char *why,
                       size_t why_size)
{
    kfctl_cp cp = {0};
    int rc = -1;
    const char *format = json_string_value(json_object_get(doc, "format"));
    json_t *proofs = json_object_get(doc, "proofs");
    if (format == NULL || strcmp(format, KFCTL_PROOF_FORMAT) != 0 || !json_is_array(proofs) ||
        json_array_size(proofs) == 0) {
        snprintf(why, why_size, "not a keyfleet inclusion proof");
        goto out;
    }
    if (kfctl_cp_from_json(json_object_get(doc, "checkpoint"), &cp, why, why_size) != 0 ||
        kfctl_cp_verify(t, &cp, why, why_size) != 0)
        goto out;
    if (anchor_path != NULL && check_anchor(t, anchor_path, &cp, why, why_size) != 0)
        goto out;
    for (size_t i = 0; i < json_array_size(proofs); i++) {
        json_t *p = json_array_get(proofs, i);
        const char *rec = json_string_value(json_object_get(p, "record"));
        kf_merkle_hash path[KF_MERKLE_MAX_PROOF], leaf;
        size_t n = 0, len = rec != NULL ? strlen(rec) : 0;
        uint8_t *buf = malloc(len + 1);
        int blen = buf != NULL && rec != NULL ? kf_b64_decode(rec, len, false, buf, len + 1) : -1;
        Keyfleet__V1__AuditRecord *r =
            blen >= 0 ? keyfleet__v1__audit_record__unpack(NULL, (size_t)blen, buf) : NULL;
        free(buf);
        uint8_t canon[KF_AUDIT_CANON_MAX];
        size_t clen = r != NULL ? kf_audit_canonical(r, canon, sizeof(canon)) : 0;
        bool ok = r != NULL && clen <= sizeof(canon) && r->seq >= 1 &&
                  path_from_json(json_object_get(p, "path"), path, &n) == 0;
        if (ok) {
            kf_merkle_leaf_hash(canon, clen, leaf);
            ok = kf_merkle_verify_inclusion(r->seq - 1, cp.parsed.size, leaf, path, n, cp.parsed.root);
        }
        if (!ok) {
            snprintf(why, why_size, "record %" PRIu64 " is not in the tree the checkpoint signed", r != NULL ? r->seq : 0);
            if (r != NULL)
                keyfleet__v1__audit_record__free_unpacked(r, NULL);
            goto out;
        }
        fprintf(out,
                "included: record %" PRIu64 " %s node=%s volume=%s request=%s, in the %" PRIu64
                " records coordinator %s signed at %" PRId64 "\n",
                r->seq, r->action, r->node, r->volume_id, r->request_id, cp.parsed.size, cp.parsed.signer,
                cp.parsed.seconds);
        keyfleet__v1__audit_record__free_unpacked(r, NULL);
    }
    rc = 0;
out:
    kfctl_cp_clear(&cp);
    return rc;
}

int kfctl_consistency_verify(const kfctl_trust *t, const json_t *doc, FILE *out, char *why, size_t why_size)
{
    kfctl_cp old = {0}, neu = {0};
    int rc = -1;
    kf_merkle_hash path[KF_MERKLE_MAX_PROOF];
    size_t n = 0;
    const char *format = json_string_value(json_object_get(doc, "format"));
    if (format == NULL || strcmp(format, KFCTL_CONSISTENCY_FORMAT) != 0 ||
        path_from_json(json_object_get(doc, "path"), path, &n) != 0) {
        snprintf(why, why_size, "not a keyfleet consistency proof");
    } else if (kfctl_cp_from_json(json_object_get(doc, "old"), &old, why, why_size) != 0 ||
               kfctl_cp_verify(t, &old, why, why_size) != 0) {
        /* why says it */
    } else if (kfctl_cp_from_json(json_object_get(doc, "new"), &neu, why, why_size) != 0 ||
               kfctl_cp_verify(t, &neu, why, why_size) != 0) {
    } else if (!kf_merkle_verify_consistency(old.parsed.size, neu.parsed.size, old.parsed.root, neu.parsed.root, path,
                                             n)) {
        snprintf(why, why_size, "the tree of %" PRIu64 " records is not a prefix of the tree of %" PRIu64,
                 old.parsed.size, neu.parsed.size);
    } else {
        fprintf(out,
                "consistent: the %" PRIu64 " records signed at %" PRId64 " are the first %" PRIu64
                " of the %" PRIu64 " signed at %" PRId64 "\n",
                old.parsed.size, old.parsed.seconds, old.parsed.size, neu.parsed.size, neu.parsed.seconds);
        rc = 0;
    }
    kfctl_cp_clear(&old);
    kfctl_cp_clear(&neu);
    return rc;
}

int kfctl_stream_verify(FILE *in, const char *name, const kfctl_trust *t, const kfctl_cp *anchors, size_t n_anchors,
                        uint64_t max_unsigned, FILE *out)
{
    kfctl_log_check *chk = kfctl_log_check_new(t);
    if (chk == NULL)
        return 1;
    kfctl_log_check_allow_partial(chk);
    kfctl_log_check_max_unsigned(chk, max_unsigned);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    unsigned long lineno = 0;
    int rc = 0;
    while (rc == 0 && (len = getline(&line, &cap, in)) > 0) {
        lineno++;
        json_error_t jerr;
        json_t *o = json_loadb(line, (size_t)len, 0, &jerr);
        Keyfleet__V1__AuditRecord *r = NULL;
        if (o == NULL || kf_audit_record_from_json(o, &r) != 0) {
            fprintf(out, "audit stream BROKEN at line %lu of %s: not a keyfleet audit record\n", lineno, name);
            rc = 1;
        } else {
            kfctl_log_check_add(chk, r);
        }
        kf_audit_record_free(r);
        json_decref(o);
    }
    free(line);
    if (rc == 0 && lineno == 0) {
        fprintf(out, "audit stream %s is empty\n", name);
        rc = 1;
    }
    if (rc == 0)
        rc = kfctl_log_check_finish(chk, anchors, n_anchors, out);
    kfctl_log_check_free(chk);
    return rc;
}
