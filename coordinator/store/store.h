/* The coordinator's state: one sqlite database (WAL, synchronous=NORMAL) in the state directory.
 *
 * Every change goes through kfd_store_apply(), which applies one state command (state.proto)
 * in one transaction, appending its audit records to the hash chain. Nothing else writes.
 * Replication feeds committed commands into the same function.
 *
 * Faults (disk full, read-only, corrupt) put the store in a failed state: every later apply and
 * read answers -EIO, so callers fail closed. A restart after the fault is cleared recovers. */
#ifndef KFD_STORE_H
#define KFD_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/state.pb-c.h"
#include "kf_err.h"
#include "kf_merkle.h"

typedef struct kfd_store kfd_store;

#define KFD_HASH_LEN 32

/* Opens (creating if needed) path and migrates it to the current schema. On failure the store
 * is still returned, in the failed state, so the server can answer unavailable. */
int kfd_store_open(const char *path, kfd_store **ret, kf_err *err);
void kfd_store_close(kfd_store *s);

bool kfd_store_failed(const kfd_store *s);
const char *kfd_store_failure(const kfd_store *s);

typedef struct kfd_apply_result {
    uint64_t audit_seq; /* seq of the last audit record the command appended, 0 if none */
} kfd_apply_result;

/* Applies cmd in one durable transaction. Returns 0, a negative errno for a command that is
 * invalid against the current state (-ENOENT, -EEXIST, -EINVAL: nothing changed), or -EIO
 * when the store failed (nothing changed; the store is now failed). */
int kfd_store_apply(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, kfd_apply_result *ret, kf_err *err);

/* Applies n commands in one durable transaction (one fsync): group commit. Each command runs in
 * its own savepoint, so an invalid one (statuses[i] < 0, errs[i] says why) changes nothing and
 * does not affect the others. Returns 0 when the transaction committed, or -EIO when it did not
 * (then every status is -EIO and nothing changed). */
int kfd_store_apply_batch(kfd_store *s, const Keyfleet__V1__StateCommand *const *cmds, size_t n, uint64_t raft_index,
                          int *statuses, kfd_apply_result *results, kf_err *errs);

/* --- replication (store_snapshot.c) --- */

/* The Raft log index of the last applied entry (0: none). apply_batch records raft_index, when
 * not 0, in the same transaction; a NULL command there stands for an undecodable entry. */
uint64_t kfd_store_applied_index(const kfd_store *s);
/* True once after an apply wrote the policy (PutPolicy or a held change it completed); clears the flag. */
bool kfd_store_take_policy_changed(kfd_store *s);
/* Deferred commit: apply_batch leaves its transaction open for later applies, and
 * kfd_store_flush commits them all at once. Only for a caller whose commands are durable
 * elsewhere (the Raft log): a crash loses the open transaction, applied index included. */
void kfd_store_set_deferred(kfd_store *s, bool deferred);
bool kfd_store_tx_open(const kfd_store *s);
/* Commands applied in the open deferred transaction. */
size_t kfd_store_tx_commands(const kfd_store *s);
/* Commits the open transaction, if any. 0, or -EIO with the store failed. */
int kfd_store_flush(kfd_store *s, kf_err *err);
/* Forgets the applied index (a new Raft log was just bootstrapped over existing state). */
int kfd_store_reset_applied(kfd_store *s, kf_err *err);
/* The whole database as one image (sqlite3_serialize; free with sqlite3_free). */
int kfd_store_serialize(kfd_store *s, unsigned char **ret, size_t *ret_len, kf_err *err);
/* Replaces the database with an image from kfd_store_serialize: written beside it, fsynced,
 * renamed over it, reopened. On failure the store is failed (restart to recover). */
int kfd_store_replace(kfd_store *s, const unsigned char *image, size_t len, kf_err *err);

/* --- reads --- */

typedef struct kfd_volume {
    char id[129];
    int kind;
    char name[256];
    char node[64];      /* the node that enrolled it */
    char *labels_json;  /* {"k":"v",...}; free with kfd_volume_clear */
    char *wrapped_key;  /* escrow copy */
    char enroll_request_id[65];
    int64_t created_at;
    int64_t last_released_at; /* 0: never released */
    char *next_wrapped_key;   /* the rotation in progress; NULL when none */
    char key_kcv[24];         /* the key's check value; "" when not known yet (a row from before rotation) */
    char next_kcv[24];        /* the rotation in progress's; "" when none */
    int64_t key_created_at;   /* when the key was made (enroll or the last rotation) */
} kfd_volume;

