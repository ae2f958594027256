/* AdminService: approvals, audit, policy, revocation, KMS rotation. Callers are operators
 * (checked by the router). Every change is a state command with its audit record. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include "rpc/rpc_admin.h"

#include "core/app.h"
#include "core/audit.h"
#include "front/server.h"
#include "cluster/replication.h"
#include "kf_log.h"
#include "kf_secmem.h"
#include "rpc/rpc_change.h"
#include "store/store_judged.h"
#include "store/store_apply.h"
#include "store/store_audit.h"
#include "store/store_guard.h"
#include "core/policy.h"
#include "store/store_read.h"
#include "rpc/rpc_check.h"
#include "rpc/rpc_labels.h"

bool kfd_rpc_store_ok(kfd_call *call)
{
    if (!kfd_store_failed(kfd_call_app(call)->store))
        return true;
    kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable: %s",
                   kfd_store_failure(kfd_call_app(call)->store));
    return false;
}

/* Maps a commit status to an answer; returns true when it succeeded. */
bool kfd_rpc_commit_answer(kfd_call *call, int status, const kf_err *err)
{
    switch (status) {
    case 0:
        return true;
    case -ENOENT:
        kfd_call_error(call, KF_CONNECT_NOT_FOUND, "%s", err->msg);
        break;
    case -EEXIST:
        kfd_call_error(call, KF_CONNECT_ALREADY_EXISTS, "%s", err->msg);
        break;
    case -ESTALE:
        kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "%s", err->msg);
        break;
    case -EACCES:
        kfd_call_error(call, KF_CONNECT_PERMISSION_DENIED, "%s", err->msg);
        break;
    case -EINVAL:
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", err->msg);
        break;
    default:
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "%s", err->msg);
        break;
    }
    return false;
}

/* ----------------------------------------------------------- approvals */

