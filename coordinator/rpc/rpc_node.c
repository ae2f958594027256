/* NodeService.Enroll, Release, RotateKey and EnrollRecoveryKey (docs/protocol.md; Heartbeat is
 * rpc_heartbeat.c).
 *
 * Release order: validate; revoked?; volume known?; policy (deny -> audited denial); rate limit;
 * approval state; KMS unwrap under the volume id; seal to the agent's ephemeral key; commit the
 * audit record durably; only then answer. The plaintext key exists only in KMS-owned secure
 * buffers during the unwrap callback and is wiped when it returns.
 *
 * Commits complete on a later loop turn (group commit), so each operation's state lives in a
 * kfd_op on the heap; if the client goes away first, the work finishes and the answer is skipped.
 * The local KMS completes inline. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "rpc/rpc_node.h"
#include "rpc/rpc_attest.h"

#include "core/app.h"
#include "core/approvals.h"
#include "core/audit.h"
#include "core/ratelimit.h"
#include "front/server.h"
#include "rpc/rpc_admin.h"
#include "rpc/rpc_check.h"
#include "rpc/rpc_labels.h"
#include "keyfleet/v1/node.pb-c.h"
#include "kf_node_check.h"
#include "kf_time.h"
#include "kf_log.h"
#include "front/seal.h"
#include "kms/kms_wrapped.h"
#include "core/webhook.h"
#include "store/store_apply.h"
#include "store/store_audit.h"
#include "store/store_dispute.h"
#include "store/store_judged.h"
#include "store/store_read.h"
#include "store/store_recovery.h"
#include "rpc/rpc_recovery_confirm.h"

#define LABELS_MAX KF_LABELS_MAX
/* How long after enrolling a lost Enroll answer may be fetched again by repeating it. */
#define ENROLL_REPLAY_WINDOW_S 600
/* How long an agent may repeat an EnrollRecoveryKey to get the same key back (a lost answer). */

/* The answer's view of a sealed key (pointing into sealed). */
static void sealed_key(Keyfleet__V1__SealedKey *sk, kfd_sealed *sealed)
{
    keyfleet__v1__sealed_key__init(sk);
    sk->kem_id = KF_HPKE_KEM_X25519_SHA256;
    sk->kdf_id = KF_HPKE_KDF_HKDF_SHA256;
    sk->aead_id = KF_SEAL_AEAD;
    sk->enc.data = sealed->enc;
    sk->enc.len = 32;
    sk->ciphertext.data = sealed->ct;
    sk->ciphertext.len = KF_SEAL_CT_LEN;
    sk->seq = sealed->seq;
}

/* Records a refusal in the audit log, then answers with code. A failed audit write does not
 * change the answer (nothing is released either way) but is logged by the store. */
typedef struct deny_op {
    kfd_op base;
    kf_connect_code code;
    char message[512];
} deny_op;

static void on_deny_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res, (void)err, (void)status;
    deny_op *d = arg;
    if (d->base.call != NULL)
        kfd_call_error(d->base.call, d->code, "%s", d->message);
    kfd_op_free(d);
}

/* Commits cmd, a denial's audit record (with what else it records), then answers code and
 * message once it is durable. */
static void commit_deny(kfd_call *call, Keyfleet__V1__StateCommand *cmd, kf_connect_code code, const char *message)
{
    deny_op *d = kfd_op_new(call, sizeof(*d));
    if (d == NULL) {
        kfd_call_error(call, code, "%s", message);
        return;
    }
    d->code = code;
    snprintf(d->message, sizeof(d->message), "%s", message);
    kfd_commit(kfd_call_app(call), cmd, on_deny_committed, d);
}

static void deny_audited(kfd_call *call, const char *action, Keyfleet__V1__Decision decision, const char *volume_id,
                         const char *request_id, kf_connect_code code, const char *message)
{
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), action, decision, call->peer->name, volume_id, request_id, message);
    Keyfleet__V1__CmdAppendAudit c;
    Keyfleet__V1__StateCommand cmd;
    kfd_audit_command(&a, &c, &cmd);
    commit_deny(call, &cmd, code, message);
}

/* A denial whose quote held but whose PCR values are not the accepted ones (or whose TPM state
 * contradicts the recorded one): the audit record (naming the changed PCRs) and the values, kept
 * for `keyfleetctl node attest show|accept`, in one command (kfd_attest_seen_command). The node is
 * held: for its TPM state (att->hold), or for drift when a rule for it requires attestation. */
static void deny_attest(kfd_call *call, const char *volume_id, const char *request_id, const kfd_attest_eval *att,
                        const char *message)
{
    bool need_tpm_key, need_attested;
    kfd_policy_contact_requires(kfd_call_app(call)->policy, call->peer->name, &need_tpm_key, &need_attested);
    const char *hold = att->hold                                                   ? "tpm"
                       : need_attested && att->quote_valid && !att->no_baseline ? "drift"
                                                                                  : NULL;
    kfd_attest_cmd c;
    kfd_attest_seen_command(call, att, hold != NULL ? "attest_hold" : "policy_deny", volume_id, request_id, message,
                            hold, &c);
    commit_deny(call, &c.cmd, KF_CONNECT_PERMISSION_DENIED, message);
}

/* A verified quote's TPM state, for the command that records the request (raising the node's);
 * none when it contradicts the recorded one (that is kept only with a hold). */
static void attest_clock_of(const kfd_attest_eval *att, Keyfleet__V1__AttestClock *clk, bool *has)
{
    kfd_attest_clock_fill(att, clk);
    *has = att->has_clock && !att->rollback;
}

/* A rollback let through (attestation.rollback: audit) is named in the allowing audit record. */
static void note_rollback(const kfd_attest_eval *att, kfd_policy_decision *d)
{
    size_t n = strlen(d->explanation);
    if (att->note[0] != '\0' && n < sizeof(d->explanation) - 1)
        snprintf(d->explanation + n, sizeof(d->explanation) - n, "; attestation: %s", att->note);
}

/* The request's quote, evaluated (rpc_attest.h); false when the call was answered (malformed
 * quote: invalid_argument; store unavailable). */
static bool attest_eval(kfd_call *call, const Keyfleet__V1__TpmQuote *quote, const char *method, const char *volume_id,
                        const ProtobufCBinaryData *eph, const char *request_id, kfd_attest_eval *ret)
{
    int r = kfd_attest_evaluate(call, quote, method, volume_id, eph, request_id, ret);
    if (r == -EINVAL)
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", ret->why);
    else if (r != 0)
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
    return r == 0;
}

/* The node's hold (docs/attestation.md): kind "tpm", "drift" or "" when not held; why names it. */
typedef struct node_hold {
    char kind[16];
    char why[600];
} node_hold;

/* As attest_eval, for a request that asks for a key: a quote whose TPM state contradicts the
 * recorded one (a cloned or rolled-back TPM) is denied whatever the policy, audited, and holds
 * the node (review rev17, A1). */
static bool attest_eval_key(kfd_call *call, const node_hold *hold, const Keyfleet__V1__TpmQuote *quote,
                            const char *method, const char *volume_id, const ProtobufCBinaryData *eph,
                            const char *request_id, kfd_attest_eval *ret)
{
    if (!attest_eval(call, quote, method, volume_id, eph, request_id, ret))
        return false;
    if (ret->hold) {
        deny_attest(call, volume_id, request_id, ret, ret->why);
        return false;
    }
    /* Held for drift (lock on drift): no quote attests until an operator accepts values or
     * lifts the hold, even one that matches the accepted values again (a machine booted back
     * into the accepted chain after running another). Rules without `attested` decide as before.
     * The hold is as check_revoked read it: nothing is applied between the two in one handler. */
    if (strcmp(hold->kind, "drift") == 0 && ret->attested) {
        ret->attested = false;
        snprintf(ret->why, sizeof(ret->why), "%.300s", hold->why);
    }
    return true;
}

/* The client's deadline passed while the KMS worked: the key now in memory is not sealed, sent
 * or recorded as released, and the audit log says it was unwrapped (or made) and dropped. Called
 * with copies of the ids, after the op holding them is freed (a call holds one op). */
static void deadline_after_kms(kfd_call *call, const char *action, const char *volume_id, const char *request_id)
{
    deny_audited(call, action, KEYFLEET__V1__DECISION__DECISION_ERROR, volume_id, request_id,
                 KF_CONNECT_DEADLINE_EXCEEDED,
                 "the request's deadline (connect-timeout-ms) passed while the KMS worked; no key was released");
}

/* Whether a data key with check value kcv was retired by a rotation: it is neither the volume's
 * key (cur) nor its rotation in progress (next). A volume whose key check value is not known yet
 * (enrolled before rotation existed, never released since) has had one key only; one with a
 * rotation in progress but no known key cannot exist, and is refused closed. */
static bool kcv_retired(const char *kcv, const char *cur, const char *next)
{
    if (cur[0] == '\0')
        return next[0] != '\0';
    return strcmp(kcv, cur) != 0 && strcmp(kcv, next) != 0;
}

#define RETIRED_MESSAGE "this key was retired by a rotation"
_Static_assert(KFD_KCV_TEXT_LEN + 1 <= sizeof(((kfd_volume *)0)->key_kcv), "a stored KCV fits");

static void on_dropped_audited(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)arg, (void)res;
    if (status != 0)
        kf_log_error("audit_failed", "action=key_dropped error=%s", kf_log_q(err->msg));
}

/* The client went away (reset the stream, gave up at its own deadline) while the KMS unwrapped or
 * made a key: the key is dropped unsealed, and the audit log says so under the caller's name. */
static void audit_client_gone(const kfd_op *op, const char *action, const char *volume_id, const char *request_id)
{
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_op_actor(op), action, KEYFLEET__V1__DECISION__DECISION_ERROR, op->peer.name, volume_id,
                   request_id, "the client went away while the KMS worked; no key was released");
    Keyfleet__V1__CmdAppendAudit c;
    Keyfleet__V1__StateCommand cmd;
    kfd_audit_command(&a, &c, &cmd);
    kfd_commit(op->app, &cmd, on_dropped_audited, NULL);
}

