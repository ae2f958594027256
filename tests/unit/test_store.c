/* The store: one apply function, one transaction per command, a hash-chained audit log that
 * names the first bad record, and fail-closed behaviour on a broken database. */
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
#include <sqlite3.h>

#include "ca.h"
#include "core/app.h"
#include "kf_audit.h"
#include "store/store.h"
#include "store/store_apply.h"
#include "store/store_audit.h"
#include "store/store_digest.h"
#include "store/store_dispute.h"
#include "store/store_internal.h"
#include "store/store_read.h"
#include "store/store_snapshot.h"

#include "kf_test_tmpdir.h"


static Keyfleet__V1__Timestamp now_ts = {PROTOBUF_C_MESSAGE_INIT(&keyfleet__v1__timestamp__descriptor), 1795435200, 0};

static Keyfleet__V1__AuditEntry audit(const char *action, const char *node, const char *reason)
{
    Keyfleet__V1__AuditEntry e = KEYFLEET__V1__AUDIT_ENTRY__INIT;
    e.time = &now_ts;
    e.action = (char *)action;
    e.node = (char *)node;
    e.reason = (char *)reason;
    e.decision = KEYFLEET__V1__DECISION__DECISION_ALLOW;
    return e;
}

static int append_reason(kfd_store *s, const char *action, const char *node, const char *reason)
{
    Keyfleet__V1__AuditEntry e = audit(action, node, reason);
    Keyfleet__V1__CmdAppendAudit c = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
    c.audit = &e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
    cmd.append_audit = &c;
    kfd_apply_result res;
    return kfd_store_apply(s, &cmd, &res, NULL);
}

static int append(kfd_store *s, const char *action, const char *node) { return append_reason(s, action, node, "test"); }

static kfd_store *open_db(const char *name)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    kfd_store *s = NULL;
    kf_err err = {0};
    int r = kfd_store_open(path, &s, &err);
    if (r != 0)
        fail_msg("open: %s", err.msg);
    return s;
}

static void verify(kfd_store *s, bool want_ok, uint64_t want_bad)
{
    Keyfleet__V1__VerifyAuditResponse v = KEYFLEET__V1__VERIFY_AUDIT_RESPONSE__INIT;
    char problem[256];
    assert_int_equal(kfd_store_verify_audit(s, &v, problem, sizeof(problem)), 0);
    if (v.ok != want_ok || (!want_ok && v.first_bad_seq != want_bad))
        fail_msg("verify ok=%d bad=%llu (%s)", v.ok, (unsigned long long)v.first_bad_seq, problem);
}

static void test_chain_and_tamper(void **state)
{
    (void)state;
    kfd_store *s = open_db("chain.db");
    for (int i = 0; i < 5; i++)
        assert_int_equal(append(s, "release", "n1"), 0);
    verify(s, true, 0);

    char path[300];
    snprintf(path, sizeof(path), "%s/chain.db", tmpdir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE audit SET reason = 'x' WHERE seq = 3", NULL, NULL, NULL), SQLITE_OK);
    verify(s, false, 3);
    assert_int_equal(sqlite3_exec(db, "UPDATE audit SET reason = 'test' WHERE seq = 3", NULL, NULL, NULL), SQLITE_OK);
    verify(s, true, 0);
    assert_int_equal(sqlite3_exec(db, "DELETE FROM audit WHERE seq = 2", NULL, NULL, NULL), SQLITE_OK);
    verify(s, false, 3);
    sqlite3_close(db);
    kfd_store_close(s);
}

static void test_commands(void **state)
{
    (void)state;
    kfd_store *s = open_db("cmds.db");
    Keyfleet__V1__VolumeRef vol = KEYFLEET__V1__VOLUME_REF__INIT;
    vol.id = (char *)"vol-1";
    vol.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2;
    vol.name = (char *)"data";
    Keyfleet__V1__AuditEntry e = audit("enroll", "n1", "");
    e.request_id = (char *)"0123456789abcdef";
    Keyfleet__V1__CmdEnrollVolume en = KEYFLEET__V1__CMD_ENROLL_VOLUME__INIT;
    en.volume = &vol;
    en.node = (char *)"n1";
    en.wrapped_key = (char *)"kf:local:v1:xyz";
    en.audit = &e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME;
    cmd.enroll_volume = &en;
    kfd_apply_result res = {0};
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    assert_int_equal(res.audit_seq, 1);
    kf_err err = {0};
    /* The same volume again: refused, and the failed transaction leaves no audit record. */
    assert_int_equal(kfd_store_apply(s, &cmd, &res, &err), -EEXIST);
    kfd_volume v;
    assert_int_equal(kfd_store_get_volume(s, "vol-1", &v), 0);
    assert_string_equal(v.node, "n1");
    assert_string_equal(v.wrapped_key, "kf:local:v1:xyz");
    kfd_volume_clear(&v);
    assert_int_equal(kfd_store_get_volume(s, "vol-2", &v), -ENOENT);

    /* A command without its audit record changes nothing. */
    en.audit = NULL;
    vol.id = (char *)"vol-3";
    assert_int_equal(kfd_store_apply(s, &cmd, &res, &err), -EINVAL);
    assert_int_equal(kfd_store_get_volume(s, "vol-3", &v), -ENOENT);
    assert_int_equal(append(s, "release", "n1"), 0);
    verify(s, true, 0);

    /* Pending, approvals by distinct operators, TOTP steps used once. */
    Keyfleet__V1__Timestamp exp = now_ts;
    exp.seconds += 900;
    Keyfleet__V1__AuditEntry pe = audit("pending", "n1", "");
    Keyfleet__V1__CmdCreatePending cp = KEYFLEET__V1__CMD_CREATE_PENDING__INIT;
    cp.request_id = (char *)"req-0000000000000001";
    cp.node = (char *)"n1";
    cp.volume = &vol;
    cp.created_at = &now_ts;
    cp.expires_at = &exp;
    cp.approvals_needed = 2;
    cp.rule = (char *)"r";
    cp.audit = &pe;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_PENDING;
    cmd.create_pending = &cp;
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    Keyfleet__V1__AuditEntry ae = audit("approve", "n1", "");
    Keyfleet__V1__CmdApprove ap = KEYFLEET__V1__CMD_APPROVE__INIT;
    ap.request_id = cp.request_id;
    ap.operator_ = (char *)"alice";
    ap.audit = &ae;
    ap.totp_step = 1000;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPROVE;
    cmd.approve = &ap;
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    assert_int_equal(kfd_store_apply(s, &cmd, &res, &err), -EEXIST);
    ap.operator_ = (char *)"bob";
    ap.totp_step = 0;
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    kfd_pending p;
    assert_int_equal(kfd_store_get_pending(s, cp.request_id, &p), 0);
    assert_int_equal(p.state, KFD_PENDING_APPROVED);
    assert_int_equal(p.approvals_have, 2);
    bool used = false;
    assert_int_equal(kfd_store_totp_used(s, "alice", 1000, &used), 0);
    assert_true(used);
    /* Approving an approved request: stale. */
    ap.operator_ = (char *)"carol";
    assert_int_equal(kfd_store_apply(s, &cmd, &res, &err), -ESTALE);
    verify(s, true, 0);
    kfd_store_close(s);
}

/* Group commit: one transaction for the batch, a savepoint per command. A malformed command (an
 * enrollment naming no volume) rolls back alone, with its audit record; a refused one (a second
 * enrollment of vol-b) is rolled back too but its refusal recorded as a denial (review rev44b
 * K1); the others commit and the chain has no gap. */
static void test_batch_isolates_failures(void **state)
{
    (void)state;
    kfd_store *s = open_db("batch.db");
    Keyfleet__V1__VolumeRef vol = KEYFLEET__V1__VOLUME_REF__INIT;
    vol.id = (char *)"vol-b";
    vol.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS;
    vol.name = (char *)"tank/b";
    Keyfleet__V1__AuditEntry e = audit("enroll", "n1", "first");
    Keyfleet__V1__CmdEnrollVolume en = KEYFLEET__V1__CMD_ENROLL_VOLUME__INIT;
    en.volume = &vol;
    en.node = (char *)"n1";
    en.wrapped_key = (char *)"kf:local:v1:abc";
    en.audit = &e;
    Keyfleet__V1__StateCommand enroll = KEYFLEET__V1__STATE_COMMAND__INIT;
    enroll.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME;
    enroll.enroll_volume = &en;
    enroll.refusals_recorded = true; /* as this version proposes it */
    Keyfleet__V1__CmdEnrollVolume bad_en = en;
    bad_en.volume = NULL;
    Keyfleet__V1__StateCommand bad_enroll = enroll;
    bad_enroll.enroll_volume = &bad_en;
    Keyfleet__V1__AuditEntry r = audit("release", "n1", "ok");
    Keyfleet__V1__CmdAppendAudit ap = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
    ap.audit = &r;
    Keyfleet__V1__StateCommand release = KEYFLEET__V1__STATE_COMMAND__INIT;
    release.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
    release.append_audit = &ap;

    const Keyfleet__V1__StateCommand *cmds[5] = {&enroll, &release, &bad_enroll, &enroll, &release};
    int st[5];
    kfd_apply_result res[5];
    kf_err errs[5];
    assert_int_equal(kfd_store_apply_batch(s, cmds, 5, 0, st, res, errs), 0);
    assert_int_equal(st[0], 0);
    assert_int_equal(st[1], 0);
    assert_int_equal(st[2], -EINVAL); /* malformed: nothing recorded */
    assert_int_equal(st[3], -EEXIST); /* the second enrollment of vol-b: refused, recorded */
    assert_int_equal(st[4], 0);
    assert_int_equal(res[0].audit_seq, 1);
    assert_int_equal(res[1].audit_seq, 2);
    assert_int_equal(res[2].audit_seq, 0);
    assert_int_equal(res[3].audit_seq, 3); /* its denial, not its ALLOW */
    assert_int_equal(res[4].audit_seq, 4); /* no gap where the malformed command's record was */
    verify(s, true, 0);
    Keyfleet__V1__QueryAuditRequest q = KEYFLEET__V1__QUERY_AUDIT_REQUEST__INIT;
    Keyfleet__V1__QueryAuditResponse all = KEYFLEET__V1__QUERY_AUDIT_RESPONSE__INIT;
    assert_int_equal(kfd_store_query_audit(s, &q, &all), 0);
    assert_int_equal(all.n_records, 4);
    const Keyfleet__V1__AuditRecord *denied = NULL;
    for (size_t i = 0; i < all.n_records; i++)
        if (all.records[i]->seq == 3)
            denied = all.records[i];
    assert_non_null(denied);
    assert_int_equal(denied->decision, KEYFLEET__V1__DECISION__DECISION_DENY);
    assert_string_equal(denied->reason,
                        "refused at apply: recording the volume: already exists; was: first");
    kfd_store_free_audit_list(&all);
    kfd_store_close(s);
}

static void test_corrupt_database_fails_closed(void **state)
{
    (void)state;
    char path[300];
    snprintf(path, sizeof(path), "%s/corrupt.db", tmpdir);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 4096; i++)
        fputc(i * 7 & 0xff, f);
    fclose(f);
    kfd_store *s = NULL;
    kf_err err = {0};
    assert_int_not_equal(kfd_store_open(path, &s, &err), 0);
    assert_non_null(s);
    assert_true(kfd_store_failed(s));
    assert_int_equal(append(s, "release", "n1"), -EIO);
    kfd_volume v;
    assert_int_equal(kfd_store_get_volume(s, "vol-1", &v), -EIO);
    bool revoked;
    assert_int_equal(kfd_store_node_revoked(s, "n1", &revoked), -EIO);
    kfd_store_close(s);
}

