/* The checks the store applies with the commands that release or gate keys (store_guard.c):
 * an approved request is spent by one release and only by its node and volume before it
 * expires; a revoked node gets nothing at apply; wrong TOTP codes lock an operator out; a held
 * change applies only with enough approvals and only as a policy or role change; the
 * certificate denylist. Each runs the real apply on a real sqlite database. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "store/store.h"
#include "store/store_apply.h"
#include "store/store_audit.h"
#include "store/store_erase.h"
#include "store/store_guard.h"
#include "store/store_judged.h"
#include "store/store_read.h"
#include "store/store_recovery.h"

#include "kf_test_tmpdir.h"

#define T0 1795435200

static Keyfleet__V1__Timestamp ts(int64_t s)
{
    Keyfleet__V1__Timestamp t = KEYFLEET__V1__TIMESTAMP__INIT;
    t.seconds = s;
    return t;
}

typedef struct audit_at {
    Keyfleet__V1__Timestamp time;
    Keyfleet__V1__AuditEntry e;
} audit_at;

static void audit(audit_at *a, int64_t at, const char *action, Keyfleet__V1__Decision d)
{
    a->time = ts(at);
    Keyfleet__V1__AuditEntry e = KEYFLEET__V1__AUDIT_ENTRY__INIT;
    a->e = e;
    a->e.time = &a->time;
    a->e.action = (char *)action;
    a->e.decision = d;
}

static kfd_store *open_db(const char *name)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    remove(path);
    kfd_store *s = NULL;
    kf_err err = {0};
    if (kfd_store_open(path, &s, &err) != 0)
        fail_msg("open: %s", err.msg);
    return s;
}

/* As this version proposes it (kfd_commit sets refusals_recorded). */
static int apply(kfd_store *s, Keyfleet__V1__StateCommand *cmd, kf_err *err)
{
    cmd->refusals_recorded = true;
    kf_err e = {0};
    int r = kfd_store_apply(s, cmd, NULL, &e);
    if (err != NULL)
        *err = e;
    return r;
}

/* The policy digest the next pending request, approval or escrow carries (NULL: none). */
static const uint8_t *next_judged_policy;

static ProtobufCBinaryData judged_policy_field(void)
{
    return next_judged_policy != NULL ? (ProtobufCBinaryData){KFD_JUDGED_LEN, (uint8_t *)next_judged_policy}
                                      : (ProtobufCBinaryData){0, NULL};
}

static int create_pending(kfd_store *s, const char *id, const char *node, const char *vol, uint32_t needed,
                          int64_t expires, bool totp)
{
    audit_at a;
    audit(&a, T0, "pending", KEYFLEET__V1__DECISION__DECISION_PENDING);
    Keyfleet__V1__VolumeRef v = KEYFLEET__V1__VOLUME_REF__INIT;
    v.id = (char *)vol;
    Keyfleet__V1__Timestamp c = ts(T0), x = ts(expires);
    Keyfleet__V1__CmdCreatePending p = KEYFLEET__V1__CMD_CREATE_PENDING__INIT;
    p.request_id = (char *)id;
    p.node = (char *)node;
    p.volume = &v;
    p.created_at = &c;
    p.expires_at = &x;
    p.approvals_needed = needed;
    p.rule = (char *)"r";
    p.audit = &a.e;
    p.require_totp = totp;
    p.judged_policy = judged_policy_field();
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_PENDING;
    cmd.create_pending = &p;
    return apply(s, &cmd, NULL);
}

