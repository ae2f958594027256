/* AdminService.RevealRecoveryKey (docs/recovery.md): the break-glass reveal of a volume's
 * escrowed recovery key to an operator. Proposed, it waits as a pending request of rule
 * "recovery" for admin.approvers distinct operators (at least 2; TOTP where admin.totp says),
 * the proposer counting once; approved, the proposer's next call gets the key sealed to its own
 * ephemeral key, once the reveal (which spends the request and marks the escrow for
 * replacement) is committed with its audit record. store_recovery.c checks it again at apply. */
#include "rpc/rpc_recovery.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/app.h"
#include "core/audit.h"
#include "front/seal.h"
#include "front/server.h"
#include "kf_log.h"
#include "kf_secmem.h"
#include "rpc/rpc_admin.h"
#include "rpc/rpc_change.h"
#include "rpc/rpc_check.h"
#include "rpc/rpc_labels.h"
#include "rpc/rpc_node.h"
#include "store/store_judged.h"
#include "store/store_apply.h"
#include "store/store_read.h"
#include "store/store_recovery.h"

/* Break glass needs two people even where other operator changes need one. */
#define RECOVERY_MIN_APPROVERS 2

typedef struct reveal_op {
    kfd_op base;
    const Keyfleet__V1__RevealRecoveryKeyRequest *req; /* valid while base.call is */
    char request_id[65];
    char volume_id[129];
    char node[64];
    char name[256];
    int kind;
    uint32_t needed;
    char refusal[KF_ERR_MSG_MAX]; /* the proposer's TOTP refused: why */
    char *wrapped;     /* what the KMS unwraps */
    /* The escrow row (and ZFS: the volume key) wrapped was read from; the apply checks them. */
    char escrow_request_id[65];
    char escrow_kcv[24];
    char volume_key_kcv[24];
    int64_t totp_step; /* the fetch's */
    kfd_sealed sealed;
    /* LUKS2: the staged replacement waiting for the node's confirmation, shown too (review
     * rev26c R2): after the node kills the current keyslot, only it opens the volume. */
    char *next_wrapped; /* NULL: none waits */
    char escrow_next_request_id[65];
    kfd_sealed sealed_next;
    bool sealed_current; /* the current key is sealed: the next unwrap is the staged one's */
} reveal_op;

static void reveal_op_free(reveal_op *op)
{
    free(op->wrapped);
    free(op->next_wrapped);
    kf_wipe(&op->sealed, sizeof(op->sealed));
    kf_wipe(&op->sealed_next, sizeof(op->sealed_next));
    kfd_op_free(op);
}

static void reveal_op_release(void *op)
{
    reveal_op_free(op);
}

static void refuse(kfd_call *call, reveal_op *op, const char *volume_id, const char *request_id, kf_connect_code code,
                   const char *why)
{
    char vol[129], rid[65], msg[300];
    snprintf(vol, sizeof(vol), "%s", volume_id);
    snprintf(rid, sizeof(rid), "%s", request_id);
    snprintf(msg, sizeof(msg), "%s", why);
    if (op != NULL)
        reveal_op_free(op);
    kfd_rpc_deny_audited(call, "recovery_reveal", KEYFLEET__V1__DECISION__DECISION_DENY, vol, rid, code, msg);
}

static Keyfleet__V1__VolumeRef volume_ref(reveal_op *op)
{
    Keyfleet__V1__VolumeRef v = KEYFLEET__V1__VOLUME_REF__INIT;
    v.id = op->volume_id;
    v.kind = (Keyfleet__V1__VolumeKind)op->kind;
    v.name = op->name;
    return v;
}

static void on_revealed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    reveal_op *op = arg;
    kfd_call *call = op->base.call;
    if (call == NULL) {
        reveal_op_free(op);
        return;
    }
    if (kfd_rpc_refusal_answered(call, "recovery_reveal", op->volume_id, status, res, err,
                                 status == -EACCES ? KF_CONNECT_PERMISSION_DENIED : KF_CONNECT_FAILED_PRECONDITION,
                                 NULL)) {
        reveal_op_free(op);
        return;
    }
    if (status != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "the reveal could not be recorded; no key was shown");
        reveal_op_free(op);
        return;
    }
    Keyfleet__V1__SealedKey sk, skn;
    kfd_rpc_sealed_key(&sk, &op->sealed);
    if (op->next_wrapped != NULL)
        kfd_rpc_sealed_key(&skn, &op->sealed_next);
    Keyfleet__V1__VolumeRef v = volume_ref(op);
    Keyfleet__V1__RevealRecoveryKeyResponse resp = KEYFLEET__V1__REVEAL_RECOVERY_KEY_RESPONSE__INIT;
    resp.request_id = op->request_id;
    resp.approved = true;
    resp.sealed_key = &sk;
    resp.sealed_pending_key = op->next_wrapped != NULL ? &skn : NULL;
    resp.volume = &v;
    resp.node = op->node;
    resp.audit_seq = res->audit_seq;
    kf_log_warn("recovery_revealed", "operator=%s volume=%s node=%s request=%s audit_seq=%llu", call->peer->name,
                kf_log_q(op->volume_id), op->node, op->request_id, (unsigned long long)res->audit_seq);
    kfd_call_reply(call, &resp.base);
    reveal_op_free(op);
}

