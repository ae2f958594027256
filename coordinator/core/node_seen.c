/* An open-addressing table of node names (FNV-1a, linear probing), never shrinking: a fleet's
 * node names, up to a fixed capacity. */
#include "core/node_seen.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define SEEN_CAPACITY 16384 /* a power of two; filled at most to 3/4 */

struct kfd_node_seen {
    size_t used;
    kfd_seen_entry slots[SEEN_CAPACITY];
};

kfd_node_seen *kfd_node_seen_new(void) { return calloc(1, sizeof(kfd_node_seen)); }

void kfd_node_seen_free(kfd_node_seen *t) { free(t); }

static size_t slot_of(const kfd_node_seen *t, const char *name)
{
    uint32_t h = 2166136261u;
    for (const char *p = name; *p != '\0'; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    size_t i = h & (SEEN_CAPACITY - 1);
    while (t->slots[i].name[0] != '\0' && strcmp(t->slots[i].name, name) != 0)
        i = (i + 1) & (SEEN_CAPACITY - 1);
    return i;
}

void kfd_node_seen_note(kfd_node_seen *t, const kf_identity *peer, const char *auth, int64_t at)
{
    if (t == NULL || peer->kind != KF_PEER_NODE || peer->name[0] == '\0')
        return;
    kfd_seen_entry *e = &t->slots[slot_of(t, peer->name)];
    if (e->name[0] == '\0') {
        if (t->used >= SEEN_CAPACITY / 4 * 3)
            return;
        t->used++;
        memcpy(e->name, peer->name, sizeof(e->name));
    }
    e->at = at;
    bool approle = strcmp(auth, "approle") == 0;
    /* A token stands for the node without a certificate: its last certificate stays shown. */
    e->identity = approle ? "approle" : peer->tpm_key ? "mtls-tpm" : "mtls";
    if (!approle) {
        memcpy(e->serial, peer->serial, sizeof(e->serial));
        e->not_after = peer->not_after;
    }
}

const kfd_seen_entry *kfd_node_seen_get(const kfd_node_seen *t, const char *name)
{
    if (t == NULL)
        return NULL;
    const kfd_seen_entry *e = &t->slots[slot_of(t, name)];
    return e->name[0] != '\0' ? e : NULL;
}

void kfd_node_seen_each(const kfd_node_seen *t, void (*fn)(void *arg, const kfd_seen_entry *e), void *arg)
{
    for (size_t s = 0; t != NULL && s < SEEN_CAPACITY; s++)
        if (t->slots[s].name[0] != '\0')
            fn(arg, &t->slots[s]);
}
