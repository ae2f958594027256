/* The audit file sink on a full disk: a write cut short (here by RLIMIT_FSIZE, which makes
 * write(2) stop at the limit and then fail with EFBIG, as ENOSPC would) fails the required sink,
 * and what it did write is cut off again, so the retried record starts a whole line instead of
 * following a fragment (docs/audit.md, "Sinks"; review of #17, F4). */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/audit_sink.h"
#include "store/store.h"
#include "store/store_apply.h"

#include "kf_test_tmpdir.h"

static Keyfleet__V1__Timestamp now_ts = {PROTOBUF_C_MESSAGE_INIT(&keyfleet__v1__timestamp__descriptor), 1795435200, 0};

static void append(kfd_store *s, const char *node)
{
    Keyfleet__V1__AuditEntry e = KEYFLEET__V1__AUDIT_ENTRY__INIT;
    e.time = &now_ts;
    e.action = (char *)"release";
    e.node = (char *)node;
    e.reason = (char *)"a reason long enough that half a line is a real fragment";
    e.decision = KEYFLEET__V1__DECISION__DECISION_ALLOW;
    Keyfleet__V1__CmdAppendAudit c = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
    c.audit = &e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
    cmd.append_audit = &c;
    kfd_apply_result res;
    assert_int_equal(kfd_store_apply(s, &cmd, &res, NULL), 0);
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

/* Every line is a whole JSON record, and the seqs run 1..want without a gap. */
static void check_lines(const char *path, uint64_t want)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[4096];
    uint64_t seq = 0;
    for (int i = 0; i < 1000 && fgets(line, sizeof(line), f) != NULL; i++) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        if (o == NULL)
            fail_msg("line %d is not a whole record: %s (%s)", i + 1, je.text, line);
        json_int_t got = json_integer_value(json_object_get(o, "seq"));
        json_decref(o);
        assert_int_equal(got, (json_int_t)(seq + 1));
        seq++;
    }
    fclose(f);
    assert_int_equal(seq, want);
}

static void test_short_write_leaves_no_fragment(void **state)
{
    (void)state;
    char db[300], out[300];
    snprintf(db, sizeof(db), "%s/sink.db", tmpdir);
    snprintf(out, sizeof(out), "%s/audit.jsonl", tmpdir);
    kfd_store *s = NULL;
    kf_err err = {0};
    assert_int_equal(kfd_store_open(db, &s, &err), 0);

    kfd_audit_config cfg = {0};
    cfg.sinks[0] = (kfd_sink_config){.type = KFD_SINK_FILE, .path = out, .required = true};
    cfg.n_sinks = 1;
    kfd_sinks *k = NULL;
    assert_int_equal(kfd_sinks_open(&cfg, "c1", s, &k, &err), 0);
    assert_non_null(k);

    append(s, "web-01");
    append(s, "web-02");
    assert_int_equal(kfd_sinks_stream(k, &err), 0);
    check_lines(out, 2);

    /* The disk fills up half-way through the next line. */
    append(s, "web-03");
    off_t before = file_size(out);
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = {(rlim_t)before + 20, old.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    memset(&err, 0, sizeof(err));
    assert_int_equal(kfd_sinks_stream(k, &err), -EIO);
    const char *why = NULL;
    assert_false(kfd_sinks_ok(k, &why));
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    /* The 20 bytes that did go out were cut off again. */
    assert_int_equal(file_size(out), before);

    /* Room again: the retry appends a whole line. */
    assert_int_equal(kfd_sinks_stream(k, &err), 0);
    assert_true(kfd_sinks_ok(k, &why));
    check_lines(out, 3);

    kfd_sinks_free(k);
    kfd_store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_short_write_leaves_no_fragment),
    };
    return cmocka_run_group_tests_name("audit_sink", tests, tmpdir_setup, tmpdir_teardown);
}
