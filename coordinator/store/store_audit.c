/* The audit log (docs/audit.md, format 2): an append-only table whose records form a SHA-256
 * hash chain and are the leaves of an RFC 9162 Merkle tree, with signed checkpoints among them.
 *   hash(n) = SHA-256(hash(n-1) || canonical(n)),  hash(0) = 32 zero bytes
 *   leaf(n) = SHA-256(0x00 || canonical(n)),  root(n) = MTH(leaf(1..n)), stored with record n
 * canonical() is a fixed, length-prefixed encoding of every field (common/kf_audit.c), so editing,
 * deleting, inserting or reordering any row breaks verification from that record on; a
 * checkpoint signs (size, root, chain) so that recomputing the hashes does not help either. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "kf_audit.h"
#include "kf_audit_json.h"
#include "kf_identity.h"
#include "kf_log.h"
#include "store/store_internal.h"
#include "store/store_audit.h"
#include "store/store_digest.h"
#include "store/store_dispute.h"
#include "store/store_guard.h"
#include "store/store_schema.h"

size_t kfd_audit_canonical(const Keyfleet__V1__AuditRecord *r, uint8_t *buf, size_t size)
{
    return kf_audit_canonical(r, buf, size);
}

#define CANON_MAX KF_AUDIT_CANON_MAX

static void chain_hash(const uint8_t prev[KFD_HASH_LEN], const uint8_t *canon, size_t len, uint8_t out[KFD_HASH_LEN])
{
    kf_audit_chain_hash(prev, canon, len, out);
}

/* Appends r (seq set, hashes not) inside the current transaction; updates the tentative head. */
static int append_record(kfd_store *s, Keyfleet__V1__AuditRecord *r, uint64_t *ret_seq, kf_err *err)
{
    uint8_t canon[CANON_MAX], hash[KFD_HASH_LEN];
    kf_merkle_hash leaf, root;
    size_t len = kf_audit_canonical(r, canon, sizeof(canon));
    if (len > sizeof(canon))
        return kf_err_set(err, -EMSGSIZE, "audit record too large");
    chain_hash(s->tx_head_hash, canon, len, hash);
    kf_merkle_leaf_hash(canon, len, leaf);
    kf_merkle_frontier next = s->tx_tree;
    kf_merkle_frontier_append(&next, leaf);
    kf_merkle_frontier_root(&next, root);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_INSERT);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)r->seq);
    sqlite3_bind_int64(st, 2, r->time->seconds);
    sqlite3_bind_int(st, 3, r->time->nanos);
    kfd_bind_text(st, 4, r->action);
    sqlite3_bind_int(st, 5, r->actor != NULL ? (int)r->actor->kind : 0);
    kfd_bind_text(st, 6, r->actor != NULL ? r->actor->name : "");
    kfd_bind_text(st, 7, r->actor != NULL ? r->actor->auth : "");
    kfd_bind_text(st, 8, r->node);
    kfd_bind_text(st, 9, r->volume_id);
    kfd_bind_text(st, 10, r->request_id);
    sqlite3_bind_int(st, 11, (int)r->decision);
    kfd_bind_text(st, 12, r->reason);
    kfd_bind_text(st, 13, r->source_address);
    sqlite3_bind_blob(st, 14, s->tx_head_hash, KFD_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 15, hash, KFD_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 16, root, KFD_HASH_LEN, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return kfd_store_sql_error(s, rc, "appending to the audit log", err);
    s->tx_head_seq = r->seq;
    memcpy(s->tx_head_hash, hash, KFD_HASH_LEN);
    s->tx_tree = next;
    *ret_seq = r->seq;
    return 0;
}

static void entry_record(const Keyfleet__V1__AuditEntry *e, uint64_t seq, Keyfleet__V1__AuditRecord *r)
{
    keyfleet__v1__audit_record__init(r);
    r->seq = seq;
    r->time = e->time;
    r->action = e->action;
    r->actor = e->actor;
    r->node = e->node;
    r->volume_id = e->volume_id;
    r->request_id = e->request_id;
    r->decision = e->decision;
    r->reason = e->reason;
    r->source_address = e->source_address;
}

int kfd_store_append_audit(kfd_store *s, const Keyfleet__V1__AuditEntry *e, uint64_t *ret_seq, kf_err *err)
{
    if (e == NULL || e->time == NULL || e->action == NULL || e->action[0] == '\0')
        return kf_err_set(err, -EINVAL, "audit entry incomplete");
    /* Only the checkpoint command writes checkpoint records (with their signature). */
    if (strcmp(e->action, KF_AUDIT_CHECKPOINT_ACTION) == 0)
        return kf_err_set(err, -EINVAL, "a checkpoint record needs its signature");
    Keyfleet__V1__AuditRecord r;
    entry_record(e, s->tx_head_seq + 1, &r);
    return append_record(s, &r, ret_seq, err);
}

void kfd_store_set_diverged(kfd_store *s, uint64_t seq, const char *why)
{
    if (s->diverged_seq != 0)
        return;
    s->diverged_seq = seq != 0 ? seq : 1;
    snprintf(s->diverged_why, sizeof(s->diverged_why), "%.*s", (int)sizeof(s->diverged_why) - 1, why);
    kf_log_error("audit_diverged", "seq=%llu reason=%s action=\"serving nothing and never standing for leader; "
                                   "rebuild this replica (operations.md)\"",
                 (unsigned long long)s->diverged_seq, kf_log_q(why));
}

void kfd_store_mark_diverged(kfd_store *s, uint64_t seq, const char *why) { kfd_store_set_diverged(s, seq, why); }

/* The stored root and chain hash of record seq (within the open transaction). -ENOENT if none. */
static int root_at(kfd_store *s, uint64_t seq, uint8_t root[KFD_HASH_LEN], uint8_t chain[KFD_HASH_LEN])
{
    sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_AT);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    int r = kfd_store_step_row(s, st, "reading an audit root");
    if (r == 0) {
        if (sqlite3_column_bytes(st, 0) != KFD_HASH_LEN || sqlite3_column_bytes(st, 1) != KFD_HASH_LEN)
            r = -ENOENT;
        else {
            memcpy(root, sqlite3_column_blob(st, 0), KFD_HASH_LEN);
            memcpy(chain, sqlite3_column_blob(st, 1), KFD_HASH_LEN);
        }
    }
    sqlite3_reset(st);
    return r;
}

/* The signer may still sign (review of #17, F3): its certificate is not denylisted, and the log
 * did not take its coordinator out of the cluster. Both are replicated state, so every replica
 * decides alike; a refused checkpoint changes nothing. */
