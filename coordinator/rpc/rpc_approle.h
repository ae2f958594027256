/* AppRole handlers (rpc_approle.c, docs/approle.md). Login is the one RPC callable without an
 * identity (the table marks it anonymous). */
#ifndef KFD_RPC_APPROLE_H
#define KFD_RPC_APPROLE_H

#include "front/call.h"

void kfd_rpc_login(kfd_call *call);
void kfd_rpc_create_role(kfd_call *call);
void kfd_rpc_get_role(kfd_call *call);
void kfd_rpc_create_secret_id(kfd_call *call);
void kfd_rpc_revoke_role(kfd_call *call);
void kfd_rpc_revoke_role_credential(kfd_call *call);

#endif
