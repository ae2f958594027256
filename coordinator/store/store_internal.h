/* The store's ground (store.c), shared by the store's files and not for other layers: the
 * database handle, its prepared statements, and the helpers that step them and fail the store. */
#ifndef KFD_STORE_INTERNAL_H
#define KFD_STORE_INTERNAL_H

#include <sqlite3.h>

#include "kf_merkle.h"
#include "kf_err.h"
#include "store/store.h"
#include "store/store_audit.h"

#define KFD_STATE_NOTES 8

enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_SAVEPOINT,
    ST_ROLLBACK_TO,
    ST_RELEASE,
    ST_VOLUME_INSERT,
    ST_VOLUME_GET,
    ST_VOLUME_COUNT,
    ST_VOLUME_RELEASED,
    ST_NODE_REVOKE,
    ST_NODE_GET,
    ST_ATTEST_GET,
    ST_NODE_HAS_VOLUMES,
    ST_ATTEST_ACCEPT,
    ST_ATTEST_TOFU,
    ST_ATTEST_SEEN,
    ST_ATTEST_CLOCK_MAX,
    ST_ATTEST_CLOCK_SET,
    ST_ATTEST_HOLD,
    ST_ATTEST_UNHOLD,
    ST_PENDING_INSERT,
    ST_PENDING_GET,
    ST_PENDING_SET_STATE,
    ST_PENDING_ADD_APPROVAL,
    ST_PENDING_LIST,
    ST_PENDING_EXPIRED,
    ST_APPROVAL_INSERT,
    ST_APPROVAL_GET,
    ST_APPROVALS_OF,
    ST_TOTP_INSERT,
    ST_TOTP_GET,
    ST_POLICY_INSERT,
    ST_POLICY_LATEST,
    ST_AUDIT_INSERT,
    ST_AUDIT_HEAD,
    ST_AUDIT_ALL,
    ST_ROLE_INSERT,
    ST_ROLE_GET,
    ST_ROLE_DELETE,
    ST_SECRET_INSERT,
    ST_SECRETS_OF,
    ST_SECRET_SPEND,
    ST_SECRET_PURGE,
    ST_SECRET_DELETE_ROLE,
    ST_TOKEN_INSERT,
    ST_TOKEN_GET,
    ST_TOKEN_DELETE_ROLE,
    ST_SECRET_DELETE_ONE,
    ST_KMS_ROTATED,
    ST_KMS_LATEST,
    ST_TOKEN_DELETE_ONE,
    ST_APPLIED_SET,
    ST_PENDING_CHANGE,
    ST_TOTP_FAIL_GET,
    ST_TOTP_FAIL_SET,
    ST_CERT_REVOKE,
    ST_CERT_GET,
    ST_APPROVALS_WITHDRAW_COUNT,
    ST_APPROVALS_WITHDRAW,
    ST_AUDIT_AT,
    ST_AUDIT_SET_ROOT,
    ST_CHECKPOINT_INSERT,
    ST_MEMBER_LAST,
    ST_CHECKPOINT_LATEST,
    ST_CHECKPOINT_FOR_SIZE,
    ST_AUDIT_OF_REQUEST,
    ST_AUDIT_ONE,
    ST_AUDIT_AFTER,
    ST_VOLUME_ROTATE_BEGIN,
    ST_VOLUME_ROTATE_COMMIT,
    ST_VOLUME_SET_KCV,
    ST_VOLUME_LIST,
    ST_NODE_SEEN,
    ST_NODE_LIST,
    ST_NODE_UNREVOKE,
    ST_VOLUME_RETIRE,
    ST_NODE_LAST_AUDIT,
    ST_RECOVERY_GET,
    ST_RECOVERY_PUT,
    ST_RECOVERY_REVEALED,
    ST_RECOVERY_TO_REPLACE,
    ST_PENDING_SET_PROPOSER,
    ST_PENDING_PROPOSER,
    ST_ERASE_INSERT,
    ST_VOLUME_FORGET_KEYS,
    ST_ERASE_GET,
    ST_ERASE_CONFIRM,
    ST_ERASE_PENDING_OF,
    ST_RECOVERY_NEXT,
    ST_RECOVERY_PROMOTE,
    ST_RECOVERY_DELETE,
    ST_ERASE_CANCEL,
    ST_CHECKPOINT_ALL,
    ST_DATA_VERSION,
    ST_COUNT
};