static int check_signer(kfd_store *s, const Keyfleet__V1__CmdCheckpoint *c, const kf_checkpoint *cp, kf_err *err)
{
    const unsigned char *p = c->cert.data;
    X509 *x = d2i_X509(NULL, &p, (long)c->cert.len);
    kf_identity id;
    kf_err ierr = {0};
    int r = x != NULL && kf_identity_from_cert(x, &id, &ierr) == 0 && id.kind == KF_PEER_COORDINATOR &&
                    strcmp(id.name, cp->signer) == 0
                ? 0
                : -EPERM;
    if (r != 0) {
        X509_free(x);
        ERR_clear_error();
        return kf_err_set(err, -EPERM, "checkpoint signer certificate does not name coordinator %s", cp->signer);
    }
    bool revoked = false;
    if ((r = kfd_store_cert_revoked(s, id.serial, &revoked)) != 0) {
        X509_free(x);
        return kf_err_set(err, r, "state store unavailable: %s", s->failure);
    }
    if (revoked) {
        X509_free(x);
        return kf_err_set(err, -EPERM, "checkpoint signer certificate %s is revoked", id.serial);
    }
    char member[80];
    snprintf(member, sizeof(member), "member %s", id.name);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_MEMBER_LAST);
    kfd_bind_text(st, 1, member);
    r = kfd_store_step_row(s, st, "reading the membership history");
    bool removed = r == 0 && strcmp((const char *)sqlite3_column_text(st, 0), "cluster_remove") == 0;
    /* Added back after a removal: only a certificate issued since counts (kf_audit_signers). */
    bool predates = r == 0 && !removed && sqlite3_column_type(st, 1) != SQLITE_NULL &&
                    kf_audit_cert_predates(x, sqlite3_column_int64(st, 1));
    int64_t removed_at = r == 0 ? sqlite3_column_int64(st, 1) : 0;
    sqlite3_reset(st);
    X509_free(x);
    ERR_clear_error();
    if (r == -EIO)
        return kf_err_set(err, -EIO, "state store unavailable: %s", s->failure);
    if (removed)
        return kf_err_set(err, -EPERM, "checkpoint signer %s was removed from the cluster", id.name);
    if (predates)
        return kf_err_set(err, -EPERM, "checkpoint signer certificate %s was issued before %s was removed from the "
                          "cluster (at %lld); added back, it signs only with a newer certificate",
                          id.serial, id.name, (long long)removed_at);
    return 0;
}

void kfd_store_set_checkpoint_verifier(kfd_store *s, kfd_checkpoint_verifier fn, void *arg)
{
    if (s == NULL)
        return;
    s->cp_verify = fn;
    s->cp_verify_arg = arg;
}

int kfd_store_checkpoint_signer(kfd_store *s, const uint8_t *cert, size_t cert_len, const char *name, kf_err *err)
{
    Keyfleet__V1__CmdCheckpoint c = KEYFLEET__V1__CMD_CHECKPOINT__INIT;
    c.cert.data = (uint8_t *)cert;
    c.cert.len = cert_len;
    kf_checkpoint cp;
    memset(&cp, 0, sizeof(cp));
    snprintf(cp.signer, sizeof(cp.signer), "%s", name);
    return s->failed ? kf_err_set(err, -EIO, "state store unavailable: %s", s->failure) : check_signer(s, &c, &cp, err);
}

int kfd_store_coordinator_cert_ok(kfd_store *s, const char *name, const char *serial, int64_t not_before,
                                  kf_err *err)
{
    if (s->failed)
        return kf_err_set(err, -EIO, "state store unavailable: %s", s->failure);
    bool revoked = false;
    int r = kfd_store_cert_revoked(s, serial, &revoked);
    if (r != 0)
        return kf_err_set(err, -EIO, "state store unavailable: %s", s->failure);
    if (revoked)
        return kf_err_set(err, -EPERM, "certificate %s is revoked", serial);
    char member[80];
    snprintf(member, sizeof(member), "member %s", name);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_MEMBER_LAST);
    kfd_bind_text(st, 1, member);
    r = kfd_store_step_row(s, st, "reading the membership history");
    bool removed_once = r == 0 && sqlite3_column_type(st, 1) != SQLITE_NULL;
    int64_t removed_at = removed_once ? sqlite3_column_int64(st, 1) : 0;
    sqlite3_reset(st);
    if (r == -EIO)
        return kf_err_set(err, -EIO, "state store unavailable: %s", s->failure);
    /* The same cut as kf_audit_cert_predates: the CA dates notBefore 300 s back. */
    if (removed_once && not_before <= removed_at - KF_CHECKPOINT_READD_SLACK_S)
        return kf_err_set(err, -EPERM, "certificate %s was issued before %s was removed from the cluster (at %lld); "
                          "added back, it speaks only with a newer certificate",
                          serial, name, (long long)removed_at);
    return 0;
}

/* The newest checkpoint before the one being applied (record seq), parsed from its signed text.
 * 0, -ENOENT (none), -EIO. */
static int checkpoint_at(kfd_store *s, uint64_t seq, kf_checkpoint *ret)
{
    if (seq == 0)
        return -ENOENT;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_ONE);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    int r = kfd_store_step_row(s, st, "reading the newest checkpoint");
    kf_err perr = {0};
    if (r == 0) {
        const char *text = (const char *)sqlite3_column_text(st, 11);
        r = text != NULL && kf_checkpoint_parse(text, strlen(text), ret, &perr) == 0 ? 0 : -ENOENT;
    }
    sqlite3_reset(st);
    return r;
}

int kfd_store_newest_checkpoint(kfd_store *s, kf_checkpoint *ret)
{
    if (s->failed)
        return -EIO;
    return checkpoint_at(s, s->cp_seq, ret);
}

/* The state root a v2 checkpoint signs (review rev17): the leader's state digest at an earlier
 * checkpoint record, which this replica noted too when it applied that record. A different one
 * diverges it, on the word of a coordinator key (the CmdStateCheck that follows each checkpoint
 * is not signed). Nothing to compare when it noted none there (it started after that record) or
 * of another schema version. */
static void check_signed_state(kfd_store *s, const kf_checkpoint *cp)
{
    uint8_t mine[KFD_HASH_LEN];
    uint32_t version = 0;
    if (cp->version < 2 || cp->state_seq == 0 || kfd_store_state_note_at(s, cp->state_seq, mine, &version) != 0 ||
        version != cp->state_version || CRYPTO_memcmp(mine, cp->state, KFD_HASH_LEN) == 0)
        return;
    char why[240];
    snprintf(why, sizeof(why), "the replicated state (revocations, policy, attestation, approvals...) at checkpoint "
             "record %llu differs from the state root %s signed", (unsigned long long)cp->state_seq, cp->signer);
    kfd_store_set_disputed(s, cp->state_seq, why); /* one signer's word: a majority decides (C1) */
}

