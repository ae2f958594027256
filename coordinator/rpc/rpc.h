/* RPC handlers. Each takes a validated call (caller kind checked, body unpacked) and answers it. */
#ifndef KFD_RPC_H
#define KFD_RPC_H

#include "front/server.h"

#include "keyfleet/v1/state.pb-c.h"

void kfd_rpc_cluster_status(kfd_call *call);
void kfd_rpc_add_member(kfd_call *call);
void kfd_rpc_remove_member(kfd_call *call);

/* AppRole (rpc_approle.c). Login is the one RPC callable without an identity. */
void kfd_rpc_login(kfd_call *call);
void kfd_rpc_create_role(kfd_call *call);
void kfd_rpc_get_role(kfd_call *call);
void kfd_rpc_create_secret_id(kfd_call *call);
void kfd_rpc_revoke_role(kfd_call *call);
void kfd_rpc_revoke_role_credential(kfd_call *call);
/* Authenticates "Authorization: Bearer TOKEN" from source into ret (a node identity) and
 * role_out. Returns 0, -ENOENT (no such token), -ETIME (expired), -EACCES (outside the role's
 * CIDRs) or -EIO. */
int kfd_approle_token_auth(kfd_server *srv, const char *token, size_t len, const char *source, kf_identity *ret,
                           char role_out[64]);

/* Shared by handlers (rpc_admin.c). */
bool kfd_rpc_store_ok(kfd_call *call);
/* Maps a commit status to an answer; returns true when it succeeded. */
bool kfd_rpc_commit_answer(kfd_call *call, int status, const kf_err *err);
/* Commits cmd and answers with an empty message of type resp. */
void kfd_rpc_commit_empty(kfd_call *call, Keyfleet__V1__StateCommand *cmd, const ProtobufCMessageDescriptor *resp);

#endif