static bool ensure_ready(kfd_call *call)
{
    const char *why;
    if (kfd_app_ready(kfd_call_app(call), &why))
        return true;
    kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "coordinator cannot release keys: %s", why);
    return false;
}

/* check_revoked's answer (true: the call was answered); *hold is the node's hold, for
 * attest_eval_key (which then need not read the attestation record for it again). */
static bool check_revoked(kfd_call *call, const char *action, const char *volume_id, node_hold *hold)
{
    bool revoked = false;
    if (kfd_store_node_revoked(kfd_call_app(call)->store, call->peer->name, &revoked) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return true;
    }
    if (revoked) {
        deny_audited(call, action, KEYFLEET__V1__DECISION__DECISION_DENY, volume_id, "",
                     KF_CONNECT_PERMISSION_DENIED, "node is revoked");
        return true;
    }
    /* A node held for its TPM state (review rev17, A1: a cloned or rolled-back TPM) gets
     * nothing, with a quote or without, until an operator acts (a drift hold: attest_eval_key). */
    if (kfd_attest_held(call, hold->kind, hold->why, sizeof(hold->why)) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return true;
    }
    bool held = strcmp(hold->kind, "tpm") == 0;
    if (held)
        deny_audited(call, action, KEYFLEET__V1__DECISION__DECISION_DENY, volume_id, "",
                     KF_CONNECT_PERMISSION_DENIED, hold->why);
    return held;
}

/* The Retry-After header (whole seconds) of a refusal for a rate limit, wait ms away. */
static void retry_after(kfd_call *call, uint32_t wait)
{
    h2o_req_t *req = call->req;
    char *v = h2o_mem_alloc_pool(&req->pool, 16);
    int n = snprintf(v, 16, "%u", (wait + 999) / 1000);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, v, (size_t)n);
}

static bool rate_limited(kfd_call *call, const kfd_policy_decision *d)
{
    uint32_t wait = kfd_ratelimit_take(kfd_call_app(call)->ratelimit, call->peer->name, d->rate_per_minute,
                                       d->rate_burst, kf_monotonic_ms());
    if (wait == 0)
        return false;
    retry_after(call, wait);
    kfd_call_error(call, KF_CONNECT_RESOURCE_EXHAUSTED, "rate limit of rule '%s' exceeded; retry after %u ms", d->rule,
                   wait);
    return true;
}

/* ------------------------------------------------------------------ Enroll */

/* What a decision to hand out a key rests on that the apply cannot judge again (store_judged.h):
 * the policy evaluated, how the caller authenticated (its certificate's serial, or its AppRole
 * token's id and the digest of the rows it was let in by: review rev44b K2, K3), the accepted
 * values and recorded TPM counters att's quote was judged by, and vol's row as the rules see it
 * (name, labels, owner, two-part mode; NULL for a volume being enrolled). False (the call
 * answered) when a digest cannot be made. */
static bool judged_of(kfd_call *call, const kfd_volume *vol, const kfd_attest_eval *att, kfd_judged *j)
{
    memcpy(j->policy, kfd_call_app(call)->policy_judged, KFD_JUDGED_LEN);
    j->cert_serial[0] = j->token_id[0] = '\0';
    if (call->peer == &call->token_peer) {
        snprintf(j->token_id, sizeof(j->token_id), "%s", call->auth_token_id);
        memcpy(j->auth, call->auth_judged, KFD_JUDGED_LEN);
    } else if (call->peer != NULL) {
        snprintf(j->cert_serial, sizeof(j->cert_serial), "%s", call->peer->serial);
    }
    j->has_pcrs = att->attested;
    if (att->attested)
        memcpy(j->pcrs, att->judged_pcrs, KFD_JUDGED_LEN);
    j->has_tpm = att->has_clock;
    if (att->has_clock)
        memcpy(j->tpm, att->judged_tpm, KFD_JUDGED_LEN);
    if (vol != NULL && kfd_judged_volume(vol, j->volume) != 0) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "cannot digest the volume's row");
        return false;
    }
    return true;
}

/* The answer to a key's refusal at apply: revoked, retired or another node's, or stale (an
 * approval spent or lapsed, a rotation moved on). */
static kf_connect_code refused_code(int status)
{
    return status == -EACCES ? KF_CONNECT_PERMISSION_DENIED : KF_CONNECT_FAILED_PRECONDITION;
}

typedef struct enroll_op {
    kfd_op base;
    const Keyfleet__V1__EnrollRequest *req; /* valid while base.call is */
    kfd_policy_decision decision;
    char request_id[65];
    char volume_id[129];
    bool replay; /* same node and request id as a completed enroll */
    char kcv[KFD_KCV_TEXT_LEN + 1];
    kfd_judged judged; /* what its decision rests on (a first enrollment: the policy and PCRs) */

    char tofu[KF_TPM_PCRS_TEXT_MAX]; /* the node's first quoted PCR values, accepted with this enroll */
    Keyfleet__V1__AttestClock clock; /* the quote's counters, when has_clock */
    bool has_clock;
    char *wrapped;
    kfd_sealed sealed;
} enroll_op;

static void enroll_op_free(enroll_op *op)
{
    free(op->wrapped);
    kf_wipe(&op->sealed, sizeof(op->sealed));
    kfd_op_free(op);
}

static void answer_enroll(enroll_op *op, uint64_t audit_seq)
{
    (void)audit_seq;
    kfd_call *call = op->base.call;
    if (call == NULL)
        return;
    Keyfleet__V1__SealedKey sk;
    sealed_key(&sk, &op->sealed);
    Keyfleet__V1__EnrollResponse resp = KEYFLEET__V1__ENROLL_RESPONSE__INIT;
    resp.wrapped_key = op->wrapped;
    resp.sealed_key = &sk;
    /* Policy parsing keeps the two apart; a decision with both would still seal no whole copy. */
    resp.tpm_and_network = op->decision.tpm_and_network;
    resp.offline_fallback_allowed = op->decision.offline_fallback && !op->decision.tpm_and_network;
    uint32_t pcrs[] = {7};
    if (op->decision.offline_fallback || op->decision.tpm_and_network) {
        resp.n_tpm_pcrs = 1;
        resp.tpm_pcrs = pcrs;
    }
    char self[96];
    const char *listen = call->srv->cfg->listen.v[0];
    snprintf(self, sizeof(self), "%.*s:%d", (int)(strrchr(listen, ':') - listen), listen, kfd_server_port(call->srv, 0));
    char *coords[] = {self};
    resp.n_coordinators = 1;
    resp.coordinators = coords;
    kfd_call_reply(call, &resp.base);
}

static void on_enroll_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    enroll_op *op = arg;
    char exists[200];
    snprintf(exists, sizeof(exists), "volume %s is already enrolled", op->volume_id);
    if (kfd_rpc_refusal_answered(op->base.call, "enroll", op->volume_id, status, res, err,
                         status == -EEXIST ? KF_CONNECT_ALREADY_EXISTS : refused_code(status),
                         status == -EEXIST ? exists : NULL)) {
        enroll_op_free(op);
        return;
    }
    if (op->base.call == NULL)
        ;
    else if (status != 0)
        kfd_call_error(op->base.call, KF_CONNECT_UNAVAILABLE, "enrollment not recorded: %s", err->msg);
    else
        answer_enroll(op, res->audit_seq);
    enroll_op_free(op);
}

/* A repeated Enroll hands out the enrolled key again, so it is a release in every respect: it
 * is recorded (and checked against revocation at apply) before the answer goes out. */
static void on_enroll_replay_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    enroll_op *op = arg;
    kfd_call *call = op->base.call;
    if (kfd_rpc_refusal_answered(call, "enroll_replay", op->volume_id, status, res, err,
                         status == -EACCES ? KF_CONNECT_PERMISSION_DENIED : KF_CONNECT_ALREADY_EXISTS, NULL)) {
        enroll_op_free(op);
        return;
    }
    if (call == NULL) {
        enroll_op_free(op);
        return;
    }
    if (status != 0) {
        enroll_op_free(op);
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "enrollment replay could not be recorded; no key was released");
        return;
    }
    answer_enroll(op, res->audit_seq);
    enroll_op_free(op);
}

static void record_enroll_replay(enroll_op *op)
{
    kfd_call *call = op->base.call;
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "enroll_replay", KEYFLEET__V1__DECISION__DECISION_ALLOW, call->peer->name,
                   op->volume_id, op->request_id, op->decision.explanation);
    Keyfleet__V1__CmdRecordRelease c = KEYFLEET__V1__CMD_RECORD_RELEASE__INIT;
    c.request_id = op->request_id;
    c.node = (char *)call->peer->name;
    c.volume_id = op->volume_id;
    c.audit = &a.entry;
    c.enroll_replay_window_s = ENROLL_REPLAY_WINDOW_S; /* checked again at apply: two replays may race */
    c.kcv = op->kcv;
    kfd_judged_fields(&op->judged, &(kfd_judged_out){&c.judged_policy, &c.judged_volume, &c.judged_pcrs, &c.judged_tpm,
                                                       &c.judged_auth, &c.auth_cert_serial, &c.auth_token_id});
    c.attest_clock = op->has_clock ? &op->clock : NULL;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE;
    cmd.record_release = &c;
    kfd_commit(kfd_call_app(call), &cmd, on_enroll_replay_committed, op);
}

static void seal_for_enroll(enroll_op *op, const kf_secbuf *key, int *ret)
{
    *ret = kfd_seal_key(op->base.call, op->req->ephemeral_public_key.data, "enroll", op->request_id, op->volume_id,
                        key->data, &op->sealed);
}

