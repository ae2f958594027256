/* The apply dispatcher: each state command (state.proto) applied in its savepoint of one
 * transaction, its audit records appended to the hash chain. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kf_log.h"
#include "kf_tpm_evidence.h"
#include "store/store_apply.h"
#include "store/store_approle.h"
#include "store/store_audit.h"
#include "store/store_erase.h"
#include "store/store_guard.h"
#include "store/store_judged.h"
#include "store/store_recovery.h"
#include "store/store_internal.h"
#include "store/store_dispute.h"
#include "store/store_lifecycle.h"
#include "store/store_read.h"

static int64_t audit_time(const Keyfleet__V1__AuditEntry *audit)
{
    return audit != NULL && audit->time != NULL ? audit->time->seconds : 0;
}

static char *labels_json(Keyfleet__V1__Label **labels, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; o != NULL && i < n; i++)
        json_object_set_new(o, labels[i]->key, json_string(labels[i]->value));
    char *s = o != NULL ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    return s;
}

static int apply_enroll(kfd_store *s, const Keyfleet__V1__CmdEnrollVolume *c, kf_err *err)
{
    if (c->volume == NULL || c->audit == NULL || c->audit->time == NULL)
        return kf_err_set(err, -EINVAL, "enroll command incomplete");
    char *labels = labels_json(c->labels, c->n_labels);
    if (labels == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    sqlite3_stmt *st = kfd_store_stmt(s, ST_VOLUME_INSERT);
    kfd_bind_text(st, 1, c->volume->id);
    sqlite3_bind_int(st, 2, c->volume->kind);
    kfd_bind_text(st, 3, c->volume->name);
    kfd_bind_text(st, 4, labels);
    kfd_bind_text(st, 5, c->node);
    kfd_bind_text(st, 6, c->wrapped_key);
    kfd_bind_text(st, 7, c->audit->request_id);
    sqlite3_bind_int64(st, 8, c->audit->time->seconds);
    kfd_bind_text(st, 9, c->key_kcv);
    if (c->tpm_and_network)
        sqlite3_bind_int(st, 10, 1);
    else
        sqlite3_bind_null(st, 10);
    int r = kfd_store_step_done(s, st, "recording the volume", err);
    free(labels);
    return r;
}

static int set_pending_state(kfd_store *s, const char *id, kfd_pending_state from, kfd_pending_state to, kf_err *err)
{
    kfd_pending p;
    int r = kfd_store_get_pending(s, id, &p);
    if (r == -ENOENT)
        return kf_err_set(err, -ENOENT, "no pending request %s", id);
    if (r != 0)
        return kf_err_set(err, r, "reading pending request");
    if (p.state != from)
        return kf_err_set(err, -ESTALE, "request %s is no longer waiting", id);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_SET_STATE);
    sqlite3_bind_int(st, 1, (int)to);
    kfd_bind_text(st, 2, id);
    return kfd_store_step_done(s, st, "updating the pending request", err);
}

int kfd_store_spend_totp(kfd_store *s, const char *op, int64_t totp_step, kf_err *err)
{
    if (totp_step == 0)
        return 0;
    bool used = false;
    int r = kfd_store_totp_used(s, op, totp_step, &used);
    if (r != 0)
        return r;
    if (used)
        return kf_err_set(err, -EACCES, "TOTP code already used");
    sqlite3_stmt *st = kfd_store_stmt(s, ST_TOTP_INSERT);
    kfd_bind_text(st, 1, op);
    sqlite3_bind_int64(st, 2, totp_step);
    if ((r = kfd_store_step_done(s, st, "recording the TOTP step", err)) != 0)
        return r;
    return kfd_store_totp_reset(s, op, err);
}

int kfd_store_record_approval(kfd_store *s, const char *request_id, const char *op, int64_t totp_step, int64_t at,
                              kf_err *err)
{
    int r;
    if ((r = kfd_store_spend_totp(s, op, totp_step, err)) != 0)
        return r;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_APPROVAL_INSERT);
    kfd_bind_text(st, 1, request_id);
    kfd_bind_text(st, 2, op);
    sqlite3_bind_int64(st, 3, at);
    /* The certificate it was given with (the command's caller), so its revocation withdraws it. */
    if (s->applying_serial != NULL && s->applying_serial[0] != '\0')
        kfd_bind_text(st, 4, s->applying_serial);
    else
        sqlite3_bind_null(st, 4);
    if ((r = kfd_store_step_done(s, st, "recording the approval", err)) != 0)
        return r;
    st = kfd_store_stmt(s, ST_PENDING_ADD_APPROVAL);
    kfd_bind_text(st, 1, request_id);
    return kfd_store_step_done(s, st, "counting the approval", err);
}

