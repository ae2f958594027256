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

#include <cmocka.h>
#include <sqlite3.h>

#include "core/app.h"
#include "store/store.h"

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

static int append(kfd_store *s, const char *action, const char *node)
{
    Keyfleet__V1__AuditEntry e = audit(action, node, "test");
    Keyfleet__V1__CmdAppendAudit c = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
    c.audit = &e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
    cmd.append_audit = &c;
    kfd_apply_result res;
    return kfd_store_apply(s, &cmd, &res, NULL);
}

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

/* Group commit: one transaction for the batch, a savepoint per command. The invalid middle
 * command (a duplicate enrollment) rolls back alone, with its audit record; the others commit
 * and the chain has no gap. */
static void test_batch_isolates_failures(void **state)
{
    (void)state;
    kfd_store *s = open_db("batch.db");
    Keyfleet__V1__VolumeRef vol = KEYFLEET__V1__VOLUME_REF__INIT;
    vol.id = (char *)"vol-b";
    vol.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS;
    vol.name = (char *)"tank/b";
    Keyfleet__V1__AuditEntry e = audit("enroll", "n1", "");
    Keyfleet__V1__CmdEnrollVolume en = KEYFLEET__V1__CMD_ENROLL_VOLUME__INIT;
    en.volume = &vol;
    en.node = (char *)"n1";
    en.wrapped_key = (char *)"kf:local:v1:abc";
    en.audit = &e;
    Keyfleet__V1__StateCommand enroll = KEYFLEET__V1__STATE_COMMAND__INIT;
    enroll.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME;
    enroll.enroll_volume = &en;
    Keyfleet__V1__AuditEntry r = audit("release", "n1", "ok");
    Keyfleet__V1__CmdAppendAudit ap = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
    ap.audit = &r;
    Keyfleet__V1__StateCommand release = KEYFLEET__V1__STATE_COMMAND__INIT;
    release.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
    release.append_audit = &ap;

    const Keyfleet__V1__StateCommand *cmds[4] = {&enroll, &release, &enroll, &release};
    int st[4];
    kfd_apply_result res[4];
    kf_err errs[4];
    assert_int_equal(kfd_store_apply_batch(s, cmds, 4, 0, st, res, errs), 0);
    assert_int_equal(st[0], 0);
    assert_int_equal(st[1], 0);
    assert_int_equal(st[2], -EEXIST); /* the second enrollment of vol-b */
    assert_int_equal(st[3], 0);
    assert_int_equal(res[0].audit_seq, 1);
    assert_int_equal(res[1].audit_seq, 2);
    assert_int_equal(res[2].audit_seq, 0);
    assert_int_equal(res[3].audit_seq, 3); /* no gap where the failed command's record was */
    verify(s, true, 0);
    Keyfleet__V1__QueryAuditRequest q = KEYFLEET__V1__QUERY_AUDIT_REQUEST__INIT;
    Keyfleet__V1__QueryAuditResponse all = KEYFLEET__V1__QUERY_AUDIT_RESPONSE__INIT;
    assert_int_equal(kfd_store_query_audit(s, &q, &all), 0);
    assert_int_equal(all.n_records, 3);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain_and_tamper),
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_batch_isolates_failures),
        cmocka_unit_test(test_corrupt_database_fails_closed),
        cmocka_unit_test(test_applied_index_and_deferred_commit),
        cmocka_unit_test(test_serialize_and_replace),
        cmocka_unit_test(test_snapshot_image_checked),
        cmocka_unit_test(test_request_ids_time_ordered),
    };
    return cmocka_run_group_tests_name("store", tests, tmpdir_setup, tmpdir_teardown);
}