int kfd_store_apply_checkpoint(kfd_store *s, const Keyfleet__V1__CmdCheckpoint *c, uint64_t *seq, kf_err *err)
{
    const Keyfleet__V1__AuditEntry *e = c->audit;
    kf_checkpoint cp;
    if (e == NULL || e->time == NULL || e->action == NULL || strcmp(e->action, KF_AUDIT_CHECKPOINT_ACTION) != 0 ||
        e->reason == NULL || strcmp(e->reason, c->text) != 0 || c->signature.len == 0 || c->cert.len == 0)
        return kf_err_set(err, -EINVAL, "checkpoint command incomplete");
    int r = kf_checkpoint_parse(c->text, strlen(c->text), &cp, err);
    if (r != 0)
        return r;
    /* The cross-check (docs/audit.md): the leader computed this root and chain hash over its own
     * log; this replica applied the same entries before this one, so it must hold the same. It
     * comes first (review of #17, F3): what decides whether the signer may sign is local state
     * too (revoked_certs, the membership records), so a refusal must never spare a replica whose
     * log differs from the divergence. */
    char why[200] = "";
    uint8_t root[KFD_HASH_LEN], chain[KFD_HASH_LEN];
    if (cp.size == 0 || cp.size > s->tx_head_seq)
        snprintf(why, sizeof(why), "the leader signed %llu records; this replica holds %llu",
                 (unsigned long long)cp.size, (unsigned long long)s->tx_head_seq);
    else if ((r = root_at(s, cp.size, root, chain)) == -EIO)
        return kf_err_set(err, -EIO, "state store unavailable: %s", s->failure);
    else if (r != 0)
        snprintf(why, sizeof(why), "record %llu has no root here", (unsigned long long)cp.size);
    else if (CRYPTO_memcmp(root, cp.root, KFD_HASH_LEN) != 0 || CRYPTO_memcmp(chain, cp.chain, KFD_HASH_LEN) != 0)
        snprintf(why, sizeof(why), "the leader's signed head at %llu differs from this replica's",
                 (unsigned long long)cp.size);
    /* The leader's word against this replica's (review rev17c, C1): either may be the changed one
     * (a table edited in the running leader's database), so a majority of voters decides. */
    if (why[0] != '\0')
        kfd_store_set_disputed(s, cp.size, why);
    if ((r = check_signer(s, c, &cp, err)) != 0)
        return r;
    /* Its signature (review rev17, R5): whatever put the command into the Raft log, a checkpoint
     * no coordinator key signed is refused on every replica alike and vouches for nothing. */
    if (s->cp_verify != NULL && (r = s->cp_verify(s->cp_verify_arg, c, err)) != 0)
        return r;
    /* Sizes grow and times do not go back (F4): a replayed copy of a genuine checkpoint is refused
     * on every replica alike (the leader dates each checkpoint at or after the one before). */
    kf_checkpoint prev;
    if ((r = checkpoint_at(s, s->tx_cp_seq, &prev)) == -EIO)
        return kf_err_set(err, -EIO, "state store unavailable: %s", s->failure);
    bool have_prev = r == 0;
    if ((r = kf_checkpoint_follows(have_prev ? &prev : NULL, &cp, c->cert.data, c->cert.len, err)) != 0)
        return r;
    if (why[0] == '\0')
        check_signed_state(s, &cp);
    /* Dated ahead of this replica's clock (F2): the signer's clock, or this one, is wrong, and the
     * certificate would be judged at a time nobody vouches for. Not skipped silently: recorded like
     * on every replica, and this one serves nothing until its clock or the signer's is fixed and
     * it is restarted (its start does not judge applied checkpoints by the clock). A time equal to
     * the one before it is the leader keeping time monotonic, already judged. */
    int64_t now = (int64_t)time(NULL);
    if (why[0] == '\0' && cp.seconds > now + KF_CHECKPOINT_SKEW_S && (!have_prev || cp.seconds != prev.seconds ||
                                                                      cp.nanos != prev.nanos)) {
        char late[256];
        int n = snprintf(late, sizeof(late), "checkpoint by %s is dated %lld s ahead of this replica's clock (more "
                         "than %d s): fix the clock that is wrong and restart this replica", cp.signer,
                         (long long)(cp.seconds - now), KF_CHECKPOINT_SKEW_S);
        (void)n; /* a cut reason is still a reason */
        kfd_store_set_diverged(s, s->tx_head_seq + 1, late);
    }
    /* Recorded either way: every replica's log holds the same entries. */
    Keyfleet__V1__AuditRecord rec;
    entry_record(e, s->tx_head_seq + 1, &rec);
    if ((r = append_record(s, &rec, seq, err)) != 0)
        return r;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_CHECKPOINT_INSERT);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)*seq);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)cp.size);
    sqlite3_bind_blob(st, 3, c->signature.data, (int)c->signature.len, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, c->cert.data, (int)c->cert.len, SQLITE_STATIC);
    if ((r = kfd_store_step_done(s, st, "recording the checkpoint", err)) != 0)
        return r;
    s->tx_cp_seq = *seq;
    s->tx_cp_size = cp.size;
    /* The rest of the replicated state (review rev17, R2): noted here, and compared with the
     * leader's when its CmdStateCheck for this record follows. Only then does this checkpoint
     * vouch for the replica; none when the state cannot be read. Not at a record the leader
     * skipped (its scans' cost, docs/audit.md): the newest note stays what a check compares and
     * what the next checkpoint signs, every replica alike. */
    if (c->skip_state_note)
        return 0;
    s->cp_state_seq = 0;
    s->cp_state_vouches = why[0] == '\0' && cp.size >= s->start_head;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int dr = kfd_store_state_digest(s, s->cp_state);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* A failed scan sets no cost (review rev42 S6): a leader whose own scan failed asks for a
     * note again at its next checkpoint, and draws its gaps from the shortest until one works. */
    s->state_digest_ns = dr == 0 ? (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec)) : 0;
    if (dr != 0) {
        kf_log_warn("state_note_failed", "seq=%llu error=\"%s\" hint=\"this checkpoint compares no state here\"",
                    (unsigned long long)*seq, strerror(-dr));
    } else {
        s->cp_state_seq = *seq;
        s->cp_state_size = cp.size;
        s->cp_state_version = kfd_store_state_version();
        unsigned i = s->state_notes_next++ % KFD_STATE_NOTES;
        s->state_notes[i].seq = *seq;
        s->state_notes[i].version = s->cp_state_version;
        memcpy(s->state_notes[i].state, s->cp_state, KFD_HASH_LEN);
    }
    return 0;
}

uint64_t kfd_store_state_note_cost_ns(const kfd_store *s) { return s->state_digest_ns; }

int kfd_store_state_note_at(const kfd_store *s, uint64_t seq, uint8_t state[KFD_HASH_LEN], uint32_t *version)
{
    for (unsigned i = 0; seq != 0 && i < KFD_STATE_NOTES; i++)
        if (s->state_notes[i].seq == seq) {
            memcpy(state, s->state_notes[i].state, KFD_HASH_LEN);
            *version = s->state_notes[i].version;
            return 0;
        }
    return -ENOENT;
}