/* An approval by op, given with the certificate whose serial this is (NULL: none carried). */
static int approve_by(kfd_store *s, const char *id, const char *op, const char *serial, int64_t step, int64_t at,
                      kf_err *err)
{
    audit_at a;
    audit(&a, at, "approve", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdApprove c = KEYFLEET__V1__CMD_APPROVE__INIT;
    c.request_id = (char *)id;
    c.operator_ = (char *)op;
    c.audit = &a.e;
    c.totp_step = step;
    c.judged_policy = judged_policy_field();
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPROVE;
    cmd.approve = &c;
    if (serial != NULL)
        cmd.auth_cert_serial = (char *)serial;
    return apply(s, &cmd, err);
}

static int approve(kfd_store *s, const char *id, const char *op, int64_t step, int64_t at)
{
    return approve_by(s, id, op, NULL, step, at, NULL);
}

static int approve_as(kfd_store *s, const char *id, const char *op, const char *serial, int64_t at)
{
    return approve_by(s, id, op, serial, 0, at, NULL);
}

static int record_release(kfd_store *s, const char *id, const char *node, const char *vol, bool approved, int64_t at)
{
    audit_at a;
    audit(&a, at, "release", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRecordRelease c = KEYFLEET__V1__CMD_RECORD_RELEASE__INIT;
    c.request_id = (char *)id;
    c.node = (char *)node;
    c.volume_id = (char *)vol;
    c.audit = &a.e;
    c.approved_request = approved;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE;
    cmd.record_release = &c;
    return apply(s, &cmd, NULL);
}

static int revoke_node(kfd_store *s, const char *node)
{
    audit_at a;
    audit(&a, T0, "revoke", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRevokeNode c = KEYFLEET__V1__CMD_REVOKE_NODE__INIT;
    c.node = (char *)node;
    c.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_NODE;
    cmd.revoke_node = &c;
    return apply(s, &cmd, NULL);
}

static kfd_pending_state state_of(kfd_store *s, const char *id)
{
    kfd_pending p;
    assert_int_equal(kfd_store_get_pending(s, id, &p), 0);
    return p.state;
}

/* A refusal at apply recorded as the newest record: a denial naming why (review rev44b K1). */
static void refusal_recorded(kfd_store *s, const char *why);
static uint64_t audit_size(kfd_store *s);

#define RID "0123456789abcdef0123456789abcdef"
#define RID2 "fedcba9876543210fedcba9876543210"
#define RID3 "00112233445566778899aabbccddeeff"
#define RID4 "ffeeddccbbaa99887766554433221100"

static void test_approved_request_releases_once(void **state)
{
    (void)state;
    kfd_store *s = open_db("once.db");
    assert_int_equal(create_pending(s, RID, "n1", "v1", 1, T0 + 60, false), 0);
    assert_int_equal(record_release(s, RID, "n1", "v1", true, T0 + 1), -ESTALE); /* not approved yet */
    refusal_recorded(s, "is not approved");
    assert_int_equal(approve(s, RID, "op1", 0, T0 + 2), 0);
    assert_int_equal(state_of(s, RID), KFD_PENDING_APPROVED);
    assert_int_equal(record_release(s, RID, "n2", "v1", true, T0 + 3), -EACCES); /* another node */
    assert_int_equal(record_release(s, RID, "n1", "v2", true, T0 + 3), -EACCES); /* another volume */
    assert_int_equal(state_of(s, RID), KFD_PENDING_APPROVED);
    assert_int_equal(record_release(s, RID, "n1", "v1", true, T0 + 4), 0);
    assert_int_equal(state_of(s, RID), KFD_PENDING_CONSUMED);
    assert_int_equal(record_release(s, RID, "n1", "v1", true, T0 + 5), -ESTALE); /* spent */
    refusal_recorded(s, "was already used by a release");
    /* An approval is not usable at or after its expiry, judged by the record's own time. */
    assert_int_equal(create_pending(s, RID2, "n1", "v1", 1, T0 + 60, false), 0);
    assert_int_equal(approve(s, RID2, "op1", 0, T0 + 2), 0);
    assert_int_equal(record_release(s, RID2, "n1", "v1", true, T0 + 60), -ESTALE);
    assert_int_equal(state_of(s, RID2), KFD_PENDING_APPROVED);
    kfd_store_close(s);
}

static void test_revoked_node_gets_nothing_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("revoked.db");
    assert_int_equal(record_release(s, RID, "n1", "v1", false, T0), 0);
    assert_int_equal(revoke_node(s, "n1"), 0);
    uint64_t before = audit_size(s);
    assert_int_equal(record_release(s, RID, "n1", "v1", false, T0 + 1), -EACCES);
    assert_int_equal(audit_size(s), before + 1); /* its denial, not its ALLOW */
    refusal_recorded(s, "node n1 is revoked");
    assert_int_equal(record_release(s, RID, "n2", "v1", false, T0 + 1), 0);
    /* An earlier version's command, replayed from a Raft log, is rolled back as that version did,
     * so the log gives one chain whichever version applies it (review rev45 R45-1). */
    before = audit_size(s);
    audit_at old_a;
    audit(&old_a, T0 + 2, "release", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRecordRelease old_c = KEYFLEET__V1__CMD_RECORD_RELEASE__INIT;
    old_c.request_id = (char *)RID;
    old_c.node = (char *)"n1";
    old_c.volume_id = (char *)"v1";
    old_c.audit = &old_a.e;
    Keyfleet__V1__StateCommand old_cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    old_cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE;
    old_cmd.record_release = &old_c;
    assert_int_equal(kfd_store_apply(s, &old_cmd, NULL, NULL), -EACCES);
    assert_int_equal(audit_size(s), before);
    /* Enrolling hands out a key too. */
    audit_at a;
    audit(&a, T0, "enroll", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    a.e.request_id = (char *)RID;
    Keyfleet__V1__VolumeRef v = KEYFLEET__V1__VOLUME_REF__INIT;
    v.id = (char *)"v9";
    v.name = (char *)"d";
    Keyfleet__V1__CmdEnrollVolume c = KEYFLEET__V1__CMD_ENROLL_VOLUME__INIT;
    c.volume = &v;
    c.node = (char *)"n1";
    c.wrapped_key = (char *)"w";
    c.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME;
    cmd.enroll_volume = &c;
    assert_int_equal(apply(s, &cmd, NULL), -EACCES);
    refusal_recorded(s, "node n1 is revoked");
    kfd_volume vol;
    assert_int_equal(kfd_store_get_volume(s, "v9", &vol), -ENOENT); /* its writes undone */
    /* A refused denial is not recorded twice: nothing was allowed. */
    before = audit_size(s);
    a.e.decision = KEYFLEET__V1__DECISION__DECISION_DENY;
    Keyfleet__V1__CmdRecordRelease d = KEYFLEET__V1__CMD_RECORD_RELEASE__INIT;
    d.request_id = (char *)RID;
    d.node = (char *)"n1";
    d.volume_id = (char *)"v1";
    d.audit = &a.e;
    Keyfleet__V1__StateCommand dc = KEYFLEET__V1__STATE_COMMAND__INIT;
    dc.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE;
    dc.record_release = &d;
    assert_int_equal(apply(s, &dc, NULL), 0);
    assert_int_equal(audit_size(s), before + 1);
    a.e.decision = KEYFLEET__V1__DECISION__DECISION_ALLOW;
    c.node = (char *)"n2";
    assert_int_equal(apply(s, &cmd, NULL), 0);
    kfd_store_close(s);
}

static int totp_failure(kfd_store *s, const char *op, int64_t at)
{
    audit_at a;
    audit(&a, at, "approve", KEYFLEET__V1__DECISION__DECISION_DENY);
    Keyfleet__V1__CmdTotpFailure c = KEYFLEET__V1__CMD_TOTP_FAILURE__INIT;
    c.operator_ = (char *)op;
    c.limit = 3;
    c.lockout_seconds = 900;
    c.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_TOTP_FAILURE;
    cmd.totp_failure = &c;
    return apply(s, &cmd, NULL);
}

static void test_totp_failures_lock_out(void **state)
{
    (void)state;
    kfd_store *s = open_db("totp.db");
    uint32_t failures;
    int64_t until;
    assert_int_equal(totp_failure(s, "carol", T0), 0);
    assert_int_equal(totp_failure(s, "carol", T0 + 1), 0);
    assert_int_equal(kfd_store_totp_failures(s, "carol", &failures, &until), 0);
    assert_int_equal(failures, 2);
    assert_int_equal(until, 0);
    /* A right code (an approval with a step) clears the run. */
    assert_int_equal(create_pending(s, RID, "n1", "v1", 2, T0 + 600, false), 0);
    assert_int_equal(approve(s, RID, "carol", 1000, T0 + 2), 0);
    assert_int_equal(kfd_store_totp_failures(s, "carol", &failures, &until), 0);
    assert_int_equal(failures, 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(totp_failure(s, "carol", T0 + 10 + i), 0);
    assert_int_equal(kfd_store_totp_failures(s, "carol", &failures, &until), 0);
    assert_int_equal(until, T0 + 12 + 900);
    assert_int_equal(kfd_store_totp_failures(s, "dave", &failures, &until), 0);
    assert_int_equal(until, 0);
    /* The lockout has its own audit record. */
    Keyfleet__V1__QueryAuditRequest q = KEYFLEET__V1__QUERY_AUDIT_REQUEST__INIT;
    q.action = (char *)"totp_lockout";
    Keyfleet__V1__QueryAuditResponse r = KEYFLEET__V1__QUERY_AUDIT_RESPONSE__INIT;
    assert_int_equal(kfd_store_query_audit(s, &q, &r), 0);
    assert_int_equal(r.n_records, 1);
    kfd_store_free_audit_list(&r);
    kfd_store_close(s);
}

static void test_required_totp_and_duplicates(void **state)
{
    (void)state;
    kfd_store *s = open_db("reqtotp.db");
    assert_int_equal(create_pending(s, RID, "n1", "v1", 2, T0 + 600, true), 0);
    assert_int_equal(approve(s, RID, "op1", 0, T0 + 1), -EACCES);
    assert_int_equal(approve(s, RID, "op1", 77, T0 + 1), 0);
    assert_int_equal(approve(s, RID, "op1", 78, T0 + 1), -EEXIST); /* the same operator twice */
    assert_int_equal(approve(s, RID, "op2", 77, T0 + 1), 0);        /* steps are per operator */
    assert_int_equal(state_of(s, RID), KFD_PENDING_APPROVED);
    assert_int_equal(create_pending(s, RID2, "n1", "v1", 1, T0 + 600, true), 0);
    assert_int_equal(approve(s, RID2, "op1", 77, T0 + 2), -EACCES); /* a spent step */
    assert_int_equal(approve(s, RID2, "op1", 79, T0 + 600), -ESTALE); /* expired */
    kfd_store_close(s);
}

static int propose(kfd_store *s, const char *id, const Keyfleet__V1__StateCommand *change, uint32_t needed)
{
    uint8_t buf[2048];
    size_t len = keyfleet__v1__state_command__pack(change, buf);
    audit_at a;
    audit(&a, T0, "change_proposed", KEYFLEET__V1__DECISION__DECISION_PENDING);
    Keyfleet__V1__VolumeRef v = KEYFLEET__V1__VOLUME_REF__INIT;
    Keyfleet__V1__Timestamp c = ts(T0), x = ts(T0 + 600);
    Keyfleet__V1__CmdCreatePending p = KEYFLEET__V1__CMD_CREATE_PENDING__INIT;
    p.request_id = (char *)id;
    p.node = (char *)"";
    p.volume = &v;
    p.created_at = &c;
    p.expires_at = &x;
    p.approvals_needed = needed;
    p.rule = (char *)"admin";
    p.audit = &a.e;
    p.change.data = buf;
    p.change.len = len;
    p.change_summary = (char *)"test change";
    p.proposer = (char *)"op1";
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_PENDING;
    cmd.create_pending = &p;
    return apply(s, &cmd, NULL);
}

static void test_held_change_applies_when_approved(void **state)
{
    (void)state;
    kfd_store *s = open_db("change.db");
    audit_at a;
    audit(&a, T0, "policy_put", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdPutPolicy pp = KEYFLEET__V1__CMD_PUT_POLICY__INIT;
    pp.yaml = (char *)"rules: []\n";
    pp.version = 1;
    pp.audit = &a.e;
    Keyfleet__V1__StateCommand put = KEYFLEET__V1__STATE_COMMAND__INIT;
    put.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_PUT_POLICY;
    put.put_policy = &pp;
    assert_int_equal(propose(s, RID, &put, 2), 0);
    assert_false(kfd_store_take_policy_changed(s));
    char *yaml = NULL;
    uint64_t version = 9;
    assert_int_equal(kfd_store_get_policy(s, &yaml, &version), 0);
    assert_int_equal(version, 0); /* held: not in force */
    assert_int_equal(approve(s, RID, "op1", 0, T0 + 1), -EEXIST); /* the proposer again */
    assert_int_equal(approve(s, RID, "op2", 0, T0 + 1), 0);
    assert_true(kfd_store_take_policy_changed(s)); /* the replica reloads its policy */
    assert_false(kfd_store_take_policy_changed(s));
    assert_int_equal(kfd_store_get_policy(s, &yaml, &version), 0);
    assert_int_equal(version, 1);
    assert_string_equal(yaml, "rules: []\n");
    free(yaml);
    assert_int_equal(state_of(s, RID), KFD_PENDING_CONSUMED);
    /* With one approver the proposal itself applies the change: the replica must reload then too. */
    pp.version = 2;
    assert_int_equal(propose(s, RID3, &put, 1), 0);
    assert_true(kfd_store_take_policy_changed(s));
    assert_int_equal(kfd_store_get_policy(s, &yaml, &version), 0);
    assert_int_equal(version, 2);
    free(yaml);
    /* A change must not smuggle in anything but a policy put or role creation. */
    audit_at r;
    audit(&r, T0, "revoke", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRevokeNode rn = KEYFLEET__V1__CMD_REVOKE_NODE__INIT;
    rn.node = (char *)"n1";
    rn.audit = &r.e;
    Keyfleet__V1__StateCommand other = KEYFLEET__V1__STATE_COMMAND__INIT;
    other.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_NODE;
    other.revoke_node = &rn;
    assert_int_equal(propose(s, RID2, &other, 1), -EINVAL);
    bool revoked = true;
    assert_int_equal(kfd_store_node_revoked(s, "n1", &revoked), 0);
    assert_false(revoked);
    /* A pending change is not a release approval, even for a node named "". */
    assert_int_equal(record_release(s, RID, "", "", true, T0 + 2), -EACCES);
    kfd_store_close(s);
}

#define PCRS(c) "4=" c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c

/* An operator's acceptance of node n1's values, made over prev (compare and swap). */
static Keyfleet__V1__StateCommand *accept_cmd(audit_at *a, Keyfleet__V1__CmdAttest *c, Keyfleet__V1__StateCommand *cmd,
                                              const char *pcrs, const char *prev)
{
    audit(a, T0, "attest_accept", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    keyfleet__v1__cmd_attest__init(c);
    c->node = (char *)"n1";
    c->kind = (char *)"accept";
    c->pcrs = (char *)pcrs;
    c->audit = &a->e;
    c->cas = true;
    c->prev_accepted = (char *)prev;
    keyfleet__v1__state_command__init(cmd);
    cmd->cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST;
    cmd->attest = c;
    return cmd;
}

/* An acceptance held for approval and approved late must not roll back an acceptance that came
 * in between (issue #16's review, C): it applies only over the values it was made against. */
static void test_held_attest_accept_is_compare_and_swap(void **state)
{
    (void)state;
    kfd_store *s = open_db("attest-cas.db");
    audit_at a1, a2, a3, a4;
    Keyfleet__V1__CmdAttest c1, c2, c3, c4;
    Keyfleet__V1__StateCommand m1, m2, m3, m4;
    kf_err err = {0};
    kfd_attest_record rec;
    assert_int_equal(apply(s, accept_cmd(&a1, &c1, &m1, PCRS("a"), ""), NULL), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.accepted, PCRS("a"));
    /* Held: a -> b. Meanwhile a -> c applies directly. */
    assert_int_equal(propose(s, RID, accept_cmd(&a2, &c2, &m2, PCRS("b"), PCRS("a")), 2), 0);
    assert_int_equal(apply(s, accept_cmd(&a3, &c3, &m3, PCRS("c"), PCRS("a")), NULL), 0);
    /* The late approval finds c, not a: refused, and c stays. */
    assert_int_equal(approve(s, RID, "op2", 0, T0 + 1), -ESTALE);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.accepted, PCRS("c"));
    /* A direct acceptance made over stale values is refused the same way, saying why. */
    assert_int_equal(apply(s, accept_cmd(&a4, &c4, &m4, PCRS("d"), PCRS("a")), &err), -ESTALE);
    assert_non_null(strstr(err.msg, "changed since this acceptance was requested"));
    /* Made over the current values, held and approved: applies. */
    assert_int_equal(propose(s, RID2, accept_cmd(&a4, &c4, &m4, PCRS("d"), PCRS("c")), 2), 0);
    assert_int_equal(approve(s, RID2, "op2", 0, T0 + 1), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.accepted, PCRS("d"));
    assert_int_equal(state_of(s, RID2), KFD_PENDING_CONSUMED);
    kfd_store_close(s);
}

static bool enroll_two_part; /* the next enroll is under tpm_and_network */
static const char *enroll_tofu; /* the next enroll was decided as the node's first (trust on first use) */
static bool enroll_zfs;         /* the next enroll is of a ZFS dataset (else LUKS2) */

static int enroll(kfd_store *s, const char *vol, const char *node, int64_t at)
{
    audit_at a;
    audit(&a, at, "enroll", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    a.e.request_id = (char *)RID;
    Keyfleet__V1__VolumeRef v = KEYFLEET__V1__VOLUME_REF__INIT;
    v.id = (char *)vol;
    v.kind = enroll_zfs ? KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS : KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2;
    v.name = (char *)"data";
    Keyfleet__V1__CmdEnrollVolume c = KEYFLEET__V1__CMD_ENROLL_VOLUME__INIT;
    c.volume = &v;
    c.node = (char *)node;
    c.wrapped_key = (char *)"kf:local:v1:xyz";
    c.audit = &a.e;
    c.tpm_and_network = enroll_two_part;
    if (enroll_tofu != NULL)
        c.attest_tofu = (char *)enroll_tofu;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME;
    cmd.enroll_volume = &c;
    return apply(s, &cmd, NULL);
}

static int record_replay(kfd_store *s, const char *node, const char *vol, int64_t at)
{
    audit_at a;
    audit(&a, at, "enroll_replay", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRecordRelease c = KEYFLEET__V1__CMD_RECORD_RELEASE__INIT;
    c.request_id = (char *)RID;
    c.node = (char *)node;
    c.volume_id = (char *)vol;
    c.audit = &a.e;
    c.enroll_replay_window_s = 600;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE;
    cmd.record_release = &c;
    return apply(s, &cmd, NULL);
}

/* A repeated Enroll is decided again at apply: two replays that raced past the handler's check
 * release the key once; another node, a released volume and a late replay get nothing. */
static void test_enroll_replay_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("replay.db");
    assert_int_equal(enroll(s, "vol-a", "n1", T0), 0);
    assert_int_equal(enroll(s, "vol-b", "n1", T0), 0);
    assert_int_equal(enroll(s, "vol-c", "n1", T0), 0);
    assert_int_equal(record_replay(s, "n2", "vol-a", T0 + 5), -EACCES);
    assert_int_equal(record_replay(s, "n1", "vol-a", T0 + 5), 0);
    assert_int_equal(record_replay(s, "n1", "vol-a", T0 + 6), -ESTALE); /* the racing second replay */
    assert_int_equal(record_replay(s, "n1", "vol-b", T0 + 601), -ESTALE); /* past the window */
    assert_int_equal(record_release(s, RID, "n1", "vol-c", false, T0 + 7), 0);
    assert_int_equal(record_replay(s, "n1", "vol-c", T0 + 8), -ESTALE); /* released already */
    assert_int_equal(record_replay(s, "n1", "vol-none", T0 + 8), -ESTALE);
    assert_int_equal(record_replay(s, "n1", "vol-b", T0 + 600), 0); /* the window's last second */
    kfd_store_close(s);
}

#define KCV1 "AAAAAAAAAAAAAAAAAAAAAA"
#define KCV2 "BBBBBBBBBBBBBBBBBBBBBB"
#define KCV3 "CCCCCCCCCCCCCCCCCCCCCC"

static int release_kcv(kfd_store *s, const char *node, const char *vol, const char *kcv, int64_t at)
{
    audit_at a;
    audit(&a, at, "release", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRecordRelease c = KEYFLEET__V1__CMD_RECORD_RELEASE__INIT;
    c.request_id = (char *)RID;
    c.node = (char *)node;
    c.volume_id = (char *)vol;
    c.audit = &a.e;
    c.kcv = (char *)kcv;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE;
    cmd.record_release = &c;
    return apply(s, &cmd, NULL);
}

static int rotate(kfd_store *s, const char *node, const char *vol, bool commit, const char *kcv, int64_t at)
{
    audit_at a;
    audit(&a, at, commit ? "rotate_commit" : "rotate_begin", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRotateKey c = KEYFLEET__V1__CMD_ROTATE_KEY__INIT;
    c.volume_id = (char *)vol;
    c.node = (char *)node;
    c.commit = commit;
    c.next_wrapped_key = commit ? (char *)"" : (char *)"kf:local:v1:next";
    c.kcv = (char *)kcv;
    c.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ROTATE_KEY;
    cmd.rotate_key = &c;
    return apply(s, &cmd, NULL);
}

/* Rotation at apply: a volume from before rotation learns its key's check value at its first
 * release; BEGIN is the enrolling node's, COMMIT only with the rotation in progress (a repeat is
 * fine); from COMMIT on the retired key is refused, even to a release that passed the handler's
 * check before the commit (applied after it). */
static void test_rotation_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("rotate.db");
    assert_int_equal(enroll(s, "vol-r", "n1", T0), 0); /* no key_kcv: as a row from before migration 7 */
    assert_int_equal(rotate(s, "n1", "vol-r", false, KCV2, T0 + 1), -ESTALE); /* the key is not known yet */
    assert_int_equal(release_kcv(s, "n1", "vol-r", KCV1, T0 + 2), 0);        /* learnt */
    assert_int_equal(release_kcv(s, "n1", "vol-r", KCV3, T0 + 3), -ESTALE);
    assert_int_equal(rotate(s, "n2", "vol-r", false, KCV2, T0 + 4), -EACCES); /* another node's volume */
    assert_int_equal(rotate(s, "n1", "vol-none", false, KCV2, T0 + 4), -ESTALE);
    assert_int_equal(rotate(s, "n1", "vol-r", true, KCV2, T0 + 4), -ESTALE); /* nothing in progress */
    assert_int_equal(rotate(s, "n1", "vol-r", false, KCV2, T0 + 5), 0);
    assert_int_equal(rotate(s, "n1", "vol-r", false, KCV3, T0 + 5), -ESTALE); /* another one in progress */
    assert_int_equal(release_kcv(s, "n1", "vol-r", KCV1, T0 + 6), 0);          /* old and new both open */
    assert_int_equal(release_kcv(s, "n1", "vol-r", KCV2, T0 + 6), 0);
    assert_int_equal(rotate(s, "n1", "vol-r", true, KCV3, T0 + 7), -ESTALE);
    assert_int_equal(rotate(s, "n1", "vol-r", true, KCV2, T0 + 7), 0);
    assert_int_equal(rotate(s, "n1", "vol-r", true, KCV2, T0 + 8), 0); /* repeated */
    assert_int_equal(release_kcv(s, "n1", "vol-r", KCV1, T0 + 9), -ESTALE); /* retired */
    assert_int_equal(release_kcv(s, "n1", "vol-r", KCV2, T0 + 9), 0);
    kfd_volume v;
    assert_int_equal(kfd_store_get_volume(s, "vol-r", &v), 0);
    assert_string_equal(v.key_kcv, KCV2);
    assert_string_equal(v.next_kcv, "");
    assert_null(v.next_wrapped_key);
    assert_string_equal(v.wrapped_key, "kf:local:v1:next");
    assert_int_equal(v.key_created_at, T0 + 7);
    kfd_volume_clear(&v);
    assert_int_equal(revoke_node(s, "n1"), 0);
    assert_int_equal(rotate(s, "n1", "vol-r", false, KCV3, T0 + 10), -EACCES);
    kfd_store_close(s);
}

static int lifecycle(kfd_store *s, bool retire, const char *what, int64_t at)
{
    audit_at a;
    audit(&a, at, retire ? "volume_retire" : "unrevoke", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRetireVolume r = KEYFLEET__V1__CMD_RETIRE_VOLUME__INIT;
    Keyfleet__V1__CmdUnrevokeNode u = KEYFLEET__V1__CMD_UNREVOKE_NODE__INIT;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    if (retire) {
        r.volume_id = (char *)what;
        r.audit = &a.e;
        cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RETIRE_VOLUME;
        cmd.retire_volume = &r;
    } else {
        u.node = (char *)what;
        u.audit = &a.e;
        cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_UNREVOKE_NODE;
        cmd.unrevoke_node = &u;
    }
    return apply(s, &cmd, NULL);
}

/* What the handler judged by that the apply cannot judge again (review rev42 S1; store_judged.h):
 * the digests carried in the command are compared with the replica's own policy, volume row and
 * accepted PCR values; one that differs refuses the key and writes nothing. */
static int put_policy(kfd_store *s, uint64_t version, const char *yaml)
{
    audit_at a;
    audit(&a, T0, "policy_put", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdPutPolicy pp = KEYFLEET__V1__CMD_PUT_POLICY__INIT;
    pp.yaml = (char *)yaml;
    pp.version = version;
    pp.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_PUT_POLICY;
    cmd.put_policy = &pp;
    return apply(s, &cmd, NULL);
}

static int enroll_labelled(kfd_store *s, const char *vol, int64_t at)
{
    audit_at a;
    audit(&a, at, "enroll", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__VolumeRef v = KEYFLEET__V1__VOLUME_REF__INIT;
    v.id = (char *)vol;
    v.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2;
    v.name = (char *)"data";
    Keyfleet__V1__Label l1 = KEYFLEET__V1__LABEL__INIT, l2 = KEYFLEET__V1__LABEL__INIT;
    l1.key = (char *)"zone";
    l1.value = (char *)"a";
    l2.key = (char *)"tier";
    l2.value = (char *)"prod";
    Keyfleet__V1__Label *labels[] = {&l1, &l2};
    Keyfleet__V1__CmdEnrollVolume c = KEYFLEET__V1__CMD_ENROLL_VOLUME__INIT;
    c.volume = &v;
    c.node = (char *)"n1";
    c.wrapped_key = (char *)"kf:local:v1:xyz";
    c.labels = labels;
    c.n_labels = 2;
    c.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME;
    cmd.enroll_volume = &c;
    return apply(s, &cmd, NULL);
}

static ProtobufCBinaryData bad_len = {5, (uint8_t *)"12345"};
static int judged_bad_len; /* the next judged command carries a 5-byte digest: 1 policy, 2 volume, 3 PCRs */
static bool judged_none;    /* ... or no digests at all (a command of an older version) */

static Keyfleet__V1__AttestClock *judged_clock; /* the next judged release's quote counters */

static int judged_release(kfd_store *s, const kfd_judged *j, const char *kcv, int64_t at, kf_err *err)
{
    audit_at a;
    audit(&a, at, "release", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRecordRelease c = KEYFLEET__V1__CMD_RECORD_RELEASE__INIT;
    c.request_id = (char *)RID;
    c.node = (char *)"n1";
    c.volume_id = (char *)"vol-j";
    c.audit = &a.e;
    c.kcv = (char *)kcv;
    c.attest_clock = judged_clock;
    if (!judged_none)
        kfd_judged_fields(j, &(kfd_judged_out){&c.judged_policy, &c.judged_volume, &c.judged_pcrs, &c.judged_tpm,
                                             &c.judged_auth, &c.auth_cert_serial, &c.auth_token_id});
    if (judged_bad_len == 1)
        c.judged_policy = bad_len;
    if (judged_bad_len == 2)
        c.judged_volume = bad_len;
    if (judged_bad_len == 3)
        c.judged_pcrs = bad_len;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE;
    cmd.record_release = &c;
    return apply(s, &cmd, err);
}

static int judged_rotate(kfd_store *s, const kfd_judged *j, int64_t at, kf_err *err)
{
    audit_at a;
    audit(&a, at, "rotate_begin", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRotateKey c = KEYFLEET__V1__CMD_ROTATE_KEY__INIT;
    c.volume_id = (char *)"vol-j";
    c.node = (char *)"n1";
    c.next_wrapped_key = (char *)"kf:local:v1:next";
    c.kcv = (char *)KCV2;
    c.attest_clock = judged_clock;
    c.audit = &a.e;
    kfd_judged_fields(j, &(kfd_judged_out){&c.judged_policy, &c.judged_volume, &c.judged_pcrs, &c.judged_tpm,
                                             &c.judged_auth, &c.auth_cert_serial, &c.auth_token_id});
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ROTATE_KEY;
    cmd.rotate_key = &c;
    return apply(s, &cmd, err);
}

static uint64_t audit_size(kfd_store *s)
{
    kfd_audit_head h;
    kfd_store_audit_head(s, &h);
    return h.seq;
}

static void hex32(const uint8_t d[KFD_JUDGED_LEN], char out[2 * KFD_JUDGED_LEN + 1])
{
    for (int i = 0; i < KFD_JUDGED_LEN; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static int vol_digest(const char *name, const char *owner, bool two_part, const char *labels,
                      uint8_t out[KFD_JUDGED_LEN])
{
    kfd_volume v = {.tpm_and_network = two_part, .labels_json = (char *)labels};
    snprintf(v.name, sizeof(v.name), "%s", name);
    snprintf(v.node, sizeof(v.node), "%s", owner);
    return kfd_judged_volume(&v, out);
}

/* The encodings are fixed (replicas of different versions must agree): known answers computed
 * apart (Python's hashlib over the encoding docs/audit.md gives). */
static void test_judged_digests(void **state)
{
    (void)state;
    uint8_t d[KFD_JUDGED_LEN], e[KFD_JUDGED_LEN];
    char hex[2 * KFD_JUDGED_LEN + 1];
    assert_int_equal(kfd_judged_policy("rules: []\n", d), 0);
    hex32(d, hex);
    assert_string_equal(hex, "0a94dd4505ee0dfff7b5454d8734a123dc64bae9641b3d730deea7e01bc544a7");
    assert_int_equal(vol_digest("data", "n1", false, "{\"tier\":\"prod\",\"zone\":\"a\"}", d), 0);
    hex32(d, hex);
    assert_string_equal(hex, "e1a480cfe956e9c4d42d6ea465f40d8c7ab69f4f27f2c92329375d97565d1b23");
    /* Key order and values the rules never see (not strings) do not count. */
    assert_int_equal(vol_digest("data", "n1", false, "{\"zone\":\"a\",\"n\":1,\"tier\":\"prod\"}", e), 0);
    assert_memory_equal(d, e, KFD_JUDGED_LEN);
    /* The owner and the two-part mode do. */
    assert_int_equal(vol_digest("data", "n2", false, "{\"tier\":\"prod\",\"zone\":\"a\"}", e), 0);
    assert_memory_not_equal(d, e, KFD_JUDGED_LEN);
    assert_int_equal(vol_digest("data", "n1", true, "{\"tier\":\"prod\",\"zone\":\"a\"}", e), 0);
    assert_memory_not_equal(d, e, KFD_JUDGED_LEN);
    /* Lengths are encoded: moving a byte between key and value, or name and owner, changes it. */
    assert_int_equal(vol_digest("data", "n1", false, "{\"tie\":\"rprod\",\"zone\":\"a\"}", e), 0);
    assert_memory_not_equal(d, e, KFD_JUDGED_LEN);
    assert_int_equal(vol_digest("datan", "1", false, "{\"tier\":\"prod\",\"zone\":\"a\"}", e), 0);
    assert_memory_not_equal(d, e, KFD_JUDGED_LEN);
    assert_int_equal(kfd_judged_pcrs(PCRS("a"), d), 0);
    hex32(d, hex);
    assert_string_equal(hex, "f48b9fffc908ff6ee52a34a88228e51dacc008180b2be18ca67d1c4bd5792ff3");
    assert_int_equal(kfd_judged_pcrs("", d), -EINVAL);
    assert_int_equal(kfd_judged_pcrs("4=zz", d), -EINVAL);
}

/* The newest audit record's decision and reason. */
static Keyfleet__V1__Decision newest_decision(kfd_store *s, char *reason, size_t size)
{
    Keyfleet__V1__AuditRecord **recs = NULL;
    size_t n = 0;
    uint64_t size_now = audit_size(s);
    assert_int_equal(kfd_store_records_after(s, size_now - 1, 1, &recs, &n), 0);
    assert_int_equal(n, 1);
    Keyfleet__V1__Decision d = recs[0]->decision;
    snprintf(reason, size, "%s", recs[0]->reason);
    kfd_store_free_records(recs, n);
    return d;
}

static void refusal_recorded(kfd_store *s, const char *why)
{
    char reason[400];
    assert_int_equal(newest_decision(s, reason, sizeof(reason)), KEYFLEET__V1__DECISION__DECISION_DENY);
    assert_non_null(strstr(reason, "refused at apply: "));
    assert_non_null(strstr(reason, why));
}

/* A mismatch is recorded as a denial naming it (-ECANCELED: no key), and nothing else is written. */
static void refused(kfd_store *s, int got, const kf_err *err, const char *what)
{
    assert_int_equal(got, -ECANCELED);
    assert_non_null(strstr(err->msg, what));
    char reason[400];
    assert_int_equal(newest_decision(s, reason, sizeof(reason)), KEYFLEET__V1__DECISION__DECISION_DENY);
    assert_non_null(strstr(reason, "refused at apply: "));
    assert_non_null(strstr(reason, what));
    assert_non_null(strstr(reason, "; was: ")); /* the command's own reason is kept */
    kfd_volume v;
    assert_int_equal(kfd_store_get_volume(s, "vol-j", &v), 0);
    assert_int_equal(v.last_released_at, T0 + 1);
    kfd_volume_clear(&v);
}

static int hold_drift(kfd_store *s)
{
    audit_at a;
    audit(&a, T0, "attest_seen", KEYFLEET__V1__DECISION__DECISION_DENY);
    Keyfleet__V1__CmdAttest c = KEYFLEET__V1__CMD_ATTEST__INIT;
    c.node = (char *)"n1";
    c.kind = (char *)"seen";
    c.pcrs = (char *)PCRS("b");
    c.audit = &a.e;
    c.hold = (char *)"PCR 4 changed";
    c.hold_kind = (char *)"drift";
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST;
    cmd.attest = &c;
    return apply(s, &cmd, NULL);
}

static void test_judged_inputs_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("judged.db");
    kf_err err = {0};
    assert_int_equal(put_policy(s, 1, "rules: [allow-prod]\n"), 0);
    assert_int_equal(enroll_labelled(s, "vol-j", T0), 0);
    audit_at aa;
    Keyfleet__V1__CmdAttest ac;
    Keyfleet__V1__StateCommand am;
    assert_int_equal(apply(s, accept_cmd(&aa, &ac, &am, PCRS("a"), ""), NULL), 0);
    kfd_judged j = {.has_pcrs = true};
    kfd_volume v;
    assert_int_equal(kfd_store_get_volume(s, "vol-j", &v), 0);
    assert_int_equal(kfd_judged_volume(&v, j.volume), 0);
    kfd_volume_clear(&v);
    assert_int_equal(kfd_judged_policy("rules: [allow-prod]\n", j.policy), 0);
    assert_int_equal(kfd_judged_pcrs(PCRS("a"), j.pcrs), 0);
    /* The rows it was judged on: released (and the key's check value learnt for the rotation). */
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 1, &err), 0);
    /* Each input that differs refuses it: a denial is recorded, naming which, and nothing else. */
    kfd_judged bad = j;
    assert_int_equal(vol_digest("data", "n1", false, "{\"tier\":\"dev\",\"zone\":\"a\"}", bad.volume), 0);
    refused(s, judged_release(s, &bad, KCV1, T0 + 2, &err), &err, "volume owner, name and labels");
    assert_int_equal(vol_digest("data", "n2", false, "{\"tier\":\"prod\",\"zone\":\"a\"}", bad.volume), 0);
    refused(s, judged_release(s, &bad, KCV1, T0 + 2, &err), &err, "volume owner, name and labels");
    bad = j;
    assert_int_equal(kfd_judged_policy("rules: [allow-all]\n", bad.policy), 0);
    refused(s, judged_release(s, &bad, KCV1, T0 + 2, &err), &err, "policy rules");
    bad = j;
    assert_int_equal(kfd_judged_pcrs(PCRS("b"), bad.pcrs), 0);
    refused(s, judged_release(s, &bad, KCV1, T0 + 2, &err), &err, "accepted PCR values");
    /* A malformed digest is an invalid command: rolled back, nothing recorded. */
    uint64_t size = audit_size(s);
    for (judged_bad_len = 1; judged_bad_len <= 3; judged_bad_len++)
        assert_int_equal(judged_release(s, &j, KCV1, T0 + 2, &err), -EINVAL);
    judged_bad_len = 0;
    assert_int_equal(audit_size(s), size);
    /* No quote matched (the rule did not need one): the accepted values are not compared. */
    bad.has_pcrs = false;
    assert_int_equal(judged_release(s, &bad, KCV1, T0 + 3, &err), 0);
    /* A command of an older version carries none: nothing to compare. */
    judged_none = true;
    assert_int_equal(judged_release(s, &bad, KCV1, T0 + 3, &err), 0);
    judged_none = false;
    /* A rotation step is judged the same way. */
    bad = j;
    assert_int_equal(vol_digest("data", "n1", false, "{}", bad.volume), 0);
    assert_int_equal(judged_rotate(s, &bad, T0 + 4, &err), -ECANCELED);
    bad = j;
    assert_int_equal(kfd_judged_policy("rules: []\n", bad.policy), 0);
    assert_int_equal(judged_rotate(s, &bad, T0 + 4, &err), -ECANCELED);
    assert_int_equal(judged_rotate(s, &j, T0 + 4, &err), 0);
    /* A new policy version with the same text changes nothing decided; new text refuses what was
     * decided under the old one, and so do newly accepted values. */
    assert_int_equal(put_policy(s, 2, "rules: [allow-prod]\n"), 0);
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 5, &err), 0);
    assert_int_equal(put_policy(s, 3, "rules: [allow-dev]\n"), 0);
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 5, &err), -ECANCELED);
    assert_int_equal(kfd_judged_policy("rules: [allow-dev]\n", j.policy), 0);
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 5, &err), 0);
    assert_int_equal(apply(s, accept_cmd(&aa, &ac, &am, PCRS("c"), PCRS("a")), NULL), 0);
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 6, &err), -ECANCELED);
    assert_int_equal(kfd_judged_pcrs(PCRS("c"), j.pcrs), 0);
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 6, &err), 0);
    /* The recorded TPM counters a quote was judged against (review rev44 J4): n1's record has no
     * counters yet (as no record at all); once a release records its quote's, a decision judged
     * against the old state is refused, one judged against the new applies; a later quote of the
     * same boot (same counters, a later clock) changes nothing judged (review rev44b K5). */
    j.has_tpm = true;
    kfd_judged_tpm(NULL, j.tpm);
    Keyfleet__V1__AttestClock clk = KEYFLEET__V1__ATTEST_CLOCK__INIT;
    clk.reset_count = 5;
    clk.restart_count = 1;
    clk.clock = 123456;
    clk.clock_known = true;
    clk.safe = true;
    judged_clock = &clk;
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 7, &err), 0);
    judged_clock = NULL;
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 7, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "recorded TPM counters"));
    kfd_attest_record rec;
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_true(rec.has_clock);
    kfd_judged_tpm(&rec, j.tpm);
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 7, &err), 0);
    clk.clock = 223456; /* the same boot, later */
    judged_clock = &clk;
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 8, &err), 0);
    judged_clock = NULL;
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 8, &err), 0);
    /* The clock judged again (review rev44b K5): in the recorded boot, a quote's clock more than
     * KFD_TPM_CLOCK_APPLY_SLACK_MS behind the record is a clone's, refused and recorded; one
     * within it (two quotes of one boot applied out of order), one the policy let through audited
     * and one of a later boot are not. */
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    kfd_judged_tpm(&rec, j.tpm);
    Keyfleet__V1__AttestClock behind = clk;
    behind.clock = 223456 + 400000; /* the record moves to this */
    judged_clock = &behind;
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 9, &err), 0);
    behind.clock = 223456 + 400000 - KFD_TPM_CLOCK_APPLY_SLACK_MS; /* at the slack: passes */
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 9, &err), 0);
    behind.clock = 223456; /* more than the slack behind */
    uint64_t before_clock = audit_size(s);
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 9, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "cloned TPM"));
    assert_int_equal(audit_size(s), before_clock + 1);
    behind.rollback_audited = true;
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 9, &err), 0);
    behind.rollback_audited = false;
    behind.restart_count = clk.restart_count + 1; /* a later boot: judged by its counters */
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 9, &err), 0);
    /* A rotation's quote too (review rev45c R45c-1): the record at 1 000 000 ms in this boot, a
     * rotation quoting more than the slack behind it is refused for its clock, before anything
     * else is judged. */
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    kfd_judged_tpm(&rec, j.tpm); /* the later boot's counters */
    behind.clock = 1000000; /* 200 s after the record at 223 456 ms: within 5/4 of them plus the slacks */
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 209, &err), 0);
    behind.clock = 1000000 - KFD_TPM_CLOCK_APPLY_SLACK_MS - 1;
    assert_int_equal(judged_rotate(s, &j, T0 + 9, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "cloned TPM"));
    /* A later boot whose clock went back by more than a power loss explains (R45c-2, rule 3);
     * the record at 2^23 ms first, 9000 s on (its clock ran 2^23 - 10^6 ms since). */
    behind.clock = 1ull << 23;
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 9000, &err), 0);
    behind.restart_count++;
    behind.clock = (1ull << 23) - KFD_TPM_CLOCK_APPLY_REBOOT_SLACK_MS - 1;
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 9, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "a reboot explains"));
    behind.clock = (1ull << 23) - KFD_TPM_CLOCK_APPLY_REBOOT_SLACK_MS; /* what a power loss may lose */
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 9, &err), 0);
    /* A clock run ahead of real time since the record (R45c-2, rule 4), by the commands' times:
     * 10 s after the record (at T0 + 9), 5/4 of them plus the handler's and the apply's slacks
     * pass; 10 s after that, a millisecond more is a TPM set forward, refused and recorded. */
    uint64_t ahead = 12500 + KF_TPM_CLOCK_JUMP_SLACK_MS + KFD_TPM_CLOCK_APPLY_SLACK_MS;
    behind.clock += ahead;
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    kfd_judged_tpm(&rec, j.tpm); /* the third boot's counters */
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 19, &err), 0);
    behind.clock += ahead + 1;
    before_clock = audit_size(s);
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 29, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "ran ahead"));
    assert_int_equal(audit_size(s), before_clock + 1);
    assert_int_equal(judged_rotate(s, &j, T0 + 29, &err), -ECANCELED); /* a rotation's too */
    assert_non_null(strstr(err.msg, "ran ahead"));
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 30, &err), 0); /* 1 s later: within 5/4 of 20 s */
    judged_clock = NULL;
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    kfd_judged_tpm(&rec, j.tpm);
    rec.reset_count = 4; /* as a lowered record would say */
    bad = j;
    kfd_judged_tpm(&rec, bad.tpm);
    assert_int_equal(judged_release(s, &bad, KCV1, T0 + 7, &err), -ECANCELED);
    /* A node held for drift: a release decided as attested (the handler saw no hold) is refused. */
    assert_int_equal(hold_drift(s), 0);
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 7, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "hold"));
    /* A volume the replica does not hold, or a node with no measured-boot record: refused. */
    kfd_store_close(s);
    s = open_db("judged2.db");
    assert_int_equal(put_policy(s, 1, "rules: [allow-prod]\n"), 0);
    assert_int_equal(judged_release(s, &j, "", T0 + 1, &err), -ESTALE); /* vol-j is not enrolled here */
    assert_int_equal(enroll_labelled(s, "vol-j", T0), 0);
    assert_int_equal(kfd_judged_policy("rules: [allow-prod]\n", j.policy), 0);
    assert_int_equal(judged_release(s, &j, "", T0 + 1, &err), -ECANCELED); /* n1 has no accepted values */
    assert_non_null(strstr(err.msg, "accepted PCR values"));
    kfd_store_close(s);
}

