/* AdminService handlers (rpc_admin.c): approvals, audit, policy, revocations, KMS rotation;
 * and the answers other handlers share. */
#ifndef KFD_RPC_ADMIN_H
#define KFD_RPC_ADMIN_H

#include <stdbool.h>

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

#endif
