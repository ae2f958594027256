/* The state digest (store_digest.c, review rev17 R2): what a new leader's head confirmation
 * compares between replicas besides the audit log (core/head_round.c). */
#ifndef KFD_STORE_DIGEST_H
#define KFD_STORE_DIGEST_H

#include <stdint.h>

#include "store/store.h"

/* A hash over every replicated table outside the audit log, independent of row order; compared
 * only between replicas of one schema version (kfd_store_state_version, store.h). 0, -ENOMEM,
 * -EIO. */
int kfd_store_state_digest(kfd_store *s, uint8_t out[KFD_HASH_LEN]);

#endif
