/* AdminService.ClusterStatus, AddMember and RemoveMember. Status is this replica's own view;
 * keyfleetctl asks every member for theirs. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/app.h"
#include "config/cluster_config.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "kf_identity.h"
#include "kf_log.h"
#include "cluster/replication.h"
#include "core/audit.h"
#include "core/checkpoint.h"
#include "front/server.h"
#include "rpc/rpc_admin.h"
#include "rpc/rpc_check.h"
#include "rpc/rpc_cluster.h"
#include "store/store_apply.h"
#include "store/store_audit.h"

void kfd_rpc_cluster_status(kfd_call *call)
{
    kfd_server *srv = call->srv;
    Keyfleet__V1__ClusterStatusResponse resp = KEYFLEET__V1__CLUSTER_STATUS_RESPONSE__INIT;
    kfd_repl_status_buf buf;
    char bound[80];
    if (srv->app->repl != NULL) {
        kfd_repl_status(srv->app->repl, &resp, &buf);
        /* A cluster of one configured on port 0: show the port it got. */
        for (size_t i = 0; i < resp.n_members; i++) {
            const char *rpc = resp.members[i]->rpc_address;
            size_t n = strlen(rpc);
            if (strcmp(resp.members[i]->name, srv->cfg->name) == 0 && n > 2 && strcmp(rpc + n - 2, ":0") == 0) {
                snprintf(bound, sizeof(bound), "%.*s:%d", (int)(n - 2), rpc, kfd_server_port(srv, 0));
                resp.members[i]->rpc_address = bound;
            }
        }
    }
    resp.self = srv->cfg->name;
    resp.version = (char *)KF_VERSION;
    resp.uptime_seconds = (uint64_t)(time(NULL) - srv->started);
    kfd_kms_info info = {0};
    srv->app->kms->ops->describe(srv->app->kms, &info);
    resp.kms_key_version = info.latest_version;
    resp.kms_key_missing = srv->app->kek_missing;
    kfd_audit_head head = {0};
    const char *diverged_why = "";
    if (srv->app->store != NULL) {
        kfd_store_audit_head(srv->app->store, &head);
        resp.audit_diverged_seq = kfd_store_audit_diverged(srv->app->store, &diverged_why);
        resp.audit_diverged_reason = (char *)diverged_why;
        resp.audit_head_seq = head.seq;
        resp.audit_root.data = head.root;
        resp.audit_root.len = sizeof(head.root);
    }
    kfd_call_reply(call, &resp.base);
}

/* How long a membership change waits for a majority of voters to hold its judged record. */
#define KFD_MEMBER_CONFIRM_MS 5000

/* A membership change (review rev45b, R45b-4). libraft applies a configuration entry without the
 * state machine, so no replica's apply can refuse one. The change is therefore judged first: a
 * `cluster_change` record, carrying the caller's certificate serial, is committed; every replica
 * refuses it at apply where that certificate is on its denylist. Then a head round over a check
 * committed after the record must find a majority of voters holding it (a leader whose edited
 * denylist let the caller in is outvoted and diverges) before the leader changes the
 * configuration and records `cluster_add` / `cluster_remove`. */
typedef struct member_op {
    kfd_op base;
    kfd_app *app;
    char name[64], raft[280], rpc[280];
    char detail[700];
    bool add;
} member_op;

/* Commits one membership audit record under the op's caller (its certificate serial goes with
 * it: kfd_op_commit); reason is serialized before this returns. */
static void commit_member_record(member_op *op, const char *action, Keyfleet__V1__Decision decision,
                                 const char *reason, kfd_commit_cb cb)
{
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_op_actor(&op->base), action, decision, "", "", "", reason);
    Keyfleet__V1__CmdAppendAudit c;
    Keyfleet__V1__StateCommand cmd;
    kfd_audit_command(&a, &c, &cmd);
    kfd_op_commit(&op->base, &cmd, cb, op);
}

static void on_member_audited(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res;
    member_op *op = arg;
    kfd_call *call = op->base.call;
    if (status != 0)
        kf_log_warn("cluster_audit_failed", "member=%s error=%s", op->name, kf_log_q(err->msg));
    if (call != NULL) {
        if (op->add) {
            Keyfleet__V1__AddMemberResponse r = KEYFLEET__V1__ADD_MEMBER_RESPONSE__INIT;
            kfd_call_reply(call, &r.base);
        } else {
            Keyfleet__V1__RemoveMemberResponse r = KEYFLEET__V1__REMOVE_MEMBER_RESPONSE__INIT;
            kfd_call_reply(call, &r.base);
        }
    }
    kfd_op_free(op);
}

static void answer_change_error(kfd_call *call, int r, const kf_err *err)
{
    if (call == NULL)
        return;
    kfd_call_error(call, r == -EEXIST   ? KF_CONNECT_ALREADY_EXISTS
                         : r == -ENOENT ? KF_CONNECT_NOT_FOUND
                         : r == -EINVAL ? KF_CONNECT_INVALID_ARGUMENT
                         : r == -EBUSY  ? KF_CONNECT_FAILED_PRECONDITION
                         : r == -EACCES ? KF_CONNECT_PERMISSION_DENIED
                                        : KF_CONNECT_UNAVAILABLE,
                   "%s", err->msg);
}