static void on_unwrapped(void *arg, const kfd_kms_result *res)
{
    reveal_op *op = arg;
    kfd_call *call = op->base.call;
    if (call == NULL) {
        reveal_op_free(op);
        return;
    }
    if (res->status != 0) {
        kf_log_error("kms_failed", "op=recovery_reveal volume=%s error=%s", kf_log_q(op->volume_id),
                     kf_log_q(res->message));
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "KMS unavailable; no key was shown");
        reveal_op_free(op);
        return;
    }
    bool next = op->sealed_current;
    if (kfd_seal_key(call, op->req->ephemeral_public_key.data, next ? "recovery-reveal-pending" : "recovery-reveal",
                     op->request_id, op->volume_id, res->plaintext->data, next ? &op->sealed_next : &op->sealed) != 0) {
        reveal_op_free(op);
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "cannot seal to ephemeral_public_key");
        return;
    }
    op->sealed_current = true;
    if (!next && op->next_wrapped != NULL) {
        char kms_id[160];
        snprintf(kms_id, sizeof(kms_id), "%s/recovery", op->volume_id);
        kfd_call_app(call)->kms->ops->unwrap(kfd_call_app(call)->kms, kms_id, op->next_wrapped, on_unwrapped, op);
        return;
    }
    char reason[400];
    snprintf(reason, sizeof(reason), "recovery key of volume %s (node %s)%s%s%s shown to the operator; the node "
             "replaces it at its next contact", op->volume_id, op->node,
             op->next_wrapped != NULL ? " and its pending replacement (escrow request " : "",
             op->escrow_next_request_id, op->next_wrapped != NULL ? ")" : "");
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "recovery_reveal", KEYFLEET__V1__DECISION__DECISION_ALLOW, op->node,
                   op->volume_id, op->request_id, reason);
    Keyfleet__V1__CmdRecoveryReveal c = KEYFLEET__V1__CMD_RECOVERY_REVEAL__INIT;
    c.volume_id = op->volume_id;
    c.operator_ = (char *)call->peer->name;
    c.request_id = op->request_id;
    c.audit = &a.entry;
    c.escrow_request_id = op->escrow_request_id;
    c.escrow_kcv = op->escrow_kcv;
    c.volume_key_kcv = op->volume_key_kcv;
    c.totp_step = op->totp_step;
    c.escrow_next_request_id = op->escrow_next_request_id;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_REVEAL;
    cmd.recovery_reveal = &c;
    kfd_call_commit(call, &cmd, on_revealed, op);
}

static void on_proposed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res;
    reveal_op *op = arg;
    kfd_call *call = op->base.call;
    if (call != NULL && kfd_rpc_commit_answer(call, status, err)) {
        kfd_pending p;
        Keyfleet__V1__VolumeRef v = volume_ref(op);
        Keyfleet__V1__RevealRecoveryKeyResponse resp = KEYFLEET__V1__REVEAL_RECOVERY_KEY_RESPONSE__INIT;
        resp.request_id = op->request_id;
        resp.approvals_needed = op->needed;
        resp.approvals_have = 1;
        if (kfd_store_get_pending(kfd_call_app(call)->store, op->request_id, &p) == 0) {
            resp.approved = p.state == KFD_PENDING_APPROVED;
            resp.approvals_have = p.approvals_have;
        }
        resp.volume = &v;
        resp.node = op->node;
        kf_log_info("recovery_requested", "operator=%s volume=%s request=%s needed=%u", call->peer->name,
                    kf_log_q(op->volume_id), op->request_id, op->needed);
        kfd_call_reply(call, &resp.base);
    }
    reveal_op_free(op);
}

static void on_totp_refused(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)status, (void)res, (void)err;
    reveal_op *op = arg;
    if (op->base.call != NULL)
        kfd_call_error(op->base.call, KF_CONNECT_PERMISSION_DENIED, "%s", op->refusal);
    reveal_op_free(op);
}

