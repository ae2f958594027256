/* The checks applied with the commands that release keys or change who may: revocation and
 * approval state at release time, operator changes held for approval, TOTP lockouts and the
 * certificate denylist.
 *
 * They run inside the apply, so every replica decides alike from the command and the state, and
 * a change committed while a handler waited on the KMS (a revocation, a spent approval) still
 * stops the release it would have let through. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"
#include "store/store_apply.h"
#include "store/store_audit.h"
#include "store/store_guard.h"
#include "store/store_judged.h"
#include "store/store_read.h"

static int64_t audit_time(const Keyfleet__V1__AuditEntry *a)
{
    return a != NULL && a->time != NULL ? a->time->seconds : 0;
}

int kfd_store_command_allowed(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, kf_err *err)
{
    int r = kfd_store_check_policy(s, &cmd->judged_policy, 0, err);
    const char *serial = cmd->auth_cert_serial;
    if (r != 0 || serial == NULL || serial[0] == '\0')
        return r;
    bool revoked = false;
    if ((r = kfd_store_cert_revoked(s, serial, &revoked)) != 0)
        return kf_err_set(err, r, "reading the certificate denylist");
    return revoked ? kf_err_set(err, -EACCES, "the caller's certificate (serial %.64s) is on this coordinator's denylist",
                                serial)
                   : 0;
}

int kfd_store_check_not_revoked(kfd_store *s, const char *node, kf_err *err)
{
    bool revoked = false;
    int r = kfd_store_node_revoked(s, node, &revoked);
    if (r != 0)
        return kf_err_set(err, r, "reading the node's revocation");
    if (revoked)
        return kf_err_set(err, -EACCES, "node %s is revoked", node);
    /* Held for its TPM state (review rev17 A1): checked again here, so a request judged before
     * the hold was applied gets nothing either. (A drift hold depends on the policy's rules,
     * judged at the request.) */
    kfd_attest_record rec;
    r = kfd_store_get_attest(s, node, &rec);
    if (r != 0 && r != -ENOENT)
        return kf_err_set(err, r, "reading the node's measured-boot record");
    if (r == 0 && rec.held[0] != '\0' && strcmp(rec.held_kind, "drift") != 0)
        return kf_err_set(err, -EACCES, "node %s is held: %.200s", node, rec.held);
    return 0;
}

/* A retired volume's key goes to nobody (volume retire), even one released while it was retired.
 * vr is how reading the volume went (0, -ENOENT or an error), v the row when 0. */
static int volume_not_retired(const kfd_volume *v, int vr, const char *volume_id, kf_err *err)
{
    if (vr == -ENOENT)
        return 0; /* the checks below name a volume that is not enrolled */
    if (vr != 0)
        return kf_err_set(err, vr, "reading the volume");
    return v->retired_at != 0 ? kf_err_set(err, -EACCES, "volume %s is retired", volume_id) : 0;
}

static int set_state(kfd_store *s, const char *id, kfd_pending_state to, kf_err *err)
{
    sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_SET_STATE);
    sqlite3_bind_int(st, 1, (int)to);
    kfd_bind_text(st, 2, id);
    return kfd_store_step_done(s, st, "updating the pending request", err);
}

/* A repeated Enroll returns the enrolled key only to its node, before any release, and within
 * the window: decided again here, where two replays racing each other are ordered. */
static int enroll_replay_allowed(const kfd_volume *v, int vr, const Keyfleet__V1__CmdRecordRelease *c, kf_err *err)
{
    if (vr != 0)
        return vr == -ENOENT ? kf_err_set(err, -ESTALE, "volume %s is not enrolled", c->volume_id)
                             : kf_err_set(err, vr, "reading the volume");
    int64_t at = audit_time(c->audit);
    if (strcmp(v->node, c->node) != 0)
        return kf_err_set(err, -EACCES, "volume %s was enrolled by another node", c->volume_id);
    if (v->last_released_at != 0 || at < v->created_at || at - v->created_at > c->enroll_replay_window_s)
        return kf_err_set(err, -ESTALE, "volume is already enrolled and can no longer be enrolled again; its key is "
                                        "released with Release");
    return 0;
}