/* The change was not made: logged, answered, the op freed. */
static void member_not_changed(member_op *op, const char *stage, int r, const kf_err *err)
{
    kf_log_warn("cluster_member_unchanged", "action=%s member=%s stage=%s status=%d error=%s",
                op->add ? "add" : "remove", op->name, stage, r, kf_log_q(err->msg));
    answer_change_error(op->base.call, r, err);
    kfd_op_free(op);
}

static void on_changed(void *arg, int status, const kf_err *err)
{
    member_op *op = arg;
    if (status != 0) {
        member_not_changed(op, "configuration", -EAGAIN, err);
        return;
    }
    kf_log_info("cluster_member_changed", "action=%s member=%s detail=%s", op->add ? "add" : "remove", op->name,
                kf_log_q(op->detail));
    commit_member_record(op, op->add ? "cluster_add" : "cluster_remove", KEYFLEET__V1__DECISION__DECISION_ALLOW,
                         op->detail, on_member_audited);
}

static void on_reconfirmed(void *arg, int status, const kf_err *err)
{
    member_op *op = arg;
    if (status != 0) {
        kf_err e = {0};
        kf_err_set(&e, status, "the change was not made: a majority of voters did not confirm its record (%s)",
                   err->msg);
        member_not_changed(op, "head_round", -EAGAIN, &e);
        return;
    }
    kf_err e = {0};
    int r = op->add ? kfd_repl_add(op->app->repl, op->name, op->raft, op->rpc, on_changed, op, &e)
                    : kfd_repl_remove(op->app->repl, op->name, on_changed, op, &e);
    if (r != 0)
        member_not_changed(op, "configuration", r, &e);
}

static void on_judged(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    member_op *op = arg;
    if (status != 0) {
        member_not_changed(op, "record", status == -EACCES ? -EACCES : -EAGAIN, err);
        return;
    }
    kf_err e = {0};
    int r = kfd_checkpointer_reconfirm(op->app->checkpointer, res->audit_seq, KFD_MEMBER_CONFIRM_MS, on_reconfirmed,
                                       op, &e);
    if (r != 0)
        member_not_changed(op, "head_round", r, &e);
}

/* The leader's own removal was recorded as refused: it hands leadership on. */
static void on_self_removal_recorded(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res;
    member_op *op = arg;
    kf_err e = {0};
    int r = status != 0 ? kf_err_set(&e, status, "%s", err->msg) : kfd_repl_hand_over(op->app->repl, &e);
    if (r == 0)
        r = kf_err_set(&e, -EAGAIN, "%s leads: it is handing leadership to another coordinator; ask again and the "
                       "new leader removes it", op->name);
    answer_change_error(op->base.call, r, &e);
    kfd_op_free(op);
}

/* Checks the change can be made now, then commits its judged record (on_judged). */
static void start_change(kfd_call *call, member_op *op)
{
    kf_err err = {0};
    int r = kfd_repl_check_change(op->app->repl, op->name, op->add ? op->raft : NULL, op->rpc, &err);
    /* The leader's own removal: once the configuration leaves it out it leads no more and could
     * not record `cluster_remove` (review rev46, R46-4). It records the request as refused, then
     * hands leadership on (review rev46b R46b-4: each hand-over shows in the audit log); asked
     * again, the new leader removes it and records it. */
    if (r == 0 && !op->add && strcmp(op->name, op->app->cfg->name) == 0) {
        char why[sizeof(op->detail) + 120];
        snprintf(why, sizeof(why), "remove %s: it leads; leadership is handed to another coordinator, which "
                 "removes it when asked again", op->detail);
        commit_member_record(op, "cluster_change", KEYFLEET__V1__DECISION__DECISION_DENY, why, on_self_removal_recorded);
        return;
    }
    if (r != 0) {
        answer_change_error(call, r, &err);
        kfd_op_free(op);
        return;
    }
    char reason[sizeof(op->detail) + 16];
    snprintf(reason, sizeof(reason), "%s %s", op->add ? "add" : "remove", op->detail);
    commit_member_record(op, "cluster_change", KEYFLEET__V1__DECISION__DECISION_ALLOW, reason, on_judged);
}

void kfd_rpc_add_member(kfd_call *call)
{
    const Keyfleet__V1__AddMemberRequest *req = (const Keyfleet__V1__AddMemberRequest *)call->request;
    const char *bad = kfd_check_add_member(req);
    if (bad == NULL && (strlen(req->raft_address) >= sizeof(((member_op *)0)->raft) ||
                        strlen(req->rpc_address) >= sizeof(((member_op *)0)->rpc)))
        bad = "raft_address and rpc_address must be shorter than 280 bytes";
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    member_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    op->app = call->srv->app;
    op->add = true;
    snprintf(op->name, sizeof(op->name), "%s", req->name);
    snprintf(op->raft, sizeof(op->raft), "%s", req->raft_address);
    snprintf(op->rpc, sizeof(op->rpc), "%s", req->rpc_address);
    snprintf(op->detail, sizeof(op->detail), "member %s raft=%s rpc=%s", op->name, op->raft, op->rpc);
    start_change(call, op);
}

void kfd_rpc_remove_member(kfd_call *call)
{
    const Keyfleet__V1__RemoveMemberRequest *req = (const Keyfleet__V1__RemoveMemberRequest *)call->request;
    const char *bad = kfd_check_remove_member(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    member_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    op->app = call->srv->app;
    snprintf(op->name, sizeof(op->name), "%s", req->name);
    snprintf(op->detail, sizeof(op->detail), "member %s", op->name);
    start_change(call, op);
}