static int apply_approve(kfd_store *s, const Keyfleet__V1__CmdApprove *c, uint64_t *seq, kf_err *err)
{
    kfd_pending p;
    /* erase_all_allowed was read from the handler's policy (review rev44 J6). */
    int r = kfd_store_check_policy(s, &c->judged_policy, audit_time(c->audit), err);
    if (r != 0)
        return r;
    r = kfd_store_get_pending(s, c->request_id, &p);
    if (r != 0)
        return r == -ENOENT ? kf_err_set(err, -ENOENT, "no pending request %s", c->request_id) : r;
    if (p.state != KFD_PENDING_WAITING)
        return kf_err_set(err, -ESTALE, "request %s is no longer waiting", c->request_id);
    bool dup = false;
    if ((r = kfd_store_has_approved(s, c->request_id, c->operator_, &dup)) != 0)
        return r;
    if (dup)
        return kf_err_set(err, -EEXIST, "operator %s already approved %s", c->operator_, c->request_id);
    if (p.require_totp && c->totp_step == 0)
        return kf_err_set(err, -EACCES, "request %s needs a TOTP code with each approval", c->request_id);
    int64_t at = c->audit != NULL && c->audit->time != NULL ? c->audit->time->seconds : 0;
    if (at >= p.expires_at)
        return kf_err_set(err, -ESTALE, "request %s has expired", c->request_id);
    if ((r = kfd_store_record_approval(s, c->request_id, c->operator_, c->totp_step, at, err)) != 0)
        return r;
    if ((r = kfd_store_append_audit(s, c->audit, seq, err)) != 0)
        return r;
    /* The approval that completes an operator change applies it, in this same transaction. */
    return p.has_change ? kfd_store_apply_change(s, c->request_id, c->erase_all_allowed, seq, err) : 0;
}

/* A denial ends a waiting request; where its approvals need TOTP, the denial needs it too (one
 * operator's veto, so at least that operator's second factor). */
static int apply_deny(kfd_store *s, const Keyfleet__V1__CmdDeny *c, uint64_t *seq, kf_err *err)
{
    kfd_pending p;
    int r = kfd_store_get_pending(s, c->request_id, &p);
    if (r != 0)
        return r == -ENOENT ? kf_err_set(err, -ENOENT, "no pending request %s", c->request_id) : r;
    if (p.require_totp && c->totp_step == 0)
        return kf_err_set(err, -EACCES, "request %s needs a TOTP code to be denied, as to be approved", c->request_id);
    if ((r = set_pending_state(s, c->request_id, KFD_PENDING_WAITING, KFD_PENDING_DENIED, err)) != 0)
        return r;
    if ((r = kfd_store_spend_totp(s, c->operator_, c->totp_step, err)) != 0)
        return r;
    return kfd_store_append_audit(s, c->audit, seq, err);
}

static int apply_put_policy(kfd_store *s, const Keyfleet__V1__CmdPutPolicy *c, kf_err *err)
{
    uint64_t current = 0;
    char *yaml = NULL;
    int r = kfd_store_get_policy(s, &yaml, &current);
    free(yaml);
    if (r != 0)
        return r;
    if (c->version != current + 1)
        return kf_err_set(err, -ESTALE, "policy version %llu is not the next after %llu",
                          (unsigned long long)c->version, (unsigned long long)current);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_POLICY_INSERT);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)c->version);
    kfd_bind_text(st, 2, c->yaml);
    sqlite3_bind_int64(st, 3, c->audit != NULL && c->audit->time != NULL ? c->audit->time->seconds : 0);
    return kfd_store_step_done(s, st, "storing the policy", err);
}

/* A node's measured-boot record: accepted (by an operator), TOFU, or seen (kf_tpm_pcrs text). */
static int attest_write(kfd_store *s, int which, const char *node, const char *pcrs, const char *volume_id,
                        const Keyfleet__V1__AttestClock *clock, const Keyfleet__V1__AuditEntry *audit, kf_err *err)
{
    kf_tpm_pcrs parsed;
    if (kf_tpm_pcrs_parse(pcrs, &parsed, NULL) != 0)
        return kf_err_set(err, -EINVAL, "attest command: malformed PCR values");
    sqlite3_stmt *st = kfd_store_stmt(s, which);
    kfd_bind_text(st, 1, node);
    kfd_bind_text(st, 2, pcrs);
    sqlite3_bind_int64(st, 3, audit != NULL && audit->time != NULL ? audit->time->seconds : 0);
    if (which == ST_ATTEST_ACCEPT)
        kfd_bind_text(st, 4, audit != NULL && audit->actor != NULL ? audit->actor->name : "");
    if (which == ST_ATTEST_TOFU)
        kfd_bind_text(st, 4, volume_id);
    if (which == ST_ATTEST_SEEN && clock != NULL) {
        sqlite3_bind_int64(st, 4, clock->reset_count);
        sqlite3_bind_int64(st, 5, clock->restart_count);
    } else if (which == ST_ATTEST_SEEN) {
        sqlite3_bind_null(st, 4);
        sqlite3_bind_null(st, 5);
    }
    if (which == ST_ATTEST_SEEN && clock != NULL && clock->clock_known && clock->clock <= INT64_MAX) {
        sqlite3_bind_int64(st, 6, (sqlite3_int64)clock->clock);
        sqlite3_bind_int(st, 7, clock->safe ? 1 : 0);
    } else if (which == ST_ATTEST_SEEN) {
        sqlite3_bind_null(st, 6);
        sqlite3_bind_null(st, 7);
    }
    return kfd_store_step_done(s, st, "recording the node's PCR values", err);
}

