/* Remote crypto-erase (docs/operations.md, "Remote crypto-erase"): the volumes an approved wipe
 * asked their node to erase, and the node's confirmation. */
#ifndef KFD_STORE_ERASE_H
#define KFD_STORE_ERASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keyfleet/v1/state.pb-c.h"
#include "kf_err.h"
#include "store/store.h"

#define KFD_ERASE_MAX 100 /* volumes one heartbeat names, and one wipe covers */

/* The erase of volume_id: its node and when it was confirmed (0: pending). -ENOENT when no wipe
 * asked for one, -EIO. */
int kfd_store_get_erase(kfd_store *s, const char *volume_id, char *ret_node, size_t node_size, int64_t *ret_erased_at);
/* The volumes still to erase on node (at most KFD_ERASE_MAX), malloc'ed ids the caller frees
 * with kfd_store_free_ids, and (when ret_all is not NULL, KFD_ERASE_MAX entries) whether each
 * erases every keyslot. 0, -EIO or -ENOMEM. */
int kfd_store_erase_pending(kfd_store *s, const char *node, char ***ret_ids, size_t *ret_n, bool *ret_all);
void kfd_store_free_ids(char **ids, size_t n);

/* --- for the store's own files --- */

/* A wipe (applied once approved): every volume must be enrolled by c->node (-ENOENT: unknown;
 * -ESTALE: another node's, or already being erased); each is retired unless it is already, its
 * escrowed recovery key dropped, and recorded as pending. c->cancel: each must be being erased
 * for c->node and not confirmed (-ESTALE), and its erase is dropped; it stays retired. */
int kfd_store_apply_wipe(kfd_store *s, const Keyfleet__V1__CmdWipeVolumes *c, uint64_t *seq, kf_err *err);
/* A node's confirmation: -EACCES when the volume is not being erased for c->node, -ESTALE when it
 * was confirmed already. */
int kfd_store_apply_erase_confirm(kfd_store *s, const Keyfleet__V1__CmdEraseConfirm *c, uint64_t *seq, kf_err *err);

#endif
