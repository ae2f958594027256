/* NodeService handlers (rpc_node.c): Enroll, Release, RotateKey, EnrollRecoveryKey (Heartbeat is
 * rpc_heartbeat.h). Each takes a validated call
 * (caller kind checked, body unpacked) and answers it. */
#ifndef KFD_RPC_NODE_H
#define KFD_RPC_NODE_H

#include <stdbool.h>
#include <stdint.h>

#include "front/call.h"
#include "front/seal.h"
#include "rpc/rpc_attest.h"
#include "keyfleet/v1/common.pb-c.h"

void kfd_rpc_enroll(kfd_call *call);
void kfd_rpc_release(kfd_call *call);
void kfd_rpc_rotate_key(kfd_call *call);
void kfd_rpc_enroll_recovery_key(kfd_call *call);

/* For the other handlers that hand out keys (rpc_recovery.c): the answer's view of a sealed key
 * (pointing into sealed), and a refusal recorded in the audit log before it is answered. */
void kfd_rpc_sealed_key(Keyfleet__V1__SealedKey *sk, kfd_sealed *sealed);
void kfd_rpc_deny_audited(kfd_call *call, const char *action, Keyfleet__V1__Decision decision, const char *volume_id,
                          const char *request_id, kf_connect_code code, const char *message);

/* For Heartbeat (rpc_heartbeat.c): a request's quote, evaluated (rpc_attest.h), false when the call
 * was answered (malformed quote: invalid_argument; store unavailable); and the Retry-After header
 * (whole seconds) of a refusal for a rate limit, wait ms away. */
bool kfd_rpc_attest_eval(kfd_call *call, const Keyfleet__V1__TpmQuote *quote, const char *method, const char *volume_id,
                         const ProtobufCBinaryData *eph, const char *request_id, kfd_attest_eval *ret);
void kfd_rpc_retry_after(kfd_call *call, uint32_t wait);

#endif
