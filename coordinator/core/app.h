/* The coordinator's application state, shared by the RPC handlers: the store, the KMS, the
 * current policy, rate limiters and the approval machinery. One per process, on the loop. */
#ifndef KFD_APP_H
#define KFD_APP_H

#include <stdint.h>

#include "keyfleet/v1/state.pb-c.h"
#include "kms/kms.h"
#include "core/policy.h"
#include "cluster/replication.h"
#include "front/server.h"
#include "store/store.h"

typedef struct kfd_ratelimit kfd_ratelimit;
typedef struct kfd_webhook kfd_webhook;

typedef struct kfd_app {
    kfd_server *srv;
    kfd_store *store;
    kfd_kms *kms;
    kfd_policy *policy;
    uint64_t policy_version;
    kfd_ratelimit *ratelimit;
    kfd_webhook *webhook;
    uv_timer_t expiry_timer;
    uint64_t next_command_id;
    struct kfd_repl *repl; /* Raft (replication.h): every command goes through it */
    uint64_t batches, batched_commands;
    uint32_t kek_missing; /* a KMS key version the cluster rotated to that this replica lacks; 0: none */
} kfd_app;

/* Opens the store and the KMS and loads the policy. A store fault is not an error here: the
 * app then answers unavailable (fail closed) and /readyz says so. */
int kfd_app_open(kfd_app *app, kfd_server *srv, kf_err *err);
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

/* Commits a state command through Raft. The callback runs once a majority has it durably in
 * its log and it is applied here (libraft batches the log writes of concurrent commands into
 * one fsync), or with -EAGAIN when this coordinator is not the leader. cmd is serialized at once
 * and may be freed when kfd_commit returns. status is 0 or a negative errno with err set. */
typedef kfd_repl_cb kfd_commit_cb;
void kfd_commit(kfd_app *app, Keyfleet__V1__StateCommand *cmd, kfd_commit_cb cb, void *arg);

/* An audit entry whose strings point at the arguments (no copies). */
typedef struct kfd_audit_buf {
    Keyfleet__V1__AuditEntry entry;
    Keyfleet__V1__Timestamp time;
    Keyfleet__V1__Principal actor;
} kfd_audit_buf;
void kfd_audit_fill(kfd_audit_buf *b, const kfd_call *call, const char *action, Keyfleet__V1__Decision decision,
                    const char *node, const char *volume_id, const char *request_id, const char *reason);

/* Token buckets per node. Returns 0 when allowed, or the milliseconds until a token is due. */
kfd_ratelimit *kfd_ratelimit_new(void);
void kfd_ratelimit_free(kfd_ratelimit *rl);
uint32_t kfd_ratelimit_take(kfd_ratelimit *rl, const char *node, uint32_t per_minute, uint32_t burst, uint64_t now_ms);

/* A new request id: 32 lowercase hex characters, 12 of milliseconds since the epoch, then 20
 * random (80 bits). Time-ordered, so the audit log's request_id index grows at its right edge
 * instead of dirtying a random page per release. Loop thread only. */
void kfd_new_request_id(char out[33]);
/* Client-chosen request ids are 16..64 of [0-9A-Za-z-]. */
bool kfd_request_id_valid(const char *s);

/* Handlers. */
void kfd_rpc_enroll(kfd_call *call);
void kfd_rpc_release(kfd_call *call);
void kfd_rpc_heartbeat(kfd_call *call);
void kfd_rpc_list_pending(kfd_call *call);
void kfd_rpc_approve(kfd_call *call);
void kfd_rpc_deny(kfd_call *call);
void kfd_rpc_query_audit(kfd_call *call);
void kfd_rpc_verify_audit(kfd_call *call);
void kfd_rpc_get_policy(kfd_call *call);
void kfd_rpc_put_policy(kfd_call *call);
void kfd_rpc_check_policy(kfd_call *call);
void kfd_rpc_revoke_node(kfd_call *call);
void kfd_rpc_rotate_kms(kfd_call *call);
void kfd_rpc_revoke_cert(kfd_call *call);

/* Audits an authentication failure (no identity, wrong caller kind, rejected certificate).
 * Capped at 10 records a second (burst 50) so a flood cannot fill the disk; the rest are
 * counted in metrics and logged. call may be NULL (TLS-level failures). */
void kfd_audit_auth_failure(kfd_app *app, const kfd_call *call, const char *subject, const char *reason);

/* Expires waiting requests past their deadline (called by a 1 s timer). */
void kfd_approvals_expire(kfd_app *app);

#endif