struct kfd_store {
    char path[4096];
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
    bool failed;
    /* Set when an apply wrote the policy, directly or through a held change; read by the caller. */
    bool policy_changed;
    /* The digest of the stored policy (store_judged.c), made at the first release applied after
     * an open, a snapshot install or a policy write, not at every one. */
    bool policy_judged_ok;
    /* The caller serial of the command being applied (StateCommand.auth_cert_serial), for the
     * approvals it records; NULL outside an apply. */
    const char *applying_serial;
    uint8_t policy_judged[32];
    char failure[256];
    /* The audit chain's head: committed, and tentative inside a transaction. */
    uint64_t head_seq, tx_head_seq;
    uint8_t head_hash[KFD_HASH_LEN], tx_head_hash[KFD_HASH_LEN];
    /* The RFC 9162 tree over the records, as a frontier: committed, and tentative. */
    kf_merkle_frontier tree, tx_tree;
    /* The newest checkpoint record's seq and the tree size it signed: committed, tentative. */
    uint64_t cp_seq, cp_size, tx_cp_seq, tx_cp_size;
    /* The head at open: records past the newest checkpoint's size were not signed yet. */
    uint64_t start_head;
    /* Not 0: this replica's log left the signed history at (or, at the latest, by) this record. */
    uint64_t diverged_seq;
    char diverged_why[256];
    /* Not 0: this replica's head or state differs from another's at this record, on one word
     * (the leader's note, or another process's write): it serves nothing until a majority of
     * voters settles it (store_dispute.c, review rev17c C1). disputed_checks: check_count then. */
    uint64_t disputed_seq, disputed_checks, disputes_total;
    char disputed_why[256];
    bool sole_voter;       /* kfd_store_set_sole_voter */
    bool outvoted;         /* diverged by a head round's majority (kfd_store_mark_outvoted) */
    unsigned foreign_writes; /* another process's commits seen since it opened (rev17d D2) */
    bool dispute_reported; /* a voter said it is disputed (AuditHead): the leader runs a round */
    uint64_t check_count;  /* CmdAuditHeadChecks applied since it opened */
    int64_t data_version;  /* PRAGMA data_version when last read: another connection's commit changes it */
    /* Since it opened, this replica applied a checkpoint that matched its own log and covered
     * every record it held at open: its head is the signed history plus what it applied live. */
    bool vouched;
    uint64_t vouch_floor; /* kfd_store_audit_unvouch: only a checkpoint signing this many records vouches again */
    uint64_t cp_state_size; /* the signed size of the checkpoint at cp_state_seq */
    /* The state digest noted when this replica applied the checkpoint record cp_state_seq (since
     * it opened; 0: none), compared with the leader's CmdStateCheck (review rev17, R2); and
     * whether that checkpoint vouches for this replica once the comparison matched. */
    bool cp_state_vouches;
    uint64_t cp_state_seq;
    uint32_t cp_state_version;
    uint8_t cp_state[KFD_HASH_LEN];
    /* The last few of those notes (seq 0: empty), for the state root a later checkpoint signs
     * and for VerifyAudit (review rev17: the signed state root). */
    struct {
        uint64_t seq;
        uint32_t version;
        uint8_t state[KFD_HASH_LEN];
    } state_notes[KFD_STATE_NOTES];
    unsigned state_notes_next;
    uint64_t state_digest_ns; /* what this replica's last state note cost (CLOCK_MONOTONIC); 0: it failed */
    uint8_t verify_state[KFD_HASH_LEN]; /* VerifyAudit's answer points here */
    /* A snapshot replaced this database since the process started (kfd_store_audit_witness). */
    bool restored;
    /* Verifies a checkpoint command's signature and chain at apply (kfd_store_set_checkpoint_verifier). */
    kfd_checkpoint_verifier cp_verify;
    void *cp_verify_arg;
    /* The newest CmdAuditHeadCheck applied here (not replays): its id and the head then. */
    uint64_t check_id;
    kfd_audit_head check_head;
    /* The last Raft log index applied, committed in the same transaction as its command. */
    uint64_t applied_index;
    /* Deferred commit: applies share one open transaction until kfd_store_flush. */
    bool deferred, tx_open;
    size_t tx_commands; /* applied in the open deferred transaction */
    uint64_t tx_applied; /* the Raft index its commit records (0: none): once per commit, not per entry */
};

/* Commits the open transaction, with the applied index it covers (s->tx_applied) written first. */
int kfd_store_commit(kfd_store *s, kf_err *err);
/* The marker of a snapshot not yet covered by a live checkpoint (s->restored across restarts). */
void kfd_store_restored_path(const kfd_store *s, char *out, size_t size);
/* Opens s->path into s (prepares statements, loads the chain head and applied index). */
int kfd_store_open_db(kfd_store *s, kf_err *err);
/* Closes the database handle and statements, keeping s. */
void kfd_store_close_db(kfd_store *s);

/* Runs migration v (schema version v to v + 1) on db in its own transaction, left open on a
 * failure for the caller to roll back; the only way a schema is made (kfd_store_open, and the
 * expected schema of store_schema.c). A sqlite result code. */
int kfd_store_migration_step(sqlite3 *db, int v);

/* Marks the store failed on a fault-class sqlite error; returns -EIO for faults, or the errno
 * that matches a constraint violation. */
int kfd_store_sql_error(kfd_store *s, int rc, const char *what, kf_err *err);
/* Puts the store in the failed state (the first failure is kept and logged); code is the sqlite
 * result code, or 0 for another fault. Returns -EIO. */
int kfd_store_fail(kfd_store *s, const char *what, const char *msg, int code, kf_err *err);
/* Resets and clears bindings of a statement. */
sqlite3_stmt *kfd_store_stmt(kfd_store *s, int which);

/* Steps a single-row query: 0 with a row, -ENOENT without, -EIO on failure. */
int kfd_store_step_row(kfd_store *s, sqlite3_stmt *st, const char *what);
void kfd_store_copy_col(sqlite3_stmt *st, int i, char *dst, size_t size);
/* Steps a statement that returns no rows. */
int kfd_store_step_done(kfd_store *s, sqlite3_stmt *st, const char *what, kf_err *err);

static inline void kfd_bind_text(sqlite3_stmt *st, int i, const char *v)
{
    sqlite3_bind_text(st, i, v != NULL ? v : "", -1, SQLITE_STATIC);
}

#endif
