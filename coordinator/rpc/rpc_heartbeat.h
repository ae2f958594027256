/* NodeService.Heartbeat (rpc_heartbeat.c): liveness, the reports a node's heartbeat carries
 * (offline unlocks, dead-man locks, erases), re-attestation while it runs, and the answer's
 * orders (lock, recovery keys to replace, erases). */
#ifndef KFD_RPC_HEARTBEAT_H
#define KFD_RPC_HEARTBEAT_H

#include "front/call.h"

/* Takes a validated call (caller kind checked, body unpacked) and answers it. */
void kfd_rpc_heartbeat(kfd_call *call);

#endif
