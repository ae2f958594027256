/* Replication: libraft on the coordinator's loop. Every state command is a Raft entry, applied
 * on every replica through the store's one apply function once a majority has it. A single
 * coordinator is a cluster of one on the same path.
 *
 * Entry format (little endian): u32 format (1), u32 length, the StateCommand protobuf, zeros up
 * to a multiple of 8 bytes (libraft 0.15 corrupts its log otherwise). */
#ifndef KFD_REPLICATION_H
#define KFD_REPLICATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/state.pb-c.h"
#include <uv.h>

#include "config/config.h"
#include "kf_err.h"
#include "store/store.h"
#include "store/store_apply.h"
#include "store/store_audit.h"

typedef struct kfd_repl kfd_repl;

/* What replication runs on, and whom it tells. on_applied runs after each entry applied to the
 * store (not replays) with its command (NULL: undecodable), and after a snapshot replaced the
 * store (cmd NULL, restored true). */
typedef struct kfd_repl_env {
    uv_loop_t *loop;
    const kfd_config *cfg;
    kfd_store *store;
    /* Not 0 (err set): the entry was applied but must not be answered as a success (a required
     * audit sink could not take its records): its proposer gets this status. */
    int (*on_applied)(void *arg, const Keyfleet__V1__StateCommand *cmd, bool restored, kf_err *err);
    /* Before a snapshot replaces the store, after its log verified and was found to extend this
     * replica's (kfd_store_check_image): checks its newest checkpoint's signature. 0 or -EPERM. */
    int (*check_snapshot)(void *arg, const kfd_image_check *check, kf_err *err);
    void *arg;
} kfd_repl_env;

/* Starts raft: bootstraps from the config's peers on first start (unless join), replays the log
 * into the store, and joins the election. With a failed store, *ret is a replica that never
 * becomes writable (fail closed). */
int kfd_repl_open(const kfd_repl_env *env, kfd_repl **ret, kf_err *err);
/* Stops raft and runs the loop until it has let go of everything. NULL is a no-op. */
void kfd_repl_close(kfd_repl *r);

typedef void (*kfd_repl_cb)(void *arg, int status, const kfd_apply_result *res, const kf_err *err);
/* Proposes one packed StateCommand. cb runs once it is committed by a majority and applied
 * here, or with -EAGAIN when this replica is not (or stopped being) the leader. */
void kfd_repl_submit(kfd_repl *r, const uint8_t *packed, size_t len, kfd_repl_cb cb, void *arg);

/* Proposals need only the leader with every earlier entry applied; the router's writes wait
 * for kfd_repl_writable. */
/* True when this replica may serve writes: the leader, with every earlier entry applied and its
 * audit head confirmed in this term (kfd_repl_set_audit_confirmed). Else
 * why says what is wrong and leader_rpc (when not empty) where the leader answers. */
bool kfd_repl_writable(kfd_repl *r, const char **why, char *leader_rpc, size_t size);

/* The current term when this replica is the leader with every earlier entry applied and its
 * log not diverged, else 0. Writes wait, beyond that, for kfd_repl_set_audit_confirmed. */
uint64_t kfd_repl_leading_term(kfd_repl *r);
/* A majority of voters reported the audit head this leader holds (core/checkpoint.c): writes
 * are served in this term from now on. Ignored for any term but the current one. */
void kfd_repl_set_audit_confirmed(kfd_repl *r, uint64_t term);
/* A dispute (review rev17c, C1): this leader's head is to be confirmed again by a head round;
 * writes wait for it as after an election. */
void kfd_repl_clear_audit_confirmed(kfd_repl *r);

/* The voters of the current configuration: name, RPC address (host:port), whether it is this
 * replica. Returns how many were written (at most max). */
typedef struct kfd_repl_voter {
    char name[64], rpc[280];
    bool self;
} kfd_repl_voter;
size_t kfd_repl_voters(kfd_repl *r, kfd_repl_voter *out, size_t max);

/* Fills resp with this replica's view of the cluster (strings point into r or scratch). */
typedef struct kfd_repl_status_buf {
    Keyfleet__V1__ClusterMember members[9];
    Keyfleet__V1__ClusterMember *ptrs[9];
    char names[9][64], rafts[9][280], rpcs[9][280];
    char leader[64];
} kfd_repl_status_buf;
void kfd_repl_status(kfd_repl *r, Keyfleet__V1__ClusterStatusResponse *resp, kfd_repl_status_buf *buf);

/* Whether the change (raft_addr NULL: a removal) can be made now, before its record is judged:
 * 0, or -EAGAIN (not writable), -EBUSY (a change in progress), -EEXIST, -ENOENT or -EINVAL. */
int kfd_repl_check_change(kfd_repl *r, const char *name, const char *raft_addr, const char *rpc_addr, kf_err *err);
/* Hands leadership to the next other voter in turn: a leader does not remove itself, as it
 * could not record its own removal once the configuration left it out (review rev46, R46-4). */
int kfd_repl_hand_over(kfd_repl *r, kf_err *err);
/* Membership changes, on the leader. cb gets 0 or a negative errno with err set. */
typedef void (*kfd_repl_change_cb)(void *arg, int status, const kf_err *err);
int kfd_repl_add(kfd_repl *r, const char *name, const char *raft_addr, const char *rpc_addr, kfd_repl_change_cb cb,
                 void *arg, kf_err *err);
int kfd_repl_remove(kfd_repl *r, const char *name, kfd_repl_change_cb cb, void *arg, kf_err *err);

/* For /metrics. */
typedef struct kfd_repl_stats {
    uint64_t term, commit_index, applied_index, snapshots_taken, snapshots_restored, peers_refused, commit_timeouts;
    uint64_t batches, batched_commands; /* store transactions, and the entries applied in them */
    uint64_t snapshots_refused; /* poisoned or foreign snapshots not installed */
    bool leader;
} kfd_repl_stats;
void kfd_repl_get_stats(kfd_repl *r, kfd_repl_stats *ret);

#endif
