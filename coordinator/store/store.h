/* The coordinator's state: one sqlite database (WAL, synchronous=NORMAL) in the state directory.
 *
 * This header is the ground: open, close, and the failed state. Every change goes through
 * store_apply.h (kfd_store_apply, or kfd_store_apply_batch for replication's committed entries),
 * which applies state commands (state.proto) in one transaction, appending their audit records to
 * the hash chain. Nothing else writes. Reads: store_read.h, store_audit.h, store_approle.h,
 * store_guard.h; replication's snapshots and deferred commit: store_snapshot.h.
 *
 * Faults (disk full, read-only, corrupt) put the store in a failed state: every later apply and
 * read answers -EIO, so callers fail closed. A restart after the fault is cleared recovers. */
#ifndef KFD_STORE_H
#define KFD_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "kf_err.h"

typedef struct kfd_store kfd_store;

#define KFD_HASH_LEN 32

/* Opens (creating if needed) path and migrates it to the current schema. On failure the store
 * is still returned, in the failed state, so the server can answer unavailable. */
int kfd_store_open(const char *path, kfd_store **ret, kf_err *err);
void kfd_store_close(kfd_store *s);
/* This build's schema version, which state digests are compared under (store_digest.h: digests
 * of replicas on another schema are not compared). */
uint32_t kfd_store_state_version(void);

bool kfd_store_failed(const kfd_store *s);
const char *kfd_store_failure(const kfd_store *s);

#endif