void kfd_rpc_list_pending(kfd_call *call)
{
    if (!kfd_rpc_store_ok(call))
        return;
    Keyfleet__V1__ListPendingResponse resp = KEYFLEET__V1__LIST_PENDING_RESPONSE__INIT;
    if (kfd_store_list_pending(kfd_call_app(call)->store, &resp) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    kfd_call_reply(call, &resp.base);
    kfd_store_free_pending_list(&resp);
}

void kfd_rpc_list_volumes(kfd_call *call)
{
    if (!kfd_rpc_store_ok(call))
        return;
    Keyfleet__V1__ListVolumesResponse resp = KEYFLEET__V1__LIST_VOLUMES_RESPONSE__INIT;
    if (kfd_store_list_volumes(kfd_call_app(call)->store, &resp) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    /* Each key's age against the policy's max_key_age, decided as Release decides it. */
    const kfd_policy *policy = kfd_call_app(call)->policy;
    int64_t now = time(NULL);
    for (size_t i = 0; i < resp.n_volumes; i++) {
        Keyfleet__V1__VolumeInfo *v = resp.volumes[i];
        kfd_label labels[32]; /* enroll accepts at most 32 */
        size_t n = 0;
        for (size_t k = 0; k < v->n_labels && n < 32; k++)
            labels[n++] = (kfd_label){v->labels[k]->key, v->labels[k]->value};
        kfd_policy_input in = {.node = v->node, .volume_id = v->volume->id, .volume_name = v->volume->name,
                               .labels = labels, .n_labels = n, .now = now};
        kfd_key_age age;
        kfd_policy_key_age(policy, &in, v->key_created_at, &age);
        char *from = strdup(age.from);
        if (from == NULL) {
            kfd_store_free_volume_list(&resp);
            kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
            return;
        }
        v->max_key_age_from = from;
        v->max_key_age_s = age.max_age_s;
        v->key_overdue = age.overdue;
    }
    kfd_call_reply(call, &resp.base);
    kfd_store_free_volume_list(&resp);
}

typedef struct approve_op {
    kfd_op base;
    kfd_app *app;
    char request_id[65];
    char node[64];
    char volume_id[129];
    char refusal[KF_ERR_MSG_MAX];
    kf_connect_code refusal_code;
} approve_op;

static void on_approval_refused(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res;
    approve_op *op = arg;
    if (status != 0)
        kf_log_warn("approval_refusal_not_audited", "request=%s error=%s", op->request_id, kf_log_q(err->msg));
    if (op->base.call != NULL)
        kfd_call_error(op->base.call, op->refusal_code, "%s", op->refusal);
    kfd_op_free(op);
}

/* The store refused the approval as such (the operator's second approval, a TOTP code used
 * twice, a request no longer waiting): its audit record went with the failed apply, so the
 * refusal is recorded on its own before the answer. */
static bool audit_refused_approval(approve_op *op, int status, const kf_err *err)
{
    kfd_call *call = op->base.call;
    if (status != -EEXIST && status != -EACCES && status != -ESTALE)
        return false;
    op->refusal_code = status == -EEXIST   ? KF_CONNECT_ALREADY_EXISTS
                       : status == -EACCES ? KF_CONNECT_PERMISSION_DENIED
                                           : KF_CONNECT_FAILED_PRECONDITION;
    snprintf(op->refusal, sizeof(op->refusal), "%s", err->msg);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "approve", KEYFLEET__V1__DECISION__DECISION_DENY, op->node, op->volume_id,
                   op->request_id, op->refusal);
    Keyfleet__V1__CmdAppendAudit c;
    Keyfleet__V1__StateCommand cmd;
    kfd_audit_command(&a, &c, &cmd);
    kfd_commit(op->app, &cmd, on_approval_refused, op);
    return true;
}

static void on_approved(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res;
    approve_op *op = arg;
    kfd_call *call = op->base.call;
    kfd_pending p;
    if (call != NULL && audit_refused_approval(op, status, err))
        return;
    if (call == NULL || !kfd_rpc_commit_answer(call, status, err)) {
        kfd_op_free(op);
        return;
    }
    if (kfd_store_get_pending(op->app->store, op->request_id, &p) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        kfd_op_free(op);
        return;
    }
    Keyfleet__V1__ApproveResponse resp = KEYFLEET__V1__APPROVE_RESPONSE__INIT;
    resp.approved = p.state == KFD_PENDING_APPROVED || p.state == KFD_PENDING_CONSUMED;
    resp.approvals_needed = p.approvals_needed;
    resp.approvals_have = p.approvals_have;
    kf_log_info("approved", "request=%s operator=%s have=%u needed=%u", p.request_id, call->peer->name,
                p.approvals_have, p.approvals_needed);
    kfd_call_reply(call, &resp.base);
    kfd_op_free(op);
}

/* A held wipe with --erase-all-keyslots: allowed when proposed, it must still be when approved
 * (the policy may have changed since). False, with why, when it no longer is; *ret_allowed tells
 * the apply that this check was made. */
static bool wipe_allowed(kfd_app *app, const char *request_id, bool *ret_allowed, char *why, size_t why_size)
{
    Keyfleet__V1__StateCommand *cmd = NULL;
    *ret_allowed = false;
    if (kfd_store_get_change(app->store, request_id, &cmd) != 0 || cmd == NULL)
        return true; /* the apply reports what it cannot read */
    bool ok = true;
    if (cmd->cmd_case == KEYFLEET__V1__STATE_COMMAND__CMD_WIPE_VOLUMES && cmd->wipe_volumes->erase_all_keyslots) {
        ok = *ret_allowed = kfd_policy_erase_all_allowed(app->policy, cmd->wipe_volumes->node);
        if (!ok)
            snprintf(why, why_size, "--erase-all-keyslots is no longer allowed for node %s: no group of it sets "
                     "wipe.erase_all_keyslots", cmd->wipe_volumes->node);
    }
    keyfleet__v1__state_command__free_unpacked(cmd, NULL);
    return ok;
}

void kfd_rpc_approve(kfd_call *call)
{
    const Keyfleet__V1__ApproveRequest *req = (const Keyfleet__V1__ApproveRequest *)call->request;
    const char *bad = kfd_check_approve(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    kfd_app *app = kfd_call_app(call);
    kfd_pending p;
    int r = kfd_store_get_pending(app->store, req->request_id, &p);
    if (r == -ENOENT) {
        kfd_call_error(call, KF_CONNECT_NOT_FOUND, "no pending request %s", req->request_id);
        return;
    }
    if (r != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    if (p.state == KFD_PENDING_EXPIRED || (p.state == KFD_PENDING_WAITING && time(NULL) >= p.expires_at)) {
        kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "request %s has expired", req->request_id);
        return;
    }
    approve_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    op->app = app;
    op->refusal_code = KF_CONNECT_PERMISSION_DENIED;
    snprintf(op->request_id, sizeof(op->request_id), "%s", req->request_id);
    snprintf(op->node, sizeof(op->node), "%s", p.node);
    snprintf(op->volume_id, sizeof(op->volume_id), "%s", p.volume_id);
    int64_t step = 0;
    if (!kfd_rpc_operator_totp(call, op, kfd_op_free, req->totp_code, p.require_totp, p.node, p.volume_id,
                               p.request_id, &step, op->refusal, sizeof(op->refusal), on_approval_refused))
        return;
    bool erase_all_allowed = false;
    if (p.has_change && !wipe_allowed(app, req->request_id, &erase_all_allowed, op->refusal, sizeof(op->refusal))) {
        kfd_audit_buf a;
        kfd_audit_fill(&a, kfd_call_actor(call), "approve", KEYFLEET__V1__DECISION__DECISION_DENY, p.node,
                       p.volume_id, p.request_id, op->refusal);
        Keyfleet__V1__CmdAppendAudit ac;
        Keyfleet__V1__StateCommand acmd;
        kfd_audit_command(&a, &ac, &acmd);
        kfd_commit(app, &acmd, on_approval_refused, op);
        return;
    }
    char reason[600];
    snprintf(reason, sizeof(reason), "approved%s%s%s%s%s", step != 0 ? " with TOTP" : "",
             p.has_change ? " change: " : "", p.change_summary, req->comment[0] ? ": " : "", req->comment);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "approve", KEYFLEET__V1__DECISION__DECISION_ALLOW, p.node, p.volume_id,
                   p.request_id,
                   reason);
    Keyfleet__V1__CmdApprove c = KEYFLEET__V1__CMD_APPROVE__INIT;
    c.request_id = req->request_id;
    c.operator_ = (char *)call->peer->name;
    c.audit = &a.entry;
    c.totp_step = step;
    c.erase_all_allowed = erase_all_allowed;
    c.judged_policy = (ProtobufCBinaryData){KFD_JUDGED_LEN, app->policy_judged}; /* review rev44 J6 */
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPROVE;
    cmd.approve = &c;
    kfd_call_commit(call, &cmd, on_approved, op);
}

/* The serial of a caller that authenticated with a client certificate; empty for any other
 * (an AppRole identity has none). */
static char *cert_serial(const kf_identity *peer)
{
    return peer != NULL && peer->serial[0] != '\0' ? (char *)peer->serial : (char *)protobuf_c_empty_string;
}

void kfd_call_commit(kfd_call *call, Keyfleet__V1__StateCommand *cmd, kfd_commit_cb cb, void *arg)
{
    cmd->auth_cert_serial = cert_serial(call->peer);
    kfd_commit(kfd_call_app(call), cmd, cb, arg);
}

void kfd_op_commit(kfd_op *op, Keyfleet__V1__StateCommand *cmd, kfd_commit_cb cb, void *arg)
{
    cmd->auth_cert_serial = cert_serial(&op->peer);
    kfd_commit(op->app, cmd, cb, arg);
}

bool kfd_rpc_refusal_answered(kfd_call *call, const char *what, const char *volume_id, int status,
                              const kfd_apply_result *res, const kf_err *err, kf_connect_code code,
                              const char *message)
{
    if (status == 0 || !res->refused)
        return false;
    kf_log_warn("refused_at_apply", "op=%s volume=%s audit_seq=%llu reason=%s", what, kf_log_q(volume_id),
                (unsigned long long)res->audit_seq, kf_log_q(err->msg));
    if (call != NULL)
        kfd_call_error(call, status == -ECANCELED ? KF_CONNECT_UNAVAILABLE : code, "%s",
                       message != NULL ? message : err->msg);
    return true;
}


/* An op whose answer, on success, is an empty message of the given type. */
typedef struct empty_op {
    kfd_op base;
    const ProtobufCMessageDescriptor *resp;
} empty_op;

static void on_empty_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res;
    empty_op *op = arg;
    kfd_call *call = op->base.call;
    if (call != NULL && kfd_rpc_commit_answer(call, status, err)) {
        ProtobufCMessage empty;
        protobuf_c_message_init(op->resp, &empty);
        kfd_call_reply(call, &empty);
    }
    kfd_op_free(op);
}