/* The released key must be the volume's key or its rotation in progress: a key retired by a
 * rotation committed while the handler waited on the KMS is refused here. A row from before
 * rotation existed (no key_kcv) has only ever had one key, so its first release records it. */
static int release_key_current(kfd_store *s, const kfd_volume *v, int vr, const Keyfleet__V1__CmdRecordRelease *c,
                               kf_err *err)
{
    if (c->kcv[0] == '\0')
        return 0; /* a command written before rotation existed (a log replayed) */
    if (vr != 0)
        return vr == -ENOENT ? kf_err_set(err, -ESTALE, "volume %s is not enrolled", c->volume_id)
                             : kf_err_set(err, vr, "reading the volume");
    if (v->key_kcv[0] == '\0' && v->next_kcv[0] == '\0') {
        sqlite3_stmt *st = kfd_store_stmt(s, ST_VOLUME_SET_KCV);
        kfd_bind_text(st, 1, c->kcv);
        kfd_bind_text(st, 2, c->volume_id);
        return kfd_store_step_done(s, st, "recording the key check value", err);
    }
    if (v->key_kcv[0] == '\0' || (strcmp(c->kcv, v->key_kcv) != 0 && strcmp(c->kcv, v->next_kcv) != 0))
        return kf_err_set(err, -ESTALE, "this key was retired by a rotation");
    return 0;
}

/* The volume's checks, on one read of its row (the key check value release_key_current records
 * is not a field the others read). */
static int release_volume_allowed(kfd_store *s, const Keyfleet__V1__CmdRecordRelease *c, kf_err *err)
{
    kfd_volume v;
    int vr = kfd_store_get_volume(s, c->volume_id, &v);
    int r = volume_not_retired(&v, vr, c->volume_id, err);
    /* Before anything is written (the key check value below): a mismatch is recorded as a
     * denial, not rolled back (store_judged.h). */
    if (r == 0)
        r = kfd_store_check_judged(s, c->node, &v, vr,
                                   &(kfd_judged_in){&c->judged_policy, &c->judged_volume, &c->judged_pcrs,
                                                    &c->judged_tpm, &c->judged_auth, c->auth_cert_serial,
                                                    c->auth_token_id, audit_time(c->audit), c->attest_clock},
                                   err);
    if (r == 0)
        r = release_key_current(s, &v, vr, c, err);
    if (r == 0 && c->enroll_replay_window_s != 0)
        r = enroll_replay_allowed(&v, vr, c, err);
    if (vr == 0)
        kfd_volume_clear(&v);
    return r;
}

int kfd_store_release_allowed(kfd_store *s, const Keyfleet__V1__CmdRecordRelease *c, kf_err *err)
{
    if (c->audit == NULL || c->audit->decision != KEYFLEET__V1__DECISION__DECISION_ALLOW)
        return 0; /* a refusal is recorded whatever the state */
    int r = kfd_store_check_not_revoked(s, c->node, err);
    if (r == 0)
        r = release_volume_allowed(s, c, err);
    if (r != 0 || !c->approved_request)
        return r;
    kfd_pending p;
    if ((r = kfd_store_get_pending(s, c->request_id, &p)) != 0)
        return r == -ENOENT ? kf_err_set(err, -ESTALE, "no approved request %s", c->request_id)
                            : kf_err_set(err, r, "reading the approved request");
    /* A held reveal names the volume's node too, but its approvals are an operator's, not a release's. */
    if (p.has_change || strcmp(p.rule, "recovery") == 0 || strcmp(p.node, c->node) != 0 ||
        strcmp(p.volume_id, c->volume_id) != 0)
        return kf_err_set(err, -EACCES, "request %s belongs to another node or volume", c->request_id);
    if (p.state == KFD_PENDING_CONSUMED)
        return kf_err_set(err, -ESTALE, "approved request %s was already used by a release", c->request_id);
    if (p.state != KFD_PENDING_APPROVED)
        return kf_err_set(err, -ESTALE, "request %s is not approved", c->request_id);
    if (audit_time(c->audit) >= p.expires_at)
        return kf_err_set(err, -ESTALE, "approved request %s has expired", c->request_id);
    return set_state(s, c->request_id, KFD_PENDING_CONSUMED, err);
}