static void on_enroll_key(void *arg, const kfd_kms_result *res)
{
    enroll_op *op = arg;
    kfd_call *call = op->base.call;
    if (call == NULL) {
        if (res->status == 0)
            audit_client_gone(&op->base, "enroll", op->volume_id, op->request_id);
        enroll_op_free(op);
        return;
    }
    if (res->status == 0 && kfd_call_deadline_expired(call)) {
        char vol[129], rid[65];
        snprintf(vol, sizeof(vol), "%s", op->volume_id);
        snprintf(rid, sizeof(rid), "%s", op->request_id);
        enroll_op_free(op);
        deadline_after_kms(call, "enroll", vol, rid);
        return;
    }
    if (res->status != 0) {
        char vol[129], rid[65];
        snprintf(vol, sizeof(vol), "%s", op->volume_id);
        snprintf(rid, sizeof(rid), "%s", op->request_id);
        kf_log_error("kms_failed", "op=generate volume=%s error=%s", kf_log_q(vol), kf_log_q(res->message));
        enroll_op_free(op);
        bool late = kfd_call_deadline_expired(call);
        deny_audited(call, "enroll", KEYFLEET__V1__DECISION__DECISION_ERROR, vol, rid,
                     late ? KF_CONNECT_DEADLINE_EXCEEDED : KF_CONNECT_UNAVAILABLE,
                     late ? "KMS unavailable and the request's deadline passed" : "KMS unavailable");
        return;
    }
    int r;
    seal_for_enroll(op, res->plaintext, &r);
    if (r == 0 && kfd_kcv(op->volume_id, res->plaintext->data, op->kcv) != 0)
        r = -EINVAL;
    if (r != 0) {
        enroll_op_free(op);
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "cannot seal to ephemeral_public_key");
        return;
    }
    if (op->replay) {
        record_enroll_replay(op);
        return;
    }
    if ((op->wrapped = strdup(res->wrapped)) == NULL) {
        enroll_op_free(op);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "enroll", KEYFLEET__V1__DECISION__DECISION_ALLOW, call->peer->name,
                   op->req->volume->id,
                   op->request_id, op->decision.explanation);
    Keyfleet__V1__CmdEnrollVolume c = KEYFLEET__V1__CMD_ENROLL_VOLUME__INIT;
    c.volume = op->req->volume;
    c.n_labels = op->req->n_labels;
    c.labels = op->req->labels;
    c.node = (char *)call->peer->name;
    c.wrapped_key = (char *)res->wrapped;
    c.attest_tofu = op->tofu;
    c.attest_clock = op->has_clock ? &op->clock : NULL;
    c.audit = &a.entry;
    c.key_kcv = op->kcv;
    c.tpm_and_network = op->decision.tpm_and_network; /* the mode, fixed at enroll (review rev26b F1) */
    kfd_judged_fields(&op->judged, &(kfd_judged_out){&c.judged_policy, NULL /* the volume is new */, &c.judged_pcrs,
                                                     &c.judged_tpm, &c.judged_auth, &c.auth_cert_serial,
                                                     &c.auth_token_id});
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME;
    cmd.enroll_volume = &c;
    kfd_commit(kfd_call_app(call), &cmd, on_enroll_committed, op);
}

static enroll_op *new_enroll_op(kfd_call *call, const Keyfleet__V1__EnrollRequest *req,
                                const kfd_policy_decision *decision)
{
    enroll_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return NULL;
    }
    op->req = req;
    op->decision = *decision;
    snprintf(op->request_id, sizeof(op->request_id), "%s", req->request_id);
    snprintf(op->volume_id, sizeof(op->volume_id), "%s", req->volume->id);
    return op;
}

/* A retry of an enrollment that completed (its answer was lost): only by the enrolling node,
 * with the original request id, before the volume was ever released and within
 * ENROLL_REPLAY_WINDOW_S. It is decided as a release of the enrolled volume (stored name and
 * labels, approval rules apply) and recorded before the key goes out. */
static void enroll_replay(kfd_call *call, const Keyfleet__V1__EnrollRequest *req, const kfd_volume *existing,
                          const kfd_attest_eval *att)
{
    const char *vid = req->volume->id;
    if (strcmp(existing->node, call->peer->name) != 0 ||
        strcmp(existing->enroll_request_id, req->request_id) != 0) {
        char msg[256];
        snprintf(msg, sizeof(msg), "volume %s is already enrolled%s", vid,
                 strcmp(existing->node, call->peer->name) == 0 ? "" : " by another node");
        deny_audited(call, "enroll", KEYFLEET__V1__DECISION__DECISION_DENY, vid, req->request_id,
                     KF_CONNECT_ALREADY_EXISTS, msg);
        return;
    }
    int64_t now = time(NULL);
    if (existing->last_released_at != 0 || now - existing->created_at > ENROLL_REPLAY_WINDOW_S ||
        now < existing->created_at) {
        deny_audited(call, "enroll", KEYFLEET__V1__DECISION__DECISION_DENY, vid, req->request_id,
                     KF_CONNECT_ALREADY_EXISTS, "volume is already enrolled and can no longer be enrolled again; "
                     "its key is released with Release");
        return;
    }
    kfd_label_set ls;
    kfd_label_set_from_json(&ls, existing->labels_json);
    kfd_policy_input in = {.node = call->peer->name, .tpm_key = call->peer->tpm_key, .source = call->source, .volume_id = existing->id,
                           .volume_name = existing->name, .labels = ls.items, .n_labels = ls.n, .now = now,
                           .attested = att->attested, .attest_why = att->why, .quoted = att->quote_valid ? &att->quoted : NULL};
    kfd_policy_decision decision;
    kfd_policy_evaluate(kfd_call_app(call)->policy, &in, &decision);
    note_rollback(att, &decision);
    kfd_label_set_clear(&ls);
    if (!decision.allow) {
        deny_audited(call, "policy_deny", KEYFLEET__V1__DECISION__DECISION_DENY, vid, req->request_id,
                     KF_CONNECT_PERMISSION_DENIED, decision.explanation);
        return;
    }
    if (decision.approvals > 0) {
        deny_audited(call, "enroll", KEYFLEET__V1__DECISION__DECISION_DENY, vid, req->request_id,
                     KF_CONNECT_FAILED_PRECONDITION, "volume is already enrolled and its key needs approval; "
                     "a repeated Enroll cannot return it: use Release");
        return;
    }
    if (rate_limited(call, &decision))
        return;
    enroll_op *op = new_enroll_op(call, req, &decision);
    if (op == NULL)
        return;
    op->replay = true;
    attest_clock_of(att, &op->clock, &op->has_clock);
    if (!judged_of(call, existing, att, &op->judged)) {
        enroll_op_free(op);
        return;
    }
    if ((op->wrapped = strdup(existing->wrapped_key)) == NULL) {
        enroll_op_free(op);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    if (kfd_call_deadline_passed(call, "the KMS unwrap")) {
        enroll_op_free(op);
        return;
    }
    kfd_kms *kms = kfd_call_app(call)->kms;
    kms->ops->unwrap(kms, vid, existing->wrapped_key, on_enroll_key, op);
}

void kfd_rpc_enroll(kfd_call *call)
{
    const Keyfleet__V1__EnrollRequest *req = (const Keyfleet__V1__EnrollRequest *)call->request;
    const char *bad = kf_check_enroll(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    node_hold hold;
    if (!ensure_ready(call) || check_revoked(call, "enroll", req->volume->id, &hold))
        return;
    kfd_app *app = kfd_call_app(call);
    kfd_volume existing;
    int r = kfd_store_get_volume(app->store, req->volume->id, &existing);
    if (r != 0 && r != -ENOENT) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    kfd_attest_eval att;
    if (!attest_eval_key(call, &hold, req->attestation, "Enroll", req->volume->id, &req->ephemeral_public_key, req->request_id,
                     &att)) {
        if (r == 0)
            kfd_volume_clear(&existing);
        return;
    }
    if (r == 0) {
        enroll_replay(call, req, &existing, &att);
        kfd_volume_clear(&existing);
        return;
    }
    kfd_label labels[LABELS_MAX];
    for (size_t i = 0; i < req->n_labels; i++)
        labels[i] = (kfd_label){req->labels[i]->key, req->labels[i]->value};
    /* Trust on first use: a quote that holds, from a node with no accepted values yet, is what
     * it booted at its first enrollment; those values are accepted with this enroll's record. A
     * node that already has volumes does not get a baseline by enrolling another (it could pick
     * the moment, and the boot): an operator accepts its values. Checked again at apply. */
    bool first_enrollment = false;
    if (att.no_baseline) {
        bool has = true;
        if (kfd_store_node_has_volumes(app->store, call->peer->name, &has) != 0) {
            kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
            return;
        }
        first_enrollment = !has;
        if (!first_enrollment)
            snprintf(att.why, sizeof(att.why),
                     "node '%s' has no accepted PCR values and already has volumes: trust on first use is only at "
                     "a node's first enrollment; keyfleetctl node attest show|accept",
                     call->peer->name);
    }
    kfd_policy_input in = {.node = call->peer->name, .tpm_key = call->peer->tpm_key, .source = call->source, .volume_id = req->volume->id,
                           .volume_name = req->volume->name, .labels = labels, .n_labels = req->n_labels,
                           .now = time(NULL), .enrolling = true, .attested = att.attested || first_enrollment,
                           .attest_why = att.why, .quoted = att.quote_valid ? &att.quoted : NULL};
    kfd_policy_decision decision;
    kfd_policy_evaluate(app->policy, &in, &decision);
    note_rollback(&att, &decision);
    if (!decision.allow && att.seen[0] != '\0' && !first_enrollment) {
        deny_attest(call, req->volume->id, req->request_id, &att, decision.explanation);
        return;
    }
    if (!decision.allow) {
        deny_audited(call, "policy_deny", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_PERMISSION_DENIED, decision.explanation);
        return;
    }
    if (rate_limited(call, &decision))
        return;
    if (kfd_call_deadline_passed(call, "the KMS key generation"))
        return;
    enroll_op *op = new_enroll_op(call, req, &decision);
    if (op == NULL)
        return;
    attest_clock_of(&att, &op->clock, &op->has_clock);
    (void)judged_of(call, NULL, &att, &op->judged); /* no volume row to digest: cannot fail */
    if (first_enrollment)
        snprintf(op->tofu, sizeof(op->tofu), "%s", att.seen);
    app->kms->ops->generate(app->kms, req->volume->id, on_enroll_key, op);
}

/* ------------------------------------------------------------------ Release */

typedef struct release_op {
    kfd_op base;
    const Keyfleet__V1__ReleaseRequest *req; /* valid while base.call is */
    kfd_policy_decision decision;
    char request_id[65];
    char volume_id[129];
    kfd_sealed sealed;
    char rewrapped[KFD_WRAPPED_MAX];
    bool approved_request;
    kfd_key_age key_age; /* overdue keys are released, flagged in the record and the answer */
    /* The volume's key check values when the handler read it, and the released key's. */
    char key_kcv[24], next_kcv[24], kcv[24]; /* KFD_KCV_TEXT_LEN + 1 fits */
    Keyfleet__V1__AttestClock clock; /* the quote's counters, when has_clock */
    bool has_clock;
    kfd_judged judged; /* what the decision rests on, for the apply to judge again */
} release_op;

static void on_release_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    release_op *op = arg;
    kfd_call *call = op->base.call;
    if (kfd_rpc_refusal_answered(call, "release", op->volume_id, status, res, err, refused_code(status), NULL)) {
        kfd_op_free(op);
        return;
    }
    if (status != 0) {
        /* Fail closed: no durable record, no key. */
        kf_log_error("release_not_recorded", "volume=%s request=%s error=%s", kf_log_q(op->volume_id),
                     op->request_id, kf_log_q(err->msg));
        if (call != NULL)
            kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "release could not be recorded; no key was released");
        kfd_op_free(op);
        return;
    }
    if (call == NULL) {
        /* Recorded, but the client went away: the sealed key is never sent. */
        kf_log_warn("release_not_delivered", "volume=%s request=%s audit_seq=%llu", kf_log_q(op->volume_id),
                    op->request_id, (unsigned long long)res->audit_seq);
        kfd_op_free(op);
        return;
    }
    /* Recorded here, but this replica's state is disputed or diverged (review rev17c, C1): another
     * process wrote its database, or its voters hold another head. The release counts only on a
     * majority's state, so the sealed key is never sent. */
    kfd_store *store = kfd_call_app(call)->store;
    if (kfd_store_audit_disputed(store, NULL) != 0 || kfd_store_audit_diverged(store, NULL) != 0) {
        kf_log_error("release_withheld", "volume=%s request=%s audit_seq=%llu reason=\"this replica's state is "
                     "disputed or diverged\"", kf_log_q(op->volume_id), op->request_id,
                     (unsigned long long)res->audit_seq);
        kfd_op_free(op);
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "this coordinator's state is disputed; no key was released");
        return;
    }
    Keyfleet__V1__SealedKey sk;
    sealed_key(&sk, &op->sealed);
    Keyfleet__V1__ReleaseResponse resp = KEYFLEET__V1__RELEASE_RESPONSE__INIT;
    resp.status = KEYFLEET__V1__RELEASE_STATUS__RELEASE_STATUS_RELEASED;
    resp.request_id = op->request_id;
    resp.sealed_key = &sk;
    resp.audit_seq = res->audit_seq;
    resp.rewrapped_key = op->rewrapped;
    resp.key_overdue = op->key_age.overdue;
    resp.tpm_and_network = op->decision.tpm_and_network;
    kfd_recovery rec;
    if (kfd_store_get_recovery(kfd_call_app(call)->store, op->volume_id, &rec) == 0) {
        resp.recovery_replace = rec.revealed_at != 0 && strcmp(rec.node, call->peer->name) == 0;
        kfd_recovery_clear(&rec);
    }
    if (op->key_age.overdue)
        kf_log_warn("key_overdue", "node=%s volume=%s key_age_s=%lld max_key_age_s=%llu from=%s", call->peer->name,
                    kf_log_q(op->volume_id), (long long)op->key_age.age_s,
                    (unsigned long long)op->key_age.max_age_s, kf_log_q(op->key_age.from));
    kf_log_info("released", "node=%s volume=%s request=%s audit_seq=%llu rule=%s tpm_key=%s", call->peer->name,
                kf_log_q(op->volume_id), op->request_id, (unsigned long long)res->audit_seq,
                kf_log_q(op->decision.rule), call->peer->tpm_key ? "yes" : "no");
    kfd_call_reply(call, &resp.base);
    kfd_op_free(op);
}

