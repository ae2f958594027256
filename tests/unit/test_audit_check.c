/* keyfleetctl's own audit verification (ctl/audit_check.c) on logs built here and signed by a
 * coordinator certificate of a test CA: a checkpoint of size 0 is refused (it once made the
 * anchor check read the root before record 1), and the records after the newest checkpoint are
 * bounded (review of #17, F2); the second review's replayed checkpoints and re-added signers. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <openssl/pem.h>

#include "audit_check.h"
#include "ca.h"
#include "kf_audit.h"
#include "kf_merkle.h"

#include "kf_test_tmpdir.h"

#define MAX_RECS 64

/* A log as a coordinator would serve it: records with their chain hash and root. */
typedef struct test_log {
    Keyfleet__V1__AuditRecord rec[MAX_RECS];
    Keyfleet__V1__Timestamp time[MAX_RECS];
    Keyfleet__V1__Principal actor[MAX_RECS];
    uint8_t prev[MAX_RECS][KF_AUDIT_HASH], hash[MAX_RECS][KF_AUDIT_HASH];
    kf_merkle_hash root[MAX_RECS];
    char reason[MAX_RECS][KF_CHECKPOINT_TEXT_MAX];
    uint8_t *sig[MAX_RECS];
    kf_merkle_frontier tree;
    size_t n;
} test_log;

static test_log lg;
static EVP_PKEY *c1_key, *c1_new_key;
static uint8_t *c1_cert, *c1_new_cert;
static size_t c1_cert_len, c1_new_cert_len;
static kfctl_trust trust;
static int64_t t0; /* a minute ago: the certificate is valid then */

/* A coordinator certificate for c1 issued now, backdated backdate_days (and the CA's 300 s). */
static int issue_c1(const char *ca, const char *cak, const char *stem, int backdate_days, EVP_PKEY **ret_key,
                    uint8_t **ret_der, size_t *ret_len)
{
    char cert[256], key[256];
    snprintf(cert, sizeof(cert), "%s/%s.crt", tmpdir, stem);
    snprintf(key, sizeof(key), "%s/%s.key", tmpdir, stem);
    kf_err err = {0};
    kfctl_cert_opts o = {.kind = KF_PEER_COORDINATOR, .name = "c1", .days = 30, .backdate_days = backdate_days};
    if (kfctl_cert_issue(ca, cak, &o, cert, key, false, &err) != 0)
        return -1;
    FILE *f = fopen(key, "r");
    *ret_key = f != NULL ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f != NULL)
        fclose(f);
    f = fopen(cert, "r");
    X509 *x = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f != NULL)
        fclose(f);
    unsigned char *der = NULL;
    int n = x != NULL ? i2d_X509(x, &der) : -1;
    X509_free(x);
    if (*ret_key == NULL || n <= 0)
        return -1;
    *ret_der = der;
    *ret_len = (size_t)n;
    return 0;
}

static int setup(void **state)
{
    if (tmpdir_setup(state) != 0)
        return -1;
    char ca[256], cak[256], cert[256], key[256];
    snprintf(ca, sizeof(ca), "%s/ca.crt", tmpdir);
    snprintf(cak, sizeof(cak), "%s/ca.key", tmpdir);
    snprintf(cert, sizeof(cert), "%s/c1.crt", tmpdir);
    snprintf(key, sizeof(key), "%s/c1.key", tmpdir);
    kf_err err = {0};
    kfctl_cert_opts o = {.kind = KF_PEER_COORDINATOR, .name = "c1", .days = 30, .backdate_days = 1};
    t0 = (int64_t)time(NULL) - 60;
    if (kfctl_ca_create(ca, cak, "test CA", &err) != 0 || kfctl_cert_issue(ca, cak, &o, cert, key, false, &err) != 0)
        return -1;
    FILE *f = fopen(key, "r");
    c1_key = f != NULL ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f != NULL)
        fclose(f);
    f = fopen(cert, "r");
    X509 *x = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f != NULL)
        fclose(f);
    unsigned char *der = NULL;
    int n = x != NULL ? i2d_X509(x, &der) : -1;
    X509_free(x);
    if (c1_key == NULL || n <= 0)
        return -1;
    c1_cert = der;
    c1_cert_len = (size_t)n;
    if (issue_c1(ca, cak, "c1-new", 0, &c1_new_key, &c1_new_cert, &c1_new_cert_len) != 0)
        return -1;
    return kfctl_trust_load(ca, &trust);
}