/* A constraint's error by kind (review rev45 R45-3): a duplicate key is -EEXIST (which an
 * allowed key's refusal records); a NULL or a CHECK a command's value breaks is -EINVAL (the
 * command is malformed, alike on every replica); neither fails the store. */
static void test_constraint_errors(void **state)
{
    (void)state;
    kfd_store *s = open_db("constraint.db");
    kf_err err = {0};
    assert_int_equal(sqlite3_exec(s->db, "INSERT INTO nodes (name, revoked) VALUES ('n9', 0)", NULL, NULL, NULL),
                     SQLITE_OK);
    int rc = sqlite3_exec(s->db, "INSERT INTO nodes (name, revoked) VALUES ('n9', 0)", NULL, NULL, NULL);
    assert_int_equal(rc & 0xff, SQLITE_CONSTRAINT);
    assert_int_equal(kfd_store_sql_error(s, sqlite3_extended_errcode(s->db), "adding a node", &err), -EEXIST);
    rc = sqlite3_exec(s->db, "INSERT INTO nodes (name, revoked) VALUES ('n8', NULL)", NULL, NULL, NULL);
    assert_int_equal(rc & 0xff, SQLITE_CONSTRAINT);
    assert_int_equal(sqlite3_extended_errcode(s->db), SQLITE_CONSTRAINT_NOTNULL);
    assert_int_equal(kfd_store_sql_error(s, sqlite3_extended_errcode(s->db), "adding a node", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "required value"));
    rc = sqlite3_exec(s->db, "INSERT INTO raft_state (id, applied_index) VALUES (2, 0)", NULL, NULL, NULL);
    assert_int_equal(sqlite3_extended_errcode(s->db), SQLITE_CONSTRAINT_CHECK);
    assert_int_equal(kfd_store_sql_error(s, sqlite3_extended_errcode(s->db), "noting the index", &err), -EINVAL);
    assert_false(kfd_store_failed(s));
    assert_int_equal(kfd_store_sql_error(s, SQLITE_NOMEM, "reading", &err), -EIO); /* this replica's own */
    assert_true(kfd_store_failed(s));
    kfd_store_close(s);
}

/* Applies an append-audit command at a Raft index; returns its status. */
static int apply_at(kfd_store *s, uint64_t index, const char *node)
{
    Keyfleet__V1__AuditEntry e = audit("raft", node, "test");
    Keyfleet__V1__CmdAppendAudit c = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
    c.audit = &e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
    cmd.append_audit = &c;
    const Keyfleet__V1__StateCommand *cmds[1] = {&cmd};
    int status;
    kfd_apply_result res;
    kf_err err = {0};
    kfd_store_apply_batch(s, cmds, 1, index, &status, &res, &err);
    return status;
}

static uint64_t audit_count(kfd_store *s)
{
    Keyfleet__V1__VerifyAuditResponse v = KEYFLEET__V1__VERIFY_AUDIT_RESPONSE__INIT;
    char problem[256];
    assert_int_equal(kfd_store_verify_audit(s, &v, problem, sizeof(problem)), 0);
    assert_true(v.ok);
    return v.records;
}

/* The applied index commits with its command and survives a reopen; a deferred transaction is
 * lost whole on a crash (index included) and kept whole by a flush. */
static void test_applied_index_and_deferred_commit(void **state)
{
    (void)state;
    kfd_store *s = open_db("raft.db");
    assert_int_equal(kfd_store_applied_index(s), 0);
    assert_int_equal(apply_at(s, 5, "a"), 0);
    assert_int_equal(kfd_store_applied_index(s), 5);
    kfd_store_set_deferred(s, true);
    assert_int_equal(apply_at(s, 6, "b"), 0);
    assert_int_equal(apply_at(s, 7, "c"), 0);
    assert_true(kfd_store_tx_open(s));
    /* Another connection, as after a crash, sees only what was committed. */
    char path[300];
    snprintf(path, sizeof(path), "%s/raft.db", tmpdir);
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT applied_index FROM raft_state", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int64(st, 0), 5);
    sqlite3_finalize(st);
    kf_err err = {0};
    assert_int_equal(kfd_store_flush(s, &err), 0);
    assert_false(kfd_store_tx_open(s));
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT applied_index FROM raft_state", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int64(st, 0), 7);
    sqlite3_finalize(st);
    sqlite3_close(db);
    assert_int_equal(audit_count(s), 3);
    kfd_store_close(s);
    s = open_db("raft.db");
    assert_int_equal(kfd_store_applied_index(s), 7);
    kfd_store_close(s);
}

/* sqlite rolls an open transaction back by itself on an I/O error, a full disk or no memory (a
 * read's too): the deferred entries are gone, so the flush must not record their applied index
 * (alone, it would commit in autocommit mode and the entries would be skipped for good after a
 * restart). It fails the store instead, and the reopened store replays from the old index
 * (review rev41b H1); an apply after such a rollback fails the store too (M1). */