int kfd_store_apply_state_check(kfd_store *s, const Keyfleet__V1__CmdStateCheck *c, kf_err *err)
{
    if (c == NULL || c->seq == 0 || c->state.len != KFD_HASH_LEN || c->version == 0)
        return kf_err_set(err, -EINVAL, "state check incomplete");
    /* Not noted here (a checkpoint applied before this replica started, or a snapshot installed
     * since), or another schema during a rolling upgrade: nothing to compare, nothing vouched. */
    if (c->seq != s->cp_state_seq || c->version != s->cp_state_version)
        return 0;
    if (CRYPTO_memcmp(c->state.data, s->cp_state, KFD_HASH_LEN) != 0) {
        char why[200];
        snprintf(why, sizeof(why), "the replicated state (revocations, policy, attestation, approvals...) at "
                 "checkpoint record %llu differs from the leader's", (unsigned long long)c->seq);
        kfd_store_set_disputed(s, c->seq, why); /* the leader's word alone: a majority decides (C1) */
        return 0;
    }
    if (!s->cp_state_vouches || s->diverged_seq != 0 || s->cp_state_size < s->vouch_floor)
        return 0;
    s->vouched = true;
    if (s->restored) {
        /* A live checkpoint covers the snapshot it installed: a witness again after restarts. */
        char mark[4200];
        kfd_store_restored_path(s, mark, sizeof(mark));
        if (unlink(mark) == 0 || errno == ENOENT)
            s->restored = false;
    }
    return 0;
}

int kfd_store_checkpoint_state(const kfd_store *s, uint64_t *seq, uint8_t state[KFD_HASH_LEN], uint32_t *version)
{
    if (s->cp_state_seq == 0)
        return -ENOENT;
    *seq = s->cp_state_seq;
    memcpy(state, s->cp_state, KFD_HASH_LEN);
    *version = s->cp_state_version;
    return 0;
}

int kfd_store_apply_head_check(kfd_store *s, const Keyfleet__V1__CmdAuditHeadCheck *c, kf_err *err)
{
    if (c == NULL || c->id == 0)
        return kf_err_set(err, -EINVAL, "audit head check incomplete");
    /* Every replica applies it after the same entries, so honest ones note the same head. */
    s->check_id = c->id;
    s->check_count++;
    memset(&s->check_head, 0, sizeof(s->check_head));
    s->check_head.seq = s->tx_head_seq;
    memcpy(s->check_head.chain, s->tx_head_hash, KFD_HASH_LEN);
    kf_merkle_frontier_root(&s->tx_tree, s->check_head.root);
    s->check_head.checkpoint_seq = s->tx_cp_seq;
    s->check_head.checkpoint_size = s->tx_cp_size;
    /* The rest of the replicated state too (review rev17, R2); none when it cannot be read. */
    if (kfd_store_state_digest(s, s->check_head.state) == 0)
        s->check_head.state_version = kfd_store_state_version();
    return 0;
}

int kfd_store_audit_head_at_check(const kfd_store *s, uint64_t id, kfd_audit_head *ret)
{
    if (id == 0 || s->check_id != id)
        return -ENOENT;
    *ret = s->check_head;
    return 0;
}

static char *dup_col(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return strdup(t != NULL ? (const char *)t : "");
}

static void copy_blob(sqlite3_stmt *st, int i, ProtobufCBinaryData *b)
{
    b->len = (size_t)sqlite3_column_bytes(st, i);
    b->data = malloc(b->len + 1);
    if (b->data != NULL && b->len > 0)
        memcpy(b->data, sqlite3_column_blob(st, i), b->len);
    else if (b->data == NULL)
        b->len = 0;
}

Keyfleet__V1__AuditRecord *kfd_audit_row_record(sqlite3_stmt *st)
{
    Keyfleet__V1__AuditRecord *r = calloc(1, sizeof(*r));
    Keyfleet__V1__Timestamp *t = calloc(1, sizeof(*t));
    Keyfleet__V1__Principal *a = calloc(1, sizeof(*a));
    if (r == NULL || t == NULL || a == NULL) {
        free(r);
        free(t);
        free(a);
        return NULL;
    }
    keyfleet__v1__audit_record__init(r);
    keyfleet__v1__timestamp__init(t);
    keyfleet__v1__principal__init(a);
    r->seq = (uint64_t)sqlite3_column_int64(st, 0);
    t->seconds = sqlite3_column_int64(st, 1);
    t->nanos = sqlite3_column_int(st, 2);
    r->time = t;
    r->action = dup_col(st, 3);
    a->kind = (Keyfleet__V1__PrincipalKind)sqlite3_column_int(st, 4);
    a->name = dup_col(st, 5);
    a->auth = dup_col(st, 6);
    r->actor = a;
    r->node = dup_col(st, 7);
    r->volume_id = dup_col(st, 8);
    r->request_id = dup_col(st, 9);
    r->decision = (Keyfleet__V1__Decision)sqlite3_column_int(st, 10);
    r->reason = dup_col(st, 11);
    r->source_address = dup_col(st, 12);
    copy_blob(st, 13, &r->prev_hash); /* NULL in an image made to fail (fuzz_snapshot) */
    copy_blob(st, 14, &r->hash);
    copy_blob(st, 15, &r->root);
    copy_blob(st, 16, &r->signature);
    copy_blob(st, 17, &r->signer_cert);
    return r;
}

void kfd_audit_free_record(Keyfleet__V1__AuditRecord *r)
{
    kf_audit_record_free(r); /* built field by field as kf_audit_json builds its records */
}

void kfd_store_free_audit_list(Keyfleet__V1__QueryAuditResponse *resp)
{
    for (size_t i = 0; i < resp->n_records; i++)
        kfd_audit_free_record(resp->records[i]);
    free(resp->records);
    resp->records = NULL;
    resp->n_records = 0;
}

static bool matches(const Keyfleet__V1__AuditRecord *r, const Keyfleet__V1__QueryAuditRequest *q)
{
    if (r->seq <= q->after_seq)
        return false;
    if (q->node[0] != '\0' && strcmp(q->node, r->node) != 0)
        return false;
    if (q->volume_id[0] != '\0' && strcmp(q->volume_id, r->volume_id) != 0)
        return false;
    if (q->action[0] != '\0' && strcmp(q->action, r->action) != 0)
        return false;
    if (q->decision != KEYFLEET__V1__DECISION__DECISION_UNSPECIFIED && q->decision != r->decision)
        return false;
    if (q->since_present_case == KEYFLEET__V1__QUERY_AUDIT_REQUEST__SINCE_PRESENT_SINCE && q->since != NULL &&
        r->time->seconds < q->since->seconds)
        return false;
    if (q->until_present_case == KEYFLEET__V1__QUERY_AUDIT_REQUEST__UNTIL_PRESENT_UNTIL && q->until != NULL &&
        r->time->seconds > q->until->seconds)
        return false;
    return true;
}

int kfd_store_query_audit(kfd_store *s, const Keyfleet__V1__QueryAuditRequest *q, Keyfleet__V1__QueryAuditResponse *resp)
{
    if (s->failed)
        return -EIO;
    size_t limit = q->limit == 0 ? 1000 : q->limit > 10000 ? 10000 : q->limit;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_ALL);
    size_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((uint64_t)sqlite3_column_int64(st, 0) <= q->after_seq)
            continue;
        Keyfleet__V1__AuditRecord *r = kfd_audit_row_record(st);
        if (r == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        if (!matches(r, q)) {
            kfd_audit_free_record(r);
            continue;
        }
        if (resp->n_records == limit) {
            kfd_audit_free_record(r);
            resp->more = true;
            rc = SQLITE_DONE;
            break;
        }
        if (resp->n_records == cap) {
            cap = cap ? cap * 2 : 64;
            Keyfleet__V1__AuditRecord **v = realloc(resp->records, cap * sizeof(*v));
            if (v == NULL) {
                kfd_audit_free_record(r);
                rc = SQLITE_NOMEM;
                break;
            }
            resp->records = v;
        }
        resp->records[resp->n_records++] = r;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        kfd_store_free_audit_list(resp);
        return rc == SQLITE_NOMEM ? -ENOMEM : kfd_store_sql_error(s, rc, "reading the audit log", NULL);
    }
    return 0;
}

