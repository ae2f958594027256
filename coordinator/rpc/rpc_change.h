/* Operator changes under n-of-m control (the policy's admin section): a policy put or a role
 * creation either applies at once or waits as a pending request that other operators approve,
 * the proposer being the first approver. */
#ifndef KFD_RPC_CHANGE_H
#define KFD_RPC_CHANGE_H

#include "core/app.h"
#include "front/call.h"
#include "store/store_apply.h"

/* What a change's callback learns besides the commit status. */
typedef struct kfd_change_result {
    kfd_apply_result apply;
    char held_request_id[33]; /* non-empty: the change waits for approvals */
    uint32_t approvals_needed;
} kfd_change_result;

typedef void (*kfd_change_cb)(void *arg, int status, const kfd_change_result *res, const kf_err *err);

/* The calling operator's second factor for an approval (node, volume_id and request_id name
 * what is approved, for the audit). Returns 0 with *ret_step (0: no TOTP applies), -EINVAL (no
 * code given where one is needed) or -EIO with why set and nothing recorded; or -EACCES when
 * refused: a wrong code (counted towards the lockout), a lockout or a missing secret. Then the
 * refusal is being recorded and cb(arg, ...) runs once it is; answer from there. */
int kfd_operator_totp(kfd_call *call, const char *code, bool required, const char *node, const char *volume_id,
                      const char *request_id, int64_t *ret_step, char *why, size_t why_size, kfd_commit_cb cb,
                      void *arg);

/* kfd_operator_totp for a handler that holds op (its kfd_op, freed with free_op): true to go on
 * with *ret_step; false when the call is answered: at once (a missing code, the store down: op
 * freed here) or once the refusal is recorded (cb(op, ...) answers and frees op). why (in op)
 * receives the refusal. One place for the approve, deny, reveal and fetch handlers. */
bool kfd_rpc_operator_totp(kfd_call *call, void *op, void (*free_op)(void *), const char *code, bool required,
                           const char *node, const char *volume_id, const char *request_id, int64_t *ret_step,
                           char *why, size_t why_size, kfd_commit_cb cb);

/* Commits cmd (a CmdPutPolicy or CmdCreateRole with its audit record) as the calling operator's
 * change: directly when the admin policy needs one operator and no TOTP; else as a held change,
 * after checking the proposer's TOTP code. cb runs once, with status 0 or a negative errno
 * (-EACCES and -EINVAL for a refused or missing code; refusals are audited). arg is the caller's
 * kfd_op. */
void kfd_commit_change(kfd_call *call, Keyfleet__V1__StateCommand *cmd, const char *summary, const char *totp_code,
                       kfd_change_cb cb, void *arg);
/* As kfd_commit_change, the change needing at least min_approvers operators (a node wipe:
 * kfd_policy_wipe_approvers). */
void kfd_commit_change_n(kfd_call *call, Keyfleet__V1__StateCommand *cmd, const char *summary, const char *totp_code,
                         uint32_t min_approvers, kfd_change_cb cb, void *arg);

#endif
