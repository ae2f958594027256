/* The status file's parts that the agent sends on: the offline unlocks and dead-man locks queued
 * for the next Heartbeat, read into its request fields. The file sits on the node's disk, which an
 * attacker may have edited: fuzzed (tests/fuzz/fuzz_agent_state.c). */
#ifndef KFA_STATE_H
#define KFA_STATE_H

#include <stddef.h>

#include <jansson.h>

#include "config.h"
#include "keyfleet/v1/node.pb-c.h"

#define KFA_STATE_OFFLINE_MAX 1000 /* the coordinator takes at most 1000 at a time */
#define KFA_STATE_DEAD_MAN_MAX 100
#define KFA_STATE_ERASED_MAX 100

typedef struct kfa_state_reports {
    json_t *root;               /* the file as read, or NULL */
    json_t *offline, *dead_man; /* its queues (in root), or NULL */
    size_t n_offline, n_dead_man; /* the first ones, as many as one heartbeat carries */
    /* Of those n_offline, the n_send a coordinator accepts (kf_check_offline_unlock): one it would
     * refuse is not sent, since it would fail every later heartbeat, and is dropped with the
     * others once a heartbeat went through. Strings point into root. */
    size_t n_send;
    Keyfleet__V1__OfflineUnlock *items, **ptrs;
    Keyfleet__V1__VolumeRef *refs;
    Keyfleet__V1__Timestamp *ats;
    Keyfleet__V1__DeadManLock dls[KFA_STATE_DEAD_MAN_MAX], *dlp[KFA_STATE_DEAD_MAN_MAX];
    Keyfleet__V1__Timestamp dats[KFA_STATE_DEAD_MAN_MAX];
    /* Crypt-erase outcomes (erase.c): erased (in root), the first n_erased of it, of which the
     * n_erased_send a coordinator accepts (kf_check_volume_erased) in erp. */
    json_t *erased;
    size_t n_erased, n_erased_send;
    Keyfleet__V1__VolumeErased ers[KFA_STATE_ERASED_MAX], *erp[KFA_STATE_ERASED_MAX];
    Keyfleet__V1__Timestamp erats[KFA_STATE_ERASED_MAX];
} kfa_state_reports;

/* Reads the queued reports of the state file at path (none when it is absent or unreadable).
 * 0 or -ENOMEM; free with kfa_state_reports_free either way. */
int kfa_state_reports_read(const char *path, kfa_state_reports *ret);
void kfa_state_reports_free(kfa_state_reports *r);
/* Removes from the queue key ("offline_pending", "dead_man_pending", "erase_pending"), under the lock, the reports
 * a coordinator accepted: the first n of sent, as read before the call (others may have been
 * queued since, behind them). */
void kfa_state_drop_reported(const kfa_config *cfg, const char *key, json_t *sent, size_t n);

#endif
