/* Which nodes this coordinator served since it started, when, and with which credential: what
 * `keyfleetctl node list` shows as last seen, certificate serial and expiry. In memory only: a
 * request is not worth a replicated write, and the audit log holds each node's newest record. */
#ifndef KFD_CORE_NODE_SEEN_H
#define KFD_CORE_NODE_SEEN_H

#include <stddef.h>
#include <stdint.h>

#include "kf_identity.h"

typedef struct kfd_node_seen kfd_node_seen;

typedef struct kfd_seen_entry {
    char name[KF_NAME_MAX + 1];
    int64_t at;
    char serial[KF_SERIAL_MAX];
    int64_t not_after;
    const char *identity; /* "mtls", "mtls-tpm" or "approle" (static) */
} kfd_seen_entry;

kfd_node_seen *kfd_node_seen_new(void);
void kfd_node_seen_free(kfd_node_seen *t);
/* Records that peer (a node) was served at time at, authenticated by auth ("mtls" or
 * "approle"). Past the table's capacity new names are not recorded. */
void kfd_node_seen_note(kfd_node_seen *t, const kf_identity *peer, const char *auth, int64_t at);
/* The entry for name, or NULL. */
const kfd_seen_entry *kfd_node_seen_get(const kfd_node_seen *t, const char *name);
/* Calls fn for each entry, in no particular order. */
void kfd_node_seen_each(const kfd_node_seen *t, void (*fn)(void *arg, const kfd_seen_entry *e), void *arg);

#endif
