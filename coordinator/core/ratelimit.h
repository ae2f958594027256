/* Token buckets per node (ratelimit.c). */
#ifndef KFD_RATELIMIT_H
#define KFD_RATELIMIT_H

#include <stdint.h>

typedef struct kfd_ratelimit kfd_ratelimit;

kfd_ratelimit *kfd_ratelimit_new(void);
void kfd_ratelimit_free(kfd_ratelimit *rl);
/* Returns 0 when allowed, or the milliseconds until a token is due. */
uint32_t kfd_ratelimit_take(kfd_ratelimit *rl, const char *node, uint32_t per_minute, uint32_t burst, uint64_t now_ms);

#endif