static void record_release(release_op *op);

/* Frees op and answers (after auditing the dropped key) when the client's time is up. */
static bool release_past_deadline(release_op *op)
{
    kfd_call *call = op->base.call;
    if (!kfd_call_deadline_expired(call))
        return false;
    char vol[129], rid[65];
    snprintf(vol, sizeof(vol), "%s", op->volume_id);
    snprintf(rid, sizeof(rid), "%s", op->request_id);
    kfd_op_free(op);
    deadline_after_kms(call, "release", vol, rid);
    return true;
}

static void on_rewrapped(void *arg, const kfd_kms_result *res)
{
    release_op *op = arg;
    if (op->base.call == NULL) {
        audit_client_gone(&op->base, "release", op->volume_id, op->request_id); /* unwrapped before the rewrap */
        kfd_op_free(op);
        return;
    }
    if (res->status == 0)
        snprintf(op->rewrapped, sizeof(op->rewrapped), "%s", res->wrapped);
    else /* not fatal: the old wrapped key still opens, and the next release tries again */
        kf_log_warn("rewrap_failed", "volume=%s error=%s", kf_log_q(op->volume_id), kf_log_q(res->message));
    record_release(op);
}

static void on_release_key(void *arg, const kfd_kms_result *res)
{
    release_op *op = arg;
    kfd_call *call = op->base.call;
    if (call == NULL) {
        if (res->status == 0)
            audit_client_gone(&op->base, "release", op->volume_id, op->request_id);
        kfd_op_free(op);
        return;
    }
    const char *volume_id = op->volume_id;
    if (res->status != 0) {
        char vol[129], rid[65];
        snprintf(vol, sizeof(vol), "%s", op->volume_id);
        snprintf(rid, sizeof(rid), "%s", op->request_id);
        kfd_op_free(op);
        if (res->status == -EBADMSG || res->status == -EINVAL) {
            deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_DENY, vol, rid,
                         KF_CONNECT_FAILED_PRECONDITION, "the wrapped key does not belong to this volume");
        } else {
            kf_log_error("kms_failed", "op=unwrap volume=%s error=%s", kf_log_q(vol), kf_log_q(res->message));
            bool late = kfd_call_deadline_expired(call); /* the KMS's own retries ran past it */
            deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_ERROR, vol, rid,
                         late ? KF_CONNECT_DEADLINE_EXCEEDED : KF_CONNECT_UNAVAILABLE,
                         late ? "KMS unavailable and the request's deadline passed; no key was released"
                              : "KMS unavailable; no key was released");
        }
        return;
    }
    if (release_past_deadline(op))
        return;
    /* The key the wrapped text really holds (a KMS checks the text's own KCV against it). */
    if (kfd_kcv(volume_id, res->plaintext->data, op->kcv) != 0 || kcv_retired(op->kcv, op->key_kcv, op->next_kcv)) {
        char vol[129], rid[65];
        snprintf(vol, sizeof(vol), "%s", op->volume_id);
        snprintf(rid, sizeof(rid), "%s", op->request_id);
        kfd_op_free(op);
        deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_DENY, vol, rid, KF_CONNECT_FAILED_PRECONDITION,
                     RETIRED_MESSAGE);
        return;
    }
    if (kfd_seal_key(call, op->req->ephemeral_public_key.data, "release", op->request_id, volume_id,
                     res->plaintext->data, &op->sealed) != 0) {
        kfd_op_free(op);
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "cannot seal to ephemeral_public_key");
        return;
    }
    if (res->stale) {
        /* The rewrapped key rides on this answer; the record is written once it is known. */
        kfd_kms *kms = kfd_call_app(call)->kms;
        kms->ops->wrap(kms, volume_id, res->plaintext, on_rewrapped, op);
        return;
    }
    record_release(op);
}

/* A key age in whole days, or hours or seconds under a day. */
static const char *fmt_age(uint64_t s, char buf[24])
{
    if (s >= 86400)
        snprintf(buf, 24, "%llud", (unsigned long long)(s / 86400));
    else if (s >= 3600)
        snprintf(buf, 24, "%lluh", (unsigned long long)(s / 3600));
    else
        snprintf(buf, 24, "%llus", (unsigned long long)s);
    return buf;
}

static void record_release(release_op *op)
{
    kfd_call *call = op->base.call;
    /* The key leaves only with its audit record; neither is started once the client's time is up
     * (a rewrap may have taken it). */
    if (release_past_deadline(op))
        return;
    const char *volume_id = op->volume_id;
    char reason[sizeof(op->decision.explanation) + 160], age[24], max[24];
    if (op->key_age.overdue)
        snprintf(reason, sizeof(reason), "%s; key overdue: %s old, max_key_age %s (%s); rotate it",
                 op->decision.explanation, fmt_age((uint64_t)op->key_age.age_s, age),
                 fmt_age(op->key_age.max_age_s, max), op->key_age.from);
    else
        snprintf(reason, sizeof(reason), "%s", op->decision.explanation);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "release", KEYFLEET__V1__DECISION__DECISION_ALLOW, call->peer->name,
                   volume_id,
                   op->request_id, reason);
    Keyfleet__V1__CmdRecordRelease c = KEYFLEET__V1__CMD_RECORD_RELEASE__INIT;
    c.request_id = op->request_id;
    c.node = (char *)call->peer->name;
    c.volume_id = (char *)volume_id;
    c.audit = &a.entry;
    c.approved_request = op->approved_request;
    c.kcv = op->kcv; /* checked again at apply: a rotation may have committed meanwhile */
    c.attest_clock = op->has_clock ? &op->clock : NULL;
    kfd_judged_fields(&op->judged, &(kfd_judged_out){&c.judged_policy, &c.judged_volume, &c.judged_pcrs, &c.judged_tpm,
                                                       &c.judged_auth, &c.auth_cert_serial, &c.auth_token_id});
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE;
    cmd.record_release = &c;
    kfd_commit(kfd_call_app(call), &cmd, on_release_committed, op);
}