static void propose(kfd_call *call, reveal_op *op)
{
    kfd_app *app = kfd_call_app(call);
    kfd_admin_policy admin = kfd_policy_admin(app->policy);
    op->needed = admin.approvers > RECOVERY_MIN_APPROVERS ? admin.approvers : RECOVERY_MIN_APPROVERS;
    int64_t step = 0;
    if (!kfd_rpc_operator_totp(call, op, reveal_op_release, op->req->totp_code, admin.require_totp, op->node,
                               op->volume_id, "", &step, op->refusal, sizeof(op->refusal), on_totp_refused))
        return;
    kfd_new_request_id(op->request_id);
    int64_t now = time(NULL);
    char reason[400];
    snprintf(reason, sizeof(reason), "reveal of the recovery key of volume %s (node %s) proposed, needs %u operators%s",
             op->volume_id, op->node, op->needed, admin.require_totp ? " with TOTP" : "");
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "recovery_request", KEYFLEET__V1__DECISION__DECISION_PENDING, op->node,
                   op->volume_id, op->request_id, reason);
    Keyfleet__V1__VolumeRef v = volume_ref(op);
    Keyfleet__V1__Timestamp created = KEYFLEET__V1__TIMESTAMP__INIT, expires = KEYFLEET__V1__TIMESTAMP__INIT;
    created.seconds = now;
    expires.seconds = now + admin.pending_ttl_s;
    char summary[400];
    snprintf(summary, sizeof(summary), "reveal the recovery key of volume %s (node %s) to %s", op->volume_id, op->node,
             call->peer->name);
    Keyfleet__V1__CmdCreatePending p = KEYFLEET__V1__CMD_CREATE_PENDING__INIT;
    p.request_id = op->request_id;
    p.node = op->node;
    p.volume = &v;
    p.source_address = call->source;
    p.created_at = &created;
    p.expires_at = &expires;
    p.approvals_needed = op->needed;
    p.rule = (char *)"recovery";
    p.audit = &a.entry;
    p.require_totp = admin.require_totp;
    p.change_summary = summary;
    p.proposer = (char *)call->peer->name;
    p.proposer_totp_step = step;
    p.judged_policy = (ProtobufCBinaryData){KFD_JUDGED_LEN, app->policy_judged}; /* review rev44 J6 */
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_PENDING;
    cmd.create_pending = &p;
    kfd_call_commit(call, &cmd, on_proposed, op);
}

/* Whether a rule for vol's node and labels may require TPM and network (a two-part key). */
static bool rule_requires_two_parts(kfd_app *app, const kfd_volume *vol)
{
    kfd_label_set ls;
    kfd_label_set_from_json(&ls, vol->labels_json);
    kfd_policy_input in = {.node = vol->node, .volume_id = vol->id, .volume_name = vol->name, .labels = ls.items,
                           .n_labels = ls.n, .now = time(NULL), .enrolling = true};
    /* Not kfd_policy_evaluate: with no source, TPM-bound key or quote here, a two-part rule that
     * names networks or requires tpm_key or attested too would not decide (review rev40 F2). */
    bool two = kfd_policy_may_require_two_parts(app->policy, &in);
    kfd_label_set_clear(&ls);
    return two;
}