void kfd_rpc_commit_empty(kfd_call *call, Keyfleet__V1__StateCommand *cmd, const ProtobufCMessageDescriptor *resp)
{
    empty_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    op->resp = resp;
    kfd_call_commit(call, cmd, on_empty_committed, op);
}

typedef struct deny_op {
    kfd_op base;
    char refusal[KF_ERR_MSG_MAX];
} deny_op;

static void on_deny_refused(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)status, (void)res, (void)err;
    deny_op *op = arg;
    if (op->base.call != NULL)
        kfd_call_error(op->base.call, KF_CONNECT_PERMISSION_DENIED, "%s", op->refusal);
    kfd_op_free(op);
}

/* A denial is a veto: it needs what an approval of the same request needs of one operator (its
 * TOTP code where the request requires TOTP), checked again at apply. */
void kfd_rpc_deny(kfd_call *call)
{
    const Keyfleet__V1__DenyRequest *req = (const Keyfleet__V1__DenyRequest *)call->request;
    const char *bad = kfd_check_deny(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    kfd_pending p;
    int r = kfd_store_get_pending(kfd_call_app(call)->store, req->request_id, &p);
    if (r != 0) {
        kfd_call_error(call, r == -ENOENT ? KF_CONNECT_NOT_FOUND : KF_CONNECT_UNAVAILABLE, "no pending request %s",
                       req->request_id);
        return;
    }
    deny_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    int64_t step = 0;
    if (!kfd_rpc_operator_totp(call, op, kfd_op_free, req->totp_code, p.require_totp, p.node, p.volume_id,
                               p.request_id, &step, op->refusal, sizeof(op->refusal), on_deny_refused))
        return;
    kfd_op_free(op);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "deny", KEYFLEET__V1__DECISION__DECISION_DENY, p.node, p.volume_id,
                   p.request_id,
                   req->reason[0] ? req->reason : "denied by operator");
    Keyfleet__V1__CmdDeny c = KEYFLEET__V1__CMD_DENY__INIT;
    c.request_id = req->request_id;
    c.operator_ = (char *)call->peer->name;
    c.audit = &a.entry;
    c.totp_step = step;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_DENY;
    cmd.deny = &c;
    kfd_rpc_commit_empty(call, &cmd, &keyfleet__v1__deny_response__descriptor);
}

