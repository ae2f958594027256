/* Operator changes under n-of-m control, and the recording of wrong TOTP codes that both
 * approvals and change proposals share. */
#include "rpc/rpc_change.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kf_log.h"
#include "core/audit.h"
#include "front/server.h"
#include "rpc/rpc_admin.h"
#include "core/totp.h"
#include "store/store_judged.h"
#include "store/store_apply.h"
#include "store/store_guard.h"
#include "store/store_read.h"

/* Wrong codes whose failure record is still being committed, per operator. The store's count
 * lags by those, so the gate adds them: parallel guesses cannot outrun the lockout. */
#define INFLIGHT_SLOTS 32
static struct {
    char op[64];
    uint32_t n;
} inflight[INFLIGHT_SLOTS];

static uint32_t *inflight_slot(const char *op, bool create)
{
    for (size_t i = 0; i < INFLIGHT_SLOTS; i++)
        if (inflight[i].n > 0 && strcmp(inflight[i].op, op) == 0)
            return &inflight[i].n;
    for (size_t i = 0; create && i < INFLIGHT_SLOTS; i++)
        if (inflight[i].n == 0) {
            snprintf(inflight[i].op, sizeof(inflight[i].op), "%s", op);
            return &inflight[i].n;
        }
    return NULL;
}

typedef struct failure_ctx {
    char op[64];
    bool counted; /* a wrong code counted in inflight (not an audit-only refusal) */
    kfd_commit_cb cb;
    void *arg;
} failure_ctx;

static void on_failure_recorded(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    failure_ctx *f = arg;
    uint32_t *n = f->counted ? inflight_slot(f->op, false) : NULL;
    if (n != NULL)
        (*n)--;
    if (status != 0)
        kf_log_warn("totp_failure_not_recorded", "operator=%s error=%s", f->op, kf_log_q(err->msg));
    if (f->cb != NULL)
        f->cb(f->arg, status, res, err);
    free(f);
}

int kfd_operator_totp(kfd_call *call, const char *code, bool required, const char *node, const char *volume_id,
                      const char *request_id, int64_t *ret_step, char *why, size_t why_size, kfd_commit_cb cb,
                      void *arg)
{
    kfd_app *app = call->srv->app;
    const char *op = call->peer->name;
    uint32_t *n = inflight_slot(op, false);
    uint32_t failures = 0;
    int64_t locked_until = 0;
    int r;
    *ret_step = 0;
    if (n != NULL && kfd_store_totp_failures(app->store, op, &failures, &locked_until) == 0 &&
        failures + *n >= KFD_TOTP_MAX_FAILURES) {
        snprintf(why, why_size, "operator %s has %u wrong TOTP codes being recorded; try again shortly", op, *n);
        r = -EACCES;
    } else {
        r = kfd_totp_gate(app->store, call->srv->cfg->totp_dir, op, code, required, time(NULL), ret_step, why,
                          why_size);
    }
    if (r == 0 || r == -EINVAL || r == -EIO)
        return r;
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "approve", KEYFLEET__V1__DECISION__DECISION_DENY, node, volume_id,
                   request_id, why);
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    Keyfleet__V1__CmdAppendAudit audit_only = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
    Keyfleet__V1__CmdTotpFailure fail = KEYFLEET__V1__CMD_TOTP_FAILURE__INIT;
    failure_ctx *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        snprintf(why, why_size, "out of memory");
        return -ENOMEM;
    }
    snprintf(f->op, sizeof(f->op), "%s", op);
    f->cb = cb;
    f->arg = arg;
    if (r == -EPERM && (n = inflight_slot(op, true)) == NULL) {
        /* No slot to count it in flight: refuse without counting, but still audit and answer. */
        snprintf(why, why_size, "too many operators with wrong TOTP codes being recorded; try again shortly");
        kfd_audit_fill(&a, kfd_call_actor(call), "approve", KEYFLEET__V1__DECISION__DECISION_DENY, node, volume_id,
                       request_id, why);
        r = -EACCES;
    }
    if (r == -EPERM) {
        (*n)++;
        f->counted = true;
        fail.operator_ = (char *)op;
        fail.limit = KFD_TOTP_MAX_FAILURES;
        fail.lockout_seconds = KFD_TOTP_LOCKOUT_S;
        fail.audit = &a.entry;
        cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_TOTP_FAILURE;
        cmd.totp_failure = &fail;
    } else {
        audit_only.audit = &a.entry;
        cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
        cmd.append_audit = &audit_only;
    }
    kfd_call_commit(call, &cmd, on_failure_recorded, f); /* a TOTP failure locks out: its caller's (R45b-5) */
    return -EACCES;
}