void kfd_volume_clear(kfd_volume *v);
/* Returns 0, -ENOENT, or -EIO. */
int kfd_store_get_volume(kfd_store *s, const char *id, kfd_volume *ret);

/* A node's measured-boot record (docs/attestation.md): PCR values as kf_tpm_pcrs text. */
typedef struct kfd_attest_record {
    char accepted[24 * 68 + 1]; /* empty: none accepted yet */
    int64_t accepted_at;
    char accepted_by[128]; /* "tofu" or the operator */
    char seen[24 * 68 + 1]; /* the last quote that did not match; empty: none */
    int64_t seen_at;
    bool has_clock; /* the highest TPM counters a quote of the node showed */
    uint32_t reset_count, restart_count;
    bool has_seen_clock; /* the seen quote's counters */
    uint32_t seen_reset, seen_restart;
} kfd_attest_record;
/* 0, -ENOENT (no record for the node) or -EIO. */
int kfd_store_get_attest(kfd_store *s, const char *node, kfd_attest_record *ret);
int kfd_store_count_volumes(kfd_store *s, uint64_t *ret);
/* Whether node enrolled any volume (trust on first use is only for its first). 0 or -EIO. */
int kfd_store_node_has_volumes(kfd_store *s, const char *node, bool *ret);

/* Returns 0 and sets *ret_revoked, or -EIO. */
int kfd_store_node_revoked(kfd_store *s, const char *node, bool *ret_revoked);

typedef enum {
    KFD_PENDING_WAITING = 0,
    KFD_PENDING_APPROVED,
    KFD_PENDING_DENIED,
    KFD_PENDING_EXPIRED,
    KFD_PENDING_CONSUMED, /* approved, then used by its one release (or its change applied) */
} kfd_pending_state;

typedef struct kfd_pending {
    char request_id[65];
    char node[64];
    char volume_id[129];
    char source[64];
    int64_t created_at, expires_at;
    uint32_t approvals_needed, approvals_have;
    kfd_pending_state state;
    char rule[64];
    bool require_totp;
    bool has_change; /* an operator change, not a release */
    char change_summary[256];
} kfd_pending;

int kfd_store_get_pending(kfd_store *s, const char *request_id, kfd_pending *ret);
/* True if operator already approved request_id. */
int kfd_store_has_approved(kfd_store *s, const char *request_id, const char *op, bool *ret);
/* True if operator already used TOTP step. */
int kfd_store_totp_used(kfd_store *s, const char *op, int64_t step, bool *ret);
/* Waiting requests, oldest first; appended to resp (caller frees with kfd_store_free_pending_list). */
int kfd_store_list_pending(kfd_store *s, Keyfleet__V1__ListPendingResponse *resp);
void kfd_store_free_pending_list(Keyfleet__V1__ListPendingResponse *resp);
/* Every enrolled volume, by id; appended to resp (caller frees with kfd_store_free_volume_list).
 * 0, -EIO or -ENOMEM. */
int kfd_store_list_volumes(kfd_store *s, Keyfleet__V1__ListVolumesResponse *resp);
void kfd_store_free_volume_list(Keyfleet__V1__ListVolumesResponse *resp);
/* Every known node (seen, revoked, or owning a volume), by name: name, revoked, last_seen_at
 * filled in; appended to resp (caller frees with kfd_store_free_node_list). 0, -EIO or -ENOMEM. */
int kfd_store_list_nodes(kfd_store *s, Keyfleet__V1__ListNodesResponse *resp);
void kfd_store_free_node_list(Keyfleet__V1__ListNodesResponse *resp);
/* Request ids of waiting requests whose expires_at <= now (at most max). */
int kfd_store_expired_pending(kfd_store *s, int64_t now, char ids[][65], size_t max, size_t *ret_n);

/* An operator's run of wrong TOTP codes and the end of its lockout (0: none). */
int kfd_store_totp_failures(kfd_store *s, const char *op, uint32_t *ret_failures, int64_t *ret_locked_until);
/* Whether a certificate serial (lowercase hex) is denylisted. 0 or -EIO. */
int kfd_store_cert_revoked(kfd_store *s, const char *serial, bool *ret);