static int teardown(void **state)
{
    kfctl_trust_free(&trust);
    EVP_PKEY_free(c1_key);
    OPENSSL_free(c1_cert);
    EVP_PKEY_free(c1_new_key);
    OPENSSL_free(c1_new_cert);
    return tmpdir_teardown(state);
}

static void log_reset(void)
{
    for (size_t i = 0; i < lg.n; i++)
        OPENSSL_free(lg.sig[i]);
    memset(&lg, 0, sizeof(lg));
    kf_merkle_frontier_init(&lg.tree);
}

/* Appends a record; its time is t0 + its seq seconds. */
static Keyfleet__V1__AuditRecord *log_add(const char *action, const char *reason)
{
    assert_true(lg.n < MAX_RECS);
    size_t i = lg.n++;
    Keyfleet__V1__AuditRecord *r = &lg.rec[i];
    keyfleet__v1__audit_record__init(r);
    keyfleet__v1__timestamp__init(&lg.time[i]);
    keyfleet__v1__principal__init(&lg.actor[i]);
    lg.time[i].seconds = t0 + (int64_t)i + 1;
    lg.actor[i].name = (char *)"c1";
    lg.actor[i].auth = (char *)"internal";
    snprintf(lg.reason[i], sizeof(lg.reason[i]), "%s", reason);
    r->seq = i + 1;
    r->time = &lg.time[i];
    r->actor = &lg.actor[i];
    r->action = (char *)action;
    r->node = r->volume_id = r->request_id = r->source_address = (char *)"";
    r->reason = lg.reason[i];
    r->decision = KEYFLEET__V1__DECISION__DECISION_ALLOW;
    if (i > 0)
        memcpy(lg.prev[i], lg.hash[i - 1], KF_AUDIT_HASH);
    uint8_t canon[KF_AUDIT_CANON_MAX];
    size_t len = kf_audit_canonical(r, canon, sizeof(canon));
    assert_true(len <= sizeof(canon));
    kf_audit_chain_hash(lg.prev[i], canon, len, lg.hash[i]);
    kf_merkle_hash leaf;
    kf_merkle_leaf_hash(canon, len, leaf);
    kf_merkle_frontier_append(&lg.tree, leaf);
    kf_merkle_frontier_root(&lg.tree, lg.root[i]);
    r->prev_hash = (ProtobufCBinaryData){KF_AUDIT_HASH, lg.prev[i]};
    r->hash = (ProtobufCBinaryData){KF_AUDIT_HASH, lg.hash[i]};
    r->root = (ProtobufCBinaryData){KF_AUDIT_HASH, lg.root[i]};
    return r;
}

static void log_releases(size_t n)
{
    for (size_t i = 0; i < n; i++)
        log_add("release", "test");
}

/* A checkpoint record signing size (its root and chain as the log holds them; zeros for 0),
 * with key and cert. */
/* The text log_checkpoint_by writes: v1 (0) or v2 (2, naming its certificate and this state). */
static int cp_version;
static uint64_t cp_state_seq;
static uint8_t cp_state[KF_AUDIT_HASH];

