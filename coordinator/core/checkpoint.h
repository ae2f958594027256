/* Signed checkpoints of the audit log (docs/audit.md), on the leader: at most CHECKPOINT_MS
 * after records were applied (sooner after 1000 of them), the leader signs (cluster, size, root,
 * chain, time) with its coordinator key and commits it as a checkpoint command, which every
 * replica checks against its own log when it applies it. Signing is per checkpoint, never per
 * record. Also: checking a checkpoint record's signature against the fleet CA. */
#ifndef KFD_CHECKPOINT_H
#define KFD_CHECKPOINT_H

#include <stdint.h>

#include <uv.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/state.pb-c.h"
#include "kf_err.h"

struct kfd_app;
typedef struct kfd_checkpointer kfd_checkpointer;

/* Loads the coordinator key and certificate and the fleet CA from the config; starts the timer. */
int kfd_checkpointer_new(struct kfd_app *app, uv_loop_t *loop, kfd_checkpointer **ret, kf_err *err);
/* Stops the timer; the memory goes once the loop has closed it. NULL is a no-op. */
void kfd_checkpointer_free(kfd_checkpointer *c);

/* Checks a checkpoint record: its signature, the signer's certificate against the fleet CA (it
 * must name a coordinator, the one the text names), this fleet's cluster id. 0 or -EPERM. */
int kfd_checkpoint_verify_record(kfd_checkpointer *c, const Keyfleet__V1__AuditRecord *r, kf_err *err);

/* The same without judging its time by this clock: for a checkpoint this replica already
 * applied (at start), whose time was judged when it was applied. */
int kfd_checkpoint_verify_applied_record(kfd_checkpointer *c, const Keyfleet__V1__AuditRecord *r, kf_err *err);
/* A checkpoint command's signature and chain against the fleet CA, not by the clock (the store
 * calls it at apply, store.h kfd_checkpoint_verifier). 0 or -EPERM. */
int kfd_checkpoint_verify_command(kfd_checkpointer *c, const Keyfleet__V1__CmdCheckpoint *cmd, kf_err *err);

/* Before a change no replica's apply judges (a Raft configuration change: review rev45b,
 * R45b-4), whose judged audit record is at seq: a head round as after an election, over a head
 * check committed after that record, with no shortcut through an earlier checkpoint. Writes wait
 * meanwhile. cb gets 0 once a majority of voters hold this leader's head there; -EPERM when a
 * majority holds another (this replica marks itself diverged: the record was refused elsewhere),
 * -EAGAIN when it stops leading, -ETIMEDOUT after timeout_ms, -ECANCELED at shutdown. One at a
 * time: -EBUSY (err set) while another waits, -EAGAIN when not leading. */
typedef void (*kfd_reconfirm_cb)(void *arg, int status, const kf_err *err);
int kfd_checkpointer_reconfirm(kfd_checkpointer *c, uint64_t seq, uint64_t timeout_ms, kfd_reconfirm_cb cb,
                               void *arg, kf_err *err);

/* For /metrics. */
typedef struct kfd_checkpoint_stats {
    uint64_t signed_total, failed_total, last_size;
} kfd_checkpoint_stats;
void kfd_checkpointer_stats(const kfd_checkpointer *c, kfd_checkpoint_stats *ret);

#endif
