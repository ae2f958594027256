/* Sealing keys to agents: one HPKE context per connection and agent key (common/kf_seal.h). */
#ifndef KFD_SEAL_H
#define KFD_SEAL_H

#include <stdint.h>

#include "kf_seal.h"
#include "front/call.h"

typedef struct kfd_sealed {
    uint8_t enc[32];
    uint64_t seq;
    uint8_t ct[KF_SEAL_CT_LEN];
} kfd_sealed;

/* Seals key to pk for the caller, binding purpose, request id, caller and volume id in the AAD.
 * Reuses the connection's context when the caller's key and name match; otherwise sets one up
 * (and keeps it, while the bounded pool of contexts has room; past that, in one locked fallback
 * context wiped after each key). Returns 0 or a negative errno (-ENOMEM without that context). */
int kfd_seal_key(kfd_call *call, const uint8_t pk[32], const char *purpose, const char *request_id,
                 const char *volume_id, const uint8_t key[KF_SEAL_KEY_LEN], kfd_sealed *ret);

/* Contexts held by open connections (the keyfleet_seal_contexts_open gauge). */
size_t kfd_seal_contexts_live(void);

/* Counters since start, for /metrics. */
typedef struct kfd_seal_stats {
    uint64_t contexts; /* HPKE contexts set up (two X25519 operations each) */
    uint64_t keys;     /* keys sealed under them */
} kfd_seal_stats;
kfd_seal_stats kfd_seal_get_stats(void);

#endif