static void test_rolled_back_transaction_not_indexed(void **state)
{
    (void)state;
    kfd_store *s = open_db("rolled.db");
    assert_int_equal(apply_at(s, 5, "a"), 0);
    kfd_store_set_deferred(s, true);
    assert_int_equal(apply_at(s, 6, "b"), 0);
    assert_int_equal(apply_at(s, 7, "c"), 0);
    /* What sqlite does on SQLITE_IOERR/FULL/NOMEM within the transaction. */
    assert_int_equal(sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    kf_err err = {0};
    assert_int_not_equal(kfd_store_flush(s, &err), 0);
    assert_true(kfd_store_failed(s));
    kfd_store_close(s);
    s = open_db("rolled.db");
    assert_int_equal(kfd_store_applied_index(s), 5);
    assert_int_equal(audit_count(s), 1);
    /* M1: the next apply after the rollback, not a flush, finds it. */
    kfd_store_set_deferred(s, true);
    assert_int_equal(apply_at(s, 6, "b"), 0);
    assert_int_equal(sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    assert_int_not_equal(apply_at(s, 7, "c"), 0);
    assert_true(kfd_store_failed(s));
    kfd_store_close(s);
    s = open_db("rolled.db");
    assert_int_equal(kfd_store_applied_index(s), 5);
    assert_int_equal(audit_count(s), 1);
    kfd_store_close(s);
}

/* A snapshot image replaces another database whole: contents, chain head and applied index. */
static void test_serialize_and_replace(void **state)
{
    (void)state;
    kfd_store *a = open_db("snap-a.db");
    for (uint64_t i = 1; i <= 4; i++)
        assert_int_equal(apply_at(a, i, "a"), 0);
    unsigned char *img = NULL;
    size_t len = 0;
    kf_err err = {0};
    assert_int_equal(kfd_store_serialize(a, &img, &len, &err), 0);
    kfd_store *b = open_db("snap-b.db");
    assert_int_equal(apply_at(b, 1, "b"), 0);
    assert_int_equal(kfd_store_replace(b, img, len, &err), 0);
    sqlite3_free(img);
    assert_int_equal(kfd_store_applied_index(b), 4);
    assert_int_equal(audit_count(b), 4);
    /* The next command continues the chain it received. */
    assert_int_equal(apply_at(b, 5, "b"), 0);
    assert_int_equal(audit_count(b), 5);
    uint8_t junk[200] = {0};
    assert_int_equal(kfd_store_replace(b, junk, sizeof(junk), &err), -EINVAL);
    assert_false(kfd_store_failed(b));
    kfd_store_close(a);
    kfd_store_close(b);
}

/* A snapshot taken while a deferred transaction is open carries what was applied in it (the
 * serialize flushes first), and a replace while one is open ends it: the flush after it commits
 * nothing and the received index stands (review rev41b L1). */
static void test_snapshot_with_deferred_transaction(void **state)
{
    (void)state;
    kfd_store *a = open_db("defer-a.db");
    assert_int_equal(apply_at(a, 1, "a"), 0);
    kfd_store_set_deferred(a, true);
    assert_int_equal(apply_at(a, 2, "a"), 0);
    assert_int_equal(apply_at(a, 3, "a"), 0);
    assert_true(kfd_store_tx_open(a));
    unsigned char *img = NULL;
    size_t len = 0;
    kf_err err = {0};
    assert_int_equal(kfd_store_serialize(a, &img, &len, &err), 0);
    assert_false(kfd_store_tx_open(a)); /* flushed first */
    kfd_store *b = open_db("defer-b.db");
    kfd_store_set_deferred(b, true);
    assert_int_equal(apply_at(b, 1, "b"), 0);
    assert_int_equal(apply_at(b, 2, "b"), 0);
    assert_true(kfd_store_tx_open(b));
    assert_int_equal(kfd_store_replace(b, img, len, &err), 0);
    sqlite3_free(img);
    assert_false(kfd_store_tx_open(b));
    assert_int_equal(kfd_store_flush(b, &err), 0);
    assert_int_equal(kfd_store_applied_index(b), 3);
    assert_int_equal(audit_count(b), 3);
    /* The received chain goes on, deferred, and a reopen sees it once flushed. */
    assert_int_equal(apply_at(b, 4, "b"), 0);
    assert_int_equal(kfd_store_flush(b, &err), 0);
    kfd_store_close(b);
    b = open_db("defer-b.db");
    assert_int_equal(kfd_store_applied_index(b), 4);
    assert_int_equal(audit_count(b), 4);
    verify(b, true, 0);
    kfd_store_close(a);
    kfd_store_close(b);
}

/* A replica that installed a snapshot holds the sender's copy: it is no witness of a leader's
 * audit head until a checkpoint it applied live covers what it received (#17 review). */
static void coordinator_cert(const char *name, uint8_t **ret_der, size_t *ret_len, char serial[KF_SERIAL_MAX]);
/* A coordinator certificate (DER) whose serial the test does not need. */
static uint8_t *signer_cert(const char *name, size_t *ret_len)
{
    char serial[KF_SERIAL_MAX];
    uint8_t *der = NULL;
    coordinator_cert(name, &der, ret_len, serial);
    return der;
}
static int apply_checkpoint(kfd_store *s, const char *signer, uint8_t *cert, size_t cert_len);
static void test_restored_is_no_witness(void **state)
{
    (void)state;
    size_t c1_len = 0;
    uint8_t *c1 = signer_cert("w1", &c1_len);
    kfd_store *a = open_db("witness-a.db");
    for (uint64_t i = 1; i <= 3; i++)
        assert_int_equal(apply_at(a, i, "a"), 0);
    unsigned char *img = NULL;
    size_t len = 0;
    kf_err err = {0};
    assert_int_equal(kfd_store_serialize(a, &img, &len, &err), 0);
    kfd_store *b = open_db("witness-b.db");
    assert_true(kfd_store_audit_witness(b)); /* its own database */
    assert_int_equal(kfd_store_replace(b, img, len, &err), 0);
    sqlite3_free(img);
    assert_false(kfd_store_audit_witness(b));
    assert_false(kfd_store_audit_vouched(b));
    assert_int_equal(apply_at(b, 4, "b"), 0);
    assert_false(kfd_store_audit_witness(b)); /* records applied live vouch for nothing */
    kfd_store_close(b);
    b = open_db("witness-b.db");
    assert_false(kfd_store_audit_witness(b)); /* not forgotten at a restart (review rev17, R7) */
    assert_int_equal(apply_checkpoint(b, "w1", c1, c1_len), 0);
    assert_true(kfd_store_audit_witness(b)); /* a live checkpoint covers what it received */
    kfd_store_close(b);
    b = open_db("witness-b.db");
    assert_true(kfd_store_audit_witness(b)); /* and stays covered after a restart */
    OPENSSL_free(c1);
    kfd_store_close(a);
    kfd_store_close(b);
}

static int check_image(kfd_store *s, unsigned char *img, size_t len, const char *want)
{
    kfd_image_check ic;
    kf_err err = {0};
    int r = kfd_store_check_image(s, img, len, &ic, &err);
    kfd_audit_free_record(ic.newest);
    if (want != NULL && (r == 0 || strstr(err.msg, want) == NULL))
        fail_msg("check_image: r=%d '%s', want '%s'", r, err.msg, want);
    return r;
}

/* Issue #17: a snapshot replaces a replica's state only when its audit log verifies and extends
 * the replica's own; a poisoned image (an edited record with its hashes recomputed or not, a log
 * that forked, a shorter log) is refused, and the replica keeps what it had. */
static void test_snapshot_image_checked(void **state)
{
    (void)state;
    kfd_store *leader = open_db("img-leader.db"), *honest = open_db("img-honest.db"),
              *forked = open_db("img-forked.db"), *ahead = open_db("img-ahead.db");
    for (int i = 0; i < 5; i++) {
        assert_int_equal(append(leader, "release", "n1"), 0);
        assert_int_equal(append(honest, "release", "n1"), 0);
        assert_int_equal(append(forked, "release", i == 2 ? "n2" : "n1"), 0);
    }
    for (int i = 0; i < 9; i++)
        assert_int_equal(append(ahead, "release", "n1"), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(append(leader, "enroll", "n1"), 0);
    unsigned char *img = NULL;
    size_t len = 0;
    kf_err err = {0};
    assert_int_equal(kfd_store_serialize(leader, &img, &len, &err), 0);
    assert_int_equal(check_image(honest, img, len, NULL), 0);
    assert_int_equal(check_image(forked, img, len, "does not extend this replica's"), -EPERM);
    assert_int_equal(check_image(ahead, img, len, "fewer than this replica's"), -EPERM);
    sqlite3_free(img);

    /* The leader's database edited in place: one record's reason, then every root recomputed
     * would still leave the chain hash wrong; here the plain edit. */
    char path[300];
    snprintf(path, sizeof(path), "%s/img-leader.db", tmpdir);
    kfd_store_close(leader);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE audit SET reason = 'forged' WHERE seq = 7", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_int64 n = 0;
    img = sqlite3_serialize(db, "main", &n, 0);
    assert_non_null(img);
    assert_int_equal(check_image(honest, img, (size_t)n, "fails verification at seq 7"), -EPERM);
    /* The honest replica kept its state and still verifies. */
    verify(honest, true, 0);
    sqlite3_free(img);
    sqlite3_close(db);

    /* Issue #18: an image whose log verifies but which carries code (a trigger that would run
     * at every later apply, a view standing in for a table) is refused; without it, accepted. */
    static const char *const code[] = {
        "CREATE TRIGGER keep_n2 AFTER INSERT ON audit BEGIN DELETE FROM volumes; END",
        "CREATE VIEW shadow AS SELECT * FROM audit"};
    for (size_t i = 0; i < 2; i++) {
        char name[32];
        snprintf(name, sizeof(name), "img-code-%zu.db", i);
        kfd_store *coded = open_db(name);
        for (int k = 0; k < 5; k++)
            assert_int_equal(append(coded, "release", "n1"), 0);
        assert_int_equal(kfd_store_serialize(coded, &img, &len, &err), 0);
        assert_int_equal(check_image(honest, img, len, NULL), 0);
        sqlite3_free(img);
        kfd_store_close(coded);
        snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db, code[i], NULL, NULL, NULL), SQLITE_OK);
        img = sqlite3_serialize(db, "main", &n, 0);
        assert_non_null(img);
        assert_int_equal(check_image(honest, img, (size_t)n, i == 0 ? "holds a trigger (keep_n2)" : "holds a view (shadow)"),
                         -EPERM);
        sqlite3_free(img);
        sqlite3_close(db);
    }
    kfd_store_close(honest);
    kfd_store_close(forked);
    kfd_store_close(ahead);
}

static int cmp_id(const void *a, const void *b) { return strcmp((const char *)a, (const char *)b); }

/* Server-made request ids: valid, unique, and in creation order (so the audit log's request_id
 * index grows at its right edge), across many refills of the random pool. */
static void test_request_ids_time_ordered(void **state)
{
    (void)state;
    enum { N = 5000 };
    static char ids[N][33];
    for (int i = 0; i < N; i++) {
        kfd_new_request_id(ids[i]);
        assert_int_equal(strlen(ids[i]), 32);
        assert_true(kfd_request_id_valid(ids[i]));
        for (int j = 0; j < 32; j++)
            assert_non_null(strchr("0123456789abcdef", ids[i][j]));
        if (i > 0) {
            assert_true(strncmp(ids[i - 1], ids[i], 12) <= 0); /* the time prefix never goes back */
            assert_int_not_equal(strcmp(ids[i - 1], ids[i]), 0);
        }
    }
    /* the random part differs even within one millisecond: no two ids alike */
    qsort(ids, N, sizeof(ids[0]), cmp_id);
    for (int i = 1; i < N; i++)
        assert_int_not_equal(strcmp(ids[i - 1], ids[i]), 0);
}

/* Measured-boot records: the first attested enrollment's values are accepted (TOFU) and a later
 * enrollment never replaces them; a denial keeps what was seen; an operator's acceptance
 * replaces the values and clears the seen ones it took; malformed values are refused. */
static int enroll_attested(kfd_store *s, const char *vid, const char *pcrs)
{
    Keyfleet__V1__VolumeRef vol = KEYFLEET__V1__VOLUME_REF__INIT;
    vol.id = (char *)vid;
    vol.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2;
    vol.name = (char *)"data";
    Keyfleet__V1__AuditEntry e = audit("enroll", "n1", "");
    Keyfleet__V1__CmdEnrollVolume en = KEYFLEET__V1__CMD_ENROLL_VOLUME__INIT;
    en.volume = &vol;
    en.node = (char *)"n1";
    en.wrapped_key = (char *)"kf:local:v1:xyz";
    en.audit = &e;
    en.attest_tofu = (char *)pcrs;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME;
    cmd.enroll_volume = &en;
    kfd_apply_result res = {0};
    return kfd_store_apply(s, &cmd, &res, NULL);
}

static int attest_cmd_clock(kfd_store *s, const char *kind, const char *pcrs, int reset, int restart)
{
    Keyfleet__V1__AuditEntry e = audit("attest", "n1", "");
    Keyfleet__V1__Principal op = KEYFLEET__V1__PRINCIPAL__INIT;
    op.name = (char *)"alice";
    e.actor = &op;
    Keyfleet__V1__AttestClock clk = KEYFLEET__V1__ATTEST_CLOCK__INIT;
    clk.reset_count = (uint32_t)reset;
    clk.restart_count = (uint32_t)restart;
    Keyfleet__V1__CmdAttest c = KEYFLEET__V1__CMD_ATTEST__INIT;
    c.node = (char *)"n1";
    c.kind = (char *)kind;
    c.pcrs = (char *)pcrs;
    c.audit = &e;
    c.clock = reset >= 0 ? &clk : NULL;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST;
    cmd.attest = &c;
    kfd_apply_result res = {0};
    return kfd_store_apply(s, &cmd, &res, NULL);
}

static int attest_cmd(kfd_store *s, const char *kind, const char *pcrs)
{
    Keyfleet__V1__AuditEntry e = audit("attest", "n1", "");
    Keyfleet__V1__Principal op = KEYFLEET__V1__PRINCIPAL__INIT;
    op.name = (char *)"alice";
    e.actor = &op;
    Keyfleet__V1__CmdAttest c = KEYFLEET__V1__CMD_ATTEST__INIT;
    c.node = (char *)"n1";
    c.kind = (char *)kind;
    c.pcrs = (char *)pcrs;
    c.audit = &e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST;
    cmd.attest = &c;
    kfd_apply_result res = {0};
    kf_err err = {0};
    return kfd_store_apply(s, &cmd, &res, &err);
}

#define PCR_A "4=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define PCR_B "4=bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

static void test_attest_records(void **state)
{
    (void)state;
    kfd_store *s = open_db("attest.db");
    kfd_attest_record rec;
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), -ENOENT);
    /* A node that already has a volume (enrolled without a quote) gets no baseline by enrolling
     * another with one: trust on first use is only at its first enrollment (review of #16), and
     * an enrollment decided as the first where it is not is refused (review rev44b K7). */
    kfd_store *s0 = open_db("attest0.db");
    assert_int_equal(enroll_attested(s0, "vol-0", ""), 0);
    assert_int_equal(enroll_attested(s0, "vol-00", PCR_A), -ECANCELED);
    assert_int_equal(kfd_store_get_attest(s0, "n1", &rec), -ENOENT);
    bool has = false;
    assert_int_equal(kfd_store_node_has_volumes(s0, "n1", &has), 0);
    assert_true(has);
    assert_int_equal(kfd_store_node_has_volumes(s0, "n2", &has), 0);
    assert_false(has);
    kfd_store_close(s0);
    assert_int_equal(enroll_attested(s, "vol-1", PCR_A), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.accepted, PCR_A);
    assert_string_equal(rec.accepted_by, "tofu");
    /* A later enrollment decided as the first with other values does not replace them: only the
     * first is trusted, and it is refused (review rev44b K7). */
    assert_int_equal(enroll_attested(s, "vol-2", PCR_B), -ECANCELED);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.accepted, PCR_A);
    assert_int_equal(attest_cmd(s, "seen", PCR_B), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.accepted, PCR_A);
    assert_string_equal(rec.seen, PCR_B);
    assert_int_equal(attest_cmd(s, "accept", PCR_B), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.accepted, PCR_B);
    assert_string_equal(rec.accepted_by, "alice");
    assert_string_equal(rec.seen, "");
    assert_int_equal(attest_cmd(s, "accept", "4=zz"), -EINVAL);
    assert_int_equal(attest_cmd(s, "other", PCR_A), -EINVAL);
    kfd_store_close(s);
}