int kfd_store_apply_rotate(kfd_store *s, const Keyfleet__V1__CmdRotateKey *c, uint64_t *seq, kf_err *err)
{
    if (c->audit == NULL || strlen(c->kcv) != 22 || (!c->commit && c->next_wrapped_key[0] == '\0'))
        return kf_err_set(err, -EINVAL, "rotate command incomplete");
    int r = kfd_store_check_not_revoked(s, c->node, err);
    if (r != 0)
        return r;
    kfd_volume v;
    if ((r = kfd_store_get_volume(s, c->volume_id, &v)) != 0)
        return r == -ENOENT ? kf_err_set(err, -ESTALE, "volume %s is not enrolled", c->volume_id)
                            : kf_err_set(err, r, "reading the volume");
    if ((r = volume_not_retired(&v, 0, c->volume_id, err)) != 0) {
        kfd_volume_clear(&v);
        return r;
    }
    sqlite3_stmt *st = NULL;
    if (strcmp(v.node, c->node) != 0) {
        r = kf_err_set(err, -EACCES, "volume %s was enrolled by another node", c->volume_id);
    } else if ((r = kfd_store_check_judged(s, c->node, &v, 0,
                                           &(kfd_judged_in){&c->judged_policy, &c->judged_volume, &c->judged_pcrs,
                                                            &c->judged_tpm, &c->judged_auth, c->auth_cert_serial,
                                                            c->auth_token_id, audit_time(c->audit),
                                                            c->attest_clock /* review rev45c R45c-1 */},
                                           err)) != 0) {
        /* the policy or labels it was decided on are not this replica's */
    } else if (!c->commit) {
        if (v.key_kcv[0] == '\0')
            r = kf_err_set(err, -ESTALE, "the volume's key check value is not known yet: unlock it once, then rotate");
        else if (v.next_kcv[0] != '\0' && strcmp(v.next_kcv, c->kcv) != 0)
            r = kf_err_set(err, -ESTALE, "another rotation of volume %s began meanwhile; start again", c->volume_id);
        else if (strcmp(v.key_kcv, c->kcv) == 0)
            r = kf_err_set(err, -ESTALE, "the new key is the volume's key");
        st = kfd_store_stmt(s, ST_VOLUME_ROTATE_BEGIN);
        kfd_bind_text(st, 1, c->next_wrapped_key);
        kfd_bind_text(st, 2, c->kcv);
        kfd_bind_text(st, 3, c->volume_id);
    } else if (v.next_kcv[0] != '\0' && strcmp(v.next_kcv, c->kcv) == 0) {
        st = kfd_store_stmt(s, ST_VOLUME_ROTATE_COMMIT);
        sqlite3_bind_int64(st, 1, audit_time(c->audit));
        kfd_bind_text(st, 2, c->volume_id);
    } else if (!(v.next_kcv[0] == '\0' && strcmp(v.key_kcv, c->kcv) == 0)) {
        r = kf_err_set(err, -ESTALE, "the presented key is not volume %s's rotation in progress", c->volume_id);
    } /* else: committed already (a repeated commit); only audited */
    kfd_volume_clear(&v);
    if (r == 0 && st != NULL)
        r = kfd_store_step_done(s, st, "recording the rotation", err);
    else if (st != NULL)
        sqlite3_reset(st);
    /* A refusal (a judged mismatch among them) is recorded by kfd_store_apply_batch. */
    return r != 0 ? r : kfd_store_append_audit(s, c->audit, seq, err);
}

/* Only these commands may be held for approval; anything else in a stored change is refused. */
static bool change_allowed(const Keyfleet__V1__StateCommand *cmd)
{
    return cmd->cmd_case == KEYFLEET__V1__STATE_COMMAND__CMD_PUT_POLICY ||
           cmd->cmd_case == KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_ROLE ||
           cmd->cmd_case == KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_SECRET_ID ||
           cmd->cmd_case == KEYFLEET__V1__STATE_COMMAND__CMD_UNREVOKE_NODE ||
           cmd->cmd_case == KEYFLEET__V1__STATE_COMMAND__CMD_WIPE_VOLUMES ||
           (cmd->cmd_case == KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST &&
            (strcmp(cmd->attest->kind, "accept") == 0 || strcmp(cmd->attest->kind, "unhold") == 0));
}