bool kfd_rpc_operator_totp(kfd_call *call, void *op, void (*free_op)(void *), const char *code, bool required,
                           const char *node, const char *volume_id, const char *request_id, int64_t *ret_step,
                           char *why, size_t why_size, kfd_commit_cb cb)
{
    /* why lives in op: the refusal's callback may run, and free op, before this returns. */
    int r = kfd_operator_totp(call, code, required, node, volume_id, request_id, ret_step, why, why_size, cb, op);
    if (r == -EACCES)
        return false; /* answered once the refusal is recorded */
    if (r != 0) {
        char msg[KF_ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "%s", why);
        free_op(op);
        kfd_call_error(call, r == -EINVAL ? KF_CONNECT_INVALID_ARGUMENT : KF_CONNECT_UNAVAILABLE, "%s", msg);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------ held changes */

typedef struct change_ctx {
    kfd_app *app;
    kfd_change_cb cb;
    void *arg;
    char request_id[33];
    uint32_t needed;
    kf_err refusal; /* set when the proposer's TOTP was refused */
} change_ctx;

static void on_change_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    change_ctx *c = arg;
    kfd_change_result out = {0};
    if (res != NULL)
        out.apply = *res;
    if (status == 0 && c->request_id[0] != '\0') {
        kfd_pending p;
        /* Applied at once when the proposer alone was enough (one approver with TOTP). */
        if (kfd_store_get_pending(c->app->store, c->request_id, &p) == 0 && p.state == KFD_PENDING_WAITING) {
            snprintf(out.held_request_id, sizeof(out.held_request_id), "%s", c->request_id);
            out.approvals_needed = c->needed;
        }
    }
    c->cb(c->arg, status, &out, err);
    free(c);
}

static void on_totp_refused(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)status, (void)res, (void)err;
    change_ctx *c = arg;
    kfd_change_result out = {0};
    c->cb(c->arg, c->refusal.code, &out, &c->refusal);
    free(c);
}

void kfd_commit_change(kfd_call *call, Keyfleet__V1__StateCommand *cmd, const char *summary, const char *totp_code,
                       kfd_change_cb cb, void *arg)
{
    kfd_commit_change_n(call, cmd, summary, totp_code, 0, cb, arg);
}

void kfd_commit_change_n(kfd_call *call, Keyfleet__V1__StateCommand *cmd, const char *summary, const char *totp_code,
                         uint32_t min_approvers, kfd_change_cb cb, void *arg)
{
    kfd_app *app = call->srv->app;
    kfd_admin_policy admin = kfd_policy_admin(app->policy);
    if (admin.approvers < min_approvers)
        admin.approvers = min_approvers;
    change_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        kf_err e = {0};
        kf_err_set(&e, -ENOMEM, "out of memory");
        cb(arg, -ENOMEM, &(kfd_change_result){0}, &e);
        return;
    }
    c->app = app;
    c->cb = cb;
    c->arg = arg;
    if (admin.approvers <= 1 && !admin.require_totp) {
        /* Let through on the policy's word: each replica checks it is its policy too (R45b-1). */
        cmd->judged_policy = (ProtobufCBinaryData){KFD_JUDGED_LEN, app->policy_judged};
        kfd_call_commit(call, cmd, on_change_committed, c);
        return;
    }
    int64_t step = 0;
    /* The refusal is written into c before the call: its callback may run, and free c, before
     * kfd_operator_totp returns (a commit refused at once). */
    c->refusal.code = -EACCES;
    int r = kfd_operator_totp(call, totp_code, admin.require_totp, "", "", "", &step, c->refusal.msg,
                              sizeof(c->refusal.msg), on_totp_refused, c);
    if (r == -EACCES)
        return; /* answered once the refusal is recorded */
    if (r != 0) {
        kf_err e = {0};
        kf_err_set(&e, r, "%s", c->refusal.msg);
        cb(arg, r, &(kfd_change_result){0}, &e);
        free(c);
        return;
    }
    size_t len = keyfleet__v1__state_command__get_packed_size(cmd);
    uint8_t *packed = malloc(len > 0 ? len : 1);
    if (packed == NULL) {
        kf_err e = {0};
        kf_err_set(&e, -ENOMEM, "out of memory");
        cb(arg, -ENOMEM, &(kfd_change_result){0}, &e);
        free(c);
        return;
    }
    keyfleet__v1__state_command__pack(cmd, packed);
    kfd_new_request_id(c->request_id);
    c->needed = admin.approvers;
    int64_t now = time(NULL);
    char reason[400];
    snprintf(reason, sizeof(reason), "proposed, needs %u operators%s: %s", admin.approvers,
             admin.require_totp ? " with TOTP" : "", summary);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "change_proposed", KEYFLEET__V1__DECISION__DECISION_PENDING, "", "",
                   c->request_id,
                   reason);
    Keyfleet__V1__VolumeRef none = KEYFLEET__V1__VOLUME_REF__INIT;
    Keyfleet__V1__Timestamp created = KEYFLEET__V1__TIMESTAMP__INIT, expires = KEYFLEET__V1__TIMESTAMP__INIT;
    created.seconds = now;
    expires.seconds = now + admin.pending_ttl_s;
    Keyfleet__V1__CmdCreatePending p = KEYFLEET__V1__CMD_CREATE_PENDING__INIT;
    p.request_id = c->request_id;
    p.node = (char *)"";
    p.volume = &none;
    none.id = (char *)"";
    p.source_address = call->source;
    p.created_at = &created;
    p.expires_at = &expires;
    p.approvals_needed = admin.approvers;
    p.rule = (char *)"admin";
    p.audit = &a.entry;
    p.require_totp = admin.require_totp;
    p.change.data = packed;
    p.change.len = len;
    p.change_summary = (char *)summary;
    p.proposer = (char *)call->peer->name;
    p.proposer_totp_step = step;
    p.judged_policy = (ProtobufCBinaryData){KFD_JUDGED_LEN, app->policy_judged}; /* review rev44 J6 */
    Keyfleet__V1__StateCommand pc = KEYFLEET__V1__STATE_COMMAND__INIT;
    pc.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_PENDING;
    pc.create_pending = &p;
    kf_log_info("change_proposed", "request=%s operator=%s needed=%u summary=%s", c->request_id, call->peer->name,
                admin.approvers, kf_log_q(summary));
    kfd_call_commit(call, &pc, on_change_committed, c);
    free(packed);
}