/* A retired volume's key is refused at apply, also to a release (or rotation) that passed the
 * handler before the retire was applied; unrevoke applies only to a revoked node, and is one of
 * the changes an approval may carry. */
static void test_retire_and_unrevoke_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("lifecycle.db");
    assert_int_equal(enroll(s, "vol-x", "n1", T0), 0);
    assert_int_equal(release_kcv(s, "n1", "vol-x", KCV1, T0 + 1), 0); /* control */
    assert_int_equal(lifecycle(s, true, "vol-x", T0 + 2), 0);
    assert_int_equal(release_kcv(s, "n1", "vol-x", KCV1, T0 + 3), -EACCES);
    assert_int_equal(rotate(s, "n1", "vol-x", false, KCV2, T0 + 3), -EACCES);
    assert_int_equal(lifecycle(s, true, "vol-x", T0 + 4), -ESTALE);  /* already retired */
    assert_int_equal(lifecycle(s, true, "vol-no", T0 + 4), -ENOENT); /* not enrolled */
    kfd_volume v;
    assert_int_equal(kfd_store_get_volume(s, "vol-x", &v), 0);
    assert_int_equal(v.retired_at, T0 + 2);
    kfd_volume_clear(&v);

    assert_int_equal(lifecycle(s, false, "n2", T0 + 5), -ESTALE); /* not revoked */
    assert_int_equal(revoke_node(s, "n2"), 0);
    assert_int_equal(enroll(s, "vol-y", "n2", T0 + 5), -EACCES);
    Keyfleet__V1__CmdUnrevokeNode u = KEYFLEET__V1__CMD_UNREVOKE_NODE__INIT;
    audit_at a;
    audit(&a, T0 + 6, "unrevoke", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    u.node = (char *)"n2";
    u.audit = &a.e;
    Keyfleet__V1__StateCommand change = KEYFLEET__V1__STATE_COMMAND__INIT;
    change.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_UNREVOKE_NODE;
    change.unrevoke_node = &u;
    assert_int_equal(propose(s, RID, &change, 2), 0);
    bool revoked = false;
    assert_int_equal(kfd_store_node_revoked(s, "n2", &revoked), 0);
    assert_true(revoked); /* held: one approval of two */
    assert_int_equal(approve(s, RID, "op2", 0, T0 + 7), 0);
    assert_int_equal(kfd_store_node_revoked(s, "n2", &revoked), 0);
    assert_false(revoked);
    assert_int_equal(enroll(s, "vol-y", "n2", T0 + 8), 0);
    kfd_store_close(s);
}