/* The TPM counters of a node's quotes (issue #16's review, D): the highest is recorded and never
 * lowered by a quote; the seen quote keeps its own; an operator's acceptance of a rolled-back
 * quote sets them. */
static void test_attest_clock(void **state)
{
    (void)state;
    kfd_store *s = open_db("attest-clock.db");
    kfd_attest_record rec;
    assert_int_equal(attest_cmd_clock(s, "seen", PCR_A, 3, 1), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_true(rec.has_clock);
    assert_int_equal(rec.reset_count, 3);
    assert_int_equal(rec.restart_count, 1);
    assert_true(rec.has_seen_clock);
    assert_int_equal(rec.seen_reset, 3);
    assert_int_equal(attest_cmd_clock(s, "seen", PCR_A, 3, 2), 0); /* a resume: restart goes up */
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.restart_count, 2);
    assert_int_equal(attest_cmd_clock(s, "seen", PCR_A, 5, 0), 0); /* a reboot: restart starts again */
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.reset_count, 5);
    assert_int_equal(rec.restart_count, 0);
    /* A lower pair (a rolled-back TPM) is kept as seen, never as the record. */
    assert_int_equal(attest_cmd_clock(s, "seen", PCR_B, 4, 9), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.reset_count, 5);
    assert_int_equal(rec.restart_count, 0);
    assert_int_equal(rec.seen_reset, 4);
    assert_int_equal(rec.seen_restart, 9);
    assert_int_equal(attest_cmd_clock(s, "seen", PCR_B, 5, 0), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.reset_count, 5);
    /* An enrollment's quote raises it too. */
    Keyfleet__V1__VolumeRef vol = KEYFLEET__V1__VOLUME_REF__INIT;
    vol.id = (char *)"vol-c";
    vol.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2;
    vol.name = (char *)"data";
    Keyfleet__V1__AuditEntry e = audit("enroll", "n1", "");
    Keyfleet__V1__AttestClock clk = KEYFLEET__V1__ATTEST_CLOCK__INIT;
    clk.reset_count = 7;
    Keyfleet__V1__CmdEnrollVolume en = KEYFLEET__V1__CMD_ENROLL_VOLUME__INIT;
    en.volume = &vol;
    en.node = (char *)"n1";
    en.wrapped_key = (char *)"kf:local:v1:xyz";
    en.audit = &e;
    en.attest_clock = &clk;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME;
    cmd.enroll_volume = &en;
    kfd_apply_result res = {0};
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.reset_count, 7);
    /* The operator accepts a rolled-back quote's values with its counters: those are the record. */
    assert_int_equal(attest_cmd_clock(s, "seen", PCR_B, 2, 0), 0);
    assert_int_equal(attest_cmd_clock(s, "accept", PCR_B, 2, 0), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.reset_count, 2);
    assert_string_equal(rec.seen, "");
    assert_false(rec.has_seen_clock);
    /* An acceptance without counters leaves them. */
    assert_int_equal(attest_cmd_clock(s, "seen", PCR_A, 3, 0), 0);
    assert_int_equal(attest_cmd_clock(s, "accept", PCR_A, -1, 0), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.reset_count, 3);
    kfd_store_close(s);
}

/* An attest command with a TPM clock, a hold, or an unhold (review rev17, A1). */
static int attest_cmd_full(kfd_store *s, const char *kind, const char *pcrs, int reset, uint64_t clock,
                           const char *hold, int64_t prev_held_at)
{
    Keyfleet__V1__AuditEntry e = audit("attest", "n1", "");
    Keyfleet__V1__AttestClock clk = KEYFLEET__V1__ATTEST_CLOCK__INIT;
    clk.reset_count = (uint32_t)reset;
    clk.clock = clock;
    clk.safe = true;
    clk.clock_known = true;
    Keyfleet__V1__CmdAttest c = KEYFLEET__V1__CMD_ATTEST__INIT;
    c.node = (char *)"n1";
    c.kind = (char *)kind;
    c.pcrs = (char *)pcrs;
    c.audit = &e;
    c.clock = reset >= 0 ? &clk : NULL;
    c.hold = (char *)(hold != NULL ? hold : "");
    c.hold_kind = (char *)(hold != NULL ? "tpm" : "");
    c.prev_held_at = prev_held_at;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST;
    cmd.attest = &c;
    kfd_apply_result res = {0};
    kf_err err = {0};
    return kfd_store_apply(s, &cmd, &res, &err);
}

/* The TPM clock is recorded with the counters, raised only; a hold keeps the first reason and
 * its quote's state without touching the record; unhold applies only to the hold it was made
 * for and makes the held state the record. */
static void test_attest_hold(void **state)
{
    (void)state;
    kfd_store *s = open_db("attest-hold.db");
    kfd_attest_record rec;
    assert_int_equal(attest_cmd_full(s, "seen", PCR_A, 3, 5000, NULL, 0), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_true(rec.has_tpm_clock);
    assert_int_equal(rec.clock, 5000);
    assert_int_equal(rec.clock_at, now_ts.seconds);
    assert_int_equal(attest_cmd_full(s, "seen", PCR_A, 3, 4000, NULL, 0), 0); /* lower clock: not recorded */
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.clock, 5000);
    assert_int_equal(attest_cmd_full(s, "seen", PCR_A, 3, 6000, NULL, 0), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.clock, 6000);
    assert_string_equal(rec.held, "");
    /* A hold: the record stays, the held state is kept, a second hold does not replace it. */
    assert_int_equal(attest_cmd_full(s, "seen", PCR_A, 4, 100, "clone", 0), 0);
    assert_int_equal(attest_cmd_full(s, "seen", PCR_B, 5, 200, "second", 0), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.held, "clone");
    assert_string_equal(rec.held_kind, "tpm");
    assert_int_equal(rec.held_at, now_ts.seconds);
    assert_true(rec.has_held_state && rec.has_held_clock);
    assert_int_equal(rec.held_reset, 4);
    assert_int_equal(rec.held_clock, 100);
    assert_int_equal(rec.reset_count, 3);
    assert_int_equal(rec.clock, 6000);
    /* A held node gets nothing at apply either (a request judged before the hold). */
    assert_int_equal(enroll_attested(s, "vol-held", ""), -EACCES);
    /* Accepting PCR values does not lift a TPM hold. */
    assert_int_equal(attest_cmd_full(s, "accept", PCR_B, -1, 0, NULL, 0), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.held, "clone");
    /* Unhold for another hold (its time) is refused and changes nothing. */
    assert_int_equal(attest_cmd_full(s, "unhold", "", -1, 0, NULL, now_ts.seconds - 1), -ESTALE);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.held, "clone");
    int64_t held_at = now_ts.seconds;
    now_ts.seconds += 86400; /* the operator lifts it a day later */
    assert_int_equal(attest_cmd_full(s, "unhold", "", -1, 0, NULL, held_at), 0);
    now_ts.seconds = held_at;
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.held, "");
    assert_false(rec.has_held_state);
    assert_int_equal(rec.reset_count, 4);
    assert_int_equal(rec.clock, 100);
    assert_int_equal(rec.clock_at, now_ts.seconds); /* the held quote's time, not the unhold's */
    assert_int_equal(enroll_attested(s, "vol-held", ""), 0);
    assert_int_equal(attest_cmd_full(s, "unhold", "", -1, 0, NULL, now_ts.seconds), -ESTALE); /* not held */
    kfd_store_close(s);
}