int kfd_store_get_change(kfd_store *s, const char *request_id, Keyfleet__V1__StateCommand **ret)
{
    *ret = NULL;
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_CHANGE);
    kfd_bind_text(st, 1, request_id);
    int r = kfd_store_step_row(s, st, "reading the change");
    if (r != 0)
        return r == -ENOENT ? -ENOENT : -EIO;
    *ret = keyfleet__v1__state_command__unpack(NULL, (size_t)sqlite3_column_bytes(st, 0), sqlite3_column_blob(st, 0));
    sqlite3_reset(st);
    return 0;
}

int kfd_store_apply_change(kfd_store *s, const char *request_id, bool erase_all_allowed, uint64_t *seq, kf_err *err)
{
    kfd_pending p;
    int r = kfd_store_get_pending(s, request_id, &p);
    if (r != 0)
        return kf_err_set(err, r == -ENOENT ? -ENOENT : r, "reading the change %s", request_id);
    if (p.state != KFD_PENDING_APPROVED)
        return 0; /* more approvals to come */
    Keyfleet__V1__StateCommand *cmd = NULL;
    if ((r = kfd_store_get_change(s, request_id, &cmd)) != 0)
        return kf_err_set(err, r, "reading the change %s", request_id);
    /* --erase-all-keyslots, allowed when proposed, must still be when the last approval applies it. */
    if (cmd != NULL && cmd->cmd_case == KEYFLEET__V1__STATE_COMMAND__CMD_WIPE_VOLUMES &&
        cmd->wipe_volumes->erase_all_keyslots && !erase_all_allowed) {
        keyfleet__v1__state_command__free_unpacked(cmd, NULL);
        return kf_err_set(err, -EACCES,
                          "change %s erases every keyslot, which the policy no longer allows for its node", request_id);
    }
    if (cmd == NULL || !change_allowed(cmd)) {
        if (cmd != NULL)
            keyfleet__v1__state_command__free_unpacked(cmd, NULL);
        return kf_err_set(err, -EINVAL, "change %s does not hold a policy, role, secret id, PCR acceptance, unrevoke or wipe change", request_id);
    }
    r = kfd_store_apply_one(s, cmd, seq, err);
    keyfleet__v1__state_command__free_unpacked(cmd, NULL);
    if (r == -ESTALE) {
        char why[sizeof(err->msg)];
        snprintf(why, sizeof(why), "%s", err != NULL ? err->msg : "");
        return kf_err_set(err, -ESTALE, "change %s no longer applies: %s", request_id, why);
    }
    return r != 0 ? r : set_state(s, request_id, KFD_PENDING_CONSUMED, err);
}

int kfd_store_propose_change(kfd_store *s, const Keyfleet__V1__CmdCreatePending *c, uint64_t *seq, kf_err *err)
{
    if (c->proposer[0] == '\0' || c->created_at == NULL)
        return kf_err_set(err, -EINVAL, "a change needs its proposer");
    if (c->require_totp && c->proposer_totp_step == 0)
        return kf_err_set(err, -EACCES, "a change needs the proposer's TOTP code");
    int r = kfd_store_record_approval(s, c->request_id, c->proposer, c->proposer_totp_step, c->created_at->seconds,
                                      err);
    /* A held reveal carries no change: its approval is spent by CmdRecoveryReveal. */
    /* The proposal's handler checked --erase-all-keyslots against the policy (rpc_erase.c). */
    return r != 0 || c->change.len == 0 ? r : kfd_store_apply_change(s, c->request_id, true, seq, err);
}

int kfd_store_totp_failures(kfd_store *s, const char *op, uint32_t *ret_failures, int64_t *ret_locked_until)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_TOTP_FAIL_GET);
    kfd_bind_text(st, 1, op);
    int r = kfd_store_step_row(s, st, "reading TOTP failures");
    *ret_failures = 0;
    *ret_locked_until = 0;
    if (r == -ENOENT)
        return 0;
    if (r != 0)
        return r;
    *ret_failures = (uint32_t)sqlite3_column_int(st, 0);
    *ret_locked_until = sqlite3_column_int64(st, 1);
    sqlite3_reset(st);
    return 0;
}