static int escrow(kfd_store *s, const char *node, const char *vol, const char *rid, const char *wrapped, bool zfs,
                  int64_t at);

static int wipe_as(kfd_store *s, const char *node, const char *vol, int64_t at, bool cancel)
{
    audit_at a;
    audit(&a, at, cancel ? "node_wipe_cancel" : "node_wipe", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    a.e.reason = (char *)"stolen";
    char *ids[] = {(char *)vol};
    Keyfleet__V1__CmdWipeVolumes c = KEYFLEET__V1__CMD_WIPE_VOLUMES__INIT;
    c.node = (char *)node;
    c.volume_ids = ids;
    c.n_volume_ids = 1;
    c.cancel = cancel;
    c.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_WIPE_VOLUMES;
    cmd.wipe_volumes = &c;
    return apply(s, &cmd, NULL);
}

static int wipe(kfd_store *s, const char *node, const char *vol, int64_t at)
{
    return wipe_as(s, node, vol, at, false);
}

static int erase_confirm(kfd_store *s, const char *node, const char *vol, int64_t at)
{
    audit_at a;
    audit(&a, at, "volume_erased", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdEraseConfirm c = KEYFLEET__V1__CMD_ERASE_CONFIRM__INIT;
    c.node = (char *)node;
    c.volume_id = (char *)vol;
    c.detail = (char *)"luks2: 1 keyslot";
    c.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ERASE_CONFIRM;
    cmd.erase_confirm = &c;
    return apply(s, &cmd, NULL);
}

/* Crypt-erase at apply: a wipe retires the node's volume at once (its key refused) and leaves the
 * erase pending; only the node it was asked of confirms it, once. */
static void test_wipe_and_erase_confirm_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("erase.db");
    assert_int_equal(enroll(s, "vol-e", "n1", T0), 0);
    assert_int_equal(enroll(s, "vol-f", "n2", T0), 0);
    assert_int_equal(release_kcv(s, "n1", "vol-e", KCV1, T0 + 1), 0); /* control */
    assert_int_equal(wipe(s, "n1", "vol-no", T0 + 2), -ENOENT);
    assert_int_equal(wipe(s, "n1", "vol-f", T0 + 2), -ESTALE); /* another node's */
    assert_int_equal(erase_confirm(s, "n1", "vol-e", T0 + 2), -EACCES); /* no wipe asked */
    assert_int_equal(wipe(s, "n1", "vol-e", T0 + 3), 0);
    assert_int_equal(release_kcv(s, "n1", "vol-e", KCV1, T0 + 4), -EACCES); /* retired */
    assert_int_equal(wipe(s, "n1", "vol-e", T0 + 4), -ESTALE);                /* being erased */
    char node[64];
    int64_t erased_at = -1;
    assert_int_equal(kfd_store_get_erase(s, "vol-e", node, sizeof(node), &erased_at), 0);
    assert_string_equal(node, "n1");
    assert_int_equal(erased_at, 0);
    char **ids = NULL;
    size_t n = 0;
    assert_int_equal(kfd_store_erase_pending(s, "n2", &ids, &n, NULL), 0);
    assert_int_equal(n, 0); /* not another node's order */
    kfd_store_free_ids(ids, n);
    assert_int_equal(kfd_store_erase_pending(s, "n1", &ids, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_string_equal(ids[0], "vol-e");
    kfd_store_free_ids(ids, n);
    assert_int_equal(erase_confirm(s, "n2", "vol-e", T0 + 5), -EACCES); /* another node confirming */
    assert_int_equal(erase_confirm(s, "n1", "vol-e", T0 + 6), 0);
    assert_int_equal(erase_confirm(s, "n1", "vol-e", T0 + 7), -ESTALE); /* once */
    assert_int_equal(kfd_store_get_erase(s, "vol-e", node, sizeof(node), &erased_at), 0);
    assert_int_equal(erased_at, T0 + 6);
    assert_int_equal(kfd_store_erase_pending(s, "n1", &ids, &n, NULL), 0);
    assert_int_equal(n, 0);
    kfd_store_free_ids(ids, n);
    assert_int_equal(wipe_as(s, "n1", "vol-e", T0 + 8, true), -ESTALE); /* confirmed: no cancel */

    /* Review rev26b F2: the wipe drops the escrowed recovery key in the same apply. */
    kfd_recovery rec;
    assert_int_equal(enroll(s, "vol-r", "n1", T0), 0);
    assert_int_equal(escrow(s, "n1", "vol-r", RID, "w1", false, T0 + 1), 0);
    assert_int_equal(kfd_store_get_recovery(s, "vol-r", &rec), 0);
    kfd_recovery_clear(&rec);
    assert_int_equal(wipe(s, "n1", "vol-r", T0 + 2), 0);
    assert_int_equal(kfd_store_get_recovery(s, "vol-r", &rec), -ENOENT);

    /* node wipe --cancel: only an erase asked of that node and not confirmed; it stays retired. */
    assert_int_equal(wipe_as(s, "n2", "vol-r", T0 + 3, true), -ESTALE); /* another node */
    assert_int_equal(wipe_as(s, "n1", "vol-f", T0 + 3, true), -ESTALE); /* not being erased */
    assert_int_equal(wipe_as(s, "n1", "vol-r", T0 + 3, true), 0);
    assert_int_equal(kfd_store_get_erase(s, "vol-r", node, sizeof(node), &erased_at), -ENOENT);
    assert_int_equal(kfd_store_erase_pending(s, "n1", &ids, &n, NULL), 0);
    assert_int_equal(n, 0);
    kfd_store_free_ids(ids, n);
    assert_int_equal(erase_confirm(s, "n1", "vol-r", T0 + 4), -EACCES); /* nothing to confirm now */
    assert_int_equal(release_kcv(s, "n1", "vol-r", KCV1, T0 + 4), -EACCES); /* still retired */
    assert_int_equal(wipe_as(s, "n1", "vol-r", T0 + 5, true), -ESTALE); /* cancelled already */
    assert_int_equal(wipe(s, "n1", "vol-r", T0 + 5), 0);                /* asked again */
    kfd_store_close(s);
}

/* Review rev19 L1: an unrevoke lifts the revocation it was proposed for. A node revoked again
 * (another reason, later) while the change waited for approvals stays revoked when they come. */
static void test_unrevoke_bound_to_revocation(void **state)
{
    (void)state;
    kfd_store *s = open_db("unrevoke.db");
    assert_int_equal(revoke_node(s, "n3"), 0); /* at T0: "lost" */
    bool revoked = false;
    int64_t at = 0;
    assert_int_equal(kfd_store_node_revoked_at(s, "n3", &revoked, &at), 0);
    assert_true(revoked);
    assert_int_equal(at, T0);
    audit_at a;
    audit(&a, T0 + 1, "unrevoke", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdUnrevokeNode u = KEYFLEET__V1__CMD_UNREVOKE_NODE__INIT;
    u.node = (char *)"n3";
    u.audit = &a.e;
    u.revoked_at = at;
    Keyfleet__V1__StateCommand change = KEYFLEET__V1__STATE_COMMAND__INIT;
    change.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_UNREVOKE_NODE;
    change.unrevoke_node = &u;
    assert_int_equal(propose(s, RID, &change, 2), 0);
    /* Revoked again meanwhile, for another reason. */
    audit_at ra;
    audit(&ra, T0 + 5, "revoke", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRevokeNode rc = KEYFLEET__V1__CMD_REVOKE_NODE__INIT;
    rc.node = (char *)"n3";
    rc.audit = &ra.e;
    Keyfleet__V1__StateCommand rcmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    rcmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_NODE;
    rcmd.revoke_node = &rc;
    assert_int_equal(apply(s, &rcmd, NULL), 0);
    (void)approve(s, RID, "op2", 0, T0 + 6);
    assert_int_equal(kfd_store_node_revoked_at(s, "n3", &revoked, &at), 0);
    assert_true(revoked); /* the later revocation stands */
    assert_int_equal(at, T0 + 5);

    /* Control: an unrevoke proposed for the current revocation lifts it. */
    u.revoked_at = T0 + 5;
    assert_int_equal(propose(s, RID2, &change, 2), 0);
    assert_int_equal(approve(s, RID2, "op2", 0, T0 + 7), 0);
    assert_int_equal(kfd_store_node_revoked(s, "n3", &revoked), 0);
    assert_false(revoked);
    kfd_store_close(s);
}

/* A secret id made for a role (held for approval meanwhile) must not land on a role of the same
 * name created again later, perhaps for another node. */
#define WEB_ROLE_ID "11111111-1111-4111-8111-111111111111"

/* Role "web" (node db-1), with tokens of token_ttl seconds (0: the default). */
static int create_web_role(kfd_store *s, uint32_t token_ttl)
{
    audit_at a;
    audit(&a, T0, "approle_create", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdCreateRole cr = KEYFLEET__V1__CMD_CREATE_ROLE__INIT;
    cr.name = (char *)"web";
    cr.role_id = (char *)WEB_ROLE_ID;
    cr.node_name = (char *)"db-1";
    cr.token_ttl_seconds = token_ttl;
    cr.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_ROLE;
    cmd.create_role = &cr;
    return apply(s, &cmd, NULL);
}

static int revoke_cert(kfd_store *s, const char *serial, const char *kind, const char *name)
{
    audit_at a;
    audit(&a, T0, "cert_revoke", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRevokeCert c = KEYFLEET__V1__CMD_REVOKE_CERT__INIT;
    c.serial = (char *)serial;
    c.kind = (char *)kind;
    c.name = (char *)name;
    c.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_CERT;
    cmd.revoke_cert = &c;
    return apply(s, &cmd, NULL);
}

static void test_secret_id_bound_to_role_id(void **state)
{
    (void)state;
    kfd_store *s = open_db("secret.db");
    assert_int_equal(create_web_role(s, 0), 0);
    uint8_t hash[32] = {1};
    audit_at b;
    audit(&b, T0, "approle_secret_id", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdCreateSecretId cs = KEYFLEET__V1__CMD_CREATE_SECRET_ID__INIT;
    cs.role_name = (char *)"web";
    cs.role_id = (char *)"22222222-2222-4222-8222-222222222222"; /* the role of that name before */
    cs.secret_hash.data = hash;
    cs.secret_hash.len = sizeof(hash);
    cs.accessor = (char *)"0123456789abcdef0123456789abcdef";
    cs.audit = &b.e;
    Keyfleet__V1__StateCommand sc = KEYFLEET__V1__STATE_COMMAND__INIT;
    sc.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_SECRET_ID;
    sc.create_secret_id = &cs;
    assert_int_equal(apply(s, &sc, NULL), -ESTALE);
    cs.role_id = (char *)WEB_ROLE_ID;
    assert_int_equal(apply(s, &sc, NULL), 0);
    kfd_store_close(s);
}

/* A login is judged again at apply (review rev44 J1): the secret id the handler matched must be
 * the replica's (its hash) and unexpired at the audit time, and the role row it judged by (bound
 * CIDRs, token TTL, identity) the replica's; a mismatch is recorded as a denial, no token. */
static int login_as(kfd_store *s, const uint8_t *secret_hash, const uint8_t *role_digest, int64_t at, kf_err *err)
{
    audit_at a;
    audit(&a, at, "login", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    static uint8_t token_hash[32];
    token_hash[0]++; /* a new token each time */
    char token_id[17];
    snprintf(token_id, sizeof(token_id), "%016x", token_hash[0]);
    Keyfleet__V1__Timestamp exp = ts(at + 3600);
    Keyfleet__V1__CmdLogin c = KEYFLEET__V1__CMD_LOGIN__INIT;
    c.role_name = (char *)"web";
    c.accessor = (char *)"0123456789abcdef0123456789abcdef";
    c.token_id = token_id;
    c.token_hash = (ProtobufCBinaryData){sizeof(token_hash), token_hash};
    c.expires_at = &exp;
    c.audit = &a.e;
    if (secret_hash != NULL)
        c.secret_hash = (ProtobufCBinaryData){32, (uint8_t *)secret_hash};
    if (role_digest != NULL)
        c.judged_role = (ProtobufCBinaryData){32, (uint8_t *)role_digest};
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_LOGIN;
    cmd.login = &c;
    return apply(s, &cmd, err);
}

static void test_login_judged_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("login.db");
    kf_err err = {0};
    assert_int_equal(create_web_role(s, 3600), 0);
    uint8_t hash[32], other[32];
    memset(hash, 1, sizeof(hash));
    memset(other, 2, sizeof(other));
    audit_at b;
    audit(&b, T0, "approle_secret_id", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__Timestamp sexp = ts(T0 + 100);
    Keyfleet__V1__CmdCreateSecretId cs = KEYFLEET__V1__CMD_CREATE_SECRET_ID__INIT;
    cs.role_name = (char *)"web";
    cs.role_id = (char *)WEB_ROLE_ID;
    cs.secret_hash = (ProtobufCBinaryData){sizeof(hash), hash};
    cs.accessor = (char *)"0123456789abcdef0123456789abcdef";
    cs.expires_at = &sexp;
    cs.audit = &b.e;
    Keyfleet__V1__StateCommand sc = KEYFLEET__V1__STATE_COMMAND__INIT;
    sc.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_SECRET_ID;
    sc.create_secret_id = &cs;
    assert_int_equal(apply(s, &sc, NULL), 0);
    kfd_role role;
    assert_int_equal(kfd_store_get_role(s, "web", NULL, &role), 0);
    uint8_t rd[KFD_JUDGED_LEN], bad_rd[KFD_JUDGED_LEN];
    assert_int_equal(kfd_judged_role(&role, rd), 0);
    role.token_ttl_s = 3 * 365 * 86400; /* as an edited row would say */
    assert_int_equal(kfd_judged_role(&role, bad_rd), 0);
    assert_memory_not_equal(rd, bad_rd, KFD_JUDGED_LEN);
    assert_int_equal(login_as(s, hash, rd, T0 + 1, &err), 0);
    char reason[400];
    assert_int_equal(login_as(s, other, rd, T0 + 2, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "secret id this login was decided on"));
    assert_int_equal(newest_decision(s, reason, sizeof(reason)), KEYFLEET__V1__DECISION__DECISION_DENY);
    assert_non_null(strstr(reason, "refused at apply: "));
    assert_int_equal(login_as(s, hash, bad_rd, T0 + 2, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "token TTL"));
    /* An older version's command carries neither: not compared. */
    assert_int_equal(login_as(s, NULL, NULL, T0 + 3, &err), 0);
    /* Expired at the audit time, whatever the handler read. */
    assert_int_equal(login_as(s, hash, rd, T0 + 100, &err), -EACCES);
    assert_non_null(strstr(err.msg, "expired"));
    refusal_recorded(s, "secret id expired"); /* review rev44b K1 */
    /* A key for a bearer-token caller (review rev44b K2): judged again by the token's and role's
     * rows as this replica holds them, and the token's expiry at the audit time. */
    assert_int_equal(enroll_labelled(s, "vol-j", T0), 0);
    kfd_judged j = {0};
    kfd_volume v;
    assert_int_equal(kfd_store_get_volume(s, "vol-j", &v), 0);
    assert_int_equal(kfd_judged_volume(&v, j.volume), 0);
    kfd_volume_clear(&v);
    kfd_judged_policy(NULL, j.policy);
    snprintf(j.token_id, sizeof(j.token_id), "%016x", 1); /* the first login's token */
    int64_t exp = 0;
    assert_int_equal(kfd_judged_token(s, j.token_id, j.auth, &exp), 0);
    assert_int_equal(exp, T0 + 1 + 3600);
    assert_int_equal(judged_release(s, &j, "", T0 + 10, &err), 0);
    kfd_judged bad = j;
    bad.auth[0] ^= 1; /* the proposer's rows differed */
    assert_int_equal(judged_release(s, &bad, "", T0 + 10, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "AppRole token and role"));
    assert_int_equal(judged_release(s, &j, "", T0 + 1 + 3600, &err), -ECANCELED); /* expired by then */
    bad = j;
    snprintf(bad.token_id, sizeof(bad.token_id), "%s", "ffffffffffffffff"); /* no such token here */
    assert_int_equal(judged_release(s, &bad, "", T0 + 10, &err), -ECANCELED);
    /* A certificate caller (review rev44b K3): refused where its serial is on the denylist. */
    bad = j;
    bad.token_id[0] = '\0';
    snprintf(bad.cert_serial, sizeof(bad.cert_serial), "%s", "1a2b");
    assert_int_equal(judged_release(s, &bad, "", T0 + 10, &err), 0);
    assert_int_equal(revoke_cert(s, "1a2b", "node", "n1"), 0);
    assert_int_equal(judged_release(s, &bad, "", T0 + 11, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "denylist"));
    kfd_store_close(s);
}

/* A first enrollment is judged again at apply (review rev44 J5): the policy it was decided under
 * (which gave its offline copy and fixed its two-part mode) must be the replica's. */
static int enroll_judged(kfd_store *s, const char *vol, const uint8_t *policy_digest, kf_err *err)
{
    audit_at a;
    audit(&a, T0, "enroll", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    a.e.request_id = (char *)RID;
    Keyfleet__V1__VolumeRef v = KEYFLEET__V1__VOLUME_REF__INIT;
    v.id = (char *)vol;
    v.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2;
    v.name = (char *)"data";
    Keyfleet__V1__CmdEnrollVolume c = KEYFLEET__V1__CMD_ENROLL_VOLUME__INIT;
    c.volume = &v;
    c.node = (char *)"n1";
    c.wrapped_key = (char *)"kf:local:v1:xyz";
    c.audit = &a.e;
    c.judged_policy = (ProtobufCBinaryData){KFD_JUDGED_LEN, (uint8_t *)policy_digest};
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME;
    cmd.enroll_volume = &c;
    return apply(s, &cmd, err);
}

/* A first enrollment counts its quote as attested (trust on first use) on the handler's reading
 * that the node has no volumes and no accepted values: judged again at apply (review rev44b K7). */
static void test_tofu_judged_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("tofu.db");
    enroll_tofu = PCRS("a");
    assert_int_equal(enroll(s, "vol-1", "n1", T0), 0);
    kfd_attest_record rec;
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.accepted, PCRS("a"));
    /* Two first enrollments of one boot racing: the second finds the same values accepted. */
    assert_int_equal(enroll(s, "vol-2", "n1", T0 + 1), 0);
    /* Decided as first on other values (the proposer's rows had no volume of n1): refused and
     * recorded, nothing written. */
    enroll_tofu = PCRS("b");
    uint64_t before = audit_size(s);
    assert_int_equal(enroll(s, "vol-3", "n1", T0 + 2), -ECANCELED);
    assert_int_equal(audit_size(s), before + 1);
    refusal_recorded(s, "trust on first use");
    kfd_volume v;
    assert_int_equal(kfd_store_get_volume(s, "vol-3", &v), -ENOENT);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_string_equal(rec.accepted, PCRS("a"));
    /* A node that has a volume (enrolled without a quote) gets no baseline by enrolling another. */
    enroll_tofu = NULL;
    assert_int_equal(enroll(s, "vol-4", "n2", T0), 0);
    enroll_tofu = PCRS("a");
    assert_int_equal(enroll(s, "vol-5", "n2", T0 + 1), -ECANCELED);
    enroll_tofu = NULL;
    kfd_store_close(s);
}

static void test_enroll_judged_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("enroll-judged.db");
    kf_err err = {0};
    assert_int_equal(put_policy(s, 1, "rules: [allow-prod]\n"), 0);
    uint8_t good[KFD_JUDGED_LEN], bad[KFD_JUDGED_LEN];
    assert_int_equal(kfd_judged_policy("rules: [allow-prod]\n", good), 0);
    assert_int_equal(kfd_judged_policy("rules: [allow-all, offline_fallback]\n", bad), 0);
    assert_int_equal(enroll_judged(s, "vol-e", bad, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "policy rules"));
    char reason[400];
    assert_int_equal(newest_decision(s, reason, sizeof(reason)), KEYFLEET__V1__DECISION__DECISION_DENY);
    kfd_volume v;
    assert_int_equal(kfd_store_get_volume(s, "vol-e", &v), -ENOENT); /* nothing enrolled */
    assert_int_equal(enroll_judged(s, "vol-e", good, &err), 0);
    assert_int_equal(kfd_store_get_volume(s, "vol-e", &v), 0);
    kfd_volume_clear(&v);
    kfd_store_close(s);
}

/* An operator command (here an approval) carries its caller's certificate serial, and each
 * replica refuses one that is on its own denylist (review rev44b K3), whatever the front door
 * that let the caller in read from its denylist. */
static void test_operator_denylisted_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("opdeny.db");
    assert_int_equal(create_pending(s, RID, "n1", "v1", 1, T0 + 600, false), 0);
    assert_int_equal(revoke_cert(s, "0bad", "operator", "mallory"), 0);
    uint64_t before = audit_size(s);
    kf_err err = {0};
    assert_int_equal(approve_by(s, RID, "mallory", "0bad", 0, T0 + 1, &err), -EACCES);
    assert_non_null(strstr(err.msg, "serial 0bad) is on this coordinator's denylist"));
    assert_int_equal(state_of(s, RID), KFD_PENDING_WAITING); /* nothing applied */
    assert_int_equal(audit_size(s), before);
    /* Another operator's certificate, or a command that carries none (an older version's). */
    assert_int_equal(approve_as(s, RID, "alice", "0a11ce", T0 + 2), 0);
    assert_int_equal(state_of(s, RID), KFD_PENDING_APPROVED);
    assert_int_equal(create_pending(s, RID2, "n1", "v1", 1, T0 + 600, false), 0);
    assert_int_equal(approve_as(s, RID2, "mallory", "0bad2", T0 + 3), 0);
    /* Revoking a certificate withdraws the approvals given with it to requests not yet decided
     * or used (reviews rev45b R45b-2, rev45c R45c-3): RID2 (approved with it alone, not yet
     * released) waits again; RID3 (one of two) lost it, so alice's does not complete it; RID
     * (alice's) keeps its approval. By the serial, whatever kind and name the revocation gives
     * (keyfleetctl cert revoke SERIAL gives none). */
    assert_int_equal(create_pending(s, RID3, "n1", "v1", 2, T0 + 600, false), 0);
    assert_int_equal(approve_as(s, RID3, "mallory", "0bad2", T0 + 4), 0);
    /* A revocation naming alice but another serial (any operator can revoke a serial) withdraws
     * nothing of hers (R45c-4). */
    assert_int_equal(revoke_cert(s, "0f00", "operator", "alice"), 0);
    assert_int_equal(state_of(s, RID), KFD_PENDING_APPROVED);
    assert_int_equal(revoke_cert(s, "0bad2", "", ""), 0);
    kfd_pending p;
    assert_int_equal(kfd_store_get_pending(s, RID2, &p), 0);
    assert_int_equal(p.state, KFD_PENDING_WAITING);
    assert_int_equal(p.approvals_have, 0);
    bool dup = true;
    assert_int_equal(kfd_store_has_approved(s, RID3, "mallory", &dup), 0);
    assert_false(dup);
    assert_int_equal(approve_as(s, RID3, "alice", "0a11ce", T0 + 5), 0);
    assert_int_equal(state_of(s, RID3), KFD_PENDING_WAITING);
    assert_int_equal(state_of(s, RID), KFD_PENDING_APPROVED);
    /* An approval given with another certificate (or none) is not withdrawn with this one. */
    assert_int_equal(approve_as(s, RID2, "mallory", "0600d", T0 + 6), 0);
    assert_int_equal(revoke_cert(s, "0bad3", "operator", "mallory"), 0);
    assert_int_equal(state_of(s, RID2), KFD_PENDING_APPROVED);
    kfd_store_close(s);
}

/* A pending request's approval count and TOTP rule, an approval's erase_all_allowed and a
 * repeated recovery escrow rest on the handler's policy: each carries its text's digest, compared
 * at apply (review rev44 J6). A pending request or approval so refused is rolled back; an escrow
 * (a key) is recorded as refused. */
static void test_policy_judged_for_approvals(void **state)
{
    (void)state;
    kfd_store *s = open_db("j6.db");
    uint8_t good[KFD_JUDGED_LEN], bad[KFD_JUDGED_LEN];
    kfd_judged_policy(NULL, good); /* the store's policy: none put yet */
    memcpy(bad, good, sizeof(bad));
    bad[0] ^= 1;
    next_judged_policy = bad;
    uint64_t before = audit_size(s);
    assert_int_equal(create_pending(s, RID, "n1", "v1", 1, T0 + 600, false), -EAGAIN);
    assert_int_equal(audit_size(s), before);
    kfd_pending p;
    assert_int_equal(kfd_store_get_pending(s, RID, &p), -ENOENT);
    next_judged_policy = good;
    assert_int_equal(create_pending(s, RID, "n1", "v1", 1, T0 + 600, false), 0);
    next_judged_policy = bad;
    assert_int_equal(approve_as(s, RID, "alice", NULL, T0 + 1), -EAGAIN);
    assert_int_equal(state_of(s, RID), KFD_PENDING_WAITING);
    next_judged_policy = good;
    assert_int_equal(approve_as(s, RID, "alice", NULL, T0 + 1), 0);
    assert_int_equal(state_of(s, RID), KFD_PENDING_APPROVED);
    next_judged_policy = NULL;
    assert_int_equal(enroll(s, "v1", "n1", T0), 0);
    next_judged_policy = bad;
    before = audit_size(s);
    assert_int_equal(escrow(s, "n1", "v1", RID2, "w1", false, T0 + 2), -ECANCELED);
    assert_int_equal(audit_size(s), before + 1);
    refusal_recorded(s, "policy rules");
    next_judged_policy = good;
    assert_int_equal(escrow(s, "n1", "v1", RID2, "w1", false, T0 + 2), 0);
    next_judged_policy = NULL;
    /* A repeated LUKS2 escrow hands the live key back: within 5 minutes of its escrow and before
     * a reveal only, judged again at apply and recorded when refused (review rev45b R45b-3). */
    assert_int_equal(escrow(s, "n1", "v1", RID2, "w1", false, T0 + 2 + 300), 0);
    before = audit_size(s);
    assert_int_equal(escrow(s, "n1", "v1", RID2, "w1", false, T0 + 2 + 301), -EACCES);
    assert_int_equal(audit_size(s), before + 1);
    refusal_recorded(s, "only within 5 minutes of its escrow");
    assert_int_equal(escrow(s, "n1", "v1", RID2, "w1", false, T0 + 1), -EACCES); /* before its escrow */
    /* An operator change let through without a held request on the handler's policy carries it
     * in the command itself (review rev45b R45b-1). */
    audit_at ra;
    audit(&ra, T0 + 3, "revoke", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRevokeNode rn = KEYFLEET__V1__CMD_REVOKE_NODE__INIT;
    rn.node = (char *)"n9";
    rn.audit = &ra.e;
    Keyfleet__V1__StateCommand rc = KEYFLEET__V1__STATE_COMMAND__INIT;
    rc.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_NODE;
    rc.revoke_node = &rn;
    rc.judged_policy = (ProtobufCBinaryData){KFD_JUDGED_LEN, bad};
    kf_err err = {0};
    assert_int_equal(apply(s, &rc, &err), -EAGAIN);
    assert_non_null(strstr(err.msg, "policy rules"));
    bool revoked = true;
    assert_int_equal(kfd_store_node_revoked(s, "n9", &revoked), 0);
    assert_false(revoked);
    rc.judged_policy = (ProtobufCBinaryData){KFD_JUDGED_LEN, good};
    assert_int_equal(apply(s, &rc, NULL), 0);
    kfd_store_close(s);
}

static void test_cert_denylist(void **state)
{
    (void)state;
    kfd_store *s = open_db("certs.db");
    bool revoked = true;
    assert_int_equal(kfd_store_cert_revoked(s, "1a2b", &revoked), 0);
    assert_false(revoked);
    assert_int_equal(revoke_cert(s, "1a2b", "operator", "bob"), 0);
    assert_int_equal(kfd_store_cert_revoked(s, "1a2b", &revoked), 0);
    assert_true(revoked);
    assert_int_equal(kfd_store_cert_revoked(s, "1a2c", &revoked), 0);
    assert_false(revoked);
    assert_int_equal(revoke_cert(s, "1a2b", "operator", "bob"), -EEXIST);
    kfd_store_close(s);
}


static const char *escrow_kcv; /* the next escrow's key check value (NULL: none, as before) */
static const char *escrow_replay_of; /* what the next escrow was decided as (NULL: by the row, as the handler) */

static int escrow(kfd_store *s, const char *node, const char *vol, const char *rid, const char *wrapped, bool zfs,
                  int64_t at)
{
    audit_at a;
    audit(&a, at, "recovery_escrow", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRecoveryEscrow c = KEYFLEET__V1__CMD_RECOVERY_ESCROW__INIT;
    c.volume_id = (char *)vol;
    c.node = (char *)node;
    c.wrapped = (char *)wrapped;
    c.kcv = (char *)(escrow_kcv != NULL ? escrow_kcv : "");
    kfd_recovery cur;
    const char *decided = "new";
    if (kfd_store_get_recovery(s, vol, &cur) == 0) {
        decided = cur.next_request_id[0] != '\0' && strcmp(cur.next_request_id, rid) == 0 ? "next"
                  : strcmp(cur.request_id, rid) == 0                                   ? "escrowed"
                                                                                          : "new";
        kfd_recovery_clear(&cur);
    }
    c.replay_of = (char *)(escrow_replay_of != NULL ? escrow_replay_of : decided);
    c.request_id = (char *)rid;
    c.zfs = zfs;
    c.audit = &a.e;
    c.judged_policy = judged_policy_field();
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_ESCROW;
    cmd.recovery_escrow = &c;
    return apply(s, &cmd, NULL);
}

static int recovery_confirm(kfd_store *s, const char *node, const char *vol, const char *rid, int64_t at)
{
    audit_at a;
    audit(&a, at, "recovery_replaced", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRecoveryConfirm c = KEYFLEET__V1__CMD_RECOVERY_CONFIRM__INIT;
    c.volume_id = (char *)vol;
    c.node = (char *)node;
    c.request_id = (char *)rid;
    c.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_CONFIRM;
    cmd.recovery_confirm = &c;
    return apply(s, &cmd, NULL);
}

/* A held reveal as rpc_recovery.c proposes it: rule "recovery", no change, op1 its proposer. */
static int propose_reveal(kfd_store *s, const char *id, const char *vol, uint32_t needed)
{
    audit_at a;
    audit(&a, T0, "recovery_request", KEYFLEET__V1__DECISION__DECISION_PENDING);
    Keyfleet__V1__VolumeRef v = KEYFLEET__V1__VOLUME_REF__INIT;
    v.id = (char *)vol;
    Keyfleet__V1__Timestamp c = ts(T0), x = ts(T0 + 600);
    Keyfleet__V1__CmdCreatePending p = KEYFLEET__V1__CMD_CREATE_PENDING__INIT;
    p.request_id = (char *)id;
    p.node = (char *)"n1";
    p.volume = &v;
    p.created_at = &c;
    p.expires_at = &x;
    p.approvals_needed = needed;
    p.rule = (char *)"recovery";
    p.audit = &a.e;
    p.proposer = (char *)"op1";
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_PENDING;
    cmd.create_pending = &p;
    return apply(s, &cmd, NULL);
}

/* next_rid: the staged replacement the reveal showed too ("": none). */
static int reveal_with(kfd_store *s, const char *id, const char *vol, const char *op, int64_t at, const char *next_rid)
{
    audit_at a;
    audit(&a, at, "recovery_reveal", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRecoveryReveal c = KEYFLEET__V1__CMD_RECOVERY_REVEAL__INIT;
    c.volume_id = (char *)vol;
    c.operator_ = (char *)op;
    c.request_id = (char *)id;
    c.escrow_next_request_id = (char *)next_rid;
    c.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_REVEAL;
    cmd.recovery_reveal = &c;
    return apply(s, &cmd, NULL);
}

static int reveal(kfd_store *s, const char *id, const char *vol, const char *op, int64_t at)
{
    return reveal_with(s, id, vol, op, at, "");
}

static size_t to_replace(kfd_store *s, const char *node)
{
    char *ids[4];
    size_t n = 0;
    assert_int_equal(kfd_store_recovery_to_replace(s, node, ids, 4, &n), 0);
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    return n;
}

/* A reveal as the handler binds it: to the escrow row it read and, ZFS, the dataset key's kcv. */
static int reveal_zfs(kfd_store *s, const char *id, const char *vol, const char *escrow_rid, const char *vol_kcv,
                      int64_t at)
{
    audit_at a;
    audit(&a, at, "recovery_reveal", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRecoveryReveal c = KEYFLEET__V1__CMD_RECOVERY_REVEAL__INIT;
    c.volume_id = (char *)vol;
    c.operator_ = (char *)"op1";
    c.request_id = (char *)id;
    c.escrow_request_id = (char *)escrow_rid;
    c.escrow_kcv = (char *)"";
    c.escrow_next_request_id = (char *)"";
    c.volume_key_kcv = (char *)vol_kcv;
    c.audit = &a.e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_REVEAL;
    cmd.recovery_reveal = &c;
    return apply(s, &cmd, NULL);
}

/* Review rev26c L2: ZFS, a rotation committed in the second of the reveal, before the handler
 * read the key (the reveal shows the new key): the dataset's key is still the revealed one, so an
 * escrow without a rotation must not clear the mark (by seconds it looked rotated). */
static void test_recovery_zfs_same_second(void **state)
{
    (void)state;
    kfd_store *s = open_db("recovery_l2.db");
    kfd_recovery rec;
    enroll_zfs = true;
    assert_int_equal(enroll(s, "vz", "n1", T0), 0);
    enroll_zfs = false;
    assert_int_equal(release_kcv(s, "n1", "vz", KCV1, T0 + 1), 0);
    assert_int_equal(escrow(s, "n1", "vz", RID, "", true, T0 + 1), 0);
    assert_int_equal(rotate(s, "n1", "vz", false, KCV2, T0 + 5), 0);
    assert_int_equal(rotate(s, "n1", "vz", true, KCV2, T0 + 5), 0);
    assert_int_equal(propose_reveal(s, RID2, "vz", 2), 0);
    assert_int_equal(approve(s, RID2, "op2", 0, T0 + 5), 0);
    assert_int_equal(reveal_zfs(s, RID2, "vz", RID, KCV1, T0 + 5), -ESTALE); /* rotated since the handler read it */
    assert_int_equal(reveal_zfs(s, RID2, "vz", RID, KCV2, T0 + 5), 0);
    assert_int_equal(kfd_store_get_recovery(s, "vz", &rec), 0);
    assert_string_equal(rec.revealed_kcv, KCV2);
    kfd_recovery_clear(&rec);
    assert_int_equal(escrow(s, "n1", "vz", RID3, "", true, T0 + 6), -ESTALE); /* KCV2 is still the dataset's */
    assert_int_equal(to_replace(s, "n1"), 1);
    assert_int_equal(rotate(s, "n1", "vz", false, KCV3, T0 + 6), 0);
    assert_int_equal(rotate(s, "n1", "vz", true, KCV3, T0 + 6), 0);
    assert_int_equal(escrow(s, "n1", "vz", RID3, "", true, T0 + 6), 0); /* rotated in the same second: it counts */
    assert_int_equal(to_replace(s, "n1"), 0);
    assert_int_equal(kfd_store_get_recovery(s, "vz", &rec), 0);
    assert_string_equal(rec.revealed_kcv, "");
    kfd_recovery_clear(&rec);
    kfd_store_close(s);
}

/* Review rev26b F1: a volume enrolled under tpm_and_network keeps that mode in the store; the
 * escrow of a recovery key for it is refused at apply, whatever rule the handler saw. */
static void test_recovery_two_part_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("recovery_f1.db");
    kfd_volume v;
    enroll_two_part = true;
    assert_int_equal(enroll(s, "vt", "n1", T0), 0);
    enroll_two_part = false;
    assert_int_equal(enroll(s, "vp", "n1", T0), 0);
    assert_int_equal(kfd_store_get_volume(s, "vt", &v), 0);
    assert_true(v.tpm_and_network);
    kfd_volume_clear(&v);
    assert_int_equal(kfd_store_get_volume(s, "vp", &v), 0);
    assert_false(v.tpm_and_network);
    kfd_volume_clear(&v);
    assert_int_equal(escrow(s, "n1", "vt", RID, "w1", false, T0 + 1), -EACCES);
    assert_int_equal(escrow(s, "n1", "vp", RID, "w1", false, T0 + 1), 0); /* control */
    kfd_store_close(s);
}

/* docs/recovery.md: the escrow only for the enrolling node, not revoked, a replay changing
 * nothing; the reveal only by the proposer of an approved, unspent, unexpired "recovery" request
 * for that volume, once; a reveal's approvals are no release's; a new escrow retires a revealed
 * one, but a revealed ZFS key only after a rotation. */
/* Review rev45c R45c-6: a LUKS2 replacement key shown by a reveal before the node confirmed it is
 * marked on its own (next_revealed_at); a repeat of its escrow does not hand it back, within the
 * window or not, at the handler (the same rule) or at apply. */
static void test_recovery_replacement_revealed(void **state)
{
    (void)state;
    kfd_recovery rec;
    memset(&rec, 0, sizeof(rec));
    snprintf(rec.request_id, sizeof(rec.request_id), "%s", RID);
    rec.created_at = T0;
    snprintf(rec.next_request_id, sizeof(rec.next_request_id), "%s", RID3);
    rec.next_at = T0 + 10;
    assert_null(kfd_recovery_replay_refusal(&rec, RID3, T0 + 10));
    assert_null(kfd_recovery_replay_refusal(&rec, RID, T0 + 10));
    rec.revealed_at = T0 + 5; /* the escrowed key's mark is not the replacement's */
    assert_null(kfd_recovery_replay_refusal(&rec, RID3, T0 + 10));
    assert_string_equal(kfd_recovery_replay_refusal(&rec, RID, T0 + 10), "this recovery key was revealed");
    rec.next_revealed_at = T0 + 11;
    assert_string_equal(kfd_recovery_replay_refusal(&rec, RID3, T0 + 12), "this recovery key was revealed");
    rec.next_revealed_at = 0;
    assert_string_equal(kfd_recovery_replay_refusal(&rec, RID3, T0 + 10 + KFD_RECOVERY_REPLAY_WINDOW_S + 1),
                        "it is handed back only within 5 minutes of its escrow");
    assert_string_equal(kfd_recovery_replay_refusal(&rec, RID3, T0 + 9), "it is handed back only within 5 minutes of its escrow");

    kfd_store *s = open_db("recovery-next.db");
    assert_int_equal(enroll(s, "v1", "n1", T0), 0);
    assert_int_equal(escrow(s, "n1", "v1", RID, "w1", false, T0), 0);
    assert_int_equal(propose_reveal(s, RID2, "v1", 1), 0);
    assert_int_equal(reveal(s, RID2, "v1", "op1", T0 + 2), 0);
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w3", false, T0 + 4), 0); /* the replacement waits apart */
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w3", false, T0 + 5), 0); /* a repeat: handed back */
    /* A second reveal shows the staged replacement too. */
    assert_int_equal(propose_reveal(s, RID4, "v1", 1), 0);
    assert_int_equal(reveal_with(s, RID4, "v1", "op1", T0 + 6, RID3), 0);
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), 0);
    assert_int_equal(rec.next_revealed_at, T0 + 6);
    kfd_recovery_clear(&rec);
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w3", false, T0 + 7), -EACCES);
    refusal_recorded(s, "was revealed");
    kfd_store_close(s);
}

static const uint8_t *seen_policy; /* the next heartbeat's judged policy digest (NULL: none) */

/* A heartbeat (CmdNodeSeen) of node n1 at at carrying clk. */
static int node_seen(kfd_store *s, Keyfleet__V1__AttestClock *clk, int64_t at)
{
    Keyfleet__V1__CmdNodeSeen c = KEYFLEET__V1__CMD_NODE_SEEN__INIT;
    c.node = (char *)"n1";
    c.at = at;
    c.attest_clock = clk;
    if (seen_policy != NULL)
        c.judged_policy = (ProtobufCBinaryData){KFD_JUDGED_LEN, (uint8_t *)seen_policy};
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_NODE_SEEN;
    cmd.node_seen = &c;
    return apply(s, &cmd, NULL);
}

/* A store whose node n1 enrolled vol-j under the policy "allow-prod", and whose first release
 * (at at) recorded the TPM state (reset 5, restart 1, clock): j judges as the handler would, clk
 * is that quote and judged_clock points at it. */
static kfd_store *open_tpm_judged(const char *db, kfd_judged *j, Keyfleet__V1__AttestClock *clk, uint64_t clock,
                                  int64_t at)
{
    kf_err err = {0};
    kfd_store *s = open_db(db);
    assert_int_equal(put_policy(s, 1, "rules: [allow-prod]\n"), 0);
    assert_int_equal(enroll_labelled(s, "vol-j", T0), 0);
    memset(j, 0, sizeof(*j));
    j->has_tpm = true;
    kfd_volume v;
    assert_int_equal(kfd_store_get_volume(s, "vol-j", &v), 0);
    assert_int_equal(kfd_judged_volume(&v, j->volume), 0);
    kfd_volume_clear(&v);
    assert_int_equal(kfd_judged_policy("rules: [allow-prod]\n", j->policy), 0);
    kfd_judged_tpm(NULL, j->tpm);
    keyfleet__v1__attest_clock__init(clk);
    clk->reset_count = 5;
    clk->restart_count = 1;
    clk->clock = clock;
    clk->clock_known = true;
    judged_clock = clk;
    assert_int_equal(judged_release(s, j, KCV1, at, &err), 0);
    return s;
}

/* Review rev46, R46-3: a heartbeat's quote raises the recorded TPM state only where it holds at
 * apply (rules 2 to 4 against this replica's record). Before, a heartbeat that an edited leader
 * let through laid a clone's state (set ten days forward, or a later boot a day back) on every
 * replica unjudged, and the clone's release that the apply had refused then passed everywhere. */
static void test_heartbeat_clock_judged_at_apply(void **state)
{
    (void)state;
    kf_err err = {0};
    kfd_judged j;
    Keyfleet__V1__AttestClock clk;
    kfd_store *s = open_tpm_judged("heartbeat-clock.db", &j, &clk, 1ull << 30 /* about 12 days */, T0 + 7);
    kfd_attest_record rec;
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    kfd_judged_tpm(&rec, j.tpm);

    /* Rule 4: a TPM set ten days ahead. Its heartbeat leaves the record as it was... */
    Keyfleet__V1__AttestClock fwd = clk;
    fwd.clock = clk.clock + 10ull * 86400 * 1000;
    assert_int_equal(node_seen(s, &fwd, T0 + 8), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.clock, clk.clock);
    assert_int_equal(rec.clock_at, T0 + 7);
    /* Flagged as let through by `rollback: audit`, it is judged all the same unless it carries
     * this replica's policy (review rev46b R46b-2: the flag is the leader's word). */
    fwd.rollback_audited = true;
    assert_int_equal(node_seen(s, &fwd, T0 + 8), 0);
    uint8_t other_policy[KFD_JUDGED_LEN];
    assert_int_equal(kfd_judged_policy("rules: [edited]\n", other_policy), 0);
    seen_policy = other_policy;
    assert_int_equal(node_seen(s, &fwd, T0 + 8), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.clock, clk.clock);
    seen_policy = NULL;
    fwd.rollback_audited = false;
    /* ... so its release is still refused. */
    fwd.clock += 1000;
    judged_clock = &fwd;
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 9, &err), -ECANCELED);
    assert_non_null(strstr(err.msg, "ran ahead"));

    /* Rule 3: a copy booted elsewhere (reset one up, its clock a day back). */
    Keyfleet__V1__AttestClock clone = clk;
    clone.reset_count = 6;
    clone.clock = clk.clock - 86400ull * 1000;
    assert_int_equal(node_seen(s, &clone, T0 + 10), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.reset_count, 5);
    assert_int_equal(rec.clock, clk.clock);

    /* An honest heartbeat raises it: the same boot a minute on, then a reboot that lost a little. */
    Keyfleet__V1__AttestClock next = clk;
    next.clock = clk.clock + 60000;
    assert_int_equal(node_seen(s, &next, T0 + 67), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.clock, next.clock);
    assert_int_equal(rec.clock_at, T0 + 67);
    next.reset_count = 6;
    next.clock -= 1000;
    assert_int_equal(node_seen(s, &next, T0 + 200), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.reset_count, 6);
    /* Under this replica's own `rollback: audit` policy, an audited quote raises it as decided. */
    Keyfleet__V1__AttestClock audited = next;
    audited.clock = next.clock + 10ull * 86400 * 1000;
    audited.rollback_audited = true;
    seen_policy = j.policy;
    assert_int_equal(node_seen(s, &audited, T0 + 201), 0);
    seen_policy = NULL;
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.clock, audited.clock);
    judged_clock = NULL;
    kfd_store_close(s);
}

/* Review rev46, R46-6: an acceptance of a rolled-back TPM state (the held quote's) dates the
 * accepted clock when that quote came, not at the acceptance: accepted an hour later, the node's
 * next honest quote is not "ahead" by the hour, at the handler or at apply. */
static void test_rollback_accept_dated_by_quote(void **state)
{
    (void)state;
    kf_err err = {0};
    kfd_judged j;
    Keyfleet__V1__AttestClock clk;
    kfd_store *s = open_tpm_judged("accept-dating.db", &j, &clk, 10000000, T0 + 10);
    /* A seen quote that is not behind the record (the same boot, later): an acceptance carrying
     * it lays nothing, whatever the leader's counters said (review rev46c R46c-1). */
    Keyfleet__V1__AttestClock later = clk;
    later.clock = clk.clock + 5000;
    audit_at la;
    audit(&la, T0 + 15, "policy_deny", KEYFLEET__V1__DECISION__DECISION_DENY);
    Keyfleet__V1__CmdAttest lc = KEYFLEET__V1__CMD_ATTEST__INIT;
    lc.node = (char *)"n1";
    lc.kind = (char *)"seen";
    lc.pcrs = (char *)PCRS("a");
    lc.clock = &later;
    lc.audit = &la.e;
    Keyfleet__V1__StateCommand lm = KEYFLEET__V1__STATE_COMMAND__INIT;
    lm.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST;
    lm.attest = &lc;
    assert_int_equal(apply(s, &lm, NULL), 0);
    audit_at ea;
    Keyfleet__V1__CmdAttest ec;
    Keyfleet__V1__StateCommand em;
    accept_cmd(&ea, &ec, &em, PCRS("a"), "");
    ec.clock = &later;
    kf_err eerr = {0};
    assert_int_equal(apply(s, &em, &eerr), -ESTALE);
    assert_non_null(strstr(eerr.msg, "not behind"));
    /* The rolled-back TPM's quote (reset 4) at T0 + 20, seen (its release refused). */
    Keyfleet__V1__AttestClock back = KEYFLEET__V1__ATTEST_CLOCK__INIT;
    back.reset_count = 4;
    back.clock = 5000000;
    back.clock_known = true;
    audit_at ha;
    audit(&ha, T0 + 20, "attest_hold", KEYFLEET__V1__DECISION__DECISION_DENY);
    Keyfleet__V1__CmdAttest hc = KEYFLEET__V1__CMD_ATTEST__INIT;
    hc.node = (char *)"n1";
    hc.kind = (char *)"seen";
    hc.pcrs = (char *)PCRS("a");
    hc.clock = &back;
    hc.audit = &ha.e;
    Keyfleet__V1__StateCommand hm = KEYFLEET__V1__STATE_COMMAND__INIT;
    hm.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST;
    hm.attest = &hc;
    assert_int_equal(apply(s, &hm, NULL), 0);
    /* An acceptance carrying another TPM state than the quote this replica saw (a clone's, put
     * into the leader's row) is refused: nothing is laid on the record (review rev46b R46b-1). */
    audit_at aa;
    Keyfleet__V1__CmdAttest ac;
    Keyfleet__V1__StateCommand am;
    accept_cmd(&aa, &ac, &am, PCRS("a"), "");
    aa.time.seconds = T0 + 20 + 3600;
    Keyfleet__V1__AttestClock clone = back;
    clone.clock = back.clock - 86400ull * 1000 * 3 / 100;
    ac.clock = &clone;
    kf_err aerr = {0};
    assert_int_equal(apply(s, &am, &aerr), -ESTALE);
    assert_non_null(strstr(aerr.msg, "not the quote this coordinator saw"));
    kfd_attest_record rec;
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.clock, later.clock); /* as the later seen quote raised it */
    /* Accepted an hour later, as the handler builds it: the seen quote's state. */
    ac.clock = &back;
    assert_int_equal(apply(s, &am, NULL), 0);
    assert_int_equal(kfd_store_get_attest(s, "n1", &rec), 0);
    assert_int_equal(rec.clock, 5000000);
    assert_int_equal(rec.clock_at, T0 + 20);
    kfd_judged_tpm(&rec, j.tpm);
    /* The TPM's next quote a minute after the acceptance: its clock ran 3660 s since. */
    Keyfleet__V1__AttestClock next = back;
    next.clock = 5000000 + 3660ull * 1000;
    judged_clock = &next;
    assert_int_equal(judged_release(s, &j, KCV1, T0 + 20 + 3660, &err), 0);
    judged_clock = NULL;
    kfd_store_close(s);
}

/* Review rev46, R46-2: the key a LUKS2 escrow hands out is judged at apply by its check value
 * against the replica's row. A repeat must carry the key escrowed here under its request id; a
 * new escrow must not carry a key escrowed here. Before, a leader whose row held the revealed key
 * under a request id only it knew answered a "repeat" with that key, and the honest replicas
 * applied the command as a new escrow: ALLOW, the revealed key staged anew, no denial anywhere. */
static void test_recovery_escrow_key_judged(void **state)
{
    (void)state;
    kfd_store *s = open_db("escrow-kcv.db");
    assert_int_equal(enroll(s, "v1", "n1", T0), 0);
    escrow_kcv = "K1";
    assert_int_equal(escrow(s, "n1", "v1", RID, "w1", false, T0), 0);
    assert_int_equal(escrow(s, "n1", "v1", RID, "w1", false, T0 + 1), 0); /* a repeat: the same key */
    escrow_kcv = "K2";
    assert_int_equal(escrow(s, "n1", "v1", RID, "w1", false, T0 + 1), -ECANCELED); /* another key */
    refusal_recorded(s, "is not the one escrowed here");
    assert_int_equal(propose_reveal(s, RID2, "v1", 1), 0);
    assert_int_equal(reveal(s, RID2, "v1", "op1", T0 + 2), 0); /* K1 shown to an operator */
    /* An hour later, a request id this replica never saw, answered with the revealed K1. */
    escrow_kcv = "K1";
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w1", false, T0 + 3600), -ECANCELED);
    refusal_recorded(s, "handed out as a new recovery key");
    kfd_recovery rec;
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), 0);
    assert_string_equal(rec.next_request_id, ""); /* nothing staged */
    kfd_recovery_clear(&rec);
    /* A fresh key is staged; a new escrow carrying that staged key is refused too. */
    escrow_kcv = "K3";
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w3", false, T0 + 3600), 0);
    assert_int_equal(escrow(s, "n1", "v1", RID4, "w3", false, T0 + 3601), -ECANCELED);
    /* A request the handler decided as a repeat of the waiting replacement, which this replica's
     * row does not hold under that id (a revealed key overwritten since, staged again on the
     * leader alone: review rev46b R46b-3), whatever key it carries; and the converse. */
    escrow_kcv = "K2";
    escrow_replay_of = "next";
    assert_int_equal(escrow(s, "n1", "v1", RID4, "w2", false, T0 + 3602), -ECANCELED);
    refusal_recorded(s, "decided as another repeat or escrow");
    escrow_kcv = "K3";
    escrow_replay_of = "new";
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w3", false, T0 + 3602), -ECANCELED);
    escrow_replay_of = ""; /* an older coordinator's command: not compared (review rev46c R46c-3) */
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w3", false, T0 + 3602), 0);
    escrow_replay_of = NULL;
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w3", false, T0 + 3602), 0); /* decided as its row says */
    escrow_kcv = NULL;
    kfd_store_close(s);
}

static void test_recovery_at_apply(void **state)
{
    (void)state;
    kfd_store *s = open_db("recovery.db");
    kfd_recovery rec;
    assert_int_equal(enroll(s, "v1", "n1", T0), 0);
    assert_int_equal(escrow(s, "n2", "v1", RID, "w1", false, T0), -EACCES);
    refusal_recorded(s, ""); /* a recovery key's escrow refused at apply is recorded (rev45 R45-2) */
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), -ENOENT);
    assert_int_equal(escrow(s, "n1", "v1", RID, "w1", false, T0), 0);
    assert_int_equal(escrow(s, "n1", "v1", RID, "w2", false, T0), 0); /* a replay */
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), 0);
    assert_string_equal(rec.wrapped, "w1");
    kfd_recovery_clear(&rec);
    assert_int_equal(enroll(s, "v3", "n3", T0), 0);
    assert_int_equal(revoke_node(s, "n3"), 0);
    assert_int_equal(escrow(s, "n3", "v3", RID, "w", false, T0), -EACCES);

    /* A release request approved for v1 is no reveal. */
    assert_int_equal(create_pending(s, RID3, "n1", "v1", 1, T0 + 600, false), 0);
    assert_int_equal(approve(s, RID3, "op1", 0, T0), 0);
    assert_int_equal(reveal(s, RID3, "v1", "op1", T0 + 1), -EACCES);

    assert_int_equal(propose_reveal(s, RID2, "v1", 2), 0);
    assert_int_equal(state_of(s, RID2), KFD_PENDING_WAITING);
    assert_int_equal(reveal(s, RID2, "v1", "op1", T0 + 1), -EACCES); /* one of two */
    assert_int_equal(approve(s, RID2, "op1", 0, T0 + 1), -EEXIST);  /* the proposer counts once */
    assert_int_equal(approve(s, RID2, "op2", 0, T0 + 1), 0);
    assert_int_equal(state_of(s, RID2), KFD_PENDING_APPROVED);
    assert_int_equal(record_release(s, RID2, "n1", "v1", true, T0 + 1), -EACCES);
    assert_int_equal(reveal(s, RID2, "v1", "op2", T0 + 1), -EACCES);     /* not the proposer */
    assert_int_equal(reveal(s, RID2, "v3", "op1", T0 + 1), -EACCES);     /* another volume */
    assert_int_equal(reveal(s, RID2, "v1", "op1", T0 + 600), -ESTALE);   /* expired */
    refusal_recorded(s, "expired"); /* a reveal refused at apply is recorded too (rev45 R45-2) */
    assert_int_equal(to_replace(s, "n1"), 0);
    assert_int_equal(reveal(s, RID2, "v1", "op1", T0 + 2), 0);
    assert_int_equal(reveal(s, RID2, "v1", "op1", T0 + 3), -ESTALE);     /* spent */
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), 0);
    assert_int_equal(rec.revealed_at, T0 + 2);
    assert_string_equal(rec.revealed_by, "op1");
    kfd_recovery_clear(&rec);
    assert_int_equal(to_replace(s, "n1"), 1);
    assert_int_equal(to_replace(s, "n2"), 0);
    /* Its escrow repeated, within the window: not after it was revealed (review rev45b R45b-3). */
    assert_int_equal(escrow(s, "n1", "v1", RID, "w1", false, T0 + 3), -EACCES);
    refusal_recorded(s, "was revealed");

    /* An escrow decided as a ZFS dataset's for a LUKS2 volume (the kind edited on the leader) is
     * refused and recorded: it would drop the only recovery key the keyslot has (review rev45c
     * R45c-5). A ZFS dataset's revealed key: test_recovery_zfs_same_second. */
    assert_int_equal(escrow(s, "n1", "v1", RID3, "", true, T0 + 4), -ECANCELED);
    refusal_recorded(s, "volume kind this escrow was decided on (ZFS)");
    assert_int_equal(to_replace(s, "n1"), 1);

    /* Review rev26b F3: LUKS2, the replacement waits apart; the revealed key stays escrowed and
     * marked (still asked for) until the node confirms its keyslot is killed. */
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w3", false, T0 + 4), 0);
    assert_int_equal(to_replace(s, "n1"), 1);
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), 0);
    assert_string_equal(rec.wrapped, "w1");
    assert_int_equal(rec.revealed_at, T0 + 2);
    assert_string_equal(rec.next_request_id, RID3);
    assert_string_equal(rec.next_wrapped, "w3");
    kfd_recovery_clear(&rec);
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w9", false, T0 + 4), 0); /* a replay: kept */
    assert_int_equal(recovery_confirm(s, "n2", "v1", RID3, T0 + 5), -EACCES); /* another node */
    assert_int_equal(recovery_confirm(s, "n1", "v1", RID, T0 + 5), -ESTALE);  /* the revealed key's own */
    assert_int_equal(recovery_confirm(s, "n1", "v1", RID2, T0 + 5), -ESTALE); /* not escrowed */
    assert_int_equal(to_replace(s, "n1"), 1);
    /* A crash before the confirmation: the next escrow replaces the waiting key, and only its
     * confirmation counts. */
    assert_int_equal(escrow(s, "n1", "v1", RID4, "w4", false, T0 + 6), 0);
    assert_int_equal(recovery_confirm(s, "n1", "v1", RID3, T0 + 6), -ESTALE);
    assert_int_equal(to_replace(s, "n1"), 1);
    assert_int_equal(recovery_confirm(s, "n1", "v1", RID4, T0 + 7), 0);
    assert_int_equal(to_replace(s, "n1"), 0);
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), 0);
    assert_string_equal(rec.wrapped, "w4");
    assert_string_equal(rec.request_id, RID4);
    assert_int_equal(rec.revealed_at, 0);
    assert_string_equal(rec.next_request_id, "");
    kfd_recovery_clear(&rec);
    assert_int_equal(recovery_confirm(s, "n1", "v1", RID4, T0 + 8), 0); /* repeated: no change */
    /* Not revealed: waits too, the escrowed key kept until the confirmation (review rev26c R1). */
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w3", false, T0 + 8), 0);
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), 0);
    assert_string_equal(rec.wrapped, "w4");
    assert_string_equal(rec.next_request_id, RID3);
    kfd_recovery_clear(&rec);
    assert_int_equal(to_replace(s, "n1"), 0);
    assert_int_equal(recovery_confirm(s, "n1", "v1", RID3, T0 + 8), 0);
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), 0);
    assert_string_equal(rec.wrapped, "w3");
    assert_int_equal(rec.revealed_at, 0);
    kfd_recovery_clear(&rec);

    /* A retired volume's recovery key is refused with its key: neither escrowed nor revealed,
     * and no longer asked of the node (review rev26b F8). */
    assert_int_equal(propose_reveal(s, RID, "v1", 2), 0);
    assert_int_equal(approve(s, RID, "op2", 0, T0 + 9), 0);
    assert_int_equal(reveal(s, RID, "v1", "op1", T0 + 9), 0);
    assert_int_equal(to_replace(s, "n1"), 1);
    assert_int_equal(propose_reveal(s, RID4, "v1", 2), 0);
    assert_int_equal(approve(s, RID4, "op2", 0, T0 + 9), 0);
    assert_int_equal(lifecycle(s, true, "v1", T0 + 10), 0);
    assert_int_equal(to_replace(s, "n1"), 0);
    assert_int_equal(reveal(s, RID4, "v1", "op1", T0 + 11), -EACCES);
    assert_int_equal(escrow(s, "n1", "v1", RID2, "w4", false, T0 + 11), -EACCES);
    kfd_store_close(s);
}

