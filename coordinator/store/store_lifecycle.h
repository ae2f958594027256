/* Node and volume lifecycle (store_lifecycle.c): the node inventory `keyfleetctl node list`
 * shows, and the unrevoke and retire commands. */
#ifndef KFD_STORE_LIFECYCLE_H
#define KFD_STORE_LIFECYCLE_H

#include <stdint.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/state.pb-c.h"
#include "kf_err.h"
#include "store/store.h"

/* Every known node (seen, revoked, or owning a volume), by name: name, revoked, last_seen_at,
 * its revocation, its volumes and the time of its newest audit record as last_request_at filled
 * in; appended to resp (caller frees with kfd_store_free_node_list). 0, -EIO or -ENOMEM. */
int kfd_store_list_nodes(kfd_store *s, Keyfleet__V1__ListNodesResponse *resp);
void kfd_store_free_node_list(Keyfleet__V1__ListNodesResponse *resp);

/* --- for the store's own files --- */

/* Unrevoke (-ESTALE: the node is not revoked) and retire (-ENOENT: not enrolled; -ESTALE:
 * already retired), each with its audit record. */
int kfd_store_apply_unrevoke(kfd_store *s, const Keyfleet__V1__CmdUnrevokeNode *c, uint64_t *seq, kf_err *err);
int kfd_store_apply_retire(kfd_store *s, const Keyfleet__V1__CmdRetireVolume *c, uint64_t *seq, kf_err *err);

#endif