/* One pass over a log (this store's, or a snapshot image's): the chain, the tree, the stored
 * roots, and each checkpoint's root and chain hash against the records it covers. */
typedef struct scan {
    uint64_t n, head_seq;
    uint8_t head_hash[KFD_HASH_LEN];
    kf_merkle_frontier tree;
    uint64_t bad_seq; /* 0: the log is consistent */
    char problem[200];
    uint64_t cp_seq, cp_size; /* the newest checkpoint record */
    uint64_t checkpoints;
    kf_checkpoint last_cp; /* the newest readable checkpoint text, if any */
    bool have_cp;
    /* Records whose root is missing (written before format 2), with the computed root. */
    uint64_t *fill_seq;
    kf_merkle_hash *fill_root;
    size_t n_fill, cap_fill;
    kf_audit_signers who; /* revoked certificates and removed coordinators so far */
} scan;

/* More records than this after the newest checkpoint are not what a leader leaves (it signs
 * within 200 ms or 1000 records): keyfleetctl audit verify fails on them (docs/audit.md). */
#define KFD_AUDIT_TAIL_WARN 2000
#define RECENT 4096 /* roots and chain hashes kept for checkpoints of recent sizes */

__attribute__((format(printf, 3, 4))) static void scan_bad(scan *sc, uint64_t seq, const char *fmt, ...)
{
    if (sc->bad_seq != 0)
        return;
    sc->bad_seq = seq;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sc->problem, sizeof(sc->problem), fmt, ap);
    va_end(ap);
}

static int scan_fill(scan *sc, uint64_t seq, const kf_merkle_hash root)
{
    if (sc->n_fill == sc->cap_fill) {
        size_t cap = sc->cap_fill ? sc->cap_fill * 2 : 256;
        uint64_t *a = realloc(sc->fill_seq, cap * sizeof(*a));
        if (a != NULL)
            sc->fill_seq = a;
        kf_merkle_hash *b = realloc(sc->fill_root, cap * sizeof(*b));
        if (b != NULL)
            sc->fill_root = b;
        if (a == NULL || b == NULL)
            return -ENOMEM;
        sc->cap_fill = cap;
    }
    sc->fill_seq[sc->n_fill] = seq;
    memcpy(sc->fill_root[sc->n_fill++], root, KFD_HASH_LEN);
    return 0;
}

/* Runs over every row of all (a KFD_AUDIT_COLS statement in seq order) and at (root and chain
 * hash by seq) of one database. Returns a sqlite result code (SQLITE_DONE when read through). */
static int scan_log(sqlite3_stmt *all, sqlite3_stmt *at, scan *sc)
{
    memset(sc, 0, sizeof(*sc));
    kf_merkle_frontier_init(&sc->tree);
    kf_audit_signers_init(&sc->who);
    uint8_t prev[KFD_HASH_LEN] = {0}, canon[CANON_MAX], hash[KFD_HASH_LEN];
    static kf_merkle_hash recent_root[RECENT], recent_chain[RECENT];
    uint64_t expect = 1;
    int rc;
    while ((rc = sqlite3_step(all)) == SQLITE_ROW) {
        Keyfleet__V1__AuditRecord *r = kfd_audit_row_record(all);
        if (r == NULL)
            return SQLITE_NOMEM;
        sc->n++;
        size_t len = kf_audit_canonical(r, canon, sizeof(canon));
        if (r->seq != expect)
            scan_bad(sc, r->seq, "%s", r->seq > expect ? "a record is missing before this one" : "records are out of order");
        else if (r->prev_hash.len != KFD_HASH_LEN || CRYPTO_memcmp(r->prev_hash.data, prev, KFD_HASH_LEN) != 0)
            scan_bad(sc, r->seq, "%s", "its prev_hash does not match the previous record's hash");
        if (len > sizeof(canon)) {
            scan_bad(sc, r->seq, "%s", "record too large");
            len = 0;
        }
        chain_hash(prev, canon, len, hash);
        if (r->hash.len != KFD_HASH_LEN || CRYPTO_memcmp(r->hash.data, hash, KFD_HASH_LEN) != 0)
            scan_bad(sc, r->seq, "%s", "its content does not match its hash (edited)");
        kf_merkle_hash leaf, root;
        kf_merkle_leaf_hash(canon, len, leaf);
        kf_merkle_frontier_append(&sc->tree, leaf);
        kf_merkle_frontier_root(&sc->tree, root);
        if (r->root.len == 0) {
            if (scan_fill(sc, r->seq, root) != 0) {
                kfd_audit_free_record(r);
                return SQLITE_NOMEM;
            }
        } else if (r->root.len != KFD_HASH_LEN || CRYPTO_memcmp(r->root.data, root, KFD_HASH_LEN) != 0) {
            scan_bad(sc, r->seq, "%s", "its stored Merkle root does not match the records (recomputed)");
        }
        memcpy(recent_root[sc->n % RECENT], root, KFD_HASH_LEN);
        memcpy(recent_chain[sc->n % RECENT], hash, KFD_HASH_LEN);
        if (strcmp(r->action, KF_AUDIT_CHECKPOINT_ACTION) == 0) {
            kf_checkpoint cp;
            kf_err perr = {0};
            uint8_t cr[KFD_HASH_LEN], cc[KFD_HASH_LEN];
            bool have = false;
            if (r->signature.len == 0 || r->signer_cert.len == 0)
                scan_bad(sc, r->seq, "%s", "checkpoint record without its signature");
            else if (kf_checkpoint_parse(r->reason, strlen(r->reason), &cp, &perr) != 0)
                scan_bad(sc, r->seq, "checkpoint text unreadable: %s", perr.msg);
            else if (cp.size == 0 || cp.size >= r->seq)
                scan_bad(sc, r->seq, "%s", "checkpoint signs records that do not precede it");
            else if (kf_checkpoint_follows(sc->have_cp ? &sc->last_cp : NULL, &cp, r->signer_cert.data,
                                           r->signer_cert.len, &perr) != 0)
                scan_bad(sc, r->seq, "%s", perr.msg);
            else if (kf_audit_signers_check(&sc->who, r->signer_cert.data, r->signer_cert.len, &perr) != 0)
                scan_bad(sc, r->seq, "%s", perr.msg);
            else if (sc->n - cp.size < RECENT && cp.size <= sc->n) {
                memcpy(cr, recent_root[cp.size % RECENT], KFD_HASH_LEN);
                memcpy(cc, recent_chain[cp.size % RECENT], KFD_HASH_LEN);
                have = true;
            } else {
                sqlite3_reset(at);
                sqlite3_bind_int64(at, 1, (sqlite3_int64)cp.size);
                if (sqlite3_step(at) == SQLITE_ROW && sqlite3_column_bytes(at, 0) == KFD_HASH_LEN &&
                    sqlite3_column_bytes(at, 1) == KFD_HASH_LEN) {
                    memcpy(cr, sqlite3_column_blob(at, 0), KFD_HASH_LEN);
                    memcpy(cc, sqlite3_column_blob(at, 1), KFD_HASH_LEN);
                    have = true;
                }
                sqlite3_reset(at);
            }
            if (have && (CRYPTO_memcmp(cr, cp.root, KFD_HASH_LEN) != 0 || CRYPTO_memcmp(cc, cp.chain, KFD_HASH_LEN) != 0)) {
                char what[120];
                snprintf(what, sizeof(what), "%llu", (unsigned long long)r->seq);
                scan_bad(sc, cp.size, "the records differ from what checkpoint record %s signed", what);
            } else if (!have && sc->bad_seq == 0) {
                scan_bad(sc, r->seq, "%s", "checkpoint signs a size whose root is unknown");
            }
            if (sc->bad_seq == 0) { /* parsed, and in order */
                sc->last_cp = cp;
                sc->have_cp = true;
            }
            sc->cp_seq = r->seq;
            sc->cp_size = cp.size;
            sc->checkpoints++;
        }
        if (kf_audit_signers_note(&sc->who, r) != 0) {
            kfd_audit_free_record(r);
            return SQLITE_NOMEM;
        }
        memcpy(prev, hash, KFD_HASH_LEN);
        sc->head_seq = r->seq;
        memcpy(sc->head_hash, r->hash.len == KFD_HASH_LEN ? r->hash.data : hash, KFD_HASH_LEN);
        expect = r->seq + 1;
        kfd_audit_free_record(r);
    }
    sqlite3_reset(all);
    return rc;
}