/* review rev26b F4, F7: a reveal marks revealed only the escrow row (and ZFS: the volume key) the
 * operator was shown, and where the request needs TOTP its fetch carries a fresh code, spent once.
 * reveal_next_rid: the waiting replacement the handler unwrapped too (review rev26c R2). */
static const char *reveal_next_rid = "";

static int reveal_bound(kfd_store *s, const char *id, const char *vol, const char *escrow_rid, const char *kcv,
                        int64_t step, int64_t at)
{
    audit_at a;
    audit(&a, at, "recovery_reveal", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdRecoveryReveal c = KEYFLEET__V1__CMD_RECOVERY_REVEAL__INIT;
    c.volume_id = (char *)vol;
    c.operator_ = (char *)"op1";
    c.request_id = (char *)id;
    c.audit = &a.e;
    c.escrow_request_id = (char *)escrow_rid;
    c.escrow_kcv = (char *)kcv;
    c.volume_key_kcv = (char *)"";
    c.totp_step = step;
    c.escrow_next_request_id = (char *)reveal_next_rid;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_REVEAL;
    cmd.recovery_reveal = &c;
    return apply(s, &cmd, NULL);
}

static void test_reveal_bound_to_escrow(void **state)
{
    (void)state;
    kfd_store *s = open_db("reveal_bound.db");
    kfd_recovery rec;
    assert_int_equal(enroll(s, "v1", "n1", T0), 0);
    assert_int_equal(escrow(s, "n1", "v1", RID, "w1", false, T0), 0);
    assert_int_equal(propose_reveal(s, RID2, "v1", 2), 0);
    assert_int_equal(approve(s, RID2, "op2", 0, T0 + 1), 0);
    /* Shown RID's key alone; a replacement RID3 was staged meanwhile (review rev26c R2: the
     * reveal must have shown it too). */
    assert_int_equal(escrow(s, "n1", "v1", RID3, "w2", false, T0 + 2), 0);
    assert_int_equal(reveal_bound(s, RID2, "v1", RID, "", 0, T0 + 3), -ESTALE);
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), 0);
    assert_int_equal(rec.revealed_at, 0);
    kfd_recovery_clear(&rec);
    assert_int_equal(state_of(s, RID2), KFD_PENDING_APPROVED); /* not spent: fetch again */
    reveal_next_rid = RID3;
    assert_int_equal(reveal_bound(s, RID2, "v1", RID3, "", 0, T0 + 3), -ESTALE); /* not the escrowed row */
    assert_int_equal(reveal_bound(s, RID2, "v1", RID, "x", 0, T0 + 3), -ESTALE); /* kcv */
    assert_int_equal(reveal_bound(s, RID2, "v1", RID, "", 0, T0 + 3), 0);
    reveal_next_rid = "";
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), 0);
    assert_int_equal(rec.revealed_at, T0 + 3);
    kfd_recovery_clear(&rec);
    /* The shown replacement's promotion keeps the mark: it is replaced in turn. */
    assert_int_equal(recovery_confirm(s, "n1", "v1", RID3, T0 + 4), 0);
    assert_int_equal(kfd_store_get_recovery(s, "v1", &rec), 0);
    assert_string_equal(rec.request_id, RID3);
    assert_int_equal(rec.revealed_at, T0 + 3);
    kfd_recovery_clear(&rec);
    kfd_store_close(s);
}

