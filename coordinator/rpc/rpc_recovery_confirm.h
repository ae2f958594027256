/* The second step of a recovery key's replacement (rpc_recovery_confirm.c, docs/recovery.md,
 * "Replacing a revealed key"): EnrollRecoveryKey with confirm set. */
#ifndef KFD_RPC_RECOVERY_CONFIRM_H
#define KFD_RPC_RECOVERY_CONFIRM_H

#include "front/call.h"

/* The caller (rpc_node.c) validated the volume and the request id, and checked that the store is
 * ready and the node not revoked. Answers the call. */
void kfd_rpc_recovery_confirm(kfd_call *call);

#endif
