/* The state digest (store_digest.c, review rev17 R2): what a new leader's head confirmation
 * compares between replicas besides the audit log (core/head_round.c). */
#ifndef KFD_STORE_DIGEST_H
#define KFD_STORE_DIGEST_H

#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"

/* A hash over every replicated table outside the audit log, independent of row order; compared
 * only between replicas of one schema version (kfd_store_state_version, store.h). 0, -ENOMEM,
 * -EIO. */
int kfd_store_state_digest(kfd_store *s, uint8_t out[KFD_HASH_LEN]);

/* Every replica scans every replicated table when it notes its state at a checkpoint, so a scan
 * costs what the fleet's size makes it cost (~35 ms at 10 000 nodes), as often as checkpoints come
 * (every 200 ms, or every 1000 records, under load): at 10 000 nodes that was 88-121 rows read
 * per Release, against ~12 sqlite steps for the rest of it (issue #29, docs/performance.md). The leader asks for a note only once this long (ms) after
 * its last one: KFD_STATE_NOTE_SHARE times what the last scan took, at least KFD_STATE_NOTE_MIN_MS,
 * times a random factor in [0.5, 1.5) drawn from draw (so the next note cannot be foreseen, review
 * rev42 S1), and at most KFD_STATE_NOTE_MAX_MS (docs/audit.md, "How often the state is checked").
 * Scans then take at most ~2% of a replica's time until the cap. */
#define KFD_STATE_NOTE_SHARE 50
#define KFD_STATE_NOTE_MIN_MS 500
#define KFD_STATE_NOTE_MAX_MS 10000
uint64_t kfd_state_note_gap_ms(uint64_t cost_ns, uint32_t draw);

/* The leader's note schedule (core/checkpoint.c), kept apart so that its rules are tested
 * (review rev42, S4): a checkpoint notes the state when the gap since the last note has passed,
 * and the next note is due a new gap later; a checkpoint that asked for a note and made none
 * (it failed, or the leader's own scan did) makes the next one note; so does a new term. */
typedef struct kfd_note_schedule {
    uint64_t due_at; /* loop time (ms) from which a checkpoint notes; 0: the next one does */
    bool inflight;   /* the checkpoint in flight asked for a note */
} kfd_note_schedule;

/* A checkpoint proposed at now_ms: whether it notes the state. cost_ns is the last scan's cost
 * (kfd_store_state_note_cost_ns), draw a random number for the gap. */
bool kfd_note_schedule_propose(kfd_note_schedule *s, uint64_t now_ms, uint64_t cost_ns, uint32_t draw);
/* The checkpoint in flight made no note although it asked for one. */
void kfd_note_schedule_missed(kfd_note_schedule *s);
/* A new term began. */
void kfd_note_schedule_new_term(kfd_note_schedule *s);

#endif