static void scan_free(scan *sc)
{
    free(sc->fill_seq);
    free(sc->fill_root);
    kf_audit_signers_free(&sc->who);
}

int kfd_store_load_audit(kfd_store *s, kf_err *err)
{
    scan sc;
    int rc = scan_log(kfd_store_stmt(s, ST_AUDIT_ALL), kfd_store_stmt(s, ST_AUDIT_AT), &sc);
    if (rc != SQLITE_DONE) {
        scan_free(&sc);
        return rc == SQLITE_NOMEM ? kf_err_set(err, -ENOMEM, "out of memory")
                                  : kfd_store_sql_error(s, rc, "reading the audit log", err);
    }
    s->head_seq = sc.head_seq;
    memcpy(s->head_hash, sc.head_hash, KFD_HASH_LEN);
    s->tree = sc.tree;
    s->cp_seq = sc.cp_seq;
    s->cp_size = sc.cp_size;
    s->start_head = sc.head_seq;
    s->vouched = false;
    s->cp_state_seq = 0;
    memset(s->state_notes, 0, sizeof(s->state_notes));
    /* Records after the newest signed size (the newest checkpoint record itself aside) rest on
     * this database alone: said at start, and signed only once a majority of replicas holds the
     * same head (core/checkpoint.c). Counted from the size, not the record (review of #17, F4). */
    uint64_t tail = sc.checkpoints == 0 ? sc.head_seq : sc.cp_size < sc.head_seq ? sc.head_seq - sc.cp_size - 1 : 0;
    if (sc.head_seq > 0)
        kf_log_info("audit_loaded", "records=%llu checkpoints=%llu unsigned_tail=%llu", (unsigned long long)sc.head_seq,
                    (unsigned long long)sc.checkpoints, (unsigned long long)tail);
    if (tail > KFD_AUDIT_TAIL_WARN)
        kf_log_warn("audit_tail_unsigned", "records=%llu action=\"signing none of them until a majority of replicas "
                    "holds the same head\"", (unsigned long long)tail);
    int r = 0;
    if (sc.n_fill > 0) {
        /* Records from before format 2 get their roots once, in one transaction. */
        r = kfd_store_step_done(s, kfd_store_stmt(s, ST_BEGIN), "migrating the audit log", err);
        for (size_t i = 0; r == 0 && i < sc.n_fill; i++) {
            sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_SET_ROOT);
            sqlite3_bind_blob(st, 1, sc.fill_root[i], KFD_HASH_LEN, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, (sqlite3_int64)sc.fill_seq[i]);
            r = kfd_store_step_done(s, st, "migrating the audit log", err);
        }
        if (r == 0)
            r = kfd_store_step_done(s, kfd_store_stmt(s, ST_COMMIT), "migrating the audit log", err);
        else
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        if (r == 0)
            kf_log_info("audit_migrated", "format=2 records_given_roots=%zu", sc.n_fill);
    }
    if (sc.bad_seq != 0) {
        char why[320];
        int n = snprintf(why, sizeof(why), "the local log fails verification at seq %llu: %s",
                         (unsigned long long)sc.bad_seq, sc.problem);
        (void)n; /* a cut reason is still a reason */
        kfd_store_set_diverged(s, sc.bad_seq, why);
    }
    scan_free(&sc);
    return r;
}

int kfd_store_verify_audit(kfd_store *s, Keyfleet__V1__VerifyAuditResponse *resp, char *problem, size_t problem_size)
{
    if (s->failed)
        return -EIO;
    scan sc;
    int rc = scan_log(kfd_store_stmt(s, ST_AUDIT_ALL), kfd_store_stmt(s, ST_AUDIT_AT), &sc);
    scan_free(&sc);
    if (rc != SQLITE_DONE)
        return rc == SQLITE_NOMEM ? -ENOMEM : kfd_store_sql_error(s, rc, "reading the audit log", NULL);
    resp->ok = sc.bad_seq == 0;
    problem[0] = '\0';
    if (!resp->ok) {
        resp->first_bad_seq = sc.bad_seq;
        snprintf(problem, problem_size, "%s", sc.problem);
    }
    /* Rows cut off the end are only visible against the head this process committed. */
    if (resp->ok && sc.n < s->head_seq) {
        resp->ok = false;
        resp->first_bad_seq = sc.n + 1;
        snprintf(problem, problem_size, "the log ends early (the last committed record is %llu)",
                 (unsigned long long)s->head_seq);
    }
    /* The chain verifies, but this replica knows it is not the majority's (review rev17c, C1): a
     * table edited under it, outvoted by its voters (diverged), or not yet settled (disputed). */
    if (resp->ok && (s->outvoted || (s->diverged_seq == 0 && s->disputed_seq != 0))) {
        resp->ok = false;
        resp->first_bad_seq = s->diverged_seq != 0 ? s->diverged_seq : s->disputed_seq;
        snprintf(problem, problem_size, "this coordinator's log or replicated state %s: %s",
                 s->diverged_seq != 0 ? "diverged from its voters'" : "is disputed",
                 s->diverged_seq != 0 ? s->diverged_why : s->disputed_why);
    }
    resp->records = sc.n;
    /* This replica's own state digest where the newest checkpoint's signed state root was taken,
     * if it noted one there (keyfleetctl audit verify compares them). */
    kf_checkpoint cp;
    uint32_t version = 0;
    if (kfd_store_newest_checkpoint(s, &cp) == 0 && cp.version >= 2 && cp.state_seq != 0 &&
        kfd_store_state_note_at(s, cp.state_seq, s->verify_state, &version) == 0) {
        resp->state_seq = cp.state_seq;
        resp->state_version = version;
        resp->state = (ProtobufCBinaryData){KFD_HASH_LEN, s->verify_state};
    }
    return 0;
}