static void test_reveal_fetch_needs_totp(void **state)
{
    (void)state;
    kfd_store *s = open_db("reveal_totp.db");
    assert_int_equal(enroll(s, "v1", "n1", T0), 0);
    assert_int_equal(escrow(s, "n1", "v1", RID, "w1", false, T0), 0);
    audit_at a;
    audit(&a, T0, "recovery_request", KEYFLEET__V1__DECISION__DECISION_PENDING);
    Keyfleet__V1__VolumeRef v = KEYFLEET__V1__VOLUME_REF__INIT;
    v.id = (char *)"v1";
    Keyfleet__V1__Timestamp c = ts(T0), x = ts(T0 + 600);
    Keyfleet__V1__CmdCreatePending p = KEYFLEET__V1__CMD_CREATE_PENDING__INIT;
    p.request_id = (char *)RID2;
    p.node = (char *)"n1";
    p.volume = &v;
    p.created_at = &c;
    p.expires_at = &x;
    p.approvals_needed = 2;
    p.rule = (char *)"recovery";
    p.audit = &a.e;
    p.proposer = (char *)"op1";
    p.require_totp = true;
    p.proposer_totp_step = 100;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_PENDING;
    cmd.create_pending = &p;
    assert_int_equal(apply(s, &cmd, NULL), 0);
    assert_int_equal(approve(s, RID2, "op2", 200, T0 + 1), 0);
    assert_int_equal(reveal_bound(s, RID2, "v1", RID, "", 0, T0 + 2), -EACCES);   /* no code */
    assert_int_equal(reveal_bound(s, RID2, "v1", RID, "", 100, T0 + 2), -EACCES); /* the proposal's code */
    assert_int_equal(reveal_bound(s, RID2, "v1", RID, "", 101, T0 + 2), 0);
    kfd_store_close(s);
}