static void log_checkpoint_by(uint64_t size, int64_t seconds, EVP_PKEY *key, uint8_t *cert, size_t cert_len)
{
    kf_checkpoint cp;
    memset(&cp, 0, sizeof(cp));
    snprintf(cp.cluster, sizeof(cp.cluster), "%s", trust.cluster);
    cp.size = size;
    if (size > 0) {
        memcpy(cp.root, lg.root[size - 1], KF_AUDIT_HASH);
        memcpy(cp.chain, lg.hash[size - 1], KF_AUDIT_HASH);
    }
    cp.seconds = seconds;
    snprintf(cp.signer, sizeof(cp.signer), "c1");
    if (cp_version == 2) {
        cp.version = 2;
        kf_sha256_parts(cert, cert_len, NULL, 0, NULL, 0, cp.cert_hash);
        cp.state_seq = cp_state_seq;
        cp.state_version = 1;
        memcpy(cp.state, cp_state, KF_AUDIT_HASH);
    }
    char text[KF_CHECKPOINT_TEXT_MAX];
    int len = kf_checkpoint_format(&cp, text, sizeof(text));
    assert_true(len > 0);
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    kf_err err = {0};
    assert_int_equal(kf_checkpoint_sign(key, text, (size_t)len, &sig, &sig_len, &err), 0);
    Keyfleet__V1__AuditRecord *r = log_add(KF_AUDIT_CHECKPOINT_ACTION, text);
    lg.sig[lg.n - 1] = sig;
    r->signature = (ProtobufCBinaryData){sig_len, sig};
    r->signer_cert = (ProtobufCBinaryData){cert_len, cert};
}

static void log_checkpoint(uint64_t size, int64_t seconds)
{
    log_checkpoint_by(size, seconds, c1_key, c1_cert, c1_cert_len);
}

/* A copy of the genuine checkpoint record at seq, appended (its text, signature and cert). */
static void log_replay(uint64_t seq)
{
    const Keyfleet__V1__AuditRecord *g = &lg.rec[seq - 1];
    char text[KF_CHECKPOINT_TEXT_MAX];
    snprintf(text, sizeof(text), "%s", g->reason);
    uint8_t *sig = OPENSSL_malloc(g->signature.len);
    assert_non_null(sig);
    memcpy(sig, g->signature.data, g->signature.len);
    Keyfleet__V1__AuditRecord *r = log_add(KF_AUDIT_CHECKPOINT_ACTION, text);
    lg.sig[lg.n - 1] = sig;
    r->signature = (ProtobufCBinaryData){g->signature.len, sig};
    r->signer_cert = g->signer_cert;
}

/* Runs the check over the whole log with anchors; returns its result, the output in out. */
static int check(uint64_t max_unsigned, const kfctl_cp *anchors, size_t n_anchors, char *out, size_t size)
{
    kfctl_log_check *c = kfctl_log_check_new(&trust);
    assert_non_null(c);
    if (max_unsigned != UINT64_MAX)
        kfctl_log_check_max_unsigned(c, max_unsigned);
    for (size_t i = 0; i < lg.n; i++)
        kfctl_log_check_add(c, &lg.rec[i]);
    FILE *f = fmemopen(out, size, "w");
    assert_non_null(f);
    int rc = kfctl_log_check_finish(c, anchors, n_anchors, f);
    fclose(f);
    kfctl_log_check_free(c);
    return rc;
}

static void test_good_log(void **state)
{
    (void)state;
    log_reset();
    log_releases(3);
    log_checkpoint(3, t0 + 4);
    log_releases(2);
    char out[1024];
    if (check(UINT64_MAX, NULL, 0, out, sizeof(out)) != 0)
        fail_msg("%s", out);
    if (strstr(out, "audit chain ok: 6 records verified, 1 signed checkpoints (by c1); the newest signs 3 records "
                    "(2 after it not yet signed)") == NULL)
        fail_msg("%s", out);
}

/* Size 0: refused in the log, and as an anchor. With the size-0 record in the log and the same
 * checkpoint as an anchor, the anchor check read roots[-1] before (ASan: heap-buffer-overflow). */
