/* EnrollRecoveryKey with confirm (docs/recovery.md, "Replacing a revealed key"): the node says the
 * keyslot of the replacement escrowed under request_id is written and verified, and the revealed
 * key's keyslot is killed. Only then is the replacement the escrowed key and the revealed mark
 * cleared (store_recovery.c checks the owner, the revocation and the request id again at apply);
 * until then every heartbeat asks the node to replace the revealed key. */
#include "rpc/rpc_recovery_confirm.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/app.h"
#include "core/audit.h"
#include "front/server.h"
#include "keyfleet/v1/node.pb-c.h"
#include "kf_log.h"
#include "rpc/rpc_admin.h"
#include "rpc/rpc_node.h"
#include "store/store_recovery.h"

typedef struct confirm_op {
    kfd_op base;
    char volume_id[129];
    char request_id[65];
} confirm_op;

static void on_confirmed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    confirm_op *op = arg;
    kfd_call *call = op->base.call;
    char vol[129], rid[65];
    snprintf(vol, sizeof(vol), "%s", op->volume_id);
    snprintf(rid, sizeof(rid), "%s", op->request_id);
    kfd_op_free(op);
    if (call == NULL)
        return;
    if (status == -EACCES || status == -ESTALE) {
        kfd_rpc_deny_audited(call, "recovery_replaced", KEYFLEET__V1__DECISION__DECISION_DENY, vol, rid,
                             status == -EACCES ? KF_CONNECT_PERMISSION_DENIED : KF_CONNECT_FAILED_PRECONDITION,
                             err->msg);
        return;
    }
    if (status != 0) {
        kf_log_error("recovery_not_confirmed", "volume=%s error=%s", kf_log_q(vol), kf_log_q(err->msg));
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "the replacement could not be recorded; retry");
        return;
    }
    kf_log_info("recovery_replaced", "node=%s volume=%s request=%s audit_seq=%llu", call->peer->name, kf_log_q(vol),
                rid, (unsigned long long)res->audit_seq);
    Keyfleet__V1__EnrollRecoveryKeyResponse resp = KEYFLEET__V1__ENROLL_RECOVERY_KEY_RESPONSE__INIT;
    resp.audit_seq = res->audit_seq;
    resp.replaced = true;
    kfd_call_reply(call, &resp.base);
}

void kfd_rpc_recovery_confirm(kfd_call *call)
{
    const Keyfleet__V1__EnrollRecoveryKeyRequest *req = (const Keyfleet__V1__EnrollRecoveryKeyRequest *)call->request;
    confirm_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    snprintf(op->volume_id, sizeof(op->volume_id), "%s", req->volume->id);
    snprintf(op->request_id, sizeof(op->request_id), "%s", req->request_id);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "recovery_replaced", KEYFLEET__V1__DECISION__DECISION_ALLOW,
                   call->peer->name, op->volume_id, op->request_id,
                   "the node killed the revealed recovery key's keyslot; its replacement is the escrowed key");
    Keyfleet__V1__CmdRecoveryConfirm c = KEYFLEET__V1__CMD_RECOVERY_CONFIRM__INIT;
    c.volume_id = op->volume_id;
    c.node = (char *)call->peer->name;
    c.request_id = op->request_id;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_CONFIRM;
    cmd.recovery_confirm = &c;
    kfd_call_commit(call, &cmd, on_confirmed, op);
}
