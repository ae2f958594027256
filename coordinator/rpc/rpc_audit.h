/* AdminService's audit proofs (rpc_audit.c): the newest signed checkpoint, inclusion proofs of a
 * request's records, consistency proofs between two tree sizes (docs/audit.md). Read-only, from
 * this replica's copy; the client verifies everything against the fleet CA itself. */
#ifndef KFD_RPC_AUDIT_H
#define KFD_RPC_AUDIT_H

#include "front/call.h"

void kfd_rpc_get_checkpoint(kfd_call *call);
void kfd_rpc_prove_audit(kfd_call *call);
void kfd_rpc_prove_consistency(kfd_call *call);
/* PeerService.AuditHead: this replica's head at a leader's CmdAuditHeadCheck (coordinators only). */
void kfd_rpc_audit_head(kfd_call *call);

#endif
