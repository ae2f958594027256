/* AdminService: the node inventory, lifting a revocation, retiring a volume (rpc_lifecycle.c). */
#ifndef KFD_RPC_LIFECYCLE_H
#define KFD_RPC_LIFECYCLE_H

#include "front/call.h"

void kfd_rpc_list_nodes(kfd_call *call);
void kfd_rpc_unrevoke_node(kfd_call *call);
void kfd_rpc_retire_volume(kfd_call *call);

#endif
