/* NodeService handlers (rpc_node.c): Enroll, Release, Heartbeat, RotateKey. Each takes a validated call
 * (caller kind checked, body unpacked) and answers it. */
#ifndef KFD_RPC_NODE_H
#define KFD_RPC_NODE_H

#include "front/call.h"

void kfd_rpc_enroll(kfd_call *call);
void kfd_rpc_release(kfd_call *call);
void kfd_rpc_heartbeat(kfd_call *call);
void kfd_rpc_rotate_key(kfd_call *call);

#endif