/* A verified quote's TPM state: raise the node's recorded highest (ST_ATTEST_CLOCK_MAX), or, for
 * an operator's acceptance of a rolled-back TPM, set it (ST_ATTEST_CLOCK_SET). at: the command's
 * time, kept with it (the clock jump rule, core/tpm_state.h). */
static int attest_clock(kfd_store *s, int which, const char *node, const Keyfleet__V1__AttestClock *clock, int64_t at,
                        kf_err *err)
{
    if (clock == NULL)
        return 0;
    sqlite3_stmt *st = kfd_store_stmt(s, which);
    kfd_bind_text(st, 1, node);
    sqlite3_bind_int64(st, 2, clock->reset_count);
    sqlite3_bind_int64(st, 3, clock->restart_count);
    if (clock->clock_known && clock->clock <= INT64_MAX) {
        sqlite3_bind_int64(st, 4, (sqlite3_int64)clock->clock);
        sqlite3_bind_int(st, 5, clock->safe ? 1 : 0);
        sqlite3_bind_int64(st, 6, at);
    } else {
        sqlite3_bind_null(st, 4);
        sqlite3_bind_null(st, 5);
        sqlite3_bind_null(st, 6);
    }
    return kfd_store_step_done(s, st, "recording the node's TPM counters", err);
}

/* A heartbeat's quote (no key goes with it, so nothing to refuse): its TPM state raises the
 * record only where it holds against this replica's record (rules 2 to 4 at apply), else the
 * record stays. Judged here because a clone's state raised unjudged by a heartbeat that an edited
 * leader let through would pass the clone's release on every replica (review rev46, R46-3). */
static int raise_seen_clock(kfd_store *s, const char *node, const Keyfleet__V1__AttestClock *clock, int64_t at,
                            const ProtobufCBinaryData *judged_policy, kf_err *err)
{
    if (clock == NULL)
        return 0;
    kfd_attest_record rec;
    int r = kfd_store_get_attest(s, node, &rec);
    if (r != 0 && r != -ENOENT)
        return kf_err_set(err, r, "reading node %s's measured-boot record", node);
    /* Let through by `rollback: audit` only where that is this replica's policy too: the flag is
     * the leader's word, its policy digest is not (review rev46b R46b-2). */
    Keyfleet__V1__AttestClock judged = *clock;
    kf_err perr = {0};
    if (judged.rollback_audited &&
        (judged_policy->len == 0 || kfd_store_check_policy(s, judged_policy, at, &perr) != 0))
        judged.rollback_audited = false;
    kf_err why = {0};
    if (r == 0 && kfd_tpm_clock_judged(&judged, &rec, at, &why) != 0) {
        kf_log_warn("tpm_clock_not_recorded", "node=%s reason=%s", node, kf_log_q(why.msg));
        return 0;
    }
    return attest_clock(s, ST_ATTEST_CLOCK_MAX, node, clock, at, err);
}

/* Holds the node (kind "tpm" or "drift"), keeping the TPM state of the quote that caused it; a
 * node already held keeps its first hold. */
static int attest_hold(kfd_store *s, const Keyfleet__V1__CmdAttest *c, kf_err *err)
{
    if (strcmp(c->hold_kind, "tpm") != 0 && strcmp(c->hold_kind, "drift") != 0)
        return kf_err_set(err, -EINVAL, "attest command: hold of unknown kind '%.32s'", c->hold_kind);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_ATTEST_HOLD);
    kfd_bind_text(st, 1, c->node);
    kfd_bind_text(st, 2, c->hold);
    kfd_bind_text(st, 3, c->hold_kind);
    sqlite3_bind_int64(st, 4, audit_time(c->audit));
    for (int i = 5; i <= 8; i++)
        sqlite3_bind_null(st, i);
    if (c->clock != NULL) {
        sqlite3_bind_int64(st, 5, c->clock->reset_count);
        sqlite3_bind_int64(st, 6, c->clock->restart_count);
        if (c->clock->clock_known && c->clock->clock <= INT64_MAX) {
            sqlite3_bind_int64(st, 7, (sqlite3_int64)c->clock->clock);
            sqlite3_bind_int(st, 8, c->clock->safe ? 1 : 0);
        }
    }
    return kfd_store_step_done(s, st, "holding the node", err);
}