static void answer_pending(kfd_call *call, const char *request_id, int64_t expires_at)
{
    Keyfleet__V1__Timestamp exp = KEYFLEET__V1__TIMESTAMP__INIT;
    exp.seconds = expires_at;
    Keyfleet__V1__ReleaseResponse resp = KEYFLEET__V1__RELEASE_RESPONSE__INIT;
    resp.status = KEYFLEET__V1__RELEASE_STATUS__RELEASE_STATUS_PENDING;
    resp.request_id = (char *)request_id;
    resp.retry_after_ms = (uint32_t)call->srv->cfg->approval_poll_ms;
    resp.expires_at = &exp;
    kfd_call_reply(call, &resp.base);
}

typedef struct pending_op {
    kfd_op base;
    kfd_webhook *webhook;
    char request_id[33];
    int64_t expires_at;
    char webhook_body[1024];
} pending_op;

static void on_pending_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res;
    pending_op *op = arg;
    if (status != 0) {
        if (op->base.call != NULL)
            kfd_call_error(op->base.call, KF_CONNECT_UNAVAILABLE, "pending request not recorded: %s", err->msg);
    } else {
        kfd_webhook_notify(op->webhook, op->webhook_body);
        if (op->base.call != NULL)
            answer_pending(op->base.call, op->request_id, op->expires_at);
    }
    kfd_op_free(op);
}

static void create_pending(kfd_call *call, const kfd_volume *vol, const kfd_policy_decision *d)
{
    if (kfd_call_deadline_passed(call, "the approval request"))
        return;
    pending_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    op->webhook = kfd_call_app(call)->webhook;
    kfd_new_request_id(op->request_id);
    int64_t now = time(NULL);
    op->expires_at = now + d->pending_ttl_s;
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:I}", "event", "pending", "request_id", op->request_id,
                          "node", call->peer->name, "volume_id", vol->id, "volume_name", vol->name, "rule", d->rule,
                          "approvals_needed", (int)d->approvals, "expires_at", (json_int_t)op->expires_at);
    char *body = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    snprintf(op->webhook_body, sizeof(op->webhook_body), "%s", body != NULL ? body : "{}");
    free(body);
    json_decref(j);

    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "pending", KEYFLEET__V1__DECISION__DECISION_PENDING, call->peer->name,
                   vol->id,
                   op->request_id, d->explanation);
    Keyfleet__V1__VolumeRef ref = KEYFLEET__V1__VOLUME_REF__INIT;
    ref.id = (char *)vol->id;
    ref.kind = (Keyfleet__V1__VolumeKind)vol->kind;
    ref.name = (char *)vol->name;
    Keyfleet__V1__Timestamp created = KEYFLEET__V1__TIMESTAMP__INIT, expires = KEYFLEET__V1__TIMESTAMP__INIT;
    created.seconds = now;
    expires.seconds = op->expires_at;
    Keyfleet__V1__CmdCreatePending c = KEYFLEET__V1__CMD_CREATE_PENDING__INIT;
    c.request_id = op->request_id;
    c.node = (char *)call->peer->name;
    c.volume = &ref;
    c.source_address = call->source;
    c.created_at = &created;
    c.expires_at = &expires;
    c.approvals_needed = d->approvals;
    c.require_totp = d->require_totp;
    c.rule = (char *)d->rule;
    c.audit = &a.entry;
    c.judged_policy = (ProtobufCBinaryData){KFD_JUDGED_LEN, kfd_call_app(call)->policy_judged}; /* rev44 J6 */
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_PENDING;
    cmd.create_pending = &c;
    kfd_call_commit(call, &cmd, on_pending_committed, op);
}

/* Handles a poll with an existing request id. Returns true when the release may proceed. */
static bool poll_pending(kfd_call *call, const Keyfleet__V1__ReleaseRequest *req, const kfd_policy_decision *now)
{
    kfd_pending p;
    int r = kfd_store_get_pending(kfd_call_app(call)->store, req->request_id, &p);
    if (r == -ENOENT) {
        kfd_call_error(call, KF_CONNECT_NOT_FOUND, "no pending request %s", req->request_id);
        return false;
    }
    if (r != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return false;
    }
    if (strcmp(p.node, call->peer->name) != 0 || strcmp(p.volume_id, req->volume->id) != 0) {
        deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_PERMISSION_DENIED, "request id belongs to another node or volume");
        return false;
    }
    switch (p.state) {
    case KFD_PENDING_WAITING:
        if (time(NULL) >= p.expires_at) {
            kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "request %s expired without approval", p.request_id);
            kfd_approvals_expire(kfd_call_app(call));
        } else {
            answer_pending(call, p.request_id, p.expires_at);
        }
        return false;
    case KFD_PENDING_DENIED:
        kfd_call_error(call, KF_CONNECT_PERMISSION_DENIED, "request %s was denied by an operator", p.request_id);
        return false;
    case KFD_PENDING_EXPIRED:
        kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "request %s expired without approval", p.request_id);
        return false;
    case KFD_PENDING_CONSUMED:
        deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_FAILED_PRECONDITION,
                     "approved request was already used by a release; start a new request");
        return false;
    case KFD_PENDING_APPROVED:
        if (time(NULL) >= p.expires_at) {
            kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "approved request %s has expired", p.request_id);
            return false;
        }
        /* The policy may have been tightened since the request was made: it must meet today's rule. */
        if (p.approvals_have < now->approvals || (now->require_totp && !p.require_totp)) {
            char why[200];
            snprintf(why, sizeof(why),
                     "policy changed since approval: it now needs %u approvals%s and this request had %u%s; "
                     "start a new request",
                     (unsigned)now->approvals, now->require_totp ? " with TOTP" : "", (unsigned)p.approvals_have,
                     p.require_totp ? " with TOTP" : "");
            deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                         KF_CONNECT_FAILED_PRECONDITION, why);
            return false;
        }
        return true;
    }
    return false;
}

/* The volume a release names, read and checked: known, not retired, and not holding a key a
 * rotation retired. False when the call was answered (vol then holds nothing); else clear vol. */
static bool release_volume(kfd_call *call, const Keyfleet__V1__ReleaseRequest *req, kfd_volume *vol)
{
    kfd_app *app = kfd_call_app(call);
    int r = kfd_store_get_volume(app->store, req->volume->id, vol);
    if (r == -ENOENT) {
        deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_NOT_FOUND, "unknown volume");
        return false;
    }
    if (r != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return false;
    }
    /* A retired volume's key goes to nobody (checked again at apply: a retire committed while
     * the KMS answered). */
    if (vol->retired_at != 0) {
        kfd_volume_clear(vol);
        deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_PERMISSION_DENIED, "volume is retired");
        return false;
    }
    /* A wrapped key that names its data key (remote KMSs) is checked before the KMS is asked;
     * every key is checked again once unwrapped, and at apply. */
    kfd_wrapped w;
    if (kfd_wrapped_parse(req->wrapped_key, app->kms->ops->name, &w) == 0 &&
        kcv_retired(w.kcv, vol->key_kcv, vol->next_kcv)) {
        kfd_volume_clear(vol);
        deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_FAILED_PRECONDITION, RETIRED_MESSAGE);
        return false;
    }
    return true;
}

/* The policy's decision on releasing vol's key to the caller (with the quote's rollback note),
 * and the key's age; a denial (with the quote's values when they are not the accepted ones) or
 * the rule's rate limit is answered, and returns false. */
static bool release_decide(kfd_call *call, const Keyfleet__V1__ReleaseRequest *req, const kfd_volume *vol,
                           const kfd_attest_eval *att, kfd_policy_decision *decision, kfd_key_age *key_age)
{
    kfd_app *app = kfd_call_app(call);
    kfd_label_set ls;
    kfd_label_set_from_json(&ls, vol->labels_json);
    kfd_policy_input in = {.node = call->peer->name, .tpm_key = call->peer->tpm_key, .source = call->source,
                           .volume_id = vol->id, .volume_name = vol->name, .labels = ls.items, .n_labels = ls.n,
                           .now = time(NULL), .attested = att->attested, .attest_why = att->why,
                           .quoted = att->quote_valid ? &att->quoted : NULL};
    kfd_policy_evaluate_release(app->policy, &in, vol->node, decision);
    note_rollback(att, decision);
    kfd_policy_input owner = in; /* the key's age is judged as keyfleetctl volume list judges it */
    owner.node = vol->node;
    kfd_policy_key_age(app->policy, &owner, vol->key_created_at, key_age);
    kfd_label_set_clear(&ls);
    if (!decision->allow && att->seen[0] != '\0') {
        deny_attest(call, req->volume->id, req->request_id, att, decision->explanation);
        return false;
    }
    if (!decision->allow) {
        deny_audited(call, "policy_deny", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_PERMISSION_DENIED, decision->explanation);
        return false;
    }
    return !rate_limited(call, decision);
}

/* A release the rule holds for approval: refused at once (rewrap's no_pending), made a pending
 * request, or polled. True when it may go on: no approval needed, or the request named is
 * approved (*approved_request); false when the call was answered. */
static bool release_approved(kfd_call *call, const Keyfleet__V1__ReleaseRequest *req, const kfd_volume *vol,
                             const kfd_policy_decision *decision, bool *approved_request)
{
    *approved_request = false;
    if (decision->approvals > 0) {
        if (req->request_id[0] == '\0' && req->no_pending) {
            /* The caller (rewrap) would rather hear it at once than leave a request behind. */
            char why[200];
            snprintf(why, sizeof(why), "release needs %u approval(s)%s under rule %s; no request was made",
                     (unsigned)decision->approvals, decision->require_totp ? " with TOTP" : "", decision->rule);
            deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, "",
                         KF_CONNECT_FAILED_PRECONDITION, why);
            return false;
        }
        if (req->request_id[0] == '\0') {
            create_pending(call, vol, decision);
            return false;
        }
        if (!poll_pending(call, req, decision))
            return false;
        *approved_request = true;
    }
    return true;
}

/* The op the KMS step carries to on_release_key: what the answer and the record need, copied
 * from vol (which the caller then clears). NULL: out of memory. */