/* The newest key version the cluster rotated BACKEND to (replicated); 0 when it never rotated. */
int kfd_store_kms_latest(kfd_store *s, const char *backend, uint32_t *ret);
/* The current policy (NULL yaml and version 0 when none was ever put). yaml is malloc'ed. */
int kfd_store_get_policy(kfd_store *s, char **ret_yaml, uint64_t *ret_version);

/* Audit queries: records matching the filter, in seq order. */
int kfd_store_query_audit(kfd_store *s, const Keyfleet__V1__QueryAuditRequest *q, Keyfleet__V1__QueryAuditResponse *resp);
void kfd_store_free_audit_list(Keyfleet__V1__QueryAuditResponse *resp);
/* Recomputes the chain from the first record. */
int kfd_store_verify_audit(kfd_store *s, Keyfleet__V1__VerifyAuditResponse *resp, char *problem, size_t problem_size);

/* --- the audit tree and checkpoints (store_audit.c, docs/audit.md) --- */

typedef struct kfd_audit_head {
    uint64_t seq;                 /* records applied here */
    uint8_t chain[KFD_HASH_LEN];  /* hash of record seq in the chain */
    kf_merkle_hash root;          /* RFC 9162 root over records 1..seq */
    uint64_t checkpoint_seq;      /* the newest checkpoint record, 0: none */
    uint64_t checkpoint_size;     /* the size it signed */
    /* At a head check only (kfd_store_audit_head_at_check): the digest of every replicated table
     * outside the audit log (kfd_store_state_digest) and its version (0: none). */
    uint8_t state[KFD_HASH_LEN];
    uint32_t state_version;
} kfd_audit_head;
/* The state digest (store_digest.c, review rev17 R2): a hash over every replicated table outside
 * the audit log, independent of row order. 0, -ENOMEM, -EIO. */
int kfd_store_state_digest(kfd_store *s, uint8_t out[KFD_HASH_LEN]);
/* The version digests are compared under: this build's schema version (digests of replicas on
 * another schema are not compared). */
uint32_t kfd_store_state_version(void);
/* The applied head (including a deferred transaction's records). */
void kfd_store_audit_head(const kfd_store *s, kfd_audit_head *ret);
/* Not 0 when this replica's log left the signed history (at the latest) at that seq; why says
 * how it was found. Sticky until the replica is rebuilt. */
uint64_t kfd_store_audit_diverged(const kfd_store *s, const char **ret_why);
/* True while records this replica held when it opened are not yet covered by a checkpoint it
 * applied: nothing but this database vouches for them (the leader's next checkpoint will). */
bool kfd_store_audit_tail_unsigned(const kfd_store *s);
/* True once, since it opened, this replica applied a checkpoint that matched its own log and
 * covered every record it held at open (and it has not diverged): a checkpoint is signed only
 * over a head a majority confirmed, and the rest it applied live, so nothing in its log rests on
 * its database alone. A leader that is vouched for signs without asking the others. */
bool kfd_store_audit_vouched(const kfd_store *s);
/* False after this replica installed a snapshot (since it started), until a checkpoint it applied
 * live covers the snapshot's head: its log is then the sender's copy, and its answer to a leader's
 * head check would only echo that leader (docs/audit.md). Also false once diverged. */
bool kfd_store_audit_witness(const kfd_store *s);
/* The head this replica held when it applied the CmdAuditHeadCheck with this id (the newest
 * check only, in memory). 0, or -ENOENT when it has not applied that check. */
int kfd_store_audit_head_at_check(const kfd_store *s, uint64_t id, kfd_audit_head *ret);
/* Marks this replica's log diverged (first call only; logged): a checkpoint in it fails. */
void kfd_store_mark_diverged(kfd_store *s, uint64_t seq, const char *why);
/* Whether replicas would take a checkpoint by name with cert (DER) now: not denylisted, not
 * removed, and if added back, issued since (docs/audit.md). 0, -EPERM (err says why), -EIO. */
int kfd_store_checkpoint_signer(kfd_store *s, const uint8_t *cert, size_t cert_len, const char *name, kf_err *err);
/* Checks a checkpoint command's signature and certificate chain at apply, from the command alone
 * (the same on every replica): 0, or an error that refuses the command. Without one (unit
 * tests), apply checks everything else. */
