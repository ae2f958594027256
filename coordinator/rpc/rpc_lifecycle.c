/* Node and volume lifecycle (docs/operations.md, "Node and volume lifecycle"): the node list,
 * unrevoke (an operator change, held for approval like a policy put) and volume retire. */
#include "rpc/rpc_lifecycle.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/audit.h"
#include "core/node_seen.h"
#include "core/policy.h"
#include "front/server.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "kf_log.h"
#include "rpc/rpc_admin.h"
#include "rpc/rpc_change.h"
#include "rpc/rpc_check.h"
#include "store/store_lifecycle.h"
#include "store/store_read.h"

typedef struct seen_merge {
    Keyfleet__V1__ListNodesResponse *resp;
    int r;
} seen_merge;

static Keyfleet__V1__NodeInfo *find_node(Keyfleet__V1__ListNodesResponse *resp, const char *name)
{
    for (size_t i = 0; i < resp->n_nodes; i++)
        if (strcmp(resp->nodes[i]->name, name) == 0)
            return resp->nodes[i];
    return NULL;
}

/* A node this coordinator served: its credential, and the newer of the two last-seen times. */
static void merge_seen(void *arg, const kfd_seen_entry *e)
{
    seen_merge *m = arg;
    if (m->r != 0)
        return;
    Keyfleet__V1__NodeInfo *n = find_node(m->resp, e->name);
    if (n == NULL) {
        Keyfleet__V1__NodeInfo **list = realloc(m->resp->nodes, (m->resp->n_nodes + 1) * sizeof(*list));
        n = calloc(1, sizeof(*n));
        if (list != NULL)
            m->resp->nodes = list;
        if (list == NULL || n == NULL || (keyfleet__v1__node_info__init(n), n->name = strdup(e->name)) == NULL ||
            (n->revoked_reason = strdup("")) == NULL) {
            if (n != NULL)
                free(n->name);
            free(n);
            m->r = -ENOMEM;
            return;
        }
        list[m->resp->n_nodes++] = n;
    }
    if (e->at > n->last_request_at)
        n->last_request_at = e->at;
    n->cert_serial = strdup(e->serial);
    n->identity = strdup(e->identity);
    n->cert_not_after = e->not_after;
    if (n->cert_serial == NULL || n->identity == NULL)
        m->r = -ENOMEM;
    if (n->cert_serial == NULL)
        n->cert_serial = (char *)protobuf_c_empty_string;
    if (n->identity == NULL)
        n->identity = (char *)protobuf_c_empty_string;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(Keyfleet__V1__NodeInfo *const *)a)->name, (*(Keyfleet__V1__NodeInfo *const *)b)->name);
}

/* Known nodes: the store's (revocation, last heartbeat, volumes, newest audited request), what
 * this coordinator saw of their credentials, and the policy's dead-man window: a node silent for
 * longer (or never seen) is past it, its agent in watch mode has locked (docs/operations.md). */
void kfd_rpc_list_nodes(kfd_call *call)
{
    if (!kfd_rpc_store_ok(call))
        return;
    kfd_app *app = kfd_call_app(call);
    Keyfleet__V1__ListNodesResponse resp = KEYFLEET__V1__LIST_NODES_RESPONSE__INIT;
    if (kfd_store_list_nodes(app->store, &resp) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    seen_merge m = {.resp = &resp};
    kfd_node_seen_each(app->seen, merge_seen, &m);
    if (m.r != 0) {
        kfd_store_free_node_list(&resp);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    if (resp.n_nodes > 1)
        qsort(resp.nodes, resp.n_nodes, sizeof(*resp.nodes), by_name);
    int64_t now = time(NULL);
    for (size_t i = 0; i < resp.n_nodes; i++) {
        Keyfleet__V1__NodeInfo *n = resp.nodes[i];
        n->dead_man_after_s = kfd_policy_dead_man(app->policy, n->name);
        n->dead_man_past = !n->revoked && n->dead_man_after_s != 0 &&
                           (n->last_seen_at == 0 || now - n->last_seen_at > (int64_t)n->dead_man_after_s);
    }
    kfd_call_reply(call, &resp.base);
    kfd_store_free_node_list(&resp);
}

typedef struct unrevoke_op {
    kfd_op base;
} unrevoke_op;

static void on_unrevoke_committed(void *arg, int status, const kfd_change_result *res, const kf_err *err)
{
    unrevoke_op *op = arg;
    if (op->base.call != NULL && kfd_rpc_commit_answer(op->base.call, status, err)) {
        Keyfleet__V1__UnrevokeNodeResponse resp = KEYFLEET__V1__UNREVOKE_NODE_RESPONSE__INIT;
        resp.pending_request_id = (char *)res->held_request_id;
        resp.approvals_needed = res->approvals_needed;
        kfd_call_reply(op->base.call, &resp.base);
    }
    kfd_op_free(op);
}

/* Lifting a revocation gives a node keys again: it is an operator change under the policy's
 * admin section, as a policy put is (revoking is not: taking access away is never held). */
void kfd_rpc_unrevoke_node(kfd_call *call)
{
    const Keyfleet__V1__UnrevokeNodeRequest *req = (const Keyfleet__V1__UnrevokeNodeRequest *)call->request;
    const char *bad = kfd_check_unrevoke_node(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    bool revoked = false;
    int64_t revoked_at = 0;
    if (kfd_store_node_revoked_at(kfd_call_app(call)->store, req->node, &revoked, &revoked_at) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    if (!revoked) {
        kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "node %s is not revoked", req->node);
        return;
    }
    unrevoke_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    char reason[600];
    snprintf(reason, sizeof(reason), "unrevoke node %s%s%s", req->node, req->reason[0] ? ": " : "", req->reason);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "unrevoke", KEYFLEET__V1__DECISION__DECISION_ALLOW, req->node, "", "",
                   reason);
    Keyfleet__V1__CmdUnrevokeNode c = KEYFLEET__V1__CMD_UNREVOKE_NODE__INIT;
    c.node = req->node;
    c.audit = &a.entry;
    c.revoked_at = revoked_at; /* approvals lift this revocation, not a later one */
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_UNREVOKE_NODE;
    cmd.unrevoke_node = &c;
    kf_log_info("node_unrevoke", "node=%s operator=%s", req->node, call->peer->name);
    kfd_commit_change(call, &cmd, reason, req->totp_code, on_unrevoke_committed, op);
}

/* Retiring takes access away, like a revocation: applied at once, audited, not reversible. */
void kfd_rpc_retire_volume(kfd_call *call)
{
    const Keyfleet__V1__RetireVolumeRequest *req = (const Keyfleet__V1__RetireVolumeRequest *)call->request;
    const char *bad = kfd_check_retire_volume(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "volume_retire", KEYFLEET__V1__DECISION__DECISION_ALLOW, "",
                   req->volume_id, "", req->reason[0] ? req->reason : "retired by operator");
    Keyfleet__V1__CmdRetireVolume c = KEYFLEET__V1__CMD_RETIRE_VOLUME__INIT;
    c.volume_id = req->volume_id;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RETIRE_VOLUME;
    cmd.retire_volume = &c;
    kf_log_info("volume_retire", "volume=%s operator=%s", kf_log_q(req->volume_id), call->peer->name);
    kfd_rpc_commit_empty(call, &cmd, &keyfleet__v1__retire_volume_response__descriptor);
}
