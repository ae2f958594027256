/* Token buckets per node name: rate per minute, burst capacity. In memory only: a restart or a
 * failover starts every node with a full bucket, which is the safe direction for availability
 * and bounded by burst for abuse.
 *
 * A node's bucket lives within PROBE slots of its home slot. A bucket that has filled up again
 * remembers nothing, so its slot may serve another node; only when every slot of a window holds
 * a bucket still refilling is one of them (the fullest) handed over, and its node starts again
 * full. Before, the table kept every node it had seen: past SLOTS nodes, two nodes sharing a home
 * slot took it from each other at every call and each found a full bucket, so neither was ever
 * limited, and each lookup of a new node walked the whole table. */
#include <stdlib.h>
#include <string.h>

#include "core/ratelimit.h"

#define SLOTS 8192
#define PROBE 64

typedef struct bucket {
    char node[64];
    double tokens;
    uint64_t last_ms;
    uint32_t per_minute, burst; /* the last call's, to tell when the bucket is full again */
} bucket;

struct kfd_ratelimit {
    bucket slots[SLOTS];
};

kfd_ratelimit *kfd_ratelimit_new(void) { return calloc(1, sizeof(kfd_ratelimit)); }
void kfd_ratelimit_free(kfd_ratelimit *rl) { free(rl); }

/* How full b is at now_ms, 0..1; 2 for a slot never used. */
static double fullness(const bucket *b, uint64_t now_ms)
{
    if (b->node[0] == '\0')
        return 2;
    if (b->burst == 0)
        return 1;
    double t = b->tokens + (double)(now_ms - b->last_ms) * b->per_minute / 60000.0;
    return t >= b->burst ? 1 : t / b->burst;
}

uint32_t kfd_ratelimit_take(kfd_ratelimit *rl, const char *node, uint32_t per_minute, uint32_t burst, uint64_t now_ms)
{
    if (per_minute == 0)
        return 0;
    uint32_t h = 2166136261u;
    for (const char *p = node; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    bucket *b = NULL, *spare = NULL;
    double spare_full = -1;
    for (size_t i = 0; i < PROBE; i++) {
        bucket *s = &rl->slots[(h + i) % SLOTS];
        if (strcmp(s->node, node) == 0) {
            b = s;
            break;
        }
        double f = fullness(s, now_ms);
        if (f > spare_full) {
            spare = s;
            spare_full = f;
        }
    }
    if (b == NULL) {
        b = spare;
        strncpy(b->node, node, sizeof(b->node) - 1);
        b->node[sizeof(b->node) - 1] = '\0';
        b->tokens = burst;
        b->last_ms = now_ms;
    }
    b->per_minute = per_minute;
    b->burst = burst;
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
