/* Recovery keys (docs/recovery.md). The escrow and the reveal are checked here, at apply, on every
 * replica: a revocation, a reveal or a spent approval committed while a handler waited on the KMS
 * still stops what it would have let through. */
#include "store/store_recovery.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_apply.h"
#include "store/store_audit.h"
#include "store/store_guard.h"
#include "store/store_judged.h"
#include "store/store_internal.h"
#include "store/store_read.h"

static int64_t audit_time(const Keyfleet__V1__AuditEntry *a)
{
    return a != NULL && a->time != NULL ? a->time->seconds : 0;
}

void kfd_recovery_clear(kfd_recovery *r)
{
    free(r->wrapped);
    free(r->next_wrapped);
    memset(r, 0, sizeof(*r));
}

const char *kfd_recovery_replay_refusal(const kfd_recovery *cur, const char *request_id, int64_t at)
{
    bool next = cur->next_request_id[0] != '\0' && strcmp(cur->next_request_id, request_id) == 0;
    int64_t made = next ? cur->next_at : cur->created_at;
    /* An escrow or a promotion clears the mark, so a mark is on this key: no comparison of two
     * leaders' clocks (review rev26c L1). */
    if ((next ? cur->next_revealed_at : cur->revealed_at) != 0)
        return "this recovery key was revealed";
    if (at < made || at - made > KFD_RECOVERY_REPLAY_WINDOW_S)
        return "it is handed back only within 5 minutes of its escrow";
    return NULL;
}

int kfd_store_get_recovery(kfd_store *s, const char *volume_id, kfd_recovery *ret)
{
    memset(ret, 0, sizeof(*ret));
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_RECOVERY_GET);
    kfd_bind_text(st, 1, volume_id);
    int r = kfd_store_step_row(s, st, "reading a recovery key");
    if (r != 0)
        return r;
    kfd_store_copy_col(st, 0, ret->node, sizeof(ret->node));
    const unsigned char *w = sqlite3_column_text(st, 1);
    ret->wrapped = strdup(w != NULL ? (const char *)w : "");
    kfd_store_copy_col(st, 2, ret->kcv, sizeof(ret->kcv));
    kfd_store_copy_col(st, 3, ret->request_id, sizeof(ret->request_id));
    ret->created_at = sqlite3_column_int64(st, 4);
    ret->revealed_at = sqlite3_column_int64(st, 5);
    kfd_store_copy_col(st, 6, ret->revealed_by, sizeof(ret->revealed_by));
    kfd_store_copy_col(st, 7, ret->next_request_id, sizeof(ret->next_request_id));
    const unsigned char *nw = sqlite3_column_text(st, 8);
    ret->next_wrapped = strdup(nw != NULL ? (const char *)nw : "");
    kfd_store_copy_col(st, 9, ret->next_kcv, sizeof(ret->next_kcv));
    ret->next_at = sqlite3_column_int64(st, 10);
    kfd_store_copy_col(st, 11, ret->revealed_kcv, sizeof(ret->revealed_kcv));
    ret->next_revealed_at = sqlite3_column_int64(st, 12);
    sqlite3_reset(st);
    if (ret->wrapped == NULL || ret->next_wrapped == NULL) {
        kfd_recovery_clear(ret);
        return -ENOMEM;
    }
    return 0;
}

int kfd_store_pending_proposer(kfd_store *s, const char *request_id, char *ret, size_t size)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_PROPOSER);
    kfd_bind_text(st, 1, request_id);
    int r = kfd_store_step_row(s, st, "reading a request's proposer");
    if (r != 0)
        return r;
    kfd_store_copy_col(st, 0, ret, size);
    sqlite3_reset(st);
    return 0;
}