/* An operator lifts a hold after investigation: the held quote's TPM state becomes the recorded
 * one. Only the hold the operator looked at (prev_held_at). */
static int attest_unhold(kfd_store *s, const Keyfleet__V1__CmdAttest *c, kf_err *err)
{
    kfd_attest_record rec;
    int r = kfd_store_get_attest(s, c->node, &rec);
    if (r != 0 && r != -ENOENT)
        return kf_err_set(err, -EIO, "reading node %s's measured-boot record", c->node);
    if (r == -ENOENT || rec.held[0] == '\0' || rec.held_at != c->prev_held_at)
        return kf_err_set(err, -ESTALE, "node %s is no longer held as it was when this was requested; look again "
                                        "(keyfleetctl node attest show)", c->node);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_ATTEST_UNHOLD);
    kfd_bind_text(st, 1, c->node);
    sqlite3_bind_int64(st, 2, c->prev_held_at);
    if ((r = kfd_store_step_done(s, st, "lifting the node's hold", err)) != 0)
        return r;
    /* A drift hold's quote passed the TPM state check: the record (maybe raised since) stays. */
    if (!rec.has_held_state || strcmp(rec.held_kind, "tpm") != 0)
        return 0;
    Keyfleet__V1__AttestClock clk = KEYFLEET__V1__ATTEST_CLOCK__INIT;
    clk.reset_count = rec.held_reset;
    clk.restart_count = rec.held_restart;
    clk.clock = rec.held_clock;
    clk.safe = rec.held_safe;
    clk.clock_known = rec.has_held_clock;
    /* dated when that quote came (the hold), not now: the clock jump rule measures from it */
    return attest_clock(s, ST_ATTEST_CLOCK_SET, c->node, &clk, rec.held_at, err);
}

/* An acceptance applies only to the accepted values it was made for (compare and swap): one held
 * for approval and approved after another acceptance must not roll those back. */
static int attest_accept(kfd_store *s, const Keyfleet__V1__CmdAttest *c, kf_err *err)
{
    if (c->cas) {
        kfd_attest_record rec;
        int r = kfd_store_get_attest(s, c->node, &rec);
        if (r != 0 && r != -ENOENT)
            return kf_err_set(err, -EIO, "reading node %s's PCR values", c->node);
        if (strcmp(r == 0 ? rec.accepted : "", c->prev_accepted) != 0)
            return kf_err_set(err, -ESTALE,
                              "node %s's accepted PCR values changed since this acceptance was requested; look "
                              "again (keyfleetctl node attest show)",
                              c->node);
    }
    /* The accepted TPM state is the seen quote's: dated when that quote came, not at the
     * acceptance, or the node's next honest quote would be ahead by the whole wait (review rev46,
     * R46-6), as an unhold dates it by its hold. Read before the write below replaces nothing of it. */
    int64_t dated = audit_time(c->audit);
    kfd_attest_record seen;
    int sr = c->clock != NULL ? kfd_store_get_attest(s, c->node, &seen) : -ENOENT;
    if (sr != 0 && sr != -ENOENT)
        return kf_err_set(err, sr, "reading node %s's measured-boot record", c->node);
    if (c->clock != NULL) {
        /* The TPM state accepted is this replica's seen quote, not the leader's word: a state put
         * into the leader's row would otherwise be laid on every record (review rev46b R46b-1). */
        bool same = sr == 0 && seen.has_seen_clock && seen.seen_reset == c->clock->reset_count &&
                    seen.seen_restart == c->clock->restart_count &&
                    seen.has_seen_tpm_clock == c->clock->clock_known &&
                    (!c->clock->clock_known || seen.seen_clock == c->clock->clock);
        if (!same)
            return kf_err_set(err, -ESTALE, "node %s quoted again since this acceptance was made (or a database "
                              "was edited): its TPM state is not the quote this coordinator saw; look again "
                              "(keyfleetctl node attest show)", c->node);
        /* ... and a state behind this replica's own record, as the handler found on its record
         * (review rev46c R46c-1): else an edit of the leader's counters lays an older state or a
         * clone's on every record. */
        bool rolled_back = seen.seen[0] != '\0' && seen.has_clock &&
                           kf_tpm_counters_before(seen.seen_reset, seen.seen_restart, seen.reset_count,
                                                  seen.restart_count);
        if (!rolled_back)
            return kf_err_set(err, -ESTALE, "node %s's seen TPM state is not behind this coordinator's record: "
                              "there is no rolled-back state to accept (a database edited?); look again "
                              "(keyfleetctl node attest show)", c->node);
        if (seen.seen_at > 0 && seen.seen_at <= dated)
            dated = seen.seen_at;
    }
    int r = attest_write(s, ST_ATTEST_ACCEPT, c->node, c->pcrs, NULL, NULL, c->audit, err);
    return r != 0 ? r : attest_clock(s, ST_ATTEST_CLOCK_SET, c->node, c->clock, dated, err);
}