static void test_size0_checkpoint_refused(void **state)
{
    (void)state;
    log_reset();
    log_releases(2);
    log_checkpoint(0, t0 + 3);
    kfctl_cp anchor;
    char why[300], out[1024];
    assert_int_equal(kfctl_cp_from_record(&lg.rec[2], &anchor, why, sizeof(why)), 0);
    assert_int_equal(check(UINT64_MAX, &anchor, 1, out, sizeof(out)), 1);
    if (strstr(out, "BROKEN at record 3: checkpoint: checkpoint signs no records") == NULL)
        fail_msg("%s", out);

    /* The same anchor against a log that does not hold it. */
    log_reset();
    log_releases(3);
    assert_int_equal(check(UINT64_MAX, &anchor, 1, out, sizeof(out)), 1);
    if (strstr(out, "anchor INVALID (checkpoint record 3): checkpoint signs no records") == NULL)
        fail_msg("%s", out);
    kfctl_cp_clear(&anchor);
}

/* F3: who may sign, as the log says before the checkpoint; and no time far in the future (the
 * certificate is checked at the checkpoint's time). */
static void test_signer_revoked_or_removed(void **state)
{
    (void)state;
    const unsigned char *p = c1_cert;
    X509 *x = d2i_X509(NULL, &p, (long)c1_cert_len);
    kf_identity id;
    assert_int_equal(kf_identity_from_cert(x, &id, NULL), 0);
    X509_free(x);
    char reason[200], out[1024];

    /* Revoked: checkpoints before the revocation stand, the one after it does not. */
    log_reset();
    log_releases(2);
    log_checkpoint(2, t0 + 3);
    snprintf(reason, sizeof(reason), "certificate %s of coordinator c1 revoked: key leaked", id.serial);
    log_add("cert_revoke", reason);
    log_checkpoint(4, t0 + 5);
    assert_int_equal(check(UINT64_MAX, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "BROKEN at record 5: checkpoint: checkpoint signer certificate") == NULL ||
        strstr(out, "was revoked earlier in the log") == NULL)
        fail_msg("%s", out);

    /* Removed from the cluster: refused until it is added back. */
    log_reset();
    log_releases(1);
    log_add("cluster_remove", "member c1");
    log_checkpoint(2, t0 + 3);
    assert_int_equal(check(UINT64_MAX, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "BROKEN at record 3: checkpoint: checkpoint signer c1 was removed from the cluster") == NULL)
        fail_msg("%s", out);
    /* Added back (F9): its certificate from before the removal still counts for nothing; one
     * issued since (notBefore within the CA's 300 s backdating of the removal) does. */
    log_reset();
    log_releases(1);
    log_add("cluster_remove", "member c1");
    log_add("cluster_add", "member c1 raft=127.0.0.1:7001 rpc=127.0.0.1:7000");
    log_checkpoint(3, t0 + 4);
    assert_int_equal(check(UINT64_MAX, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "BROKEN at record 4: checkpoint: checkpoint signer certificate") == NULL ||
        strstr(out, "was issued before c1 was removed from the cluster") == NULL)
        fail_msg("%s", out);
    log_reset();
    log_releases(1);
    log_add("cluster_remove", "member c1");
    log_add("cluster_add", "member c1 raft=127.0.0.1:7001 rpc=127.0.0.1:7000");
    log_checkpoint_by(3, t0 + 4, c1_new_key, c1_new_cert, c1_new_cert_len);
    if (check(UINT64_MAX, NULL, 0, out, sizeof(out)) != 0)
        fail_msg("%s", out);
    /* Never removed: the old certificate is fine. */
    log_reset();
    log_releases(1);
    log_add("cluster_add", "member c2 raft=127.0.0.1:7001 rpc=127.0.0.1:7000");
    log_checkpoint(2, t0 + 3);
    if (check(UINT64_MAX, NULL, 0, out, sizeof(out)) != 0)
        fail_msg("%s", out);
}

/* F4: a copy of a genuine checkpoint put after forged records. Appended as a second copy, it
 * signs no more than the one before it; moved there (the original deleted), the records after
 * its signed size are counted as unsigned, not those after its record. */