bool kfd_store_audit_tail_unsigned(const kfd_store *s) { return s->start_head > s->cp_size; }

bool kfd_store_audit_vouched(const kfd_store *s) { return s->vouched && s->diverged_seq == 0 && s->disputed_seq == 0; }

void kfd_store_audit_unvouch(kfd_store *s)
{
    s->vouched = false;
    /* Only a checkpoint that signs the records to be confirmed vouches again (review rev46,
     * R46-1): not a state check in flight, nor one whose checkpoint was proposed before them. */
    s->vouch_floor = s->head_seq;
}

bool kfd_store_audit_witness(const kfd_store *s) { return s->diverged_seq == 0 && (!s->restored || s->vouched); }

uint64_t kfd_store_audit_diverged(const kfd_store *s, const char **ret_why)
{
    if (ret_why != NULL)
        *ret_why = s->diverged_why;
    return s->diverged_seq;
}

void kfd_store_audit_head(const kfd_store *s, kfd_audit_head *ret)
{
    ret->seq = s->head_seq;
    memcpy(ret->chain, s->head_hash, KFD_HASH_LEN);
    kf_merkle_frontier_root(&s->tree, ret->root);
    ret->checkpoint_seq = s->cp_seq;
    ret->checkpoint_size = s->cp_size;
}

static int one_record(kfd_store *s, sqlite3_stmt *st, Keyfleet__V1__AuditRecord **ret)
{
    int rc = sqlite3_step(st);
    *ret = NULL;
    if (rc == SQLITE_ROW)
        *ret = kfd_audit_row_record(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return *ret != NULL ? 0 : -ENOMEM;
    return rc == SQLITE_DONE ? -ENOENT : kfd_store_sql_error(s, rc, "reading the audit log", NULL);
}

int kfd_store_get_checkpoint(kfd_store *s, uint64_t size, Keyfleet__V1__AuditRecord **ret)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, size == 0 ? ST_CHECKPOINT_LATEST : ST_CHECKPOINT_FOR_SIZE);
    if (size != 0)
        sqlite3_bind_int64(st, 1, (sqlite3_int64)size);
    return one_record(s, st, ret);
}

int kfd_store_records_of_request(kfd_store *s, const char *request_id, uint64_t max_seq,
                                 Keyfleet__V1__AuditRecord ***ret, size_t *ret_n)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_OF_REQUEST);
    kfd_bind_text(st, 1, request_id);
    Keyfleet__V1__AuditRecord **v = NULL;
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < KFD_PROOF_RECORDS_MAX) {
        if ((uint64_t)sqlite3_column_int64(st, 0) > max_seq)
            break;
        Keyfleet__V1__AuditRecord **nv = realloc(v, (n + 1) * sizeof(*v));
        Keyfleet__V1__AuditRecord *r = nv != NULL ? kfd_audit_row_record(st) : NULL;
        if (nv != NULL)
            v = nv;
        if (r == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        v[n++] = r;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        kfd_store_free_records(v, n);
        return rc == SQLITE_NOMEM ? -ENOMEM : kfd_store_sql_error(s, rc, "reading the audit log", NULL);
    }
    *ret = v;
    *ret_n = n;
    return 0;
}

int kfd_store_records_after(kfd_store *s, uint64_t after, size_t max, Keyfleet__V1__AuditRecord ***ret, size_t *ret_n)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_AFTER);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)after);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)max);
    Keyfleet__V1__AuditRecord **v = calloc(max > 0 ? max : 1, sizeof(*v));
    size_t n = 0;
    int rc = v == NULL ? SQLITE_NOMEM : SQLITE_DONE;
    while (v != NULL && n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((v[n] = kfd_audit_row_record(st)) == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        n++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        kfd_store_free_records(v, n);
        return rc == SQLITE_NOMEM ? -ENOMEM : kfd_store_sql_error(s, rc, "reading the audit log", NULL);
    }
    *ret = v;
    *ret_n = n;
    return 0;
}

int kfd_store_each_checkpoint(kfd_store *s, int (*fn)(void *arg, const Keyfleet__V1__AuditRecord *r), void *arg)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_CHECKPOINT_ALL);
    int rc, r = 0;
    while (r == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        Keyfleet__V1__AuditRecord *rec = kfd_audit_row_record(st);
        r = rec != NULL ? fn(arg, rec) : -ENOMEM;
        kfd_audit_free_record(rec);
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = kfd_store_sql_error(s, rc, "reading the audit log", NULL);
    sqlite3_reset(st);
    return r;
}

void kfd_store_free_records(Keyfleet__V1__AuditRecord **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        kfd_audit_free_record(v[i]);
    free(v);
}

int kfd_store_audit_leaves(kfd_store *s, uint64_t size, kf_merkle_hash **ret)
{
    if (s->failed)
        return -EIO;
    if (size == 0 || size > s->head_seq)
        return -EINVAL;
    kf_merkle_hash *leaves = malloc(size * sizeof(*leaves));
    if (leaves == NULL)
        return -ENOMEM;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_ALL);
    uint8_t canon[CANON_MAX];
    uint64_t n = 0;
    int rc;
    while (n < size && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        Keyfleet__V1__AuditRecord *r = kfd_audit_row_record(st);
        if (r == NULL || r->seq != n + 1) {
            kfd_audit_free_record(r);
            break;
        }
        size_t len = kf_audit_canonical(r, canon, sizeof(canon));
        kf_merkle_leaf_hash(canon, len <= sizeof(canon) ? len : 0, leaves[n++]);
        kfd_audit_free_record(r);
    }
    sqlite3_reset(st);
    if (n != size) {
        free(leaves);
        return -EIO;
    }
    *ret = leaves;
    return 0;
}