int kfd_store_recovery_to_replace(kfd_store *s, const char *node, char **ids, size_t max, size_t *ret_n)
{
    *ret_n = 0;
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_RECOVERY_TO_REPLACE);
    kfd_bind_text(st, 1, node);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && *ret_n < max) {
        const unsigned char *id = sqlite3_column_text(st, 0);
        if ((ids[*ret_n] = strdup(id != NULL ? (const char *)id : "")) == NULL) {
            sqlite3_reset(st);
            return -ENOMEM;
        }
        (*ret_n)++;
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : kfd_store_sql_error(s, rc, "listing recovery keys", NULL);
}

int kfd_store_set_proposer(kfd_store *s, const char *request_id, const char *proposer, kf_err *err)
{
    sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_SET_PROPOSER);
    kfd_bind_text(st, 1, proposer);
    kfd_bind_text(st, 2, request_id);
    return kfd_store_step_done(s, st, "recording the proposer", err);
}

/* Only the node that enrolled the volume, not revoked, escrows its recovery key; a repeated
 * request id (an agent retrying) changes nothing. */
int kfd_store_apply_recovery_escrow(kfd_store *s, const Keyfleet__V1__CmdRecoveryEscrow *c, uint64_t *seq,
                                    kf_err *err)
{
    if (c->audit == NULL || c->volume_id[0] == '\0' || c->request_id[0] == '\0')
        return kf_err_set(err, -EINVAL, "recovery escrow command incomplete");
    int r = kfd_store_check_not_revoked(s, c->node, err);
    if (r != 0)
        return r;
    kfd_volume v;
    if ((r = kfd_store_get_volume(s, c->volume_id, &v)) != 0)
        return r == -ENOENT ? kf_err_set(err, -ESTALE, "volume %s is not enrolled", c->volume_id)
                            : kf_err_set(err, r, "reading the volume");
    /* A repeated escrow returns the live recovery key on the handler's policy and the volume's
     * labels as its rules saw them (reviews rev44 J6, rev45b R45b-3). */
    ProtobufCBinaryData none = {0, NULL};
    r = kfd_store_check_judged(s, c->node, &v, 0,
                               &(kfd_judged_in){&c->judged_policy, &c->judged_volume, &none, &none, &none, NULL, NULL,
                                                audit_time(c->audit), NULL},
                               err);
    if (r != 0) {
        kfd_volume_clear(&v);
        return r;
    }
    bool owner = strcmp(v.node, c->node) == 0, retired = v.retired_at != 0, two_part = v.tpm_and_network;
    /* ZFS or LUKS2 decides what is escrowed and what is replaced: this replica's row, not the
     * handler's (review rev45c R45c-5: a volume kind edited on the leader). */
    bool zfs_row = v.kind == KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS;
    int64_t key_made = v.key_created_at;
    char key_kcv[sizeof(v.key_kcv)];
    snprintf(key_kcv, sizeof(key_kcv), "%s", v.key_kcv);
    kfd_volume_clear(&v);
    if (zfs_row != c->zfs)
        return kf_err_set(err, -EAGAIN, "the volume kind this escrow was decided on (%s) is not this coordinator's "
                          "(changed since, or a database edited); retry", c->zfs ? "ZFS" : "LUKS2");
    if (!owner)
        return kf_err_set(err, -EACCES, "volume %s was enrolled by another node", c->volume_id);
    if (retired)
        return kf_err_set(err, -EACCES, "volume %s is retired", c->volume_id);
    if (two_part) /* review rev26b F1: checked again at apply, whatever the handler's rule said */
        return kf_err_set(err, -EACCES, "volume %s was enrolled with TPM and network both required: it gets no "
                          "recovery key", c->volume_id);
    kfd_recovery cur;
    r = kfd_store_get_recovery(s, c->volume_id, &cur);
    if (r != 0 && r != -ENOENT)
        return kf_err_set(err, r, "reading the recovery key");
    bool next = r == 0 && cur.next_request_id[0] != '\0' && strcmp(cur.next_request_id, c->request_id) == 0;
    bool replay = r == 0 && (strcmp(cur.request_id, c->request_id) == 0 || next);
    /* A repeated LUKS2 escrow hands the live key back: only before anyone was shown it and within
     * the window after its escrow, judged again here from this replica's row (review rev45b
     * R45b-3; the handler's recovery_replay_refusal). */
    const char *replay_why = replay && !c->zfs ? kfd_recovery_replay_refusal(&cur, c->request_id, audit_time(c->audit))
                                               : NULL;
    if (replay_why != NULL) {
        kfd_recovery_clear(&cur);
        return kf_err_set(err, -EACCES, "a repeated request does not return volume %s's recovery key: %s",
                          c->volume_id, replay_why);
    }
    /* The key the handler handed back, by its check value, against this replica's row (review
     * rev46, R46-2): a repeat must name the key escrowed under its request id here, and a new
     * escrow is a fresh key, never one escrowed here; else a leader's edited row handed a key back
     * (a revealed one staged under a request id only it knew) that this replica would stage anew. */
    const char *kcv_why = NULL;
    /* Empty: an older coordinator's command, not compared (review rev46c R46c-3). */
    const char *row_says = next ? "next" : replay ? "escrowed" : "new";
    if (!c->zfs && c->replay_of != NULL && c->replay_of[0] != '\0' && strcmp(c->replay_of, row_says) != 0)
        kcv_why = "the request was decided as another repeat or escrow than this coordinator's row makes it";
    else if (r == 0 && !c->zfs && c->kcv != NULL && c->kcv[0] != '\0') {
        if (replay && strcmp(next ? cur.next_kcv : cur.kcv, c->kcv) != 0)
            kcv_why = "the key a repeated request was answered with is not the one escrowed here under its request id";
        else if (!replay && (strcmp(cur.kcv, c->kcv) == 0 || strcmp(cur.next_kcv, c->kcv) == 0))
            kcv_why = "a key escrowed here was handed out as a new recovery key";
    }
    if (kcv_why != NULL) {
        kfd_recovery_clear(&cur);
        return kf_err_set(err, -EAGAIN, "volume %s: %s (a coordinator's database edited?)", c->volume_id, kcv_why);
    }
    /* ZFS: the revealed key is the dataset's own; it is retired only by a rotation after the reveal:
     * the dataset's key is another than the one the reveal showed (by check value: a rotation
     * committed in the reveal's second is not after it, review rev26c L2; by time only for a
     * reveal recorded before store migration 18). */
    bool unrotated = r == 0 && !replay && c->zfs && cur.revealed_at != 0 &&
                     (cur.revealed_kcv[0] != '\0' ? strcmp(key_kcv, cur.revealed_kcv) == 0 : key_made < cur.revealed_at);
    /* LUKS2: the escrowed key opens the volume until the node kills its keyslot, so a new key
     * waits apart, and the escrowed one stays revealable (and marked, if it was), until the node
     * confirms; revealed or not: a cut-off or forged escrow must not replace the only key a
     * keyslot has (review rev26c R1). */
    bool pending = r == 0 && !replay && !c->zfs;
    kfd_recovery_clear(&cur);
    if (unrotated)
        return kf_err_set(err, -ESTALE, "the dataset's key was revealed as its recovery key: rotate it first");
    if (pending) {
        sqlite3_stmt *st = kfd_store_stmt(s, ST_RECOVERY_NEXT);
        kfd_bind_text(st, 1, c->wrapped);
        kfd_bind_text(st, 2, c->kcv);
        kfd_bind_text(st, 3, c->request_id);
        sqlite3_bind_int64(st, 4, audit_time(c->audit));
        kfd_bind_text(st, 5, c->volume_id);
        if ((r = kfd_store_step_done(s, st, "escrowing the replacement recovery key", err)) != 0)
            return r;
    } else if (!replay) {
        sqlite3_stmt *st = kfd_store_stmt(s, ST_RECOVERY_PUT);
        kfd_bind_text(st, 1, c->volume_id);
        kfd_bind_text(st, 2, c->node);
        kfd_bind_text(st, 3, c->wrapped);
        kfd_bind_text(st, 4, c->kcv);
        kfd_bind_text(st, 5, c->request_id);
        sqlite3_bind_int64(st, 6, audit_time(c->audit));
        if ((r = kfd_store_step_done(s, st, "escrowing the recovery key", err)) != 0)
            return r;
    }
    return kfd_store_append_audit(s, c->audit, seq, err);
}