/* A coordinator certificate from a test CA, as DER; its serial in serial. */
static void coordinator_cert(const char *name, uint8_t **ret_der, size_t *ret_len, char serial[KF_SERIAL_MAX])
{
    char ca[300], cak[300], cert[300], key[300];
    snprintf(ca, sizeof(ca), "%s/ca.crt", tmpdir);
    snprintf(cak, sizeof(cak), "%s/ca.key", tmpdir);
    snprintf(cert, sizeof(cert), "%s/%s.crt", tmpdir, name);
    snprintf(key, sizeof(key), "%s/%s.key", tmpdir, name);
    kf_err err = {0};
    FILE *f = fopen(ca, "r");
    if (f != NULL)
        fclose(f);
    else
        assert_int_equal(kfctl_ca_create(ca, cak, "test CA", &err), 0);
    kfctl_cert_opts o = {.kind = KF_PEER_COORDINATOR, .name = name, .days = 30};
    assert_int_equal(kfctl_cert_issue(ca, cak, &o, cert, key, false, &err), 0);
    f = fopen(cert, "r");
    assert_non_null(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    kf_identity id;
    assert_int_equal(kf_identity_from_cert(x, &id, NULL), 0);
    memcpy(serial, id.serial, KF_SERIAL_MAX);
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    X509_free(x);
    assert_true(n > 0);
    *ret_der = der;
    *ret_len = (size_t)n;
}

/* A checkpoint of the store's head (its root changed with bad_root: the leader's log differs),
 * dated seconds (0: now_ts), signed (as far as the store looks) by cert. */
static int apply_checkpoint_at(kfd_store *s, const char *signer, uint8_t *cert, size_t cert_len, int64_t seconds,
                               bool bad_root);
static int state_check_mode;
/* The checkpoint's text: v1 (0), v2 signing this replica's own state note at its newest
 * checkpoint record (1), or that note changed (2): review rev17, the signed state root. */
static int signed_state_mode;
/* The leader asks no state note at the checkpoint (issue #29: skip_state_note). */
static bool skip_note_mode;

static int apply_checkpoint(kfd_store *s, const char *signer, uint8_t *cert, size_t cert_len)
{
    return apply_checkpoint_at(s, signer, cert, cert_len, 0, false);
}

static int apply_checkpoint_at(kfd_store *s, const char *signer, uint8_t *cert, size_t cert_len, int64_t seconds,
                               bool bad_root)
{
    kfd_audit_head h;
    kfd_store_audit_head(s, &h);
    kf_checkpoint cp;
    memset(&cp, 0, sizeof(cp));
    snprintf(cp.cluster, sizeof(cp.cluster), "fleet-test");
    cp.size = h.seq;
    memcpy(cp.root, h.root, sizeof(cp.root));
    memcpy(cp.chain, h.chain, sizeof(cp.chain));
    cp.root[0] ^= bad_root ? 1 : 0;
    cp.seconds = seconds != 0 ? seconds : now_ts.seconds;
    snprintf(cp.signer, sizeof(cp.signer), "%s", signer);
    if (signed_state_mode != 0) {
        cp.version = 2;
        kf_sha256_parts(cert, cert_len, NULL, 0, NULL, 0, cp.cert_hash);
        if (kfd_store_checkpoint_state(s, &cp.state_seq, cp.state, &cp.state_version) != 0)
            cp.state_seq = 0;
        cp.state[0] ^= signed_state_mode == 2 ? 1 : 0;
    }
    char text[KF_CHECKPOINT_TEXT_MAX];
    assert_true(kf_checkpoint_format(&cp, text, sizeof(text)) > 0);
    Keyfleet__V1__AuditEntry e = audit(KF_AUDIT_CHECKPOINT_ACTION, "", text);
    uint8_t sig[8] = {1};
    Keyfleet__V1__CmdCheckpoint c = KEYFLEET__V1__CMD_CHECKPOINT__INIT;
    c.text = text;
    c.signature = (ProtobufCBinaryData){sizeof(sig), sig};
    c.cert = (ProtobufCBinaryData){cert_len, cert};
    c.audit = &e;
    c.skip_state_note = skip_note_mode;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CHECKPOINT;
    cmd.checkpoint = &c;
    kfd_apply_result res;
    int r = kfd_store_apply(s, &cmd, &res, NULL);
    /* The leader's CmdStateCheck that follows (review rev17, R2): its digest as this store's, or
     * another (state_check_mode 1), or none (2). */
    uint8_t st[KFD_HASH_LEN];
    Keyfleet__V1__CmdStateCheck sc = KEYFLEET__V1__CMD_STATE_CHECK__INIT;
    if (r == 0 && state_check_mode != 2 &&
        kfd_store_checkpoint_state(s, &sc.seq, st, &sc.version) == 0) {
        st[0] ^= state_check_mode == 1 ? 1 : 0;
        sc.state = (ProtobufCBinaryData){sizeof(st), st};
        Keyfleet__V1__StateCommand scmd = KEYFLEET__V1__STATE_COMMAND__INIT;
        scmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_STATE_CHECK;
        scmd.state_check = &sc;
        assert_int_equal(kfd_store_apply(s, &scmd, &res, NULL), 0);
    }
    return r;
}

/* Review of #17: the head a replica notes at a leader's check (F1), and checkpoints by a revoked
 * certificate or a removed coordinator refused at apply, on every replica alike (F3). */
static void test_head_check_and_checkpoint_signers(void **state)
{
    (void)state;
    kfd_store *s = open_db("signers.db");
    uint8_t *c1 = NULL, *c2 = NULL;
    size_t c1_len = 0, c2_len = 0;
    char c1_serial[KF_SERIAL_MAX], c2_serial[KF_SERIAL_MAX];
    coordinator_cert("c1", &c1, &c1_len, c1_serial);
    coordinator_cert("c2", &c2, &c2_len, c2_serial);
    assert_int_equal(append(s, "release", "web-01"), 0);
    assert_int_equal(append(s, "release", "web-02"), 0);

    Keyfleet__V1__CmdAuditHeadCheck hc = KEYFLEET__V1__CMD_AUDIT_HEAD_CHECK__INIT;
    hc.id = 7;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_AUDIT_HEAD_CHECK;
    cmd.audit_head_check = &hc;
    kfd_apply_result res;
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    assert_int_equal(append(s, "release", "web-03"), 0);
    kfd_audit_head at, now;
    assert_int_equal(kfd_store_audit_head_at_check(s, 7, &at), 0);
    assert_int_equal(at.seq, 2); /* the head when the check was applied, not now */
    assert_int_equal(kfd_store_audit_head_at_check(s, 8, &at), -ENOENT);

    assert_false(kfd_store_audit_vouched(s));
    assert_int_equal(apply_checkpoint(s, "c1", c1, c1_len), 0);
    assert_true(kfd_store_audit_vouched(s)); /* opened empty: the checkpoint covers all it held */

    /* c1's certificate is denylisted: its next checkpoint is refused and changes nothing. */
    Keyfleet__V1__AuditEntry e = audit("cert_revoke", "", "certificate of c1 revoked");
    Keyfleet__V1__CmdRevokeCert rc = KEYFLEET__V1__CMD_REVOKE_CERT__INIT;
    rc.serial = c1_serial;
    rc.kind = (char *)"coordinator";
    rc.name = (char *)"c1";
    rc.audit = &e;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_CERT;
    cmd.revoke_cert = &rc;
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    kfd_store_audit_head(s, &at);
    assert_int_equal(apply_checkpoint(s, "c1", c1, c1_len), -EPERM);
    kfd_store_audit_head(s, &now);
    assert_int_equal(now.seq, at.seq);

    /* c2 taken out of the cluster: refused; added back: accepted. */
    assert_int_equal(append(s, "cluster_remove", ""), 0); /* no "member" reason: not about c2 */
    assert_int_equal(apply_checkpoint(s, "c2", c2, c2_len), 0);
    assert_int_equal(append_reason(s, "cluster_remove", "", "member c2"), 0);
    assert_int_equal(apply_checkpoint(s, "c2", c2, c2_len), -EPERM);
    assert_int_equal(append_reason(s, "cluster_add", "", "member c2 raft=127.0.0.1:7001 rpc=127.0.0.1:7000"), 0);
    assert_int_equal(apply_checkpoint(s, "c2", c2, c2_len), 0);
    /* A certificate that does not name the text's signer. */
    assert_int_equal(apply_checkpoint(s, "c3", c2, c2_len), -EPERM);
    verify(s, true, 0);

    OPENSSL_free(c1);
    OPENSSL_free(c2);
    kfd_store_close(s);
}

static void revoke_cert_row(const char *db, const char *serial)
{
    char path[300], sql[300];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, db);
    snprintf(sql, sizeof(sql), "INSERT INTO revoked_certs (serial, kind, name, reason, revoked_at) VALUES ('%s', "
             "'coordinator', 'c4', 'forged', 0)", serial);
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(path, &h), SQLITE_OK);
    sqlite3_busy_timeout(h, 5000);
    char *msg = NULL;
    if (sqlite3_exec(h, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s", msg);
    sqlite3_close(h);
}

/* Second review of #17. F3: a replica whose revoked_certs was edited (the signer denylisted
 * there alone) and whose log differs diverges; the refusal does not turn the mismatch into a
 * skip. F4: a checkpoint dated before the one before it is refused on every replica. F2: one
 * dated ahead of this clock beyond 300 s fails closed (diverged, still recorded); at the next
 * open it is not judged by the clock again, and a checkpoint keeping its time is fine. F9: a
 * coordinator added back signs only with a certificate issued after its removal. */
/* Review rev17, R5: the store asks its verifier (core/checkpoint.c: signature and chain) at
 * apply; a checkpoint it refuses changes nothing and vouches for nothing. */
static int verifier_calls;
static int refuse_checkpoint(void *arg, const Keyfleet__V1__CmdCheckpoint *c, kf_err *err)
{
    (void)arg;
    verifier_calls++;
    assert_non_null(strstr(c->text, "signer c5"));
    return kf_err_set(err, -EPERM, "checkpoint signature does not verify");
}

static int accept_checkpoint(void *arg, const Keyfleet__V1__CmdCheckpoint *c, kf_err *err)
{
    (void)arg, (void)c, (void)err;
    verifier_calls++;
    return 0;
}

static void test_checkpoint_verifier_at_apply(void **state)
{
    (void)state;
    uint8_t *c5 = NULL;
    size_t c5_len = 0;
    char c5_serial[KF_SERIAL_MAX];
    coordinator_cert("c5", &c5, &c5_len, c5_serial);
    kfd_store *s = open_db("r5.db");
    assert_int_equal(append(s, "release", "web-01"), 0);
    kfd_audit_head before, after;
    kfd_store_audit_head(s, &before);
    kfd_store_set_checkpoint_verifier(s, refuse_checkpoint, NULL);
    verifier_calls = 0;
    assert_int_equal(apply_checkpoint(s, "c5", c5, c5_len), -EPERM);
    assert_int_equal(verifier_calls, 1);
    kfd_store_audit_head(s, &after);
    assert_int_equal(after.seq, before.seq); /* nothing recorded */
    assert_int_equal(after.checkpoint_seq, 0);
    assert_false(kfd_store_audit_vouched(s));
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0);
    /* The head is still compared first: a differing head is disputed even when the signature fails
     * (review rev17c, C1: the leader's word alone does not diverge it; a head round decides). */
    assert_int_equal(apply_checkpoint_at(s, "c5", c5, c5_len, 0, true), -EPERM);
    assert_int_equal(kfd_store_audit_disputed(s, NULL), 1);
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0);
    kfd_store_close(s);

    s = open_db("r5b.db");
    assert_int_equal(append(s, "release", "web-01"), 0);
    kfd_store_set_checkpoint_verifier(s, accept_checkpoint, NULL);
    verifier_calls = 0;
    assert_int_equal(apply_checkpoint(s, "c5", c5, c5_len), 0);
    assert_int_equal(verifier_calls, 1);
    assert_true(kfd_store_audit_vouched(s));
    kfd_store_close(s);
    OPENSSL_free(c5);
}