/* An enrollment: the volume, its node's first measured boot when trusted on first use, the
 * node's TPM counters, the audit record. */
static int apply_enroll_volume(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, uint64_t *seq, kf_err *err)
{
    const Keyfleet__V1__CmdEnrollVolume *c = cmd->enroll_volume;
    ProtobufCBinaryData none = {0, NULL};
    int r = kfd_store_check_not_revoked(s, c->node, err);
    /* What the handler judged (store_judged.h), before anything is written. */
    if (r == 0)
        r = kfd_store_check_judged(s, c->node, NULL, -ENOENT,
                                   &(kfd_judged_in){&c->judged_policy, &none, &c->judged_pcrs, &c->judged_tpm,
                                                    &c->judged_auth, c->auth_cert_serial, c->auth_token_id,
                                                    audit_time(c->audit), c->attest_clock},
                                   err);
    if (r == 0)
        r = kfd_store_check_tofu(s, c->node, c->attest_tofu, err);
    if (r == 0)
        r = apply_enroll(s, cmd->enroll_volume, err);
    if (r == 0 && cmd->enroll_volume->attest_tofu[0] != '\0')
        r = attest_write(s, ST_ATTEST_TOFU, cmd->enroll_volume->node, cmd->enroll_volume->attest_tofu,
                         cmd->enroll_volume->volume->id, NULL, cmd->enroll_volume->audit, err);
    if (r == 0)
        r = attest_clock(s, ST_ATTEST_CLOCK_MAX, cmd->enroll_volume->node, cmd->enroll_volume->attest_clock,
                         audit_time(cmd->enroll_volume->audit), err);
    if (r == 0)
        r = kfd_store_append_audit(s, cmd->enroll_volume->audit, seq, err);
    return r;
}

static int apply_record_release(kfd_store *s, const Keyfleet__V1__CmdRecordRelease *c, uint64_t *seq, kf_err *err)
{
    int r;
    if ((r = kfd_store_release_allowed(s, c, err)) != 0)
        return r; /* recorded as a denial by kfd_store_apply_batch */
    if (c->audit != NULL && c->audit->decision == KEYFLEET__V1__DECISION__DECISION_ALLOW) {
        sqlite3_stmt *st = kfd_store_stmt(s, ST_VOLUME_RELEASED);
        kfd_bind_text(st, 1, c->node);
        sqlite3_bind_int64(st, 2, c->audit->time != NULL ? c->audit->time->seconds : 0);
        kfd_bind_text(st, 3, c->volume_id);
        if ((r = kfd_store_step_done(s, st, "recording the release", err)) != 0)
            return r;
    }
    if ((r = attest_clock(s, ST_ATTEST_CLOCK_MAX, c->node, c->attest_clock, audit_time(c->audit), err)) != 0)
        return r;
    return kfd_store_append_audit(s, c->audit, seq, err);
}

static int apply_create_pending(kfd_store *s, const Keyfleet__V1__CmdCreatePending *c, uint64_t *seq, kf_err *err)
{
    int r;
    if (c->volume == NULL || c->created_at == NULL || c->expires_at == NULL)
        return kf_err_set(err, -EINVAL, "pending command incomplete");
    /* Its approval count and TOTP rule were read from the handler's policy (review rev44 J6). */
    if ((r = kfd_store_check_policy(s, &c->judged_policy, c->created_at->seconds, err)) != 0)
        return r;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_INSERT);
    kfd_bind_text(st, 1, c->request_id);
    kfd_bind_text(st, 2, c->node);
    kfd_bind_text(st, 3, c->volume->id);
    kfd_bind_text(st, 4, c->source_address);
    sqlite3_bind_int64(st, 5, c->created_at->seconds);
    sqlite3_bind_int64(st, 6, c->expires_at->seconds);
    sqlite3_bind_int(st, 7, (int)c->approvals_needed);
    kfd_bind_text(st, 8, c->rule);
    sqlite3_bind_int(st, 9, c->require_totp ? 1 : 0);
    if (c->change.len > 0)
        sqlite3_bind_blob(st, 10, c->change.data, (int)c->change.len, SQLITE_STATIC);
    kfd_bind_text(st, 11, c->change_summary);
    if ((r = kfd_store_step_done(s, st, "recording the pending request", err)) != 0)
        return r;
    if ((r = kfd_store_append_audit(s, c->audit, seq, err)) != 0)
        return r;
    if (c->change.len == 0 && c->proposer[0] != '\0') /* a held reveal (store_recovery.c) */
        r = kfd_store_set_proposer(s, c->request_id, c->proposer, err);
    if (r != 0)
        return r;
    return c->change.len > 0 || c->proposer[0] != '\0' ? kfd_store_propose_change(s, c, seq, err) : 0;
}