static release_op *new_release_op(kfd_call *call, const Keyfleet__V1__ReleaseRequest *req, const kfd_volume *vol,
                                  const kfd_attest_eval *att, const kfd_policy_decision *decision,
                                  const kfd_key_age *key_age, bool approved_request, const kfd_judged *judged)
{
    release_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL)
        return NULL;
    snprintf(op->key_kcv, sizeof(op->key_kcv), "%s", vol->key_kcv);
    snprintf(op->next_kcv, sizeof(op->next_kcv), "%s", vol->next_kcv);
    op->req = req;
    op->decision = *decision;
    op->approved_request = approved_request;
    attest_clock_of(att, &op->clock, &op->has_clock);
    op->judged = *judged;
    op->key_age = *key_age;
    snprintf(op->volume_id, sizeof(op->volume_id), "%s", req->volume->id);
    if (req->request_id[0] != '\0')
        snprintf(op->request_id, sizeof(op->request_id), "%s", req->request_id);
    else
        kfd_new_request_id(op->request_id);
    return op;
}

void kfd_rpc_release(kfd_call *call)
{
    const Keyfleet__V1__ReleaseRequest *req = (const Keyfleet__V1__ReleaseRequest *)call->request;
    const char *bad = kf_check_release(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    node_hold hold;
    if (!ensure_ready(call) || check_revoked(call, "release", req->volume->id, &hold))
        return;
    kfd_attest_eval att;
    if (!attest_eval_key(call, &hold, req->attestation, "Release", req->volume->id, &req->ephemeral_public_key, req->request_id,
                     &att))
        return;
    kfd_volume vol;
    if (!release_volume(call, req, &vol))
        return;
    kfd_policy_decision decision;
    kfd_key_age key_age;
    bool approved_request;
    kfd_judged judged;
    if (!release_decide(call, req, &vol, &att, &decision, &key_age) ||
        !release_approved(call, req, &vol, &decision, &approved_request) ||
        kfd_call_deadline_passed(call, "the KMS unwrap") || !judged_of(call, &vol, &att, &judged)) {
        kfd_volume_clear(&vol);
        return;
    }
    release_op *op = new_release_op(call, req, &vol, &att, &decision, &key_age, approved_request, &judged);
    kfd_volume_clear(&vol);
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    kfd_app *app = kfd_call_app(call);
    app->kms->ops->unwrap(app->kms, req->volume->id, req->wrapped_key, on_release_key, op);
}

/* ------------------------------------------------------------------ RotateKey */

/* BEGIN: validate; revoked?; volume known?; its quote (as Release's); the enrolling node?; key
 * check value known?; policy allows a release without approval; rate limit; the KMS makes the new key (or unwraps the
 * rotation already in progress, so a repeated BEGIN gets the same key); seal it; commit the
 * rotation and its audit record; only then answer. COMMIT: the same checks up to the owner; the
 * KMS unwraps the presented key (its data key, not its text, must be the rotation in progress);
 * commit; answer. Both steps are checked again at apply (store_guard.c). */
typedef struct rotate_op {
    kfd_op base;
    const Keyfleet__V1__RotateKeyRequest *req; /* valid while base.call is */
    bool commit;
    char action[16];
    char request_id[65];
    char volume_id[129];
    char key_kcv[24], next_kcv[24], kcv[24]; /* KFD_KCV_TEXT_LEN + 1 fits */
    char *wrapped; /* BEGIN: the new key, wrapped; COMMIT: the presented one */
    kfd_sealed sealed;
    bool offline_fallback; /* the volume's rule lets the node keep a TPM copy (BEGIN's answer) */
    bool names_pcrs;       /* BEGIN names the PCRs for the TPM copy or TPM part, as Enroll does */
    kfd_judged judged;     /* what the decision rests on, for the apply to judge again */
    Keyfleet__V1__AttestClock clock; /* the quote's counters and clock, when has_clock */
    bool has_clock;
} rotate_op;

static void rotate_op_free(rotate_op *op)
{
    free(op->wrapped);
    kf_wipe(&op->sealed, sizeof(op->sealed));
    kfd_op_free(op);
}

/* Frees op, then audits the refusal and answers code. */
static void rotate_refuse(rotate_op *op, Keyfleet__V1__Decision decision, kf_connect_code code, const char *message)
{
    kfd_call *call = op->base.call;
    char vol[129], rid[65], action[16], msg[256];
    snprintf(vol, sizeof(vol), "%s", op->volume_id);
    snprintf(rid, sizeof(rid), "%s", op->request_id);
    snprintf(action, sizeof(action), "%s", op->action);
    snprintf(msg, sizeof(msg), "%s", message);
    rotate_op_free(op);
    deny_audited(call, action, decision, vol, rid, code, msg);
}

static void on_rotate_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    rotate_op *op = arg;
    kfd_call *call = op->base.call;
    if (kfd_rpc_refusal_answered(call, op->action, op->volume_id, status, res, err, refused_code(status), NULL)) {
        rotate_op_free(op);
        return;
    }
    if (call == NULL) {
        if (status == 0 && !op->commit)
            kf_log_warn("rotate_not_delivered", "volume=%s request=%s audit_seq=%llu", kf_log_q(op->volume_id),
                        op->request_id, (unsigned long long)res->audit_seq);
        rotate_op_free(op);
        return;
    }
    if (status != 0) {
        kf_log_error("rotate_not_recorded", "volume=%s step=%s error=%s", kf_log_q(op->volume_id), op->action,
                     kf_log_q(err->msg));
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "the rotation could not be recorded; no key was released");
        rotate_op_free(op);
        return;
    }
    Keyfleet__V1__SealedKey sk;
    Keyfleet__V1__RotateKeyResponse resp = KEYFLEET__V1__ROTATE_KEY_RESPONSE__INIT;
    resp.wrapped_key = op->wrapped;
    resp.audit_seq = res->audit_seq;
    uint32_t pcrs[] = {7}; /* as Enroll's answer */
    if (!op->commit) {
        sealed_key(&sk, &op->sealed);
        resp.sealed_key = &sk;
        resp.offline_fallback_allowed = op->offline_fallback;
        if (op->names_pcrs) {
            resp.n_tpm_pcrs = 1;
            resp.tpm_pcrs = pcrs;
        }
    }
    kf_log_info("rotated", "node=%s volume=%s step=%s audit_seq=%llu", call->peer->name, kf_log_q(op->volume_id),
                op->commit ? "commit" : "begin", (unsigned long long)res->audit_seq);
    kfd_call_reply(call, &resp.base);
    rotate_op_free(op);
}

static void on_rotate_key(void *arg, const kfd_kms_result *res)
{
    rotate_op *op = arg;
    kfd_call *call = op->base.call;
    if (call == NULL) {
        rotate_op_free(op);
        return;
    }
    if (res->status == 0 && kfd_call_deadline_expired(call)) {
        char vol[129], rid[65], action[16];
        snprintf(vol, sizeof(vol), "%s", op->volume_id);
        snprintf(rid, sizeof(rid), "%s", op->request_id);
        snprintf(action, sizeof(action), "%s", op->action);
        rotate_op_free(op);
        deadline_after_kms(call, action, vol, rid);
        return;
    }
    if (res->status == -EBADMSG || res->status == -EINVAL) {
        rotate_refuse(op, KEYFLEET__V1__DECISION__DECISION_DENY, KF_CONNECT_FAILED_PRECONDITION,
                      "the wrapped key does not belong to this volume");
        return;
    }
    if (res->status != 0) {
        kf_log_error("kms_failed", "op=rotate volume=%s error=%s", kf_log_q(op->volume_id), kf_log_q(res->message));
        rotate_refuse(op, KEYFLEET__V1__DECISION__DECISION_ERROR, KF_CONNECT_UNAVAILABLE,
                      "KMS unavailable; no key was released");
        return;
    }
    if (kfd_kcv(op->volume_id, res->plaintext->data, op->kcv) != 0) {
        rotate_refuse(op, KEYFLEET__V1__DECISION__DECISION_ERROR, KF_CONNECT_INTERNAL, "cannot compute the key check value");
        return;
    }
    const char *reason;
    if (op->commit) {
        /* The presented key must be the rotation in progress, or (a repeated COMMIT) the key
         * it became. */
        bool in_progress = op->next_kcv[0] != '\0' && strcmp(op->kcv, op->next_kcv) == 0;
        bool done = op->next_kcv[0] == '\0' && strcmp(op->kcv, op->key_kcv) == 0;
        if (!in_progress && !done) {
            rotate_refuse(op, KEYFLEET__V1__DECISION__DECISION_DENY, KF_CONNECT_FAILED_PRECONDITION,
                          "the presented key is not this volume's rotation in progress");
            return;
        }
        reason = in_progress ? "the new key is the volume's key; the old one is retired" : "already committed";
    } else {
        if (op->next_kcv[0] != '\0' && strcmp(op->kcv, op->next_kcv) != 0) {
            rotate_refuse(op, KEYFLEET__V1__DECISION__DECISION_ERROR, KF_CONNECT_INTERNAL,
                          "the rotation in progress does not unwrap to its recorded key");
            return;
        }
        if (kfd_seal_key(call, op->req->ephemeral_public_key.data, "rotate", op->request_id, op->volume_id,
                         res->plaintext->data, &op->sealed) != 0) {
            rotate_op_free(op);
            kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "cannot seal to ephemeral_public_key");
            return;
        }
        if (op->wrapped == NULL && (op->wrapped = strdup(res->wrapped)) == NULL) {
            rotate_op_free(op);
            kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
            return;
        }
        reason = op->next_kcv[0] != '\0' ? "a new key for the volume (the rotation already in progress)"
                                         : "a new key for the volume";
    }
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), op->action, KEYFLEET__V1__DECISION__DECISION_ALLOW, call->peer->name,
                   op->volume_id, op->request_id, reason);
    Keyfleet__V1__CmdRotateKey c = KEYFLEET__V1__CMD_ROTATE_KEY__INIT;
    c.volume_id = op->volume_id;
    c.node = (char *)call->peer->name;
    c.commit = op->commit;
    c.next_wrapped_key = op->commit ? "" : op->wrapped;
    c.kcv = op->kcv;
    kfd_judged_fields(&op->judged, &(kfd_judged_out){&c.judged_policy, &c.judged_volume, &c.judged_pcrs, &c.judged_tpm,
                                                       &c.judged_auth, &c.auth_cert_serial, &c.auth_token_id});
    c.audit = &a.entry;
    c.attest_clock = op->has_clock ? &op->clock : NULL; /* judged again at apply (R45c-1) */
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ROTATE_KEY;
    cmd.rotate_key = &c;
    kfd_commit(kfd_call_app(call), &cmd, on_rotate_committed, op);
}