/* review rev26b F9: a denial of a request whose approvals need TOTP needs a code too. */
static int deny(kfd_store *s, const char *id, const char *op, int64_t step)
{
    audit_at a;
    audit(&a, T0 + 1, "deny", KEYFLEET__V1__DECISION__DECISION_DENY);
    Keyfleet__V1__CmdDeny c = KEYFLEET__V1__CMD_DENY__INIT;
    c.request_id = (char *)id;
    c.operator_ = (char *)op;
    c.audit = &a.e;
    c.totp_step = step;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_DENY;
    cmd.deny = &c;
    return apply(s, &cmd, NULL);
}

static void test_deny_needs_totp(void **state)
{
    (void)state;
    kfd_store *s = open_db("deny_totp.db");
    assert_int_equal(create_pending(s, RID, "n1", "v1", 2, T0 + 600, true), 0);
    assert_int_equal(create_pending(s, RID2, "n1", "v1", 2, T0 + 600, false), 0);
    assert_int_equal(deny(s, RID, "op1", 0), -EACCES);
    assert_int_equal(state_of(s, RID), KFD_PENDING_WAITING);
    assert_int_equal(deny(s, RID2, "op1", 0), 0); /* no TOTP asked of its approvals */
    assert_int_equal(deny(s, RID, "op1", 42), 0);
    assert_int_equal(state_of(s, RID), KFD_PENDING_DENIED);
    kfd_store_close(s);
}