static int apply_expire_pending(kfd_store *s, const Keyfleet__V1__CmdExpirePending *c, uint64_t *seq, kf_err *err)
{
    int r;
    if (c->n_request_ids != c->n_audits)
        return kf_err_set(err, -EINVAL, "expire command has %zu ids and %zu audits", c->n_request_ids,
                          c->n_audits);
    for (size_t i = 0; i < c->n_request_ids; i++) {
        r = set_pending_state(s, c->request_ids[i], KFD_PENDING_WAITING, KFD_PENDING_EXPIRED, err);
        if (r == -ESTALE)
            continue; /* approved or denied meanwhile */
        if (r == 0)
            r = kfd_store_append_audit(s, c->audits[i], seq, err);
        if (r != 0)
            return r;
    }
    return 0;
}

static int apply_revoke_node(kfd_store *s, const Keyfleet__V1__CmdRevokeNode *c, uint64_t *seq, kf_err *err)
{
    int r;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_NODE_REVOKE);
    kfd_bind_text(st, 1, c->node);
    sqlite3_bind_int64(st, 2, c->audit != NULL && c->audit->time != NULL ? c->audit->time->seconds : 0);
    kfd_bind_text(st, 3, c->audit != NULL ? c->audit->reason : "");
    if ((r = kfd_store_step_done(s, st, "revoking the node", err)) != 0)
        return r;
    return kfd_store_append_audit(s, c->audit, seq, err);
}

static int apply_attest(kfd_store *s, const Keyfleet__V1__CmdAttest *c, uint64_t *seq, kf_err *err)
{
    int r;
    bool accept = strcmp(c->kind, "accept") == 0, unhold = strcmp(c->kind, "unhold") == 0;
    if (!accept && !unhold && strcmp(c->kind, "seen") != 0)
        return kf_err_set(err, -EINVAL, "attest command of unknown kind '%.32s'", c->kind);
    if (accept)
        r = attest_accept(s, c, err);
    else if (unhold)
        r = attest_unhold(s, c, err);
    else
        r = attest_write(s, ST_ATTEST_SEEN, c->node, c->pcrs, NULL, c->clock, c->audit, err);
    /* A quote that holds the node is not the TPM's state: it is kept as the held one only. */
    if (r == 0 && !accept && !unhold && c->hold[0] != '\0')
        r = attest_hold(s, c, err);
    else if (r == 0 && !accept && !unhold)
        r = raise_seen_clock(s, c->node, c->clock, audit_time(c->audit), &c->judged_policy, err);
    if (r != 0)
        return r;
    return kfd_store_append_audit(s, c->audit, seq, err);
}

static int apply_kms_rotate(kfd_store *s, const Keyfleet__V1__CmdKmsRotate *c, uint64_t *seq, kf_err *err)
{
    sqlite3_stmt *st = kfd_store_stmt(s, ST_KMS_ROTATED);
    kfd_bind_text(st, 1, c->backend);
    sqlite3_bind_int64(st, 2, c->new_version);
    int r = kfd_store_step_done(s, st, "recording the KMS rotation", err);
    return r != 0 ? r : kfd_store_append_audit(s, c->audit, seq, err);
}

/* A heartbeat: no audit record. */
static int apply_node_seen(kfd_store *s, const Keyfleet__V1__CmdNodeSeen *c, kf_err *err)
{
    if (c->node[0] == '\0' || c->at <= 0)
        return kf_err_set(err, -EINVAL, "node_seen command without a node or time");
    sqlite3_stmt *st = kfd_store_stmt(s, ST_NODE_SEEN);
    kfd_bind_text(st, 1, c->node);
    sqlite3_bind_int64(st, 2, c->at);
    int r = kfd_store_step_done(s, st, "recording a node's heartbeat", err);
    return r != 0 ? r : raise_seen_clock(s, c->node, c->attest_clock, c->at, &c->judged_policy, err);
}