static void test_replayed_checkpoint(void **state)
{
    (void)state;
    char out[1024];
    log_reset();
    log_releases(3);
    log_checkpoint(3, t0 + 4);
    log_releases(5); /* forged */
    log_replay(4);
    assert_int_equal(check(2, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "BROKEN at record 10: checkpoint: checkpoint signs 3 records, no more than the checkpoint before "
                    "it (3)") == NULL)
        fail_msg("%s", out);

    log_reset();
    log_releases(3);
    log_releases(5); /* forged, before the moved checkpoint */
    log_checkpoint(3, t0 + 9);
    assert_int_equal(check(2, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "UNSIGNED TAIL: 5 records after the newest checkpoint's signed size are not signed") == NULL)
        fail_msg("%s", out);
    assert_int_equal(check(5, NULL, 0, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "(5 after it not yet signed)"));

    /* Times go back only for a signer whose certificate covered the date before (review rev17,
     * R3): c1 may date back from t0 + 10, which it could have signed at itself ... */
    log_reset();
    log_releases(2);
    log_checkpoint(2, t0 + 10);
    log_releases(1);
    log_checkpoint(4, t0 + 5);
    if (check(UINT64_MAX, NULL, 0, out, sizeof(out)) != 0)
        fail_msg("%s", out);
    /* ... but not from a date past its notAfter (t0 + 29.5 days, by c1's newer certificate). */
    log_reset();
    log_releases(2);
    log_checkpoint_by(2, t0 + 29 * 86400 + 43200, c1_new_key, c1_new_cert, c1_new_cert_len);
    log_releases(1);
    log_checkpoint(4, t0 + 5);
    assert_int_equal(check(UINT64_MAX, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "BROKEN at record 5: checkpoint: checkpoint time") == NULL ||
        strstr(out, "is before the checkpoint before it") == NULL || strstr(out, "had expired by then") == NULL)
        fail_msg("%s", out);
    /* The same time is fine (a leader whose clock is behind keeps the newest one). */
    log_reset();
    log_releases(2);
    log_checkpoint(2, t0 + 10);
    log_releases(1);
    log_checkpoint(4, t0 + 10);
    if (check(UINT64_MAX, NULL, 0, out, sizeof(out)) != 0)
        fail_msg("%s", out);
}

static void test_checkpoint_time_not_in_future(void **state)
{
    (void)state;
    log_reset();
    log_releases(2);
    log_checkpoint(2, (int64_t)time(NULL) + 3600);
    char out[1024];
    assert_int_equal(check(UINT64_MAX, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "BROKEN at record 3: checkpoint: checkpoint time") == NULL || strstr(out, "is in the future") == NULL)
        fail_msg("%s", out);
}

static void test_unsigned_tail_bounded(void **state)
{
    (void)state;
    log_reset();
    log_releases(2);
    log_checkpoint(2, t0 + 3);
    log_releases(5);
    char out[1024];
    assert_int_equal(check(5, NULL, 0, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "(5 after it not yet signed)"));
    assert_int_equal(check(4, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "UNSIGNED TAIL: 5 records after the newest checkpoint's signed size are not signed") == NULL)
        fail_msg("%s", out);

    /* No checkpoint at all: every record counts. */
    log_reset();
    log_releases(3);
    assert_int_equal(check(2, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "UNSIGNED TAIL: 3 records after the start") == NULL)
        fail_msg("%s", out);
    assert_int_equal(check(UINT64_MAX, NULL, 0, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "3 records not yet signed"));
}

/* Review rev17, R6: every checkpoint's signature is verified (each signer chain once, then
 * cached), and a v2 text names its certificate: an older checkpoint's signature or certificate
 * blob changed fails the log. */