/* A verifier that refuses a signature whose first byte is 2 (the test's replaced blob). */
static int refuse_sig_2(void *arg, const Keyfleet__V1__CmdCheckpoint *c, kf_err *err)
{
    (void)arg;
    verifier_calls++;
    if (c->signature.len > 0 && c->signature.data[0] == 2)
        return kf_err_set(err, -EPERM, "checkpoint signature does not verify");
    return 0;
}

/* Review rev17c, C2: a snapshot image's older checkpoints are verified too, not only the newest:
 * an image whose first checkpoint's signature blob was replaced (outside the hash chain, so the
 * log still verifies) would be installed, and the replica would diverge at its next start (R6). */
static void test_snapshot_old_checkpoint_signature(void **state)
{
    (void)state;
    size_t c7_len = 0;
    uint8_t *c7 = signer_cert("c9", &c7_len);
    kfd_store *leader = open_db("img-sig-leader.db"), *honest = open_db("img-sig-honest.db");
    assert_int_equal(append(leader, "release", "n1"), 0);
    assert_int_equal(append(honest, "release", "n1"), 0);
    assert_int_equal(apply_checkpoint(leader, "c9", c7, c7_len), 0); /* record 2 */
    assert_int_equal(append(leader, "release", "n1"), 0);
    assert_int_equal(apply_checkpoint(leader, "c9", c7, c7_len), 0); /* record 4 */
    kfd_store_close(leader);
    char path[300];
    snprintf(path, sizeof(path), "%s/img-sig-leader.db", tmpdir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE audit_checkpoints SET signature = x'02' WHERE seq = 2", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_int64 n = 0;
    unsigned char *img = sqlite3_serialize(db, "main", &n, 0);
    assert_non_null(img);
    kfd_store_set_checkpoint_verifier(honest, refuse_sig_2, NULL);
    verifier_calls = 0;
    assert_int_equal(check_image(honest, img, (size_t)n, "checkpoint record 2: checkpoint signature does not verify"),
                     -EPERM);
    sqlite3_free(img);
    sqlite3_close(db);
    kfd_store_close(honest);
    OPENSSL_free(c7);
}

/* Review rev17, R2 (the rest): a checkpoint vouches for a replica only once the leader's state
 * check for it matched this replica's digest there; a different one diverges it. */
static void test_checkpoint_state_compared(void **state)
{
    (void)state;
    size_t c6_len = 0;
    uint8_t *c6 = signer_cert("c6", &c6_len);
    kfd_store *s = open_db("cs-a.db");
    assert_int_equal(append(s, "release", "web-01"), 0);
    uint8_t st[KFD_HASH_LEN];
    uint64_t st_seq = 0;
    uint32_t st_version = 0;
    assert_int_equal(kfd_store_checkpoint_state(s, &st_seq, st, &st_version), -ENOENT);
    state_check_mode = 2; /* no state check follows */
    assert_int_equal(apply_checkpoint(s, "c6", c6, c6_len), 0);
    assert_false(kfd_store_audit_vouched(s)); /* its state not compared */
    assert_int_equal(kfd_store_checkpoint_state(s, &st_seq, st, &st_version), 0);
    assert_int_equal(st_seq, 2);
    assert_int_equal(st_version, kfd_store_state_version());
    /* A check for another record (noted before a restart, say) compares nothing. */
    Keyfleet__V1__CmdStateCheck sc = KEYFLEET__V1__CMD_STATE_CHECK__INIT;
    sc.seq = 1;
    sc.state = (ProtobufCBinaryData){sizeof(st), st};
    sc.version = st_version;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_STATE_CHECK;
    cmd.state_check = &sc;
    kfd_apply_result res;
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    assert_false(kfd_store_audit_vouched(s));
    /* Unvouched (a membership change waits for its round: core/checkpoint.c) with records after
     * the checkpoint, the state check of that checkpoint, still in flight, does not vouch again
     * (review rev46). */
    assert_int_equal(append(s, "cluster_change", ""), 0);
    kfd_store_audit_unvouch(s);
    sc.seq = 2; /* the leader's, matching */
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    assert_false(kfd_store_audit_vouched(s));
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0);
    kfd_store_close(s);

    s = open_db("cs-c.db");
    assert_int_equal(append(s, "release", "web-01"), 0);
    state_check_mode = 2;
    assert_int_equal(apply_checkpoint(s, "c6", c6, c6_len), 0);
    state_check_mode = 0;
    assert_int_equal(kfd_store_checkpoint_state(s, &st_seq, st, &st_version), 0);
    sc.seq = st_seq; /* the leader's, matching */
    sc.state = (ProtobufCBinaryData){sizeof(st), st};
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    assert_true(kfd_store_audit_vouched(s));
    kfd_store_close(s);

    s = open_db("cs-b.db");
    assert_int_equal(append(s, "release", "web-01"), 0);
    state_check_mode = 1; /* the leader's state differs from this replica's */
    assert_int_equal(apply_checkpoint(s, "c6", c6, c6_len), 0);
    state_check_mode = 0;
    const char *why = NULL;
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0); /* the leader's word alone (C1) */
    assert_int_equal(kfd_store_audit_disputed(s, &why), 2);
    assert_non_null(strstr(why, "replicated state"));
    assert_false(kfd_store_audit_vouched(s));
    kfd_store_close(s);
    OPENSSL_free(c6);
}

/* Review rev17, the signed state root: a v2 checkpoint signs the leader's state digest at the
 * checkpoint record before it; a replica that noted another there diverges (the unsigned
 * CmdStateCheck aside), one that noted the same does not. */
static void test_signed_state_root(void **state)
{
    (void)state;
    size_t c7_len = 0;
    uint8_t *c7 = signer_cert("c7", &c7_len);
    kfd_store *s = open_db("ssr.db");
    assert_int_equal(append(s, "release", "web-01"), 0);
    signed_state_mode = 1; /* nothing noted yet: "state none" */
    assert_int_equal(apply_checkpoint(s, "c7", c7, c7_len), 0);
    assert_int_equal(append(s, "release", "web-01"), 0);
    assert_int_equal(apply_checkpoint(s, "c7", c7, c7_len), 0); /* signs the note at record 2 */
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0);
    Keyfleet__V1__AuditRecord *r = NULL;
    assert_int_equal(kfd_store_get_checkpoint(s, 0, &r), 0);
    assert_non_null(strstr(r->reason, "keyfleet-audit-checkpoint/v2\n"));
    assert_non_null(strstr(r->reason, "\nstate 2 "));
    kfd_audit_free_record(r);
    /* VerifyAudit tells its own note where the newest checkpoint signed one. */
    Keyfleet__V1__VerifyAuditResponse vr = KEYFLEET__V1__VERIFY_AUDIT_RESPONSE__INIT;
    char problem[200];
    assert_int_equal(kfd_store_verify_audit(s, &vr, problem, sizeof(problem)), 0);
    assert_int_equal(vr.state_seq, 2);
    assert_int_equal(vr.state.len, KFD_HASH_LEN);
    assert_int_equal(append(s, "release", "web-01"), 0);
    signed_state_mode = 2; /* the leader's signed state at record 4 differs from this replica's */
    assert_int_equal(apply_checkpoint(s, "c7", c7, c7_len), 0);
    signed_state_mode = 0;
    const char *why = NULL;
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0); /* one signer's word alone (C1) */
    assert_int_equal(kfd_store_audit_disputed(s, &why), 4);
    assert_non_null(strstr(why, "differs from the state root c7 signed"));
    kfd_store_close(s);
    OPENSSL_free(c7);
}

