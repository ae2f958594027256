/* Remote crypto-erase (rpc_erase.c, docs/operations.md): AdminService.WipeNode, and the erase
 * reports a node's heartbeat carries. */
#ifndef KFD_RPC_ERASE_H
#define KFD_RPC_ERASE_H

#include <stddef.h>

#include "core/app.h"
#include "front/call.h"
#include "keyfleet/v1/node.pb-c.h"

void kfd_rpc_wipe_node(kfd_call *call);

/* What a heartbeat's erase report becomes. */
typedef enum kfd_erase_action {
    KFD_ERASE_SKIP = 0, /* confirmed already: nothing is written again */
    KFD_ERASE_CONFIRM,  /* volume_erased, and the erase is confirmed */
    KFD_ERASE_FAILED,   /* erase_failed: the node could not; it stays pending */
    KFD_ERASE_REFUSED,  /* erase_confirm_refused: not being erased for this node */
} kfd_erase_action;

/* Decides each report of req for the calling node into actions[i] (req->n_erased of them);
 * returns how many commits kfd_erase_commit makes, or -EIO. */
int kfd_erase_plan(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req, kfd_erase_action *actions);
/* Commits those (cb once for each). */
void kfd_erase_commit(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req, const kfd_erase_action *actions,
                      kfd_commit_cb cb, void *arg);
/* The volumes the node is to erase (malloc'ed ids), less those req confirms, and in ret_all_ids
 * (KFD_ERASE_MAX entries, pointing into *ret_ids) those that erase every keyslot. 0, -EIO,
 * -ENOMEM. */
int kfd_erase_orders(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req, const kfd_erase_action *actions,
                     char ***ret_ids, size_t *ret_n, char **ret_all_ids, size_t *ret_n_all);

#endif