/* ----------------------------------------------------------- audit */

void kfd_rpc_query_audit(kfd_call *call)
{
    const Keyfleet__V1__QueryAuditRequest *req = (const Keyfleet__V1__QueryAuditRequest *)call->request;
    const char *bad = kfd_check_query_audit(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    Keyfleet__V1__QueryAuditResponse resp = KEYFLEET__V1__QUERY_AUDIT_RESPONSE__INIT;
    if (kfd_store_query_audit(kfd_call_app(call)->store, req, &resp) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    kfd_call_reply(call, &resp.base);
    kfd_store_free_audit_list(&resp);
}

void kfd_rpc_verify_audit(kfd_call *call)
{
    if (!kfd_rpc_store_ok(call))
        return;
    Keyfleet__V1__VerifyAuditResponse resp = KEYFLEET__V1__VERIFY_AUDIT_RESPONSE__INIT;
    char problem[512];
    if (kfd_store_verify_audit(kfd_call_app(call)->store, &resp, problem, sizeof(problem)) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    resp.problem = problem;
    kfd_call_reply(call, &resp.base);
}

/* ----------------------------------------------------------- policy */

void kfd_rpc_get_policy(kfd_call *call)
{
    if (!kfd_rpc_store_ok(call))
        return;
    char *yaml = NULL;
    uint64_t version = 0;
    if (kfd_store_get_policy(kfd_call_app(call)->store, &yaml, &version) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    Keyfleet__V1__GetPolicyResponse resp = KEYFLEET__V1__GET_POLICY_RESPONSE__INIT;
    resp.yaml = yaml != NULL ? yaml : (char *)"";
    resp.version = version;
    kfd_call_reply(call, &resp.base);
    free(yaml);
}

typedef struct put_op {
    kfd_op base;
    kfd_app *app;
    kfd_policy *parsed;
    uint64_t version;
} put_op;

static void on_policy_put(void *arg, int status, const kfd_change_result *res, const kf_err *err)
{
    put_op *op = arg;
    kfd_call *call = op->base.call;
    if (status == 0 && res->held_request_id[0] != '\0') {
        kf_log_info("policy_held", "version=%llu request=%s needed=%u", (unsigned long long)op->version,
                    res->held_request_id, res->approvals_needed);
        if (call != NULL) {
            Keyfleet__V1__PutPolicyResponse resp = KEYFLEET__V1__PUT_POLICY_RESPONSE__INIT;
            resp.version = op->version;
            resp.pending_request_id = (char *)res->held_request_id;
            resp.approvals_needed = res->approvals_needed;
            kfd_call_reply(call, &resp.base);
        }
        kfd_policy_free(op->parsed);
        kfd_op_free(op);
        return;
    }
    if (status == 0) {
        /* Applying it loaded it on every replica (kfd_app_load_policy). */
        kf_log_info("policy_put", "version=%llu rules=%zu", (unsigned long long)op->version,
                    kfd_policy_rule_count(op->app->policy));
    }
    if (call != NULL && status == -ESTALE) {
        kfd_call_error(call, KF_CONNECT_ABORTED, "%s", err->msg);
    } else if (call != NULL && kfd_rpc_commit_answer(call, status, err)) {
        Keyfleet__V1__PutPolicyResponse resp = KEYFLEET__V1__PUT_POLICY_RESPONSE__INIT;
        resp.version = op->version;
        kfd_call_reply(call, &resp.base);
    }
    kfd_policy_free(op->parsed);
    kfd_op_free(op);
}

void kfd_rpc_put_policy(kfd_call *call)
{
    const Keyfleet__V1__PutPolicyRequest *req = (const Keyfleet__V1__PutPolicyRequest *)call->request;
    kfd_policy *parsed = NULL;
    char bad_buf[KF_ERR_MSG_MAX];
    const char *bad = kfd_check_put_policy(req, &parsed, bad_buf, sizeof(bad_buf));
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call)) {
        kfd_policy_free(parsed);
        return;
    }
    kfd_app *app = kfd_call_app(call);
    if (req->expected_version != 0 && req->expected_version != app->policy_version) {
        kfd_policy_free(parsed);
        kfd_call_error(call, KF_CONNECT_ABORTED, "policy is at version %llu, not %llu",
                       (unsigned long long)app->policy_version, (unsigned long long)req->expected_version);
        return;
    }
    put_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_policy_free(parsed);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    op->app = app;
    op->parsed = parsed;
    /* Versions are assigned in order of arrival; a put racing another gets aborted by the store. */
    op->version = app->policy_version + 1;
    char reason[96];
    snprintf(reason, sizeof(reason), "policy version %llu (%zu rules)", (unsigned long long)op->version,
             kfd_policy_rule_count(op->parsed));
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "policy_put", KEYFLEET__V1__DECISION__DECISION_ALLOW, "", "", "", reason);
    Keyfleet__V1__CmdPutPolicy c = KEYFLEET__V1__CMD_PUT_POLICY__INIT;
    c.yaml = req->yaml;
    c.version = op->version;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_PUT_POLICY;
    cmd.put_policy = &c;
    /* A policy that lowers the operators a wipe needs is held for as many as a wipe needs now:
     * otherwise one operator lowers it to one and then wipes alone (review rev26c W1). */
    uint32_t wipe_now = kfd_policy_wipe_approvers(app->policy);
    uint32_t need = app->policy != NULL && kfd_policy_wipe_approvers(parsed) < wipe_now ? wipe_now : 0;
    kfd_commit_change_n(call, &cmd, reason, req->totp_code, need, on_policy_put, op);
}

void kfd_rpc_check_policy(kfd_call *call)
{
    const Keyfleet__V1__CheckPolicyRequest *req = (const Keyfleet__V1__CheckPolicyRequest *)call->request;
    const char *bad = kfd_check_check_policy(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    kfd_app *app = kfd_call_app(call);
    kfd_volume vol;
    int r = kfd_store_get_volume(app->store, req->volume_id, &vol);
    if (r != 0 && r != -ENOENT) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    kfd_label_set ls;
    kfd_label_set_from_json(&ls, r == 0 ? vol.labels_json : NULL);
    kfd_policy_input in = {.node = req->node, .source = req->source_address, .volume_id = req->volume_id,
                           .volume_name = r == 0 ? vol.name : "", .labels = ls.items, .n_labels = ls.n,
                           .now = time(NULL)};
    kfd_policy_decision d;
    kfd_policy_evaluate_release(app->policy, &in, r == 0 ? vol.node : NULL, &d); /* as Release decides */
    bool revoked = false;
    kfd_store_node_revoked(app->store, req->node, &revoked);
    char explanation[512];
    snprintf(explanation, sizeof(explanation), "%s%s%s", d.explanation,
             r == -ENOENT ? " (volume not enrolled: matched on its id only)" : "",
             revoked ? "; but the node is revoked, so it gets nothing" : "");
    Keyfleet__V1__CheckPolicyResponse resp = KEYFLEET__V1__CHECK_POLICY_RESPONSE__INIT;
    resp.decision = revoked || !d.allow ? KEYFLEET__V1__DECISION__DECISION_DENY
                    : d.approvals > 0   ? KEYFLEET__V1__DECISION__DECISION_PENDING
                                        : KEYFLEET__V1__DECISION__DECISION_ALLOW;
    resp.rule = d.rule;
    resp.explanation = explanation;
    resp.approvals_needed = d.approvals;
    resp.offline_fallback_allowed = d.offline_fallback;
    resp.tpm_and_network = d.tpm_and_network;
    kfd_call_reply(call, &resp.base);
    kfd_label_set_clear(&ls);
    if (r == 0)
        kfd_volume_clear(&vol);
}

/* ----------------------------------------------------------- nodes, KMS */

void kfd_rpc_revoke_node(kfd_call *call)
{
    const Keyfleet__V1__RevokeNodeRequest *req = (const Keyfleet__V1__RevokeNodeRequest *)call->request;
    const char *bad = kfd_check_revoke_node(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "revoke", KEYFLEET__V1__DECISION__DECISION_ALLOW, req->node, "", "",
                   req->reason[0] ? req->reason : "revoked by operator");
    Keyfleet__V1__CmdRevokeNode c = KEYFLEET__V1__CMD_REVOKE_NODE__INIT;
    c.node = req->node;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_NODE;
    cmd.revoke_node = &c;
    kf_log_info("node_revoked", "node=%s operator=%s", req->node, call->peer->name);
    kfd_rpc_commit_empty(call, &cmd, &keyfleet__v1__revoke_node_response__descriptor);
}

void kfd_rpc_revoke_cert(kfd_call *call)
{
    const Keyfleet__V1__RevokeCertRequest *req = (const Keyfleet__V1__RevokeCertRequest *)call->request;
    char serial[KF_SERIAL_MAX];
    kf_peer_kind kind = KF_PEER_NONE;
    const char *bad = kfd_check_revoke_cert(req, serial, &kind);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    char reason[700];
    snprintf(reason, sizeof(reason), "certificate %s%s%s%s%s revoked: %s", serial, req->kind[0] ? " of " : "",
             req->kind, req->name[0] ? " " : "", req->name, req->reason[0] ? req->reason : "by operator");
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "cert_revoke", KEYFLEET__V1__DECISION__DECISION_ALLOW, "", "", "", reason);
    Keyfleet__V1__CmdRevokeCert c = KEYFLEET__V1__CMD_REVOKE_CERT__INIT;
    c.serial = serial;
    c.kind = req->kind;
    c.name = req->name;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_CERT;
    cmd.revoke_cert = &c;
    kf_log_info("cert_revoked", "serial=%s kind=%s name=%s operator=%s", serial, req->kind[0] ? req->kind : "-",
                req->name[0] ? req->name : "-", call->peer->name);
    kfd_rpc_commit_empty(call, &cmd, &keyfleet__v1__revoke_cert_response__descriptor);
}

typedef struct rotate_op {
    kfd_op base;
    const char *backend;
    uint32_t version;
} rotate_op;

static void on_rotated(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res;
    rotate_op *op = arg;
    if (op->base.call != NULL && kfd_rpc_commit_answer(op->base.call, status, err)) {
        Keyfleet__V1__RotateKmsResponse resp = KEYFLEET__V1__ROTATE_KMS_RESPONSE__INIT;
        resp.backend = (char *)op->backend;
        resp.new_version = op->version;
        kfd_call_reply(op->base.call, &resp.base);
    }
    kfd_op_free(op);
}

static void on_rotation_failure_audited(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)arg, (void)res;
    if (status != 0)
        kf_log_error("audit_failed", "action=kms_rotate error=%s", kf_log_q(err->msg));
}