/* review rev26b F6: a held wipe with erase_all_keyslots applies only from an approval whose handler
 * found the policy still allows it. */
static int approve_wipe(kfd_store *s, const char *id, const char *op, bool allowed)
{
    audit_at a;
    audit(&a, T0 + 1, "approve", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    Keyfleet__V1__CmdApprove c = KEYFLEET__V1__CMD_APPROVE__INIT;
    c.request_id = (char *)id;
    c.operator_ = (char *)op;
    c.audit = &a.e;
    c.erase_all_allowed = allowed;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPROVE;
    cmd.approve = &c;
    return apply(s, &cmd, NULL);
}

static void test_erase_all_rechecked_at_approval(void **state)
{
    (void)state;
    kfd_store *s = open_db("erase_all.db");
    assert_int_equal(enroll(s, "v1", "n1", T0), 0);
    audit_at a;
    audit(&a, T0, "node_wipe", KEYFLEET__V1__DECISION__DECISION_ALLOW);
    char *ids[] = {(char *)"v1"};
    Keyfleet__V1__CmdWipeVolumes w = KEYFLEET__V1__CMD_WIPE_VOLUMES__INIT;
    w.node = (char *)"n1";
    w.volume_ids = ids;
    w.n_volume_ids = 1;
    w.audit = &a.e;
    w.erase_all_keyslots = true;
    Keyfleet__V1__StateCommand change = KEYFLEET__V1__STATE_COMMAND__INIT;
    change.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_WIPE_VOLUMES;
    change.wipe_volumes = &w;
    assert_int_equal(propose(s, RID, &change, 2), 0);
    assert_int_equal(approve_wipe(s, RID, "op2", false), -EACCES);
    assert_int_equal(state_of(s, RID), KFD_PENDING_WAITING);
    assert_int_equal(approve_wipe(s, RID, "op2", true), 0);
    assert_int_equal(state_of(s, RID), KFD_PENDING_CONSUMED);
    kfd_store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_approved_request_releases_once),
        cmocka_unit_test(test_revoked_node_gets_nothing_at_apply),
        cmocka_unit_test(test_totp_failures_lock_out),
        cmocka_unit_test(test_required_totp_and_duplicates),
        cmocka_unit_test(test_held_change_applies_when_approved),
        cmocka_unit_test(test_held_attest_accept_is_compare_and_swap),
        cmocka_unit_test(test_enroll_replay_at_apply),
        cmocka_unit_test(test_secret_id_bound_to_role_id),
        cmocka_unit_test(test_login_judged_at_apply),
        cmocka_unit_test(test_enroll_judged_at_apply),
        cmocka_unit_test(test_tofu_judged_at_apply),
        cmocka_unit_test(test_cert_denylist),
        cmocka_unit_test(test_operator_denylisted_at_apply),
        cmocka_unit_test(test_policy_judged_for_approvals),
        cmocka_unit_test(test_rotation_at_apply),
        cmocka_unit_test(test_judged_digests),
        cmocka_unit_test(test_judged_inputs_at_apply),
        cmocka_unit_test(test_recovery_at_apply),
        cmocka_unit_test(test_heartbeat_clock_judged_at_apply),
        cmocka_unit_test(test_rollback_accept_dated_by_quote),
        cmocka_unit_test(test_recovery_escrow_key_judged),
        cmocka_unit_test(test_recovery_replacement_revealed),
        cmocka_unit_test(test_recovery_zfs_same_second),
        cmocka_unit_test(test_recovery_two_part_at_apply),
        cmocka_unit_test(test_reveal_bound_to_escrow),
        cmocka_unit_test(test_reveal_fetch_needs_totp),
        cmocka_unit_test(test_deny_needs_totp),
        cmocka_unit_test(test_erase_all_rechecked_at_approval),
        cmocka_unit_test(test_retire_and_unrevoke_at_apply),
        cmocka_unit_test(test_wipe_and_erase_confirm_at_apply),
        cmocka_unit_test(test_unrevoke_bound_to_revocation),
    };
    return cmocka_run_group_tests_name("store_guard", tests, tmpdir_setup, tmpdir_teardown);
}