/* The reveal spends an approved request of rule "recovery" for this volume, proposed by this
 * operator, before it expires; then the escrow is marked revealed, for the node to replace. */
int kfd_store_apply_recovery_reveal(kfd_store *s, const Keyfleet__V1__CmdRecoveryReveal *c, uint64_t *seq,
                                    kf_err *err)
{
    if (c->audit == NULL || c->operator_[0] == '\0' || c->request_id[0] == '\0')
        return kf_err_set(err, -EINVAL, "recovery reveal command incomplete");
    if (c->audit->decision != KEYFLEET__V1__DECISION__DECISION_ALLOW)
        return kfd_store_append_audit(s, c->audit, seq, err);
    kfd_pending p;
    int r = kfd_store_get_pending(s, c->request_id, &p);
    if (r != 0)
        return r == -ENOENT ? kf_err_set(err, -ESTALE, "no request %s", c->request_id)
                            : kf_err_set(err, r, "reading the request");
    char proposer[64] = "";
    if ((r = kfd_store_pending_proposer(s, c->request_id, proposer, sizeof(proposer))) != 0)
        return kf_err_set(err, -EIO, "reading the request's proposer");
    if (strcmp(p.rule, "recovery") != 0 || strcmp(p.volume_id, c->volume_id) != 0)
        return kf_err_set(err, -EACCES, "request %s is not a recovery key reveal of volume %s", c->request_id,
                          c->volume_id);
    if (strcmp(proposer, c->operator_) != 0)
        return kf_err_set(err, -EACCES, "request %s was proposed by another operator", c->request_id);
    if (p.state == KFD_PENDING_CONSUMED)
        return kf_err_set(err, -ESTALE, "request %s was already used to reveal the key", c->request_id);
    if (p.state != KFD_PENDING_APPROVED)
        return kf_err_set(err, -EACCES, "request %s is not approved (%u of %u operators)", c->request_id,
                          p.approvals_have, p.approvals_needed);
    if (audit_time(c->audit) >= p.expires_at)
        return kf_err_set(err, -ESTALE, "request %s has expired", c->request_id);
    kfd_recovery cur;
    if ((r = kfd_store_get_recovery(s, c->volume_id, &cur)) != 0)
        return r == -ENOENT ? kf_err_set(err, -ESTALE, "volume %s has no recovery key", c->volume_id)
                            : kf_err_set(err, r, "reading the recovery key");
    /* The row marked revealed must be the one the operator was shown (review rev26b F4); a
     * command with no binding is from before it was made. */
    bool bound = c->escrow_request_id[0] != '\0';
    bool moved = bound && (strcmp(cur.request_id, c->escrow_request_id) != 0 || strcmp(cur.kcv, c->escrow_kcv) != 0 ||
                           strcmp(cur.next_request_id, c->escrow_next_request_id) != 0);
    kfd_recovery_clear(&cur);
    if (moved)
        return kf_err_set(err, -ESTALE, "the recovery key of volume %s was escrowed again while it was being revealed: "
                          "fetch again", c->volume_id);
    if (bound && p.require_totp && c->totp_step == 0)
        return kf_err_set(err, -EACCES, "request %s needs a TOTP code to fetch the key", c->request_id);
    /* A retired volume's keys are refused for ever, its recovery key with them. */
    kfd_volume v;
    if ((r = kfd_store_get_volume(s, c->volume_id, &v)) != 0)
        return kf_err_set(err, r == -ENOENT ? -ESTALE : r, "reading the volume");
    bool retired = v.retired_at != 0, two_part = v.tpm_and_network;
    bool rotated = bound && c->volume_key_kcv[0] != '\0' && strcmp(v.key_kcv, c->volume_key_kcv) != 0;
    kfd_volume_clear(&v);
    if (retired)
        return kf_err_set(err, -EACCES, "volume %s is retired", c->volume_id);
    if (two_part)
        return kf_err_set(err, -EACCES, "volume %s was enrolled with TPM and network both required", c->volume_id);
    if (rotated)
        return kf_err_set(err, -ESTALE, "the key of volume %s was rotated while it was being revealed: fetch again",
                          c->volume_id);
    if ((r = kfd_store_spend_totp(s, c->operator_, c->totp_step, err)) != 0)
        return r;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_SET_STATE);
    sqlite3_bind_int(st, 1, (int)KFD_PENDING_CONSUMED);
    kfd_bind_text(st, 2, c->request_id);
    if ((r = kfd_store_step_done(s, st, "spending the request", err)) != 0)
        return r;
    st = kfd_store_stmt(s, ST_RECOVERY_REVEALED);
    sqlite3_bind_int64(st, 1, audit_time(c->audit));
    kfd_bind_text(st, 2, c->operator_);
    kfd_bind_text(st, 3, c->volume_id);
    /* The staged replacement shown too (review rev26c R2): its promotion keeps the mark. */
    kfd_bind_text(st, 4, c->escrow_next_request_id);
    /* ZFS: the dataset key shown, checked above to be the volume's now (review rev26c L2). */
    kfd_bind_text(st, 5, c->volume_key_kcv);
    if ((r = kfd_store_step_done(s, st, "recording the reveal", err)) != 0)
        return r;
    return kfd_store_append_audit(s, c->audit, seq, err);
}