static int image_without_code(sqlite3 *db, kf_err *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT type, name FROM sqlite_schema WHERE type NOT IN ('table', 'index') LIMIT 1", -1,
                           &st, NULL) != SQLITE_OK)
        return kf_err_set(err, -EINVAL, "snapshot image unreadable: %s", sqlite3_errmsg(db));
    int rc = sqlite3_step(st), r = 0;
    if (rc == SQLITE_ROW) {
        const char *type = (const char *)sqlite3_column_text(st, 0), *name = (const char *)sqlite3_column_text(st, 1);
        r = kf_err_set(err, -EPERM, "snapshot image holds a %.16s (%.64s), which keyfleet's schema never has",
                       type != NULL ? type : "?", name != NULL ? name : "?");
    } else if (rc != SQLITE_DONE) {
        r = kf_err_set(err, -EINVAL, "snapshot image unreadable: %s", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    return r;
}

static int image_schema(sqlite3 *db, kf_err *err)
{
    char problem[224];
    int version = 0, r = kfd_store_schema_version(db, &version);
    if (r != 0)
        return kf_err_set(err, -EINVAL, "snapshot image unreadable: %s", sqlite3_errmsg(db));
    if (version < 0 || (uint32_t)version > kfd_store_state_version())
        return kf_err_set(err, -EPERM, "snapshot image has schema %d, newer than this keyfleetd's (%u)", version,
                          kfd_store_state_version());
    /* An image from a leader of an older keyfleetd is migrated when installed; it must be what
     * the migrations make at its own version. */
    if ((r = kfd_store_schema_check(db, version, problem, sizeof(problem))) == 0)
        r = kfd_store_integrity_check(db, problem, sizeof(problem));
    if (r != 0)
        return kf_err_set(err, r == -EPERM ? -EPERM : -EINVAL, "snapshot image refused: %s", problem);
    return 0;
}

/* Each checkpoint record of an image (all: KFD_AUDIT_COLS in seq order), through the store's
 * checkpoint verifier (signature and chain, not by the clock), as the start of a replica would. */
static int image_signatures(kfd_store *s, sqlite3_stmt *all, kf_err *err)
{
    int rc, r = 0;
    sqlite3_reset(all);
    while (r == 0 && s->cp_verify != NULL && (rc = sqlite3_step(all)) == SQLITE_ROW) {
        const unsigned char *action = sqlite3_column_text(all, 3);
        if (action == NULL || strcmp((const char *)action, KF_AUDIT_CHECKPOINT_ACTION) != 0)
            continue;
        Keyfleet__V1__AuditRecord *rec = kfd_audit_row_record(all);
        if (rec == NULL) {
            r = kf_err_set(err, -ENOMEM, "out of memory");
            break;
        }
        Keyfleet__V1__CmdCheckpoint c = KEYFLEET__V1__CMD_CHECKPOINT__INIT;
        c.text = rec->reason;
        c.signature = rec->signature;
        c.cert = rec->signer_cert;
        kf_err verr = {0};
        if (s->cp_verify(s->cp_verify_arg, &c, &verr) != 0)
            r = kf_err_set(err, -EPERM, "snapshot's checkpoint record %llu: %s", (unsigned long long)rec->seq, verr.msg);
        kfd_audit_free_record(rec);
    }
    sqlite3_reset(all);
    return r;
}

int kfd_store_check_image(kfd_store *s, const unsigned char *image, size_t len, kfd_image_check *ret, kf_err *err)
{
    memset(ret, 0, sizeof(*ret));
    sqlite3 *db = NULL;
    sqlite3_stmt *all = NULL, *at = NULL, *cp = NULL;
    int r = 0;
    /* An in-memory database cannot be in WAL mode: a copy with the header's read and write
     * versions (bytes 18 and 19) set back to 1, the rollback journal, is read instead. */
    unsigned char *copy = len >= 100 ? sqlite3_malloc64(len) : NULL;
    if (copy != NULL) {
        memcpy(copy, image, len);
        copy[18] = copy[19] = 1;
    }
    if (copy != NULL && sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        sqlite3_free(copy);
        copy = NULL;
    }
    if (db != NULL) {
        /* Untrusted bytes (sqlite's "Defense against dark arts"): no writes to the schema, no
         * functions with side effects from it. */
        sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
        sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL);
    }
    if (copy == NULL || sqlite3_deserialize(db, "main", copy, (sqlite3_int64)len, (sqlite3_int64)len,
                            SQLITE_DESERIALIZE_READONLY | SQLITE_DESERIALIZE_FREEONCLOSE) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT " KFD_AUDIT_COLS " ORDER BY a.seq", -1, &all, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT root, hash FROM audit WHERE seq = ?", -1, &at, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT " KFD_AUDIT_COLS " WHERE a.seq = (SELECT max(seq) FROM audit_checkpoints)",
                           -1, &cp, NULL) != SQLITE_OK) {
        r = kf_err_set(err, -EINVAL, "snapshot image unreadable: %s", db != NULL ? sqlite3_errmsg(db) : "no memory");
        goto out;
    }
    /* The image becomes this replica's database: code in it (a trigger would run at every later
     * apply, a view would stand in for a table) is refused, as keyfleet's schema has none. */
    if ((r = image_without_code(db, err)) != 0)
        goto out;
    /* And nothing else keyfleet's migrations do not make, no index that disagrees with its table
     * (review rev17c, C4): the state digest scans tables, decisions read through indexes and by
     * column name, so such an image could digest like an honest database and decide otherwise. */
    if ((r = image_schema(db, err)) != 0)
        goto out;
    scan sc;
    int rc = scan_log(all, at, &sc);
    scan_free(&sc);
    if (rc != SQLITE_DONE) {
        r = kf_err_set(err, -EINVAL, "snapshot image unreadable: %s", sqlite3_errmsg(db));
        goto out;
    }
    if (sc.bad_seq != 0) {
        r = kf_err_set(err, -EPERM, "snapshot's audit log fails verification at seq %llu: %s",
                       (unsigned long long)sc.bad_seq, sc.problem);
        goto out;
    }
    if (sc.head_seq < s->head_seq) {
        r = kf_err_set(err, -EPERM, "snapshot holds %llu audit records, fewer than this replica's %llu",
                       (unsigned long long)sc.head_seq, (unsigned long long)s->head_seq);
        goto out;
    }
    /* It must extend this replica's own log, not replace it. */
    if (s->head_seq > 0) {
        kf_merkle_hash mine;
        kf_merkle_frontier_root(&s->tree, mine);
        sqlite3_bind_int64(at, 1, (sqlite3_int64)s->head_seq);
        bool same = sqlite3_step(at) == SQLITE_ROW && sqlite3_column_bytes(at, 0) == KFD_HASH_LEN &&
                    CRYPTO_memcmp(sqlite3_column_blob(at, 0), mine, KFD_HASH_LEN) == 0 &&
                    sqlite3_column_bytes(at, 1) == KFD_HASH_LEN &&
                    CRYPTO_memcmp(sqlite3_column_blob(at, 1), s->head_hash, KFD_HASH_LEN) == 0;
        sqlite3_reset(at);
        if (!same) {
            r = kf_err_set(err, -EPERM, "snapshot's audit log does not extend this replica's (they differ by seq %llu)",
                           (unsigned long long)s->head_seq);
            goto out;
        }
    }
    /* Every checkpoint's signature, not only the newest one's (review rev17c, C2): this replica
     * verifies each of them at its next start (R6), so an image whose older checkpoint blobs were
     * replaced would be installed now and make it diverge then. */
    if ((r = image_signatures(s, all, err)) != 0)
        goto out;
    ret->records = sc.head_seq;
    ret->checkpoints = sc.checkpoints;
    if (sqlite3_step(cp) == SQLITE_ROW)
        ret->newest = kfd_audit_row_record(cp);
out:
    sqlite3_finalize(all);
    sqlite3_finalize(at);
    sqlite3_finalize(cp);
    sqlite3_close(db);
    return r;
}
