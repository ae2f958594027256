/* NodeService handlers (rpc_node.c): Enroll, Release, Heartbeat, RotateKey. Each takes a validated call
 * (caller kind checked, body unpacked) and answers it. */
#ifndef KFD_RPC_NODE_H
#define KFD_RPC_NODE_H

#include "front/call.h"
#include "front/seal.h"
#include "keyfleet/v1/common.pb-c.h"

void kfd_rpc_enroll(kfd_call *call);
void kfd_rpc_release(kfd_call *call);
void kfd_rpc_heartbeat(kfd_call *call);
void kfd_rpc_rotate_key(kfd_call *call);
void kfd_rpc_enroll_recovery_key(kfd_call *call);

/* For the other handlers that hand out keys (rpc_recovery.c): the answer's view of a sealed key
 * (pointing into sealed), and a refusal recorded in the audit log before it is answered. */
void kfd_rpc_sealed_key(Keyfleet__V1__SealedKey *sk, kfd_sealed *sealed);
void kfd_rpc_deny_audited(kfd_call *call, const char *action, Keyfleet__V1__Decision decision, const char *volume_id,
                          const char *request_id, kf_connect_code code, const char *message);

#endif
