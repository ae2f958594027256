/* Replication's side of the store (store_snapshot.c): the applied index, deferred commit,
 * and the whole database as one image. */
#ifndef KFD_STORE_SNAPSHOT_H
#define KFD_STORE_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "kf_err.h"
#include "store/store.h"

/* The Raft log index of the last applied entry (0: none). apply_batch records raft_index, when
 * not 0, in the same transaction; a NULL command there stands for an undecodable entry. */
uint64_t kfd_store_applied_index(const kfd_store *s);
/* Deferred commit: apply_batch leaves its transaction open for later applies, and
 * kfd_store_flush commits them all at once. Only for a caller whose commands are durable
 * elsewhere (the Raft log): a crash loses the open transaction, applied index included. */
void kfd_store_set_deferred(kfd_store *s, bool deferred);
bool kfd_store_tx_open(const kfd_store *s);
/* Commands applied in the open deferred transaction. */
size_t kfd_store_tx_commands(const kfd_store *s);
/* Commits the open transaction, if any. 0, or -EIO with the store failed. */
int kfd_store_flush(kfd_store *s, kf_err *err);
/* Forgets the applied index (a new Raft log was just bootstrapped over existing state). */
int kfd_store_reset_applied(kfd_store *s, kf_err *err);
/* The whole database as one image (sqlite3_serialize; free with sqlite3_free). */
int kfd_store_serialize(kfd_store *s, unsigned char **ret, size_t *ret_len, kf_err *err);
/* Replaces the database with an image from kfd_store_serialize: written beside it, fsynced,
 * renamed over it, reopened. On failure the store is failed (restart to recover). */
int kfd_store_replace(kfd_store *s, const unsigned char *image, size_t len, kf_err *err);

#endif