typedef int (*kfd_checkpoint_verifier)(void *arg, const Keyfleet__V1__CmdCheckpoint *c, kf_err *err);
void kfd_store_set_checkpoint_verifier(kfd_store *s, kfd_checkpoint_verifier fn, void *arg);
/* Whether a coordinator certificate (its serial, notBefore) may speak for member name at the Raft
 * port: -EPERM with the reason when the serial is denylisted or the certificate was issued before
 * name's newest removal from the cluster (same rule as checkpoint signers); -EIO; 0. */
int kfd_store_coordinator_cert_ok(kfd_store *s, const char *name, const char *serial, int64_t not_before,
                                  kf_err *err);
/* The newest checkpoint's signed text, parsed (what a leader dates its next one after). 0,
 * -ENOENT, -EIO. */
struct kf_checkpoint;
int kfd_store_newest_checkpoint(kfd_store *s, struct kf_checkpoint *ret);
/* The newest checkpoint record (size 0), or the newest signing exactly size. 0, -ENOENT, -EIO. */
int kfd_store_get_checkpoint(kfd_store *s, uint64_t size, Keyfleet__V1__AuditRecord **ret);
/* The records of request_id with seq <= max_seq (at most KFD_PROOF_RECORDS_MAX). Free with
 * kfd_store_free_records. */
#define KFD_PROOF_RECORDS_MAX 16
int kfd_store_records_of_request(kfd_store *s, const char *request_id, uint64_t max_seq,
                                 Keyfleet__V1__AuditRecord ***ret, size_t *ret_n);
void kfd_store_free_records(Keyfleet__V1__AuditRecord **v, size_t n);
/* Up to max records with seq > after, in order (the audit sinks' feed). */
int kfd_store_records_after(kfd_store *s, uint64_t after, size_t max, Keyfleet__V1__AuditRecord ***ret, size_t *ret_n);
/* The leaf hashes of records 1..size, recomputed from their content (malloc'ed). */
int kfd_store_audit_leaves(kfd_store *s, uint64_t size, kf_merkle_hash **ret);
void kfd_audit_free_record(Keyfleet__V1__AuditRecord *r);

/* What a snapshot image holds, once its log verified and was found to extend this replica's. */
typedef struct kfd_image_check {
    uint64_t records, checkpoints;
    Keyfleet__V1__AuditRecord *newest; /* its newest checkpoint, NULL if none; the caller frees */
} kfd_image_check;
/* Checks a database image (kfd_store_serialize's) before it may replace this store: its chain,
 * tree and checkpoints verify, and its log extends this replica's. -EPERM with err why not. */
int kfd_store_check_image(kfd_store *s, const unsigned char *image, size_t len, kfd_image_check *ret, kf_err *err);

/* The canonical bytes an audit record's hash covers (store_audit.c); exposed for tests/docs. */
size_t kfd_audit_canonical(const Keyfleet__V1__AuditRecord *r, uint8_t *buf, size_t size);

/* AppRole (store_approle.c). */
typedef struct kfd_role {
    char name[64];
    char role_id[40];
    char bound_cidrs[1024]; /* comma-separated; empty: any address */
    uint32_t token_ttl_s, secret_id_ttl_s, secret_id_num_uses;
    char node_name[64], node_group[64];
    int64_t created_at;
} kfd_role;

/* By name or by role_id (the other NULL). Returns 0, -ENOENT or -EIO. */
int kfd_store_get_role(kfd_store *s, const char *name, const char *role_id, kfd_role *ret);
/* Finds the role's live secret id whose SHA-256 is hash (every candidate compared in constant
 * time) and copies its accessor. Returns 0, -ENOENT (none, expired or spent) or -EIO. */
int kfd_store_match_secret_id(kfd_store *s, const char *role_name, const uint8_t hash[KFD_HASH_LEN], int64_t now,
                              char accessor[33]);
/* The token whose public id is token_id. Returns 0, -ENOENT or -EIO. */
int kfd_store_get_token(kfd_store *s, const char *token_id, uint8_t hash[KFD_HASH_LEN], char role_name[64],
                        int64_t *expires_at);

#endif