/* The checks before the KMS; NULL when the call was answered. */
static rotate_op *rotate_checks(kfd_call *call, const Keyfleet__V1__RotateKeyRequest *req, const char *action,
                                kfd_volume *vol)
{
    kfd_app *app = kfd_call_app(call);
    node_hold hold;
    if (!ensure_ready(call) || check_revoked(call, action, req->volume->id, &hold))
        return NULL;
    int r = kfd_store_get_volume(app->store, req->volume->id, vol);
    if (r == -ENOENT) {
        deny_audited(call, action, KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_NOT_FOUND, "unknown volume");
        return NULL;
    }
    if (r != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return NULL;
    }
    const char *why = NULL;
    kf_connect_code code = KF_CONNECT_PERMISSION_DENIED;
    /* The step's quote, judged as Release judges one: under require: [attested] a rotation
     * hands out (BEGIN) or installs (COMMIT) a key only for a node whose boot state is accepted
     * (review F5). */
    kfd_attest_eval att;
    if (!attest_eval_key(call, &hold, req->attestation, "RotateKey", req->volume->id, &req->ephemeral_public_key,
                     req->request_id, &att)) {
        kfd_volume_clear(vol);
        return NULL;
    }
    bool offline_fallback = false, names_pcrs = false;
    if (vol->retired_at != 0) {
        why = "volume is retired";
    } else if (strcmp(vol->node, call->peer->name) != 0) {
        why = "only the node that enrolled the volume may rotate its key";
    } else if (!(req->step == KEYFLEET__V1__ROTATE_STEP__ROTATE_STEP_COMMIT) && vol->key_kcv[0] == '\0') {
        code = KF_CONNECT_FAILED_PRECONDITION;
        why = "the volume's key check value is not known yet (enrolled before rotation existed): unlock it once, "
              "then rotate";
    }
    if (why == NULL) {
        /* BEGIN hands out a new key, and COMMIT makes it the volume's and costs a KMS unwrap: for
         * both the caller must be allowed the volume's key now, without approval, within its
         * rate limit. */
        kfd_policy_decision d;
        kfd_label_set ls;
        kfd_label_set_from_json(&ls, vol->labels_json);
        kfd_policy_input in = {.node = call->peer->name, .tpm_key = call->peer->tpm_key, .source = call->source,
                               .volume_id = vol->id, .volume_name = vol->name, .labels = ls.items, .n_labels = ls.n,
                               .now = time(NULL), .attested = att.attested, .attest_why = att.why,
                               .quoted = att.quote_valid ? &att.quoted : NULL};
        kfd_policy_evaluate_release(app->policy, &in, vol->node, &d);
        kfd_label_set_clear(&ls);
        offline_fallback = d.offline_fallback;
        /* A tpm_and_network volume's new TPM part is sealed where the coordinator says, as at
         * enroll, not to whatever the agent's tpm.pcrs name (review rev26z R4). */
        names_pcrs = d.offline_fallback || d.tpm_and_network || vol->tpm_and_network;
        if (!d.allow && att.seen[0] != '\0') {
            kfd_volume_clear(vol);
            deny_attest(call, req->volume->id, req->request_id, &att, d.explanation);
            return NULL;
        }
        if (!d.allow) {
            kfd_volume_clear(vol);
            deny_audited(call, "policy_deny", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id,
                         req->request_id, KF_CONNECT_PERMISSION_DENIED, d.explanation);
            return NULL;
        }
        if (d.approvals > 0) {
            code = KF_CONNECT_FAILED_PRECONDITION;
            why = "policy needs approval to release this volume's key; a rotation (BEGIN and COMMIT) hands out a key "
                  "without one";
        } else if (rate_limited(call, &d)) {
            kfd_volume_clear(vol);
            return NULL;
        }
    }
    if (why != NULL) {
        kfd_volume_clear(vol);
        deny_audited(call, action, KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id, code, why);
        return NULL;
    }
    if (kfd_call_deadline_passed(call, req->step == KEYFLEET__V1__ROTATE_STEP__ROTATE_STEP_BEGIN
                                           ? "the KMS key generation"
                                           : "the KMS unwrap")) {
        kfd_volume_clear(vol);
        return NULL;
    }
    rotate_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_volume_clear(vol);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return NULL;
    }
    op->req = req;
    op->commit = req->step == KEYFLEET__V1__ROTATE_STEP__ROTATE_STEP_COMMIT;
    op->offline_fallback = offline_fallback;
    op->names_pcrs = names_pcrs;
    if (!judged_of(call, vol, &att, &op->judged)) {
        rotate_op_free(op);
        kfd_volume_clear(vol);
        return NULL;
    }
    attest_clock_of(&att, &op->clock, &op->has_clock);
    snprintf(op->action, sizeof(op->action), "%s", action);
    snprintf(op->request_id, sizeof(op->request_id), "%s", req->request_id);
    snprintf(op->volume_id, sizeof(op->volume_id), "%s", req->volume->id);
    snprintf(op->key_kcv, sizeof(op->key_kcv), "%s", vol->key_kcv);
    snprintf(op->next_kcv, sizeof(op->next_kcv), "%s", vol->next_kcv);
    return op;
}

void kfd_rpc_rotate_key(kfd_call *call)
{
    const Keyfleet__V1__RotateKeyRequest *req = (const Keyfleet__V1__RotateKeyRequest *)call->request;
    bool begin = req->step == KEYFLEET__V1__ROTATE_STEP__ROTATE_STEP_BEGIN;
    const char *bad = kf_check_rotate_key(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    kfd_volume vol;
    rotate_op *op = rotate_checks(call, req, begin ? "rotate_begin" : "rotate_commit", &vol);
    if (op == NULL)
        return;
    kfd_kms *kms = kfd_call_app(call)->kms;
    const char *unwrap = !begin ? req->wrapped_key : vol.next_wrapped_key;
    if (unwrap != NULL && (op->wrapped = strdup(unwrap)) == NULL) {
        kfd_volume_clear(&vol);
        rotate_op_free(op);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    kfd_volume_clear(&vol);
    if (op->wrapped != NULL)
        kms->ops->unwrap(kms, op->volume_id, op->wrapped, on_rotate_key, op);
    else
        kms->ops->generate(kms, op->volume_id, on_rotate_key, op);
}

/* ------------------------------------------------------------------ EnrollRecoveryKey */

/* docs/recovery.md. The checks (the enrolling node, not revoked, its rule allows it); LUKS2: a
 * new key from the KMS under VOLUME_ID/recovery (or, for a repeated request id, the escrowed one
 * unwrapped), escrowed and audited, then sealed to the agent; ZFS: the dataset's key is its
 * recovery key, so only the mark is committed. The owner, the revocation and (ZFS) a rotation
 * after a reveal are checked again at apply (store_recovery.c). */
typedef struct recovery_op {
    kfd_op base;
    const Keyfleet__V1__EnrollRecoveryKeyRequest *req; /* valid while base.call is */
    char request_id[65];
    char volume_id[129];
    char kms_id[160]; /* VOLUME_ID/recovery: the AAD that keeps it apart from the volume's key */
    char kcv[24];
    char *wrapped;
    bool zfs, replay, next_replay, replaced;
    kfd_sealed sealed;
    uint8_t judged_policy[KFD_JUDGED_LEN]; /* the policy decided under (review rev44 J6) */
    uint8_t judged_volume[KFD_JUDGED_LEN]; /* the volume's row as the rules saw it (rev45b R45b-3) */
} recovery_op;

static void recovery_op_free(recovery_op *op)
{
    free(op->wrapped);
    kf_wipe(&op->sealed, sizeof(op->sealed));
    kfd_op_free(op);
}

static void recovery_refuse(recovery_op *op, Keyfleet__V1__Decision decision, kf_connect_code code, const char *message)
{
    kfd_call *call = op->base.call;
    char vol[129], rid[65], msg[256];
    snprintf(vol, sizeof(vol), "%s", op->volume_id);
    snprintf(rid, sizeof(rid), "%s", op->request_id);
    snprintf(msg, sizeof(msg), "%.*s", (int)sizeof(msg) - 1, message); /* cut: the refusal's text */
    recovery_op_free(op);
    deny_audited(call, "recovery_escrow", decision, vol, rid, code, msg);
}

static void on_recovery_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    recovery_op *op = arg;
    kfd_call *call = op->base.call;
    if (call == NULL) {
        recovery_op_free(op);
        return;
    }
    if (kfd_rpc_refusal_answered(call, "recovery_escrow", op->volume_id, status, res, err, refused_code(status),
                                 NULL)) {
        recovery_op_free(op);
        return;
    }
    if (status != 0) {
        kf_log_error("recovery_not_escrowed", "volume=%s error=%s", kf_log_q(op->volume_id), kf_log_q(err->msg));
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "the recovery key could not be escrowed; no key was released");
        recovery_op_free(op);
        return;
    }
    Keyfleet__V1__SealedKey sk;
    Keyfleet__V1__EnrollRecoveryKeyResponse resp = KEYFLEET__V1__ENROLL_RECOVERY_KEY_RESPONSE__INIT;
    resp.audit_seq = res->audit_seq;
    resp.replaced = op->replaced;
    if (!op->zfs) {
        sealed_key(&sk, &op->sealed);
        resp.sealed_key = &sk;
    }
    kf_log_info("recovery_escrowed", "node=%s volume=%s replaced=%s audit_seq=%llu", call->peer->name,
                kf_log_q(op->volume_id), op->replaced ? "yes" : "no", (unsigned long long)res->audit_seq);
    kfd_call_reply(call, &resp.base);
    recovery_op_free(op);
}