static void test_old_checkpoint_blobs(void **state)
{
    (void)state;
    log_reset();
    cp_version = 2;
    log_releases(2);
    log_checkpoint(2, t0 + 3);
    log_releases(2);
    log_checkpoint(5, t0 + 6);
    log_releases(1);
    log_checkpoint(7, t0 + 8);
    char out[1024];
    if (check(UINT64_MAX, NULL, 0, out, sizeof(out)) != 0)
        fail_msg("%s", out);
    /* The older checkpoint's signature (its certificate's chain was verified at the first one). */
    lg.sig[5][8] ^= 1;
    assert_int_equal(check(UINT64_MAX, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "BROKEN at record 6: checkpoint: checkpoint signature does not verify") == NULL)
        fail_msg("%s", out);
    lg.sig[5][8] ^= 1;
    /* Its certificate blob replaced by another certificate of c1. */
    lg.rec[5].signer_cert = (ProtobufCBinaryData){c1_new_cert_len, c1_new_cert};
    assert_int_equal(check(UINT64_MAX, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "BROKEN at record 6: checkpoint: checkpoint signer certificate is not the one its text names") ==
        NULL)
        fail_msg("%s", out);
    lg.rec[5].signer_cert = (ProtobufCBinaryData){c1_cert_len, c1_cert};
    if (check(UINT64_MAX, NULL, 0, out, sizeof(out)) != 0)
        fail_msg("%s", out);
    /* Dated before its certificate was valid: the chain is judged at that time again, not taken
     * from what the earlier checkpoints by the same certificate left in the cache. */
    log_checkpoint(8, t0 - 3 * 86400);
    assert_int_equal(check(UINT64_MAX, NULL, 0, out, sizeof(out)), 1);
    if (strstr(out, "BROKEN at record 9: checkpoint: checkpoint signer certificate does not chain to the fleet CA: "
                    "certificate is not yet valid") == NULL)
        fail_msg("%s", out);
    cp_version = 0;
}

/* Review rev17, the signed state root: audit verify compares the coordinator's own state digest
 * at a checkpoint record with the state root a later checkpoint signed for it. */
static void test_state_root_compared(void **state)
{
    (void)state;
    log_reset();
    cp_version = 2;
    cp_state_seq = 0;
    log_releases(1);
    log_checkpoint(1, t0 + 2);
    cp_state_seq = 2;
    memset(cp_state, 7, sizeof(cp_state));
    log_releases(1);
    log_checkpoint(3, t0 + 4);
    cp_version = 0;
    cp_state_seq = 0;
    char out[1024];
    uint8_t mine[KF_AUDIT_HASH];
    for (int differs = 0; differs <= 1; differs++) {
        memset(mine, 7, sizeof(mine));
        mine[0] ^= (uint8_t)differs;
        kfctl_log_check *c = kfctl_log_check_new(&trust);
        assert_non_null(c);
        kfctl_log_check_state(c, 2, mine, sizeof(mine), 1);
        for (size_t i = 0; i < lg.n; i++)
            kfctl_log_check_add(c, &lg.rec[i]);
        FILE *f = fmemopen(out, sizeof(out), "w");
        assert_non_null(f);
        int rc = kfctl_log_check_finish(c, NULL, 0, f);
        fclose(f);
        kfctl_log_check_free(c);
        assert_int_equal(rc, differs);
        if (strstr(out, differs ? "BROKEN at record 2: the coordinator's replicated state at checkpoint record 2 "
                                  "differs from the state root c1 signed"
                                : "the replicated state at checkpoint record 2 matches its signed state root") == NULL)
            fail_msg("%s", out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_log),
        cmocka_unit_test(test_size0_checkpoint_refused),
        cmocka_unit_test(test_unsigned_tail_bounded),
        cmocka_unit_test(test_signer_revoked_or_removed),
        cmocka_unit_test(test_checkpoint_time_not_in_future),
        cmocka_unit_test(test_replayed_checkpoint),
        cmocka_unit_test(test_old_checkpoint_blobs),
        cmocka_unit_test(test_state_root_compared),
    };
    int rc = cmocka_run_group_tests_name("audit_check", tests, setup, teardown);
    log_reset();
    return rc;
}