void kfd_rpc_reveal_recovery_key(kfd_call *call)
{
    const Keyfleet__V1__RevealRecoveryKeyRequest *req = (const Keyfleet__V1__RevealRecoveryKeyRequest *)call->request;
    bool reveal = req->request_id[0] != '\0';
    const char *bad = kfd_check_reveal_recovery_key(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    kfd_app *app = kfd_call_app(call);
    kfd_volume vol;
    int r = kfd_store_get_volume(app->store, req->volume_id, &vol);
    kfd_recovery rec = {0};
    if (r == 0 && (r = kfd_store_get_recovery(app->store, req->volume_id, &rec)) != 0)
        kfd_volume_clear(&vol);
    if (r == -ENOENT) {
        refuse(call, NULL, req->volume_id, req->request_id, KF_CONNECT_NOT_FOUND,
               "no such volume, or no recovery key escrowed for it (keyfleet-agent recovery-key add)");
        return;
    }
    if (r != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    bool two_part = vol.tpm_and_network;
    if (!two_part && rule_requires_two_parts(app, &vol)) {
        /* review rev26e F1a: the mode is not recorded for a volume enrolled before store
         * migration 18, and a recovery key escrowed then was judged by the rule alone; the rule
         * decides the reveal as it decides the escrow now. */
        kfd_volume_clear(&vol);
        kfd_recovery_clear(&rec);
        refuse(call, NULL, req->volume_id, req->request_id, KF_CONNECT_FAILED_PRECONDITION,
               "the volume's rule requires TPM and network: its recovery key is not revealed (a key the "
               "coordinators reveal would open it without the TPM)");
        return;
    }
    if (two_part) { /* review rev26b F1: a key escrowed before the mode was recorded opens it without the TPM */
        kfd_volume_clear(&vol);
        kfd_recovery_clear(&rec);
        refuse(call, NULL, req->volume_id, req->request_id, KF_CONNECT_FAILED_PRECONDITION,
               "the volume was enrolled with TPM and network both required: its recovery key is not revealed");
        return;
    }
    reveal_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_volume_clear(&vol);
        kfd_recovery_clear(&rec);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    op->req = req;
    op->kind = vol.kind;
    snprintf(op->volume_id, sizeof(op->volume_id), "%s", vol.id);
    snprintf(op->node, sizeof(op->node), "%s", vol.node);
    snprintf(op->name, sizeof(op->name), "%s", vol.name);
    snprintf(op->request_id, sizeof(op->request_id), "%s", req->request_id);
    bool zfs = vol.kind == KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS;
    char *wrapped = op->wrapped = strdup(zfs ? vol.wrapped_key : rec.wrapped);
    snprintf(op->escrow_request_id, sizeof(op->escrow_request_id), "%s", rec.request_id);
    snprintf(op->escrow_kcv, sizeof(op->escrow_kcv), "%s", rec.kcv);
    if (!zfs && rec.next_request_id[0] != '\0') {
        snprintf(op->escrow_next_request_id, sizeof(op->escrow_next_request_id), "%s", rec.next_request_id);
        op->next_wrapped = strdup(rec.next_wrapped);
    }
    if (zfs)
        snprintf(op->volume_key_kcv, sizeof(op->volume_key_kcv), "%s", vol.key_kcv);
    kfd_volume_clear(&vol);
    kfd_recovery_clear(&rec);
    if (!reveal) {
        propose(call, op);
        return;
    }
    /* The checks the apply makes again, here first so a refused reveal costs no KMS call. */
    kfd_pending p;
    char proposer[64] = "";
    const char *why = NULL;
    kf_connect_code code = KF_CONNECT_PERMISSION_DENIED;
    r = kfd_store_get_pending(app->store, req->request_id, &p);
    if (r == 0)
        r = kfd_store_pending_proposer(app->store, req->request_id, proposer, sizeof(proposer));
    if (r == -ENOENT || (r == 0 && (strcmp(p.rule, "recovery") != 0 || strcmp(p.volume_id, op->volume_id) != 0))) {
        why = "no recovery key reveal of this volume has that request id";
        code = KF_CONNECT_NOT_FOUND;
    } else if (r != 0) {
        reveal_op_free(op);
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    } else if (strcmp(proposer, call->peer->name) != 0) {
        why = "the reveal was proposed by another operator; only the proposer is shown the key";
    } else if (p.state == KFD_PENDING_CONSUMED) {
        why = "this request was already used to reveal the key; propose again";
        code = KF_CONNECT_FAILED_PRECONDITION;
    } else if (p.state == KFD_PENDING_EXPIRED || time(NULL) >= p.expires_at) {
        why = "the request has expired; propose again";
        code = KF_CONNECT_FAILED_PRECONDITION;
    } else if (p.state != KFD_PENDING_APPROVED) {
        why = p.state == KFD_PENDING_DENIED ? "the reveal was denied" : "the reveal is not approved yet";
    }
    if (why == NULL && (wrapped == NULL || (op->escrow_next_request_id[0] != '\0' && op->next_wrapped == NULL)))
        why = "out of memory";
    if (why != NULL) {
        refuse(call, op, op->volume_id, req->request_id, code, why);
        return;
    }
    /* The key leaves at this call: a fresh second factor, not only the proposer's certificate. */
    if (!kfd_rpc_operator_totp(call, op, reveal_op_release, req->totp_code, p.require_totp, op->node, op->volume_id,
                               op->request_id, &op->totp_step, op->refusal, sizeof(op->refusal), on_totp_refused))
        return;
    if (kfd_call_deadline_passed(call, "the KMS unwrap")) {
        reveal_op_free(op);
        return;
    }
    char kms_id[160];
    snprintf(kms_id, sizeof(kms_id), zfs ? "%s" : "%s/recovery", op->volume_id);
    app->kms->ops->unwrap(app->kms, kms_id, wrapped, on_unwrapped, op);
}
