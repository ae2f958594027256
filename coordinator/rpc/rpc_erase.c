/* Remote crypto-erase (docs/operations.md, "Remote crypto-erase"). keyfleetctl node wipe is an
 * operator change held under the policy's admin section (it destroys access to data, so it is
 * never one operator's act where the policy asks for more); once approved the volumes are retired
 * and told to their node at its next heartbeat, whose agent destroys keyfleet's keyslots, tokens,
 * properties and TPM-sealed copies and reports back in a later heartbeat. */
#include "rpc/rpc_erase.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/audit.h"
#include "core/policy.h"
#include "front/server.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "kf_identity.h"
#include "kf_log.h"
#include "rpc/rpc_admin.h"
#include "rpc/rpc_change.h"
#include "rpc/rpc_check.h"
#include "store/store_erase.h"
#include "store/store_read.h"

typedef struct wipe_op {
    kfd_op base;
    char **ids;
    size_t n;
} wipe_op;

static void on_wipe_committed(void *arg, int status, const kfd_change_result *res, const kf_err *err)
{
    wipe_op *op = arg;
    if (op->base.call != NULL && kfd_rpc_commit_answer(op->base.call, status, err)) {
        Keyfleet__V1__WipeNodeResponse resp = KEYFLEET__V1__WIPE_NODE_RESPONSE__INIT;
        resp.pending_request_id = (char *)res->held_request_id;
        resp.approvals_needed = res->approvals_needed;
        resp.volume_ids = op->ids;
        resp.n_volume_ids = op->n;
        kfd_call_reply(op->base.call, &resp.base);
    }
    kfd_store_free_ids(op->ids, op->n);
    kfd_op_free(op);
}

/* An erase asked for and not confirmed by the node. */
static bool pending_erase(const Keyfleet__V1__VolumeInfo *v)
{
    return v->erase_requested_at != 0 && v->erased_at == 0;
}

/* The volumes to wipe: those named (each enrolled by node and not being erased), or every one of
 * node's not being erased; to cancel (req->cancel), those being erased and not confirmed. Answers
 * the call and returns false when refused. */
static bool wipe_targets(kfd_call *call, const Keyfleet__V1__WipeNodeRequest *req, wipe_op *op)
{
    kfd_store *s = kfd_call_app(call)->store;
    Keyfleet__V1__ListVolumesResponse vols = KEYFLEET__V1__LIST_VOLUMES_RESPONSE__INIT;
    if (kfd_store_list_volumes(s, &vols) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return false;
    }
    bool ok = true;
    for (size_t i = 0; ok && i < req->n_volume_ids; i++) {
        const Keyfleet__V1__VolumeInfo *v = NULL;
        for (size_t k = 0; k < vols.n_volumes && v == NULL; k++)
            if (strcmp(vols.volumes[k]->volume->id, req->volume_ids[i]) == 0)
                v = vols.volumes[k];
        for (size_t k = 0; k < i && ok; k++)
            if (strcmp(req->volume_ids[k], req->volume_ids[i]) == 0) {
                kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "volume %s is named twice", req->volume_ids[i]);
                ok = false;
            }
        if (!ok)
            break;
        if (v == NULL) {
            kfd_call_error(call, KF_CONNECT_NOT_FOUND, "volume %s is not enrolled", req->volume_ids[i]);
            ok = false;
        } else if (strcmp(v->node, req->node) != 0) {
            kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "volume %s was enrolled by node %s, not %s",
                           req->volume_ids[i], v->node, req->node);
            ok = false;
        } else if (!req->cancel && v->erase_requested_at != 0) {
            kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "volume %s is already %s", req->volume_ids[i],
                           v->erased_at != 0 ? "erased" : "being erased");
            ok = false;
        } else if (req->cancel && !pending_erase(v)) {
            kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "volume %s %s", req->volume_ids[i],
                           v->erased_at != 0 ? "was erased already: an erase cannot be undone" : "is not being erased");
            ok = false;
        }
    }
    size_t cap = req->n_volume_ids > 0 ? req->n_volume_ids : vols.n_volumes;
    if (ok && (op->ids = calloc(cap + 1, sizeof(char *))) == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        ok = false;
    }
    for (size_t i = 0; ok && i < req->n_volume_ids; i++)
        if ((op->ids[op->n++] = strdup(req->volume_ids[i])) == NULL)
            ok = false;
    for (size_t k = 0; ok && req->n_volume_ids == 0 && k < vols.n_volumes; k++) {
        const Keyfleet__V1__VolumeInfo *v = vols.volumes[k];
        bool take = req->cancel ? pending_erase(v) : v->erase_requested_at == 0;
        if (strcmp(v->node, req->node) == 0 && take && (op->ids[op->n++] = strdup(v->volume->id)) == NULL)
            ok = false;
    }
    if (ok && op->n > KFD_ERASE_MAX) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "at most %d volumes per wipe: name them", KFD_ERASE_MAX);
        ok = false;
    } else if (ok && op->n == 0) {
        kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "node %s has no volume %s", req->node,
                       req->cancel ? "being erased (asked for and not confirmed)"
                                   : "that is not erased or being erased");
        ok = false;
    } else if (!ok && op->ids != NULL && op->n > 0 && op->ids[op->n - 1] == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
    }
    kfd_store_free_volume_list(&vols);
    return ok;
}