static void on_kms_rotated(void *arg, const kfd_kms_result *res)
{
    rotate_op *op = arg;
    kfd_call *call = op->base.call;
    if (res->status != 0) {
        /* Audited too: a rotation whose answer was lost may have happened in the KMS. */
        kfd_audit_buf a;
        kfd_audit_fill(&a, kfd_op_actor(&op->base), "kms_rotate", KEYFLEET__V1__DECISION__DECISION_ERROR, "", "", "",
                       res->message);
        Keyfleet__V1__CmdAppendAudit c;
        Keyfleet__V1__StateCommand cmd;
        kfd_audit_command(&a, &c, &cmd);
        kfd_commit(op->base.app, &cmd, on_rotation_failure_audited, NULL);
        kfd_op_free(op);
        if (call != NULL)
            kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "KMS rotation failed: %s", res->message);
        return;
    }
    /* Recorded also when the operator's client went away: the KMS has rotated. */
    op->version = res->key_version;
    char reason[160];
    if (res->message != NULL)
        snprintf(reason, sizeof(reason), "%s key version %s", op->backend, res->message);
    else
        snprintf(reason, sizeof(reason), "%s key version %u", op->backend, op->version);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_op_actor(&op->base), "kms_rotate", KEYFLEET__V1__DECISION__DECISION_ALLOW, "", "", "",
                   reason);
    Keyfleet__V1__CmdKmsRotate c = KEYFLEET__V1__CMD_KMS_ROTATE__INIT;
    c.backend = (char *)op->backend;
    c.new_version = op->version;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_KMS_ROTATE;
    cmd.kms_rotate = &c;
    kf_log_info("kms_rotated", "backend=%s version=%s operator=%s", op->backend, kf_log_q(reason), op->base.peer.name);
    kfd_op_commit(&op->base, &cmd, on_rotated, op);
}

void kfd_rpc_rotate_kms(kfd_call *call)
{
    if (!kfd_rpc_store_ok(call))
        return;
    /* Rotating from behind would make a second, different key under the same version number. */
    const char *why = NULL;
    if (!kfd_app_kms_complete(kfd_call_app(call), &why)) {
        kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "%s; copy it here before rotating", why);
        return;
    }
    kfd_kms *kms = kfd_call_app(call)->kms;
    rotate_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    op->backend = kms->ops->name;
    kms->ops->rotate(kms, on_kms_rotated, op);
}