/* Issue #29: a checkpoint whose leader asked no state note scans nothing on any replica; the
 * newest note stays what a state check compares and what the next checkpoint signs. The leader
 * waits between notes 50 times what the last scan cost (at least 0.5 s), times a random factor in
 * [0.5, 1.5), at most 10 s. */
static void test_state_note_skipped(void **state)
{
    (void)state;
    size_t c8_len = 0;
    uint8_t *c8 = signer_cert("c8", &c8_len);
    kfd_store *s = open_db("skip-note.db");
    assert_int_equal(append(s, "release", "web-01"), 0);
    assert_int_equal(apply_checkpoint(s, "c8", c8, c8_len), 0); /* record 2, noted and checked */
    assert_true(kfd_store_audit_vouched(s));
    uint8_t st[KFD_HASH_LEN], at2[KFD_HASH_LEN];
    uint64_t st_seq = 0;
    uint32_t st_version = 0;
    assert_int_equal(kfd_store_checkpoint_state(s, &st_seq, at2, &st_version), 0);
    assert_int_equal(st_seq, 2);
    assert_int_equal(append(s, "release", "web-02"), 0);
    skip_note_mode = true;
    state_check_mode = 2;
    assert_int_equal(apply_checkpoint(s, "c8", c8, c8_len), 0); /* record 4, not noted */
    skip_note_mode = false;
    state_check_mode = 0;
    assert_int_equal(kfd_store_checkpoint_state(s, &st_seq, st, &st_version), 0);
    assert_int_equal(st_seq, 2);
    assert_memory_equal(st, at2, sizeof(st));
    assert_int_equal(kfd_store_state_note_at(s, 4, st, &st_version), -ENOENT);
    /* The next checkpoint signs the note at record 2 and notes its own. */
    assert_int_equal(append(s, "release", "web-03"), 0);
    signed_state_mode = 1;
    assert_int_equal(apply_checkpoint(s, "c8", c8, c8_len), 0); /* record 6 */
    signed_state_mode = 0;
    assert_int_equal(kfd_store_audit_disputed(s, NULL), 0);
    Keyfleet__V1__AuditRecord *r = NULL;
    assert_int_equal(kfd_store_get_checkpoint(s, 0, &r), 0);
    assert_non_null(strstr(r->reason, "\nstate 2 "));
    kfd_audit_free_record(r);
    assert_int_equal(kfd_store_checkpoint_state(s, &st_seq, st, &st_version), 0);
    assert_int_equal(st_seq, 6);
    kfd_store_close(s);
    OPENSSL_free(c8);
    /* The gap: 50 times the scan, at least 0.5 s, times [0.5, 1.5) by the draw, at most 10 s. */
    assert_int_equal(kfd_state_note_gap_ms(0, 512), 500);
    assert_int_equal(kfd_state_note_gap_ms(0, 0), 250);
    assert_int_equal(kfd_state_note_gap_ms(0, 1023), 749);
    assert_int_equal(kfd_state_note_gap_ms(9000000, 512), 500);     /* 9 ms: the least */
    assert_int_equal(kfd_state_note_gap_ms(35000000, 512), 1750);   /* 35 ms: 2% of the time */
    assert_int_equal(kfd_state_note_gap_ms(35000000, 1024 + 0), 875);
    assert_int_equal(kfd_state_note_gap_ms(150000000, 1023), 10000); /* 150 ms x 50 x 1.5: at most 10 s */
    assert_int_equal(kfd_state_note_gap_ms(10000000000ULL, 0), 5000);
    assert_int_equal(kfd_state_note_gap_ms(10000000000ULL, 1023), 10000);
}

/* Review rev42, S4: which checkpoints note the state. The first does; then none until the gap has
 * passed; a checkpoint that asked for a note and made none, and a new term, make the next note. */
static void test_note_schedule(void **state)
{
    (void)state;
    kfd_note_schedule s = {0};
    const uint64_t cost = 0; /* the least gap: 500 ms x [0.5, 1.5) */
    assert_true(kfd_note_schedule_propose(&s, 1000, cost, 512)); /* the first one notes */
    assert_int_equal(s.due_at, 1500);
    assert_false(kfd_note_schedule_propose(&s, 1200, cost, 512)); /* within the gap: skipped */
    assert_false(s.inflight);
    kfd_note_schedule_missed(&s); /* a skipped checkpoint that fails asks for nothing */
    assert_false(kfd_note_schedule_propose(&s, 1499, cost, 512));
    assert_true(kfd_note_schedule_propose(&s, 1500, cost, 0)); /* the gap has passed */
    assert_int_equal(s.due_at, 1750);
    kfd_note_schedule_missed(&s); /* it failed, or the leader's own scan did */
    assert_true(kfd_note_schedule_propose(&s, 1510, cost, 512)); /* so the next one notes */
    assert_false(kfd_note_schedule_propose(&s, 1600, cost, 512));
    kfd_note_schedule_new_term(&s); /* a new leader's first checkpoint notes */
    assert_true(kfd_note_schedule_propose(&s, 1610, cost, 512));
    /* The gap follows the last scan's cost: 35 ms scanned, 1.75 s at the middle draw. */
    assert_false(kfd_note_schedule_propose(&s, 2000, 35000000, 512));
    assert_true(kfd_note_schedule_propose(&s, 2110, 35000000, 512));
    assert_int_equal(s.due_at, 2110 + 1750);
}

/* Review rev17, R2: the state digest changes with an edit of any replicated table outside the
 * audit log, not with the audit log or the order rows were written in. */
/* An edit behind the store's back (the attacker of #17 with write access to one database). */
static void edit_db(const char *db, const char *sql)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, db);
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(path, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
}

/* The signer check reads the membership records at every checkpoint: through the partial index,
 * never by a scan of the whole audit log (issue #29: two full scans per checkpoint). */
static void test_membership_read_indexed(void **state)
{
    (void)state;
    kfd_store *s = open_db("member-plan.db");
    sqlite3_stmt *member = kfd_store_stmt(s, ST_MEMBER_LAST);
    char *sql = sqlite3_mprintf("EXPLAIN QUERY PLAN %s", sqlite3_sql(member));
    sqlite3_stmt *plan = NULL;
    assert_int_equal(sqlite3_prepare_v2(s->db, sql, -1, &plan, NULL), SQLITE_OK);
    int steps = 0, indexed = 0;
    while (sqlite3_step(plan) == SQLITE_ROW) {
        const char *detail = (const char *)sqlite3_column_text(plan, 3);
        steps++;
        if (strstr(detail, "SCAN audit") != NULL || strstr(detail, "SEARCH audit") != NULL) {
            print_message("plan: %s\n", detail);
            assert_non_null(strstr(detail, "USING INDEX audit_membership"));
            indexed++;
        }
    }
    assert_int_equal(indexed, 2); /* the query and its subquery */
    assert_true(steps >= 2);
    sqlite3_finalize(plan);
    sqlite3_free(sql);
    kfd_store_close(s);
}

