/* RPC handlers. Each takes a validated call (caller kind checked, body unpacked) and answers it. */
#ifndef KFD_RPC_H
#define KFD_RPC_H

#include "server.h"

void kfd_rpc_cluster_status(kfd_call *call);

#endif
