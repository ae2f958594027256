/* Cluster handlers (rpc_cluster.c): status and Raft membership. */
#ifndef KFD_RPC_CLUSTER_H
#define KFD_RPC_CLUSTER_H

#include "front/call.h"

void kfd_rpc_cluster_status(kfd_call *call);
void kfd_rpc_add_member(kfd_call *call);
void kfd_rpc_remove_member(kfd_call *call);

#endif