static int set_totp_failures(kfd_store *s, const char *op, uint32_t failures, int64_t locked_until, kf_err *err)
{
    sqlite3_stmt *st = kfd_store_stmt(s, ST_TOTP_FAIL_SET);
    kfd_bind_text(st, 1, op);
    sqlite3_bind_int(st, 2, (int)failures);
    sqlite3_bind_int64(st, 3, locked_until);
    return kfd_store_step_done(s, st, "recording TOTP failures", err);
}

int kfd_store_totp_reset(kfd_store *s, const char *op, kf_err *err)
{
    return set_totp_failures(s, op, 0, 0, err);
}

int kfd_store_apply_totp_failure(kfd_store *s, const Keyfleet__V1__CmdTotpFailure *c, uint64_t *seq, kf_err *err)
{
    if (c->audit == NULL || c->limit == 0)
        return kf_err_set(err, -EINVAL, "TOTP failure command incomplete");
    uint32_t failures = 0;
    int64_t locked_until = 0;
    int r = kfd_store_totp_failures(s, c->operator_, &failures, &locked_until);
    if (r != 0)
        return kf_err_set(err, r, "reading TOTP failures");
    int64_t now = audit_time(c->audit);
    if ((r = kfd_store_append_audit(s, c->audit, seq, err)) != 0)
        return r;
    if (++failures < c->limit)
        return set_totp_failures(s, c->operator_, failures, locked_until, err);
    /* The run reached the limit: lock the operator out and start a new run after it. */
    locked_until = now + (int64_t)c->lockout_seconds;
    if ((r = set_totp_failures(s, c->operator_, 0, locked_until, err)) != 0)
        return r;
    char reason[160];
    snprintf(reason, sizeof(reason), "%u wrong TOTP codes in a row: approvals refused until %lld", c->limit,
             (long long)locked_until);
    Keyfleet__V1__AuditEntry lock = *c->audit;
    lock.action = (char *)"totp_lockout";
    lock.decision = KEYFLEET__V1__DECISION__DECISION_DENY;
    lock.request_id = (char *)"";
    lock.reason = reason;
    return kfd_store_append_audit(s, &lock, seq, err);
}

int kfd_store_cert_revoked(kfd_store *s, const char *serial, bool *ret)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_CERT_GET);
    kfd_bind_text(st, 1, serial);
    int r = kfd_store_step_row(s, st, "reading revoked certificates");
    *ret = r == 0;
    if (r == 0)
        sqlite3_reset(st);
    return r == -ENOENT ? 0 : r;
}

int kfd_store_apply_revoke_cert(kfd_store *s, const Keyfleet__V1__CmdRevokeCert *c, uint64_t *seq, kf_err *err)
{
    if (c->audit == NULL || c->serial[0] == '\0')
        return kf_err_set(err, -EINVAL, "certificate revocation incomplete");
    sqlite3_stmt *st = kfd_store_stmt(s, ST_CERT_REVOKE);
    kfd_bind_text(st, 1, c->serial);
    kfd_bind_text(st, 2, c->kind);
    kfd_bind_text(st, 3, c->name);
    kfd_bind_text(st, 4, c->audit->reason);
    sqlite3_bind_int64(st, 5, audit_time(c->audit));
    int r = kfd_store_step_done(s, st, "revoking the certificate", err);
    if (r == -EEXIST)
        return kf_err_set(err, -EEXIST, "certificate %s is already revoked", c->serial);
    /* The approvals given with this certificate to requests not yet decided or used stop counting
     * (reviews rev45b R45b-2, rev45c R45c-3, R45c-4): what a lost or stolen certificate approved
     * is withdrawn with it, by its serial (the kind and name a revocation gives are the caller's
     * words). */
    if (r == 0) {
        static const int withdraw[] = {ST_APPROVALS_WITHDRAW_COUNT, ST_APPROVALS_WITHDRAW};
        for (size_t i = 0; r == 0 && i < sizeof(withdraw) / sizeof(withdraw[0]); i++) {
            st = kfd_store_stmt(s, withdraw[i]);
            kfd_bind_text(st, 1, c->serial);
            r = kfd_store_step_done(s, st, "withdrawing the operator's approvals", err);
        }
    }
    return r != 0 ? r : kfd_store_append_audit(s, c->audit, seq, err);
}
