/* AdminService handlers (rpc_admin.c): approvals, audit, policy, revocations, KMS rotation;
 * and the answers other handlers share. */
#ifndef KFD_RPC_ADMIN_H
#define KFD_RPC_ADMIN_H

#include <stdbool.h>

#include "core/app.h"
#include "front/call.h"
#include "keyfleet/v1/state.pb-c.h"
#include "kf_err.h"

void kfd_rpc_list_pending(kfd_call *call);
void kfd_rpc_list_volumes(kfd_call *call);
void kfd_rpc_approve(kfd_call *call);
void kfd_rpc_deny(kfd_call *call);
void kfd_rpc_query_audit(kfd_call *call);
void kfd_rpc_verify_audit(kfd_call *call);
void kfd_rpc_get_policy(kfd_call *call);
void kfd_rpc_put_policy(kfd_call *call);
void kfd_rpc_check_policy(kfd_call *call);
void kfd_rpc_revoke_node(kfd_call *call);
void kfd_rpc_rotate_kms(kfd_call *call);
void kfd_rpc_revoke_cert(kfd_call *call);

/* Answers unavailable and returns false when the store has failed. */
bool kfd_rpc_store_ok(kfd_call *call);
/* Maps a commit status to an answer; returns true when it succeeded. */
bool kfd_rpc_commit_answer(kfd_call *call, int status, const kf_err *err);
/* Commits cmd and answers with an empty message of type resp. */
void kfd_rpc_commit_empty(kfd_call *call, Keyfleet__V1__StateCommand *cmd, const ProtobufCMessageDescriptor *resp);
/* A key, enrollment or login refused at apply, which every replica that refused recorded as a
 * denial (kfd_apply_result.refused; store_judged.h, reviews rev42 S1, rev44b K1: so nothing more
 * is appended here). A judged input that differs there (-ECANCELED: changed since, or a database
 * edited) is answered `unavailable`, so the client retries and is judged again; any other
 * refusal with code (message: err's when NULL). False when status is not a recorded refusal. */
bool kfd_rpc_refusal_answered(kfd_call *call, const char *what, const char *volume_id, int status,
                              const kfd_apply_result *res, const kf_err *err, kf_connect_code code,
                              const char *message);
/* kfd_commit for a command the caller's request made: it carries the caller's certificate serial
 * (StateCommand.auth_cert_serial) for every replica's apply to check against its own denylist
 * (review rev44b K3). A bearer-token caller's carries none (its commands carry the token's
 * digest where they hand out a key). */
void kfd_call_commit(kfd_call *call, Keyfleet__V1__StateCommand *cmd, kfd_commit_cb cb, void *arg);
/* The same for an op whose client may have gone away (the caller as the op copied it). */
void kfd_op_commit(kfd_op *op, Keyfleet__V1__StateCommand *cmd, kfd_commit_cb cb, void *arg);

#endif
