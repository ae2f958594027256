/* Token buckets per node name: rate per minute, burst capacity. In memory only: a restart or a
 * failover starts every node with a full bucket, which is the safe direction for availability
 * and bounded by burst for abuse. */
#include <stdlib.h>
#include <string.h>

#include "core/ratelimit.h"

#define SLOTS 8192

typedef struct bucket {
    char node[64];
    double tokens;
    uint64_t last_ms;
} bucket;

struct kfd_ratelimit {
    bucket slots[SLOTS];
};

kfd_ratelimit *kfd_ratelimit_new(void) { return calloc(1, sizeof(kfd_ratelimit)); }
void kfd_ratelimit_free(kfd_ratelimit *rl) { free(rl); }

uint32_t kfd_ratelimit_take(kfd_ratelimit *rl, const char *node, uint32_t per_minute, uint32_t burst, uint64_t now_ms)
{
    if (per_minute == 0)
        return 0;
    uint32_t h = 2166136261u;
    for (const char *p = node; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    bucket *b = NULL;
    for (size_t i = 0; i < SLOTS; i++) {
        bucket *s = &rl->slots[(h + i) % SLOTS];
        if (strcmp(s->node, node) == 0 || s->node[0] == '\0') {
            b = s;
            break;
        }
    }
    if (b == NULL) /* table full: reuse the home slot (forgets that node's history) */
        b = &rl->slots[h % SLOTS];
    if (strcmp(b->node, node) != 0) {
        strncpy(b->node, node, sizeof(b->node) - 1);
        b->tokens = burst;
        b->last_ms = now_ms;
    }
    double rate_per_ms = per_minute / 60000.0;
    b->tokens += (double)(now_ms - b->last_ms) * rate_per_ms;
    if (b->tokens > burst)
        b->tokens = burst;
    b->last_ms = now_ms;
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return 0;
    }
    return (uint32_t)((1.0 - b->tokens) / rate_per_ms) + 1;
}
