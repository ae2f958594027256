/* The audit log (store_audit.c, docs/audit.md): the hash chain, the RFC 9162 tree, checkpoints,
 * and the queries over them. */
#ifndef KFD_STORE_AUDIT_H
#define KFD_STORE_AUDIT_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/state.pb-c.h"
#include "kf_err.h"
#include "kf_merkle.h"
#include "store/store.h"

/* Audit queries: records matching the filter, in seq order. */
int kfd_store_query_audit(kfd_store *s, const Keyfleet__V1__QueryAuditRequest *q, Keyfleet__V1__QueryAuditResponse *resp);
void kfd_store_free_audit_list(Keyfleet__V1__QueryAuditResponse *resp);
/* Recomputes the chain from the first record. */
int kfd_store_verify_audit(kfd_store *s, Keyfleet__V1__VerifyAuditResponse *resp, char *problem, size_t problem_size);

typedef struct kfd_audit_head {
    uint64_t seq;                 /* records applied here */
    uint8_t chain[KFD_HASH_LEN];  /* hash of record seq in the chain */
    kf_merkle_hash root;          /* RFC 9162 root over records 1..seq */
    uint64_t checkpoint_seq;      /* the newest checkpoint record, 0: none */
    uint64_t checkpoint_size;     /* the size it signed */
    /* At a head check only (kfd_store_audit_head_at_check): the digest of every replicated table
     * outside the audit log (kfd_store_state_digest, store_digest.h) and its version (0: none). */
    uint8_t state[KFD_HASH_LEN];
    uint32_t state_version;
} kfd_audit_head;
/* The state digest this replica noted when it applied its newest checkpoint since it opened
 * (review rev17, R2): the leader proposes it in a CmdStateCheck. 0, or -ENOENT (none). */
int kfd_store_checkpoint_state(const kfd_store *s, uint64_t *seq, uint8_t state[KFD_HASH_LEN], uint32_t *version);
/* What this replica's last state note cost (ns of its scan; 0: none yet, or it failed): the
 * leader asks for the next one kfd_state_note_gap_ms (store_digest.h) later. */
uint64_t kfd_store_state_note_cost_ns(const kfd_store *s);
/* The state digest this replica noted when it applied checkpoint record seq (the last
 * KFD_STATE_NOTES of them since it opened): 0, or -ENOENT. */
int kfd_store_state_note_at(const kfd_store *s, uint64_t seq, uint8_t state[KFD_HASH_LEN], uint32_t *version);
/* Calls fn with every checkpoint record in seq order (stops at its first error, returned). */
int kfd_store_each_checkpoint(kfd_store *s, int (*fn)(void *arg, const Keyfleet__V1__AuditRecord *r), void *arg);
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
/* Drops the vouch until a checkpoint that signs every record held now vouches again (its state
 * check matching): records were appended that a majority must be seen to hold (a membership
 * change's, core/checkpoint.c), so no election or head round of this replica is shortened by a
 * checkpoint from before them, nor by a state check of one still in flight. */
void kfd_store_audit_unvouch(kfd_store *s);
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

/* The canonical bytes an audit record's hash covers; exposed for tests/docs. */
size_t kfd_audit_canonical(const Keyfleet__V1__AuditRecord *r, uint8_t *buf, size_t size);

/* --- for the store's own files --- */

/* Notes the tentative audit head under the check's id. */
int kfd_store_apply_head_check(kfd_store *s, const Keyfleet__V1__CmdAuditHeadCheck *c, kf_err *err);
/* The leader's state digest at a checkpoint record against this replica's own there (review
 * rev17, R2): a different one diverges this replica; a match lets that checkpoint vouch for it. */
int kfd_store_apply_state_check(kfd_store *s, const Keyfleet__V1__CmdStateCheck *c, kf_err *err);
/* Appends one audit record inside the current transaction. */
int kfd_store_append_audit(kfd_store *s, const Keyfleet__V1__AuditEntry *e, uint64_t *ret_seq, kf_err *err);
/* At open: verifies the whole local log (chain, tree, stored roots, every checkpoint's root and
 * chain hash against the records), fills in roots missing since the upgrade to format 2, and
 * loads the head and tree. A log that fails marks the store diverged (it still opens). */
int kfd_store_load_audit(kfd_store *s, kf_err *err);
/* Records that this replica's log diverged at seq (the first time only), and logs it. */
void kfd_store_set_diverged(kfd_store *s, uint64_t seq, const char *why);
/* The checkpoint command: cross-checks the leader's signed head against this log, then appends. */
int kfd_store_apply_checkpoint(kfd_store *s, const Keyfleet__V1__CmdCheckpoint *c, uint64_t *seq, kf_err *err);

/* Columns every audit row read selects, in row_record's order. */
#define KFD_AUDIT_COLS                                                                                             \
    "a.seq, a.time_s, a.time_ns, a.action, a.actor_kind, a.actor_name, a.actor_auth, a.node, a.volume_id, "        \
    "a.request_id, a.decision, a.reason, a.source, a.prev_hash, a.hash, a.root, c.signature, c.cert "               \
    "FROM audit a LEFT JOIN audit_checkpoints c ON c.seq = a.seq"
/* Builds a record from the current row of a KFD_AUDIT_COLS statement (heap; free_record). */
struct sqlite3_stmt;
Keyfleet__V1__AuditRecord *kfd_audit_row_record(struct sqlite3_stmt *st);

#endif