static void commit_escrow(recovery_op *op)
{
    kfd_call *call = op->base.call;
    char reason[200];
    snprintf(reason, sizeof(reason), "%s%s%s", op->zfs ? "the dataset's keyfleet key is its recovery key" : "a new recovery key, escrowed",
             op->replay ? " (repeated request)" : "",
             !op->replaced ? ""
             : op->zfs     ? "; the revealed recovery key is retired"
                           : "; it replaces the escrowed one once the node confirms that one's keyslot is killed");
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "recovery_escrow", KEYFLEET__V1__DECISION__DECISION_ALLOW,
                   call->peer->name, op->volume_id, op->request_id, reason);
    Keyfleet__V1__CmdRecoveryEscrow c = KEYFLEET__V1__CMD_RECOVERY_ESCROW__INIT;
    c.volume_id = op->volume_id;
    c.node = (char *)call->peer->name;
    c.wrapped = op->wrapped != NULL ? op->wrapped : (char *)"";
    c.kcv = op->kcv;
    c.request_id = op->request_id;
    c.zfs = op->zfs;
    c.audit = &a.entry;
    c.judged_policy = (ProtobufCBinaryData){KFD_JUDGED_LEN, op->judged_policy};
    c.judged_volume = (ProtobufCBinaryData){KFD_JUDGED_LEN, op->judged_volume};
    c.replay_of = (char *)(!op->replay ? "new" : op->next_replay ? "next" : "escrowed");
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_ESCROW;
    cmd.recovery_escrow = &c;
    kfd_call_commit(call, &cmd, on_recovery_committed, op);
}

static void on_recovery_key(void *arg, const kfd_kms_result *res)
{
    recovery_op *op = arg;
    kfd_call *call = op->base.call;
    if (call == NULL) {
        recovery_op_free(op);
        return;
    }
    if (res->status != 0) {
        kf_log_error("kms_failed", "op=recovery volume=%s error=%s", kf_log_q(op->volume_id), kf_log_q(res->message));
        recovery_refuse(op, KEYFLEET__V1__DECISION__DECISION_ERROR, KF_CONNECT_UNAVAILABLE,
                        "KMS unavailable; no recovery key was made");
        return;
    }
    if (kfd_kcv(op->kms_id, res->plaintext->data, op->kcv) != 0 ||
        (op->wrapped == NULL && (op->wrapped = strdup(res->wrapped)) == NULL)) {
        recovery_refuse(op, KEYFLEET__V1__DECISION__DECISION_ERROR, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    if (kfd_seal_key(call, op->req->ephemeral_public_key.data, "recovery", op->request_id, op->volume_id,
                     res->plaintext->data, &op->sealed) != 0) {
        recovery_op_free(op);
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "cannot seal to ephemeral_public_key");
        return;
    }
    commit_escrow(op);
}

/* A repeated EnrollRecoveryKey returns the escrowed key itself, which opens the volume: only to
 * an agent retrying a lost answer, soon after, before anyone was shown that key, and never where
 * the volume's releases wait for operators (review rev26b F5). NULL: the replay may proceed. */
static const char *recovery_replay_refusal(const kfd_recovery *cur, const char *request_id, int64_t now, bool held,
                                           char *buf, size_t size)
{
    const char *why = kfd_recovery_replay_refusal(cur, request_id, now);
    if (why != NULL) {
        snprintf(buf, size, "a repeated request does not return the recovery key: %s (escrow a new one)", why);
        return buf;
    }
    if (held)
        return "the volume's releases wait for operators' approval: a repeated request does not return its recovery "
               "key (escrow a new one)";
    return NULL;
}

void kfd_rpc_enroll_recovery_key(kfd_call *call)
{
    const Keyfleet__V1__EnrollRecoveryKeyRequest *req = (const Keyfleet__V1__EnrollRecoveryKeyRequest *)call->request;
    const char *bad = kfd_check_enroll_recovery_key(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    node_hold hold;
    if (!ensure_ready(call) || check_revoked(call, "recovery_escrow", req->volume->id, &hold))
        return;
    if (req->confirm) { /* the second step of a replacement: no key made, none answered */
        kfd_rpc_recovery_confirm(call);
        return;
    }
    kfd_app *app = kfd_call_app(call);
    kfd_volume vol;
    int r = kfd_store_get_volume(app->store, req->volume->id, &vol);
    if (r == -ENOENT) {
        deny_audited(call, "recovery_escrow", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_NOT_FOUND, "unknown volume");
        return;
    }
    if (r != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    bool zfs = vol.kind == KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS;
    const char *why = NULL;
    bool held = false;
    kfd_policy_decision d = {0};
    if (strcmp(vol.node, call->peer->name) != 0) {
        why = "only the node that enrolled the volume may escrow its recovery key";
    } else {
        kfd_label_set ls;
        kfd_label_set_from_json(&ls, vol.labels_json);
        kfd_policy_input in = {.node = call->peer->name, .tpm_key = call->peer->tpm_key, .source = call->source,
                               .volume_id = vol.id, .volume_name = vol.name, .labels = ls.items, .n_labels = ls.n,
                               .now = time(NULL), .enrolling = true};
        kfd_policy_evaluate(app->policy, &in, &d);
        /* Whether a release of the volume waits for operators: then its live recovery key is not
         * handed out again on the node's word alone (review rev26b F5). */
        kfd_policy_decision rd = {0};
        in.enrolling = false;
        kfd_policy_evaluate(app->policy, &in, &rd);
        held = rd.allow && rd.approvals > 0;
        kfd_label_set_clear(&ls);
        if (!d.allow)
            why = d.explanation;
        else if (d.tpm_and_network)
            /* A key the coordinators can reveal would open the volume without its TPM part. */
            why = "the volume's rule requires TPM and network: a recovery key escrowed with the coordinators would "
                  "open it without the TPM";
        else if (vol.tpm_and_network)
            /* The mode is the volume's, fixed at enroll: a rule that dropped it since changes nothing. */
            why = "the volume was enrolled with TPM and network both required: a recovery key escrowed with the "
                  "coordinators would open it without the TPM";
    }
    if (why == NULL && !zfs && req->ephemeral_public_key.len != 32)
        why = "ephemeral_public_key must be 32 bytes (X25519)";
    /* The row the rules saw, for the apply to judge again (review rev45b R45b-3). */
    uint8_t judged_volume[KFD_JUDGED_LEN] = {0};
    if (why == NULL && kfd_judged_volume(&vol, judged_volume) != 0) {
        kfd_volume_clear(&vol);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "cannot digest the volume's row");
        return;
    }
    kfd_volume_clear(&vol);
    if (why != NULL) {
        deny_audited(call, "recovery_escrow", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_PERMISSION_DENIED, why);
        return;
    }
    kfd_recovery cur;
    r = kfd_store_get_recovery(app->store, req->volume->id, &cur);
    if (r != 0 && r != -ENOENT) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    bool repeat = r == 0 && (strcmp(cur.request_id, req->request_id) == 0 ||
                             (cur.next_request_id[0] != '\0' && strcmp(cur.next_request_id, req->request_id) == 0));
    char replay_buf[160];
    why = repeat && !zfs ? recovery_replay_refusal(&cur, req->request_id, time(NULL), held, replay_buf,
                                                   sizeof(replay_buf))
                         : NULL;
    if (why != NULL) {
        kfd_recovery_clear(&cur);
        deny_audited(call, "recovery_escrow", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_PERMISSION_DENIED, why);
        return;
    }
    if (kfd_call_deadline_passed(call, "the KMS key generation")) {
        kfd_recovery_clear(&cur);
        return;
    }
    recovery_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_recovery_clear(&cur);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    op->req = req;
    op->zfs = zfs;
    memcpy(op->judged_policy, app->policy_judged, KFD_JUDGED_LEN);
    memcpy(op->judged_volume, judged_volume, KFD_JUDGED_LEN);
    snprintf(op->request_id, sizeof(op->request_id), "%s", req->request_id);
    snprintf(op->volume_id, sizeof(op->volume_id), "%s", req->volume->id);
    snprintf(op->kms_id, sizeof(op->kms_id), "%s/recovery", req->volume->id);
    /* A LUKS2 key over an escrowed one (revealed or not) waits apart (next_*) until the node
     * confirms the new keyslot is verified and the old one killed (review rev26c R1). */
    bool next_replay = r == 0 && cur.next_request_id[0] != '\0' && strcmp(cur.next_request_id, req->request_id) == 0;
    op->replay = next_replay || (r == 0 && strcmp(cur.request_id, req->request_id) == 0);
    op->next_replay = next_replay;
    op->replaced = next_replay || (r == 0 && !op->replay && (cur.revealed_at != 0 || !zfs));
    if (op->replay && !zfs && (op->wrapped = strdup(next_replay ? cur.next_wrapped : cur.wrapped)) == NULL) {
        kfd_recovery_clear(&cur);
        recovery_op_free(op);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    kfd_recovery_clear(&cur);
    if (zfs)
        commit_escrow(op);
    else if (op->wrapped != NULL)
        app->kms->ops->unwrap(app->kms, op->kms_id, op->wrapped, on_recovery_key, op);
    else
        app->kms->ops->generate(app->kms, op->kms_id, on_recovery_key, op);
}

void kfd_rpc_sealed_key(Keyfleet__V1__SealedKey *sk, kfd_sealed *sealed)
{
    sealed_key(sk, sealed);
}

void kfd_rpc_deny_audited(kfd_call *call, const char *action, Keyfleet__V1__Decision decision, const char *volume_id,
                          const char *request_id, kf_connect_code code, const char *message)
{
    deny_audited(call, action, decision, volume_id, request_id, code, message);
}

bool kfd_rpc_attest_eval(kfd_call *call, const Keyfleet__V1__TpmQuote *quote, const char *method, const char *volume_id,
                         const ProtobufCBinaryData *eph, const char *request_id, kfd_attest_eval *ret)
{
    return attest_eval(call, quote, method, volume_id, eph, request_id, ret);
}

void kfd_rpc_retry_after(kfd_call *call, uint32_t wait)
{
    retry_after(call, wait);
}
