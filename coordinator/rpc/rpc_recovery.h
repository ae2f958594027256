/* AdminService.RevealRecoveryKey (rpc_recovery.c; docs/recovery.md). */
#ifndef KFD_RPC_RECOVERY_H
#define KFD_RPC_RECOVERY_H

#include "front/call.h"

void kfd_rpc_reveal_recovery_key(kfd_call *call);

#endif
