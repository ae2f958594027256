/* The coordinator's application state, shared by the RPC handlers: the store, the KMS, the
 * current policy, rate limiters and the approval machinery. One per process, on the loop. */
#ifndef KFD_APP_H
#define KFD_APP_H

#include <stdint.h>

#include "keyfleet/v1/state.pb-c.h"
#include "kms/kms.h"
#include "core/policy.h"
#include "cluster/replication.h"
#include "config/config.h"
#include "store/store.h"

struct kfd_ratelimit;
struct kfd_webhook;

typedef struct kfd_app {
    const kfd_config *cfg;
    kfd_store *store;
    kfd_kms *kms;
    kfd_policy *policy;
    uint64_t policy_version;
    /* The digest of the policy text policy was parsed from (store_judged.h): commands that hand
     * out a key carry it, and every replica's apply compares it with its own policy. */
    uint8_t policy_judged[32];
    struct kfd_ratelimit *ratelimit;
    struct kfd_ratelimit *report_limit; /* per node: heartbeat reports audited one by one */
    struct kfd_ratelimit *heartbeat_limit; /* per node: heartbeats (each one a Raft write) */
    struct kfd_webhook *webhook;
    uint64_t next_command_id;
    struct kfd_repl *repl; /* Raft (replication.h): every command goes through it */
    uint32_t kek_missing; /* a KMS key version the cluster rotated to that this replica lacks; 0: none */
    struct kfd_checkpointer *checkpointer; /* signed audit checkpoints (checkpoint.h) */
    struct kfd_sinks *sinks;               /* audit sinks (audit_sink.h); NULL when none */
    struct kfd_node_seen *seen;            /* nodes served since start (node_seen.h) */
} kfd_app;

/* Opens the store and the KMS and loads the policy. A store fault is not an error here: the
 * app then answers unavailable (fail closed) and /readyz says so. */
int kfd_app_open(kfd_app *app, uv_loop_t *loop, const kfd_config *cfg, kf_err *err);
void kfd_app_close(kfd_app *app);
/* True when releases can be served: store healthy, KMS loaded. */
bool kfd_app_ready(const kfd_app *app, const char **ret_why);
/* For /readyz only: whether the last KMS call got an answer. Requests still try the KMS, so
 * service resumes by itself when it is back. */
bool kfd_app_kms_reachable(const kfd_app *app, const char **ret_why);
/* For /readyz and cluster status: false while this replica lacks a KMS key version the cluster
 * rotated to (the local KEK file was not copied here yet). Checked every second. */
bool kfd_app_kms_complete(const kfd_app *app, const char **ret_why);
/* (Re)loads the policy in force from the store: at start, and whenever one is applied. */
void kfd_app_load_policy(kfd_app *app);
/* Catches up with a KMS rotation made on another replica (main's one-second tick). */
void kfd_app_sync_kms(kfd_app *app);
/* Audit sinks: retries records a sink could not take (main's tick); reopens files (SIGHUP). */
void kfd_app_flush_sinks(kfd_app *app);
void kfd_app_reopen_sinks(kfd_app *app);

/* Commits a state command through Raft. The callback runs once a majority has it durably in
 * its log and it is applied here (libraft batches the log writes of concurrent commands into
 * one fsync), or with -EAGAIN when this coordinator is not the leader. cmd is serialized at once
 * and may be freed when kfd_commit returns. status is 0 or a negative errno with err set. */
typedef kfd_repl_cb kfd_commit_cb;
void kfd_commit(kfd_app *app, Keyfleet__V1__StateCommand *cmd, kfd_commit_cb cb, void *arg);

/* A new request id: 32 lowercase hex characters, 12 of milliseconds since the epoch, then 20
 * random (80 bits). Time-ordered, so the audit log's request_id index grows at its right edge
 * instead of dirtying a random page per release. Loop thread only. */
void kfd_new_request_id(char out[33]);
/* Client-chosen request ids are 16..64 of [0-9A-Za-z-]. */
bool kfd_request_id_valid(const char *s);

#endif