static void test_state_digest(void **state)
{
    (void)state;
    kfd_store *a = open_db("sd-a.db"), *b = open_db("sd-b.db");
    uint8_t da[KFD_HASH_LEN], db[KFD_HASH_LEN];
    assert_int_equal(kfd_store_state_digest(a, da), 0);
    assert_int_equal(kfd_store_state_digest(b, db), 0);
    assert_memory_equal(da, db, sizeof(da));
    assert_int_equal(append(a, "release", "web-01"), 0); /* the audit log is not in it */
    assert_int_equal(kfd_store_state_digest(a, da), 0);
    assert_memory_equal(da, db, sizeof(da));
    kfd_store_close(a);
    kfd_store_close(b);
    edit_db("sd-a.db", "INSERT INTO nodes (name, revoked) VALUES ('n2', 1);"
                       "INSERT INTO nodes (name, revoked) VALUES ('n1', 1);");
    edit_db("sd-b.db", "INSERT INTO nodes (name, revoked) VALUES ('n1', 1);"
                       "INSERT INTO nodes (name, revoked) VALUES ('n2', 1);");
    a = open_db("sd-a.db");
    b = open_db("sd-b.db");
    assert_int_equal(kfd_store_state_digest(a, da), 0);
    assert_int_equal(kfd_store_state_digest(b, db), 0);
    assert_memory_equal(da, db, sizeof(da)); /* the same rows, written in another order */
    kfd_store_close(b);
    edit_db("sd-b.db", "UPDATE nodes SET revoked = 0 WHERE name = 'n1'");
    b = open_db("sd-b.db");
    assert_int_equal(kfd_store_state_digest(b, db), 0);
    assert_memory_not_equal(da, db, sizeof(da)); /* a revocation undone */
    kfd_store_close(a);
    kfd_store_close(b);
    /* A table a later migration adds is in it without being listed (review rev17, R2). Made
     * on the open handle: a database holding a table no migration makes does not open (C4). */
    b = open_db("sd-b.db");
    assert_int_equal(sqlite3_exec(b->db, "CREATE TABLE later_table (k TEXT)", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(kfd_store_state_digest(b, da), 0);
    assert_int_equal(sqlite3_exec(b->db, "INSERT INTO later_table (k) VALUES ('x')", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(kfd_store_state_digest(b, db), 0);
    assert_memory_not_equal(da, db, sizeof(da));
    kfd_store_close(b);
}

/* Review rev17c, C1: a commit by another process into a running replica's database (a table
 * edited under it) disputes it at its next apply; a disputed replica's VerifyAudit is not ok, its
 * head is vouched for by nothing, and only a majority (kfd_store_settle_dispute) ends it. */
static void test_foreign_write_disputed(void **state)
{
    (void)state;
    kfd_store *s = open_db("c1.db");
    assert_int_equal(append(s, "release", "web-01"), 0);
    assert_int_equal(kfd_store_audit_disputed(s, NULL), 0);
    revoke_cert_row("c1.db", "0badc0de");
    assert_int_equal(append(s, "release", "web-01"), 0);
    const char *why = NULL;
    assert_int_not_equal(kfd_store_audit_disputed(s, &why), 0);
    assert_non_null(strstr(why, "another process committed"));
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0);
    assert_false(kfd_store_audit_vouched(s));
    assert_int_equal(kfd_store_disputes_total(s), 1);
    Keyfleet__V1__VerifyAuditResponse vr = KEYFLEET__V1__VERIFY_AUDIT_RESPONSE__INIT;
    char problem[300];
    assert_int_equal(kfd_store_verify_audit(s, &vr, problem, sizeof(problem)), 0);
    assert_false(vr.ok);
    assert_non_null(strstr(problem, "disputed"));
    /* A round needs a head check applied since the dispute. */
    uint64_t id = 0;
    kfd_audit_head own;
    assert_int_equal(kfd_store_dispute_check(s, &id, &own), -ENOENT);
    Keyfleet__V1__CmdAuditHeadCheck hc = KEYFLEET__V1__CMD_AUDIT_HEAD_CHECK__INIT;
    hc.id = 77;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_AUDIT_HEAD_CHECK;
    cmd.audit_head_check = &hc;
    kfd_apply_result res;
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    assert_int_equal(kfd_store_dispute_check(s, &id, &own), 0);
    assert_int_equal(id, 77);
    assert_true(kfd_store_answers_withheld(s));
    kfd_store_settle_dispute(s, "majority");
    assert_int_equal(kfd_store_audit_disputed(s, NULL), 0);
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0);
    assert_false(kfd_store_answers_withheld(s));
    /* The same edit again: disputed again, and (review rev17d, D2) a majority holding the same
     * state no longer settles it: a second foreign commit makes the replica diverge. */
    revoke_cert_row("c1.db", "0badc0df");
    assert_int_equal(append(s, "release", "web-01"), 0);
    assert_int_not_equal(kfd_store_audit_disputed(s, NULL), 0);
    kfd_store_settle_dispute(s, "majority");
    assert_int_equal(kfd_store_audit_disputed(s, NULL), 0);
    why = NULL;
    assert_int_not_equal(kfd_store_audit_diverged(s, &why), 0);
    assert_non_null(strstr(why, "not keyfleetd's alone"));
    assert_true(kfd_store_answers_withheld(s));
    /* A diverged replica is never disputed. */
    revoke_cert_row("c1.db", "0badc0e0");
    assert_int_equal(append(s, "release", "web-01"), 0);
    assert_int_equal(kfd_store_audit_disputed(s, NULL), 0);
    kfd_store_close(s);
    /* The only voter has no majority to ask: logged, not disputed. */
    s = open_db("c1-solo.db");
    kfd_store_set_sole_voter(s, true);
    revoke_cert_row("c1-solo.db", "0badc0de");
    assert_int_equal(append(s, "release", "web-01"), 0);
    assert_int_equal(kfd_store_audit_disputed(s, NULL), 0);
    kfd_store_close(s);
}

static void test_checkpoint_apply_order(void **state)
{
    (void)state;
    uint8_t *c4 = NULL;
    size_t c4_len = 0;
    char c4_serial[KF_SERIAL_MAX];
    coordinator_cert("c4", &c4, &c4_len, c4_serial);

    kfd_store *s = open_db("f3.db");
    assert_int_equal(append(s, "release", "web-01"), 0);
    revoke_cert_row("f3.db", c4_serial);
    kfd_store_data_version_reset(s); /* the row stands for a replicated revocation here */
    assert_int_equal(apply_checkpoint(s, "c4", c4, c4_len), -EPERM); /* same log: refused, no more */
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0);
    assert_int_equal(kfd_store_audit_disputed(s, NULL), 0);
    assert_int_equal(apply_checkpoint_at(s, "c4", c4, c4_len, 0, true), -EPERM);
    const char *why = NULL;
    assert_int_equal(kfd_store_audit_disputed(s, &why), 1);
    assert_non_null(strstr(why, "signed head at 1 differs"));
    kfd_store_close(s);

    s = open_db("f4.db");
    int64_t now = (int64_t)time(NULL);
    assert_int_equal(append(s, "release", "web-01"), 0);
    assert_int_equal(apply_checkpoint_at(s, "c4", c4, c4_len, now - 10, false), 0);
    assert_int_equal(append(s, "release", "web-02"), 0);
    kfd_audit_head before, after;
    kfd_store_audit_head(s, &before);
    /* Back in time by a signer whose certificate covered the date before (review rev17, R3; the
     * refusal of one whose certificate had expired by then: test_audit_check). */
    assert_int_equal(apply_checkpoint_at(s, "c4", c4, c4_len, now - 20, false), 0);
    kfd_store_audit_head(s, &after);
    assert_int_equal(after.seq, before.seq + 1);
    assert_int_equal(append(s, "release", "web-02"), 0);
    assert_int_equal(apply_checkpoint_at(s, "c4", c4, c4_len, now - 20, false), 0); /* the same time */
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0);

    /* F2 */
    assert_int_equal(append(s, "release", "web-03"), 0);
    assert_int_equal(apply_checkpoint_at(s, "c4", c4, c4_len, now + 200, false), 0); /* within 300 s */
    assert_int_equal(append(s, "release", "web-04"), 0);
    assert_int_equal(apply_checkpoint_at(s, "c4", c4, c4_len, now + 3600, false), 0);
    kfd_store_audit_head(s, &after);
    assert_int_equal(kfd_store_audit_diverged(s, &why), after.seq);
    assert_non_null(strstr(why, "ahead of this replica's clock"));
    kfd_store_close(s);
    s = open_db("f4.db");
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0);
    verify(s, true, 0);
    assert_int_equal(append(s, "release", "web-05"), 0);
    assert_int_equal(apply_checkpoint_at(s, "c4", c4, c4_len, now + 3600, false), 0); /* kept time */
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0);
    kf_checkpoint newest;
    assert_int_equal(kfd_store_newest_checkpoint(s, &newest), 0);
    assert_int_equal(newest.seconds, now + 3600);
    assert_int_equal(append(s, "release", "web-06"), 0);
    assert_int_equal(apply_checkpoint_at(s, "c4", c4, c4_len, now + 3601, false), 0);
    assert_true(kfd_store_audit_diverged(s, NULL) != 0);
    kfd_store_close(s);

    /* Back in time from a date past the signer's notAfter (review rev17, R3): refused, nothing
     * recorded. (The first is recorded here only because this store verifies no chain.) */
    s = open_db("f4b.db");
    assert_int_equal(append(s, "release", "web-01"), 0);
    assert_int_equal(apply_checkpoint_at(s, "c4", c4, c4_len, now + 31 * 86400, false), 0);
    assert_int_equal(append(s, "release", "web-02"), 0);
    kfd_store_audit_head(s, &before);
    assert_int_equal(apply_checkpoint_at(s, "c4", c4, c4_len, now, false), -EPERM);
    kfd_store_audit_head(s, &after);
    assert_int_equal(after.seq, before.seq);
    kfd_store_close(s);

    /* F9: removed at now + 600 (after c1's certificate was issued), added back. */
    s = open_db("f9.db");
    Keyfleet__V1__Timestamp later = now_ts;
    later.seconds = now + 600;
    Keyfleet__V1__AuditEntry e = audit("cluster_remove", "", "member c4");
    e.time = &later;
    Keyfleet__V1__CmdAppendAudit ca = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
    ca.audit = &e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
    cmd.append_audit = &ca;
    kfd_apply_result res;
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
    assert_int_equal(append_reason(s, "cluster_add", "", "member c4 raft=127.0.0.1:7001 rpc=127.0.0.1:7000"), 0);
    kfd_store_audit_head(s, &before);
    assert_int_equal(apply_checkpoint(s, "c4", c4, c4_len), -EPERM);
    kfd_store_audit_head(s, &after);
    assert_int_equal(after.seq, before.seq);
    assert_int_equal(kfd_store_audit_diverged(s, NULL), 0);
    kfd_store_close(s);
    OPENSSL_free(c4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain_and_tamper),
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_batch_isolates_failures),
        cmocka_unit_test(test_corrupt_database_fails_closed),
        cmocka_unit_test(test_constraint_errors),
        cmocka_unit_test(test_applied_index_and_deferred_commit),
        cmocka_unit_test(test_rolled_back_transaction_not_indexed),
        cmocka_unit_test(test_serialize_and_replace),
        cmocka_unit_test(test_snapshot_with_deferred_transaction),
        cmocka_unit_test(test_restored_is_no_witness),
        cmocka_unit_test(test_snapshot_image_checked),
        cmocka_unit_test(test_request_ids_time_ordered),
        cmocka_unit_test(test_attest_records),
        cmocka_unit_test(test_attest_clock),
        cmocka_unit_test(test_attest_hold),
        cmocka_unit_test(test_head_check_and_checkpoint_signers),
        cmocka_unit_test(test_checkpoint_apply_order),
        cmocka_unit_test(test_foreign_write_disputed),
        cmocka_unit_test(test_checkpoint_verifier_at_apply),
        cmocka_unit_test(test_snapshot_old_checkpoint_signature),
        cmocka_unit_test(test_membership_read_indexed),
        cmocka_unit_test(test_state_digest),
        cmocka_unit_test(test_checkpoint_state_compared),
        cmocka_unit_test(test_signed_state_root),
        cmocka_unit_test(test_state_note_skipped),
        cmocka_unit_test(test_note_schedule),
    };
    return cmocka_run_group_tests_name("store", tests, tmpdir_setup, tmpdir_teardown);
}