void kfd_rpc_wipe_node(kfd_call *call)
{
    const Keyfleet__V1__WipeNodeRequest *req = (const Keyfleet__V1__WipeNodeRequest *)call->request;
    const char *bad = kfd_check_wipe_node(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    /* Destroying the operator's passphrases too makes the data unrecoverable: only where the
     * policy says so for a group of the node. */
    if (req->erase_all_keyslots && !kfd_policy_erase_all_allowed(kfd_call_app(call)->policy, req->node)) {
        kfd_call_error(call, KF_CONNECT_PERMISSION_DENIED,
                       "--erase-all-keyslots is not allowed for node %s: no group of it sets wipe.erase_all_keyslots",
                       req->node);
        return;
    }
    wipe_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    if (!wipe_targets(call, req, op)) {
        kfd_store_free_ids(op->ids, op->n);
        kfd_op_free(op);
        return;
    }
    char reason[1200];
    int len = snprintf(reason, sizeof(reason), "%s %s of node %s:", req->cancel ? "cancel the crypt-erase" : "crypt-erase",
                       req->cancel                ? "asked for and not confirmed (the volumes stay retired)"
                       : req->erase_all_keyslots ? "EVERY keyslot (data unrecoverable)"
                                                  : "keyfleet's keys",
                       req->node);
    for (size_t i = 0; i < op->n && len > 0 && (size_t)len < sizeof(reason); i++)
        len += snprintf(reason + len, sizeof(reason) - (size_t)len, " %s", op->ids[i]);
    if (len > 0 && (size_t)len < sizeof(reason) && req->reason[0] != '\0')
        snprintf(reason + len, sizeof(reason) - (size_t)len, ": %s", req->reason);
    kfd_audit_buf a;
    const char *action = req->cancel ? "node_wipe_cancel" : "node_wipe";
    kfd_audit_fill(&a, kfd_call_actor(call), action, KEYFLEET__V1__DECISION__DECISION_ALLOW, req->node, "", "", reason);
    Keyfleet__V1__CmdWipeVolumes c = KEYFLEET__V1__CMD_WIPE_VOLUMES__INIT;
    c.node = req->node;
    c.volume_ids = op->ids;
    c.n_volume_ids = op->n;
    c.erase_all_keyslots = req->erase_all_keyslots;
    c.cancel = req->cancel;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_WIPE_VOLUMES;
    cmd.wipe_volumes = &c;
    kf_log_warn(action, "node=%s volumes=%zu operator=%s", req->node, op->n, call->peer->name);
    /* Two operators by default (admin.wipe_approvers), whatever admin.approvers says; a cancel
     * is held the same way. */
    kfd_commit_change_n(call, &cmd, reason, req->totp_code, kfd_policy_wipe_approvers(kfd_call_app(call)->policy),
                        on_wipe_committed, op);
}

/* ------------------------------------------------------------------ heartbeat reports */

int kfd_erase_plan(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req, kfd_erase_action *actions)
{
    kfd_store *s = kfd_call_app(call)->store;
    int commits = 0;
    for (size_t i = 0; i < req->n_erased; i++) {
        const Keyfleet__V1__VolumeErased *e = req->erased[i];
        char node[256];
        int64_t erased_at = 0;
        int r = kfd_store_get_erase(s, e->volume_id, node, sizeof(node), &erased_at);
        if (r != 0 && r != -ENOENT)
            return -EIO;
        bool mine = r == 0 && strcmp(node, call->peer->name) == 0;
        bool twice = false; /* a report repeated within the request is taken once */
        for (size_t k = 0; k < i && !twice; k++)
            twice = strcmp(req->erased[k]->volume_id, e->volume_id) == 0;
        if (twice || (mine && erased_at != 0))
            actions[i] = KFD_ERASE_SKIP;
        else if (!mine)
            actions[i] = KFD_ERASE_REFUSED;
        else
            actions[i] = e->ok ? KFD_ERASE_CONFIRM : KFD_ERASE_FAILED;
        commits += actions[i] != KFD_ERASE_SKIP;
    }
    return commits;
}

void kfd_erase_commit(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req, const kfd_erase_action *actions,
                      kfd_commit_cb cb, void *arg)
{
    const char *node = call->peer->name;
    for (size_t i = 0; i < req->n_erased; i++) {
        const Keyfleet__V1__VolumeErased *e = req->erased[i];
        if (actions[i] == KFD_ERASE_SKIP)
            continue;
        char reason[800];
        kfd_audit_buf a;
        Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
        Keyfleet__V1__CmdAppendAudit audit_only;
        Keyfleet__V1__CmdEraseConfirm c = KEYFLEET__V1__CMD_ERASE_CONFIRM__INIT;
        if (actions[i] == KFD_ERASE_CONFIRM) {
            snprintf(reason, sizeof(reason), "crypt-erased at %lld: %s", (long long)e->at->seconds, e->detail);
            kfd_audit_fill(&a, kfd_call_actor(call), "volume_erased", KEYFLEET__V1__DECISION__DECISION_ALLOW, node,
                           e->volume_id, "", reason);
            c.node = (char *)node;
            c.volume_id = e->volume_id;
            c.detail = e->detail;
            c.audit = &a.entry;
            cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ERASE_CONFIRM;
            cmd.erase_confirm = &c;
            kf_log_warn("volume_erased", "node=%s volume=%s", node, kf_log_q(e->volume_id));
        } else {
            bool failed = actions[i] == KFD_ERASE_FAILED;
            if (failed)
                snprintf(reason, sizeof(reason), "the node could not crypt-erase the volume (still pending): %s",
                         e->detail);
            else
                snprintf(reason, sizeof(reason), "volume %s is not being erased for node %s: report refused",
                         e->volume_id, node);
            kfd_audit_fill(&a, kfd_call_actor(call), failed ? "erase_failed" : "erase_confirm_refused",
                           KEYFLEET__V1__DECISION__DECISION_DENY, node, e->volume_id, "", reason);
            kfd_audit_command(&a, &audit_only, &cmd);
            kf_log_warn(failed ? "erase_failed" : "erase_confirm_refused", "node=%s volume=%s", node,
                        kf_log_q(e->volume_id));
        }
        kfd_call_commit(call, &cmd, cb, arg);
    }
}

int kfd_erase_orders(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req, const kfd_erase_action *actions,
                     char ***ret_ids, size_t *ret_n, char **ret_all_ids, size_t *ret_n_all)
{
    char **ids = NULL;
    size_t n = 0;
    bool all[KFD_ERASE_MAX];
    int r = kfd_store_erase_pending(kfd_call_app(call)->store, call->peer->name, &ids, &n, all);
    if (r != 0)
        return r;
    size_t kept = 0;
    *ret_n_all = 0;
    for (size_t i = 0; i < n; i++) {
        bool confirmed = false;
        for (size_t k = 0; k < req->n_erased && !confirmed; k++)
            confirmed = actions[k] == KFD_ERASE_CONFIRM && strcmp(req->erased[k]->volume_id, ids[i]) == 0;
        if (confirmed) {
            free(ids[i]);
            continue;
        }
        if (all[i])
            ret_all_ids[(*ret_n_all)++] = ids[i];
        ids[kept++] = ids[i];
    }
    *ret_ids = ids;
    *ret_n = kept;
    return 0;
}