int kfd_store_apply_recovery_confirm(kfd_store *s, const Keyfleet__V1__CmdRecoveryConfirm *c, uint64_t *seq,
                                     kf_err *err)
{
    if (c->audit == NULL || c->volume_id[0] == '\0' || c->node[0] == '\0' || c->request_id[0] == '\0')
        return kf_err_set(err, -EINVAL, "recovery confirmation incomplete");
    int r = kfd_store_check_not_revoked(s, c->node, err);
    if (r != 0)
        return r;
    kfd_recovery cur;
    if ((r = kfd_store_get_recovery(s, c->volume_id, &cur)) != 0)
        return r == -ENOENT ? kf_err_set(err, -ESTALE, "volume %s has no recovery key", c->volume_id)
                            : kf_err_set(err, r, "reading the recovery key");
    bool owner = strcmp(cur.node, c->node) == 0;
    bool next = cur.next_request_id[0] != '\0' && strcmp(cur.next_request_id, c->request_id) == 0;
    bool done = strcmp(cur.request_id, c->request_id) == 0 && cur.revealed_at == 0; /* a repeated confirmation */
    kfd_recovery_clear(&cur);
    if (!owner)
        return kf_err_set(err, -EACCES, "volume %s: only the node that enrolled it confirms its recovery key",
                          c->volume_id);
    if (!next && !done)
        return kf_err_set(err, -ESTALE, "request %s is not the recovery key awaiting confirmation for volume %s",
                          c->request_id, c->volume_id);
    if (next) {
        sqlite3_stmt *st = kfd_store_stmt(s, ST_RECOVERY_PROMOTE);
        kfd_bind_text(st, 1, c->volume_id);
        if ((r = kfd_store_step_done(s, st, "recording the replacement", err)) != 0)
            return r;
    }
    return kfd_store_append_audit(s, c->audit, seq, err);
}

int kfd_store_recovery_drop(kfd_store *s, const char *volume_id, kf_err *err)
{
    sqlite3_stmt *st = kfd_store_stmt(s, ST_RECOVERY_DELETE);
    kfd_bind_text(st, 1, volume_id);
    return kfd_store_step_done(s, st, "dropping the escrowed recovery key", err);
}