/* The dispatcher: one case per command, the work in the apply_* above or in the file that owns it. */
int kfd_store_apply_one(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, uint64_t *seq, kf_err *err)
{
    int r = 0;
    switch (cmd->cmd_case) {
    case KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME:
        return apply_enroll_volume(s, cmd, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE:
        return apply_record_release(s, cmd->record_release, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_PENDING:
        return apply_create_pending(s, cmd->create_pending, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_APPROVE:
        return apply_approve(s, cmd->approve, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_DENY:
        return apply_deny(s, cmd->deny, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_EXPIRE_PENDING:
        return apply_expire_pending(s, cmd->expire_pending, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_PUT_POLICY:
        if ((r = apply_put_policy(s, cmd->put_policy, err)) != 0)
            return r;
        s->policy_changed = true;
        s->policy_judged_ok = false;
        return kfd_store_append_audit(s, cmd->put_policy->audit, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_NODE:
        return apply_revoke_node(s, cmd->revoke_node, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST:
        return apply_attest(s, cmd->attest, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT:
        return kfd_store_append_audit(s, cmd->append_audit->audit, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_KMS_ROTATE:
        return apply_kms_rotate(s, cmd->kms_rotate, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_TOTP_FAILURE:
        return kfd_store_apply_totp_failure(s, cmd->totp_failure, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_CERT:
        return kfd_store_apply_revoke_cert(s, cmd->revoke_cert, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_CHECKPOINT:
        return kfd_store_apply_checkpoint(s, cmd->checkpoint, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_ROTATE_KEY:
        return kfd_store_apply_rotate(s, cmd->rotate_key, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_AUDIT_HEAD_CHECK:
        return kfd_store_apply_head_check(s, cmd->audit_head_check, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_STATE_CHECK:
        return kfd_store_apply_state_check(s, cmd->state_check, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_NODE_SEEN:
        return apply_node_seen(s, cmd->node_seen, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_UNREVOKE_NODE:
        return kfd_store_apply_unrevoke(s, cmd->unrevoke_node, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_RETIRE_VOLUME:
        return kfd_store_apply_retire(s, cmd->retire_volume, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_ESCROW:
        return kfd_store_apply_recovery_escrow(s, cmd->recovery_escrow, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_REVEAL:
        return kfd_store_apply_recovery_reveal(s, cmd->recovery_reveal, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_CONFIRM:
        return kfd_store_apply_recovery_confirm(s, cmd->recovery_confirm, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_WIPE_VOLUMES:
        return kfd_store_apply_wipe(s, cmd->wipe_volumes, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_ERASE_CONFIRM:
        return kfd_store_apply_erase_confirm(s, cmd->erase_confirm, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_ROLE:
    case KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_SECRET_ID:
    case KEYFLEET__V1__STATE_COMMAND__CMD_LOGIN:
    case KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_ROLE:
    case KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_ROLE_CREDENTIAL:
        return kfd_store_apply_approle(s, cmd, seq, err);
    default:
        return kf_err_set(err, -ENOSYS, "state command %d is not supported by this version", (int)cmd->cmd_case);
    }
}

/* The open transaction's audit head, tree and checkpoint before one command, to undo it. */
typedef struct tx_mark {
    uint64_t head_seq, cp_seq, cp_size;
    uint8_t head_hash[KFD_HASH_LEN];
    kf_merkle_frontier tree;
} tx_mark;

static tx_mark tx_mark_take(const kfd_store *s)
{
    tx_mark m = {.head_seq = s->tx_head_seq, .cp_seq = s->tx_cp_seq, .cp_size = s->tx_cp_size, .tree = s->tx_tree};
    memcpy(m.head_hash, s->tx_head_hash, KFD_HASH_LEN);
    return m;
}

/* This command only: its writes and audit records. */
static int undo_command(kfd_store *s, const tx_mark *m, kf_err *err)
{
    s->tx_head_seq = m->head_seq;
    memcpy(s->tx_head_hash, m->head_hash, KFD_HASH_LEN);
    s->tx_tree = m->tree;
    s->tx_cp_seq = m->cp_seq;
    s->tx_cp_size = m->cp_size;
    return kfd_store_step_done(s, kfd_store_stmt(s, ST_ROLLBACK_TO), "rolling back a command", err);
}

int kfd_store_apply_batch(kfd_store *s, const Keyfleet__V1__StateCommand *const *cmds, size_t n, uint64_t raft_index,
                          int *statuses, kfd_apply_result *results, kf_err *errs)
{
    kf_err tx_err = {0};
    for (size_t i = 0; i < n; i++) {
        statuses[i] = -EIO;
        results[i] = (kfd_apply_result){0};
        kf_err_clear(&errs[i]);
    }
    if (s->failed) {
        for (size_t i = 0; i < n; i++)
            kf_err_set(&errs[i], -EIO, "state store unavailable: %s", s->failure);
        return -EIO;
    }
    /* Another process committed into this database since this one last did (review rev17c, C1): a
     * table edited under a running replica. Disputed: it answers no key until a majority settles. */
    if (!s->tx_open)
        kfd_store_foreign_write(s);
    int r = 0;
    if (s->tx_open && sqlite3_get_autocommit(s->db))
        /* sqlite rolled the open transaction back (kfd_store_commit): its entries are gone, and
         * each savepoint would now commit alone (review rev41b M1). */
        r = kfd_store_fail(s, "applying", "sqlite rolled the open transaction back", 0, &tx_err);
    else if (!s->tx_open)
        r = kfd_store_step_done(s, kfd_store_stmt(s, ST_BEGIN), "beginning a transaction", &tx_err);
    s->tx_head_seq = s->head_seq;
    memcpy(s->tx_head_hash, s->head_hash, KFD_HASH_LEN);
    s->tx_tree = s->tree;
    s->tx_cp_seq = s->cp_seq;
    s->tx_cp_size = s->cp_size;
    for (size_t i = 0; r == 0 && i < n; i++) {
        tx_mark before = tx_mark_take(s);
        if ((r = kfd_store_step_done(s, kfd_store_stmt(s, ST_SAVEPOINT), "savepoint", &tx_err)) != 0)
            break;
        uint64_t seq = 0;
        int cr = cmds[i] != NULL ? kfd_store_command_allowed(s, cmds[i], &errs[i])
                                 : kf_err_set(&errs[i], -EINVAL, "replicated entry could not be decoded");
        if (cr == 0) {
            s->applying_serial = cmds[i]->auth_cert_serial;
            cr = kfd_store_apply_one(s, cmds[i], &seq, &errs[i]);
            s->applying_serial = NULL;
        }
        if (cr != 0 && s->failed) {
            r = cr;
            tx_err = errs[i];
            break;
        }
        bool recorded = false;
        if (cr != 0 && (r = undo_command(s, &before, &tx_err)) == 0) {
            /* Then the refusal of a key, an enrollment or a login is recorded (store_judged.h),
             * undone too if even that cannot be appended. */
            kf_err rerr = errs[i];
            int rr = kfd_store_record_refusal(s, cmds[i], cr, &seq, &rerr, &recorded);
            if (rr != 0 && s->failed) {
                r = rr;
                tx_err = rerr;
            } else if (rr != 0) {
                r = undo_command(s, &before, &tx_err);
            }
        }
        if (r == 0)
            r = kfd_store_step_done(s, kfd_store_stmt(s, ST_RELEASE), "releasing a savepoint", &tx_err);
        /* A judged mismatch is answered `unavailable` (-ECANCELED); other refusals keep their code. */
        statuses[i] = recorded && cr == -EAGAIN ? -ECANCELED : cr;
        results[i].audit_seq = cr == 0 || recorded ? seq : 0;
        results[i].refused = recorded;
    }
    /* The applied index is written once, by the commit that ends the transaction. */
    if (r == 0 && raft_index != 0)
        s->tx_applied = raft_index;
    if (r == 0 && s->deferred) {
        s->tx_commands = s->tx_open ? s->tx_commands + n : n;
        s->tx_open = true;
    } else if (r == 0) {
        r = kfd_store_commit(s, &tx_err);
        s->tx_open = false; /* deferral switched off while one was open: it is committed too */
        s->tx_commands = 0;
    }
    if (r != 0) {
        s->tx_applied = 0;
        /* With a deferred commit this also undoes earlier applies of the open transaction; the
         * store is failed then, and they are applied again from the Raft log after a restart. */
        s->tx_open = false;
        sqlite3_step(kfd_store_stmt(s, ST_ROLLBACK));
        sqlite3_reset(s->st[ST_ROLLBACK]);
        for (size_t i = 0; i < n; i++) {
            statuses[i] = -EIO;
            results[i] = (kfd_apply_result){0};
            errs[i] = tx_err;
            if (errs[i].code == 0)
                kf_err_set(&errs[i], -EIO, "state store unavailable");
        }
        return -EIO;
    }
    s->head_seq = s->tx_head_seq;
    memcpy(s->head_hash, s->tx_head_hash, KFD_HASH_LEN);
    s->tree = s->tx_tree;
    s->cp_seq = s->tx_cp_seq;
    s->cp_size = s->tx_cp_size;
    if (raft_index != 0)
        s->applied_index = raft_index;
    return 0;
}

int kfd_store_apply(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, kfd_apply_result *ret, kf_err *err)
{
    const Keyfleet__V1__StateCommand *cmds[1] = {cmd};
    int status;
    kfd_apply_result res = {0};
    kf_err e = {0};
    kfd_store_apply_batch(s, cmds, 1, 0, &status, &res, &e);
    if (ret != NULL)
        *ret = res;
    if (status != 0 && err != NULL)
        *err = e;
    return status;
}

bool kfd_store_take_policy_changed(kfd_store *s)
{
    bool changed = s->policy_changed;
    s->policy_changed = false;
    return changed;
}
