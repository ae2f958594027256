/* NodeService.Enroll and NodeService.Release (docs/protocol.md).
 *
 * Release order: validate; revoked?; volume known?; policy (deny -> audited denial); rate limit;
 * approval state; KMS unwrap under the volume id; seal to the agent's ephemeral key; commit the
 * audit record durably; only then answer. The plaintext key exists only in KMS-owned secure
 * buffers during the unwrap callback and is wiped when it returns.
 *
 * The local KMS and the store complete inline, so each operation's state lives on the handler's
 * stack. A backend that completes later (Vault, Azure) or replicated commits need that state on
 * the heap, tied to the call's lifetime. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "app.h"
#include "keyfleet/v1/node.pb-c.h"
#include "kf_log.h"
#include "kf_seal.h"
#include "webhook.h"

#define WRAPPED_MAX 4096
#define LABELS_MAX 32

static kfd_app *app_of(const kfd_call *call) { return call->srv->app; }

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool id_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' || c == '_' ||
           c == ':' || c == '-';
}

static bool printable(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

/* Returns NULL when the volume reference is valid, else what is wrong. */
static const char *check_volume(const Keyfleet__V1__VolumeRef *v)
{
    if (v == NULL)
        return "volume is required";
    size_t n = strlen(v->id);
    if (n == 0 || n > 128)
        return "volume.id must be 1..128 characters";
    for (size_t i = 0; i < n; i++)
        if (!id_char(v->id[i]))
            return "volume.id may hold only [0-9A-Za-z._:-]";
    if (v->kind != KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2 && v->kind != KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS)
        return "volume.kind must be LUKS2 or ZFS";
    if (!printable(v->name, 255))
        return "volume.name must be at most 255 printable characters";
    return NULL;
}

static const char *check_labels(Keyfleet__V1__Label **labels, size_t n)
{
    if (n > LABELS_MAX)
        return "at most 32 labels";
    for (size_t i = 0; i < n; i++) {
        size_t kl = strlen(labels[i]->key);
        if (kl == 0 || kl > 63)
            return "label keys must be 1..63 characters";
        for (size_t k = 0; k < kl; k++) {
            char c = labels[i]->key[k];
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' ||
                  c == '_' || c == '/' || c == '-'))
                return "label keys may hold only [0-9A-Za-z._/-]";
        }
        if (!printable(labels[i]->value, 255))
            return "label values must be at most 255 printable characters";
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[j]->key, labels[i]->key) == 0)
                return "duplicate label key";
    }
    return NULL;
}

/* The answer's view of a sealed key (pointing at enc and ct). */
static void sealed_key(Keyfleet__V1__SealedKey *sk, uint8_t enc[32], uint8_t ct[KF_SEAL_CT_LEN])
{
    keyfleet__v1__sealed_key__init(sk);
    sk->kem_id = KF_HPKE_KEM_X25519_SHA256;
    sk->kdf_id = KF_HPKE_KDF_HKDF_SHA256;
    sk->aead_id = KF_SEAL_AEAD;
    sk->enc.data = enc;
    sk->enc.len = 32;
    sk->ciphertext.data = ct;
    sk->ciphertext.len = KF_SEAL_CT_LEN;
}

/* Records a refusal in the audit log, then answers with code. A failed audit write does not
 * change the answer (nothing is released either way) but is logged by the store. */
typedef struct deny_ctx {
    kfd_call *call;
    kf_connect_code code;
    const char *message;
} deny_ctx;

static void on_deny_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res, (void)err, (void)status;
    deny_ctx *d = arg;
    kfd_call_error(d->call, d->code, "%s", d->message);
}

static void deny_audited(kfd_call *call, const char *action, Keyfleet__V1__Decision decision, const char *volume_id,
                         const char *request_id, kf_connect_code code, const char *message)
{
    kfd_audit_buf a;
    kfd_audit_fill(&a, call, action, decision, call->peer->name, volume_id, request_id, message);
    Keyfleet__V1__CmdAppendAudit c = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
    cmd.append_audit = &c;
    deny_ctx d = {call, code, message};
    kfd_commit(app_of(call), &cmd, on_deny_committed, &d);
}

/* Labels of a stored volume, for policy evaluation. */
typedef struct label_set {
    json_t *json;
    kfd_label items[LABELS_MAX];
    size_t n;
} label_set;

static void labels_from_json(label_set *ls, const char *text)
{
    memset(ls, 0, sizeof(*ls));
    ls->json = json_loads(text != NULL ? text : "{}", 0, NULL);
    const char *k;
    json_t *v;
    if (ls->json == NULL)
        return;
    json_object_foreach(ls->json, k, v)
    {
        if (ls->n < LABELS_MAX && json_is_string(v))
            ls->items[ls->n++] = (kfd_label){k, json_string_value(v)};
    }
}

static bool ensure_ready(kfd_call *call)
{
    const char *why;
    if (kfd_app_ready(app_of(call), &why))
        return true;
    kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "coordinator cannot release keys: %s", why);
    return false;
}

static bool check_revoked(kfd_call *call, const char *action, const char *volume_id)
{
    bool revoked = false;
    if (kfd_store_node_revoked(app_of(call)->store, call->peer->name, &revoked) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return true;
    }
    if (revoked)
        deny_audited(call, action, KEYFLEET__V1__DECISION__DECISION_DENY, volume_id, "",
                     KF_CONNECT_PERMISSION_DENIED, "node is revoked");
    return revoked;
}

static bool rate_limited(kfd_call *call, const kfd_policy_decision *d)
{
    uint32_t wait = kfd_ratelimit_take(app_of(call)->ratelimit, call->peer->name, d->rate_per_minute, d->rate_burst,
                                       now_ms());
    if (wait == 0)
        return false;
    h2o_req_t *req = call->req;
    char *v = h2o_mem_alloc_pool(&req->pool, 16);
    int n = snprintf(v, 16, "%u", (wait + 999) / 1000);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, v, (size_t)n);
    kfd_call_error(call, KF_CONNECT_RESOURCE_EXHAUSTED, "rate limit of rule '%s' exceeded; retry after %u ms", d->rule,
                   wait);
    return true;
}

/* ------------------------------------------------------------------ Enroll */

typedef struct enroll_op {
    kfd_call *call;
    const Keyfleet__V1__EnrollRequest *req;
    kfd_policy_decision decision;
    const char *request_id;
    bool replay; /* same node and request id as a completed enroll */
    const char *wrapped;
    uint8_t enc[32], ct[KF_SEAL_CT_LEN];
} enroll_op;

static void answer_enroll(enroll_op *op, uint64_t audit_seq)
{
    (void)audit_seq;
    kfd_call *call = op->call;
    Keyfleet__V1__SealedKey sk;
    sealed_key(&sk, op->enc, op->ct);
    Keyfleet__V1__EnrollResponse resp = KEYFLEET__V1__ENROLL_RESPONSE__INIT;
    resp.wrapped_key = (char *)op->wrapped;
    resp.sealed_key = &sk;
    resp.offline_fallback_allowed = op->decision.offline_fallback;
    uint32_t pcrs[] = {7};
    if (op->decision.offline_fallback) {
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
    if (status == -EEXIST) {
        kfd_call_error(op->call, KF_CONNECT_ALREADY_EXISTS, "volume %s is already enrolled", op->req->volume->id);
        return;
    }
    if (status != 0) {
        kfd_call_error(op->call, KF_CONNECT_UNAVAILABLE, "enrollment not recorded: %s", err->msg);
        return;
    }
    answer_enroll(op, res->audit_seq);
}

static void seal_for_enroll(enroll_op *op, const kf_secbuf *key, int *ret)
{
    uint8_t info[KF_SEAL_INFO_MAX];
    size_t info_len = kf_seal_info("enroll", op->request_id, op->call->peer->name, op->req->volume->id, info,
                                   sizeof(info));
    *ret = info_len == 0 ? -EINVAL
                         : kf_seal_key(op->req->ephemeral_public_key.data, info, info_len, key->data, op->enc, op->ct);
}

static void on_enroll_key(void *arg, const kfd_kms_result *res)
{
    enroll_op *op = arg;
    kfd_call *call = op->call;
    if (res->status != 0) {
        kf_log_error("kms_failed", "op=generate volume=%s error=%s", kf_log_q(op->req->volume->id),
                     kf_log_q(res->message));
        deny_audited(call, "enroll", KEYFLEET__V1__DECISION__DECISION_ERROR, op->req->volume->id, op->request_id,
                     KF_CONNECT_UNAVAILABLE, "KMS unavailable");
        return;
    }
    int r;
    seal_for_enroll(op, res->plaintext, &r);
    if (r != 0) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "cannot seal to ephemeral_public_key");
        return;
    }
    if (op->replay) {
        answer_enroll(op, 0);
        return;
    }
    op->wrapped = res->wrapped;
    kfd_audit_buf a;
    kfd_audit_fill(&a, call, "enroll", KEYFLEET__V1__DECISION__DECISION_ALLOW, call->peer->name, op->req->volume->id,
                   op->request_id, op->decision.explanation);
    Keyfleet__V1__CmdEnrollVolume c = KEYFLEET__V1__CMD_ENROLL_VOLUME__INIT;
    c.volume = op->req->volume;
    c.n_labels = op->req->n_labels;
    c.labels = op->req->labels;
    c.node = (char *)call->peer->name;
    c.wrapped_key = (char *)res->wrapped;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME;
    cmd.enroll_volume = &c;
    kfd_commit(app_of(call), &cmd, on_enroll_committed, op);
}

void kfd_rpc_enroll(kfd_call *call)
{
    const Keyfleet__V1__EnrollRequest *req = (const Keyfleet__V1__EnrollRequest *)call->request;
    const char *bad = check_volume(req->volume);
    if (bad == NULL)
        bad = check_labels(req->labels, req->n_labels);
    if (bad == NULL && req->ephemeral_public_key.len != 32)
        bad = "ephemeral_public_key must be 32 bytes (X25519)";
    if (bad == NULL && !kfd_request_id_valid(req->request_id))
        bad = "request_id is required: 16..64 of [0-9A-Za-z-]";
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!ensure_ready(call) || check_revoked(call, "enroll", req->volume->id))
        return;
    kfd_app *app = app_of(call);
    enroll_op op = {.call = call, .req = req, .request_id = req->request_id};
    kfd_volume existing;
    int r = kfd_store_get_volume(app->store, req->volume->id, &existing);
    if (r == -EIO) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    if (r == 0) {
        bool same = strcmp(existing.node, call->peer->name) == 0 &&
                    strcmp(existing.enroll_request_id, req->request_id) == 0;
        if (!same) {
            char msg[256];
            snprintf(msg, sizeof(msg), "volume %s is already enrolled%s", req->volume->id,
                     strcmp(existing.node, call->peer->name) == 0 ? "" : " by another node");
            kfd_volume_clear(&existing);
            deny_audited(call, "enroll", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, op.request_id,
                         KF_CONNECT_ALREADY_EXISTS, msg);
            return;
        }
    }
    kfd_label labels[LABELS_MAX];
    for (size_t i = 0; i < req->n_labels; i++)
        labels[i] = (kfd_label){req->labels[i]->key, req->labels[i]->value};
    kfd_policy_input in = {.node = call->peer->name, .source = call->source, .volume_id = req->volume->id,
                           .volume_name = req->volume->name, .labels = labels, .n_labels = req->n_labels,
                           .now = time(NULL)};
    kfd_policy_evaluate(app->policy, &in, &op.decision);
    if (!op.decision.allow) {
        if (r == 0)
            kfd_volume_clear(&existing);
        deny_audited(call, "policy_deny", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, op.request_id,
                     KF_CONNECT_PERMISSION_DENIED, op.decision.explanation);
        return;
    }
    if (rate_limited(call, &op.decision)) {
        if (r == 0)
            kfd_volume_clear(&existing);
        return;
    }
    if (r == 0) {
        /* A retry of an enrollment that completed: the same key again, nothing new recorded. */
        op.replay = true;
        op.wrapped = existing.wrapped_key;
        app->kms->ops->unwrap(app->kms, req->volume->id, existing.wrapped_key, on_enroll_key, &op);
        kfd_volume_clear(&existing);
        return;
    }
    app->kms->ops->generate(app->kms, req->volume->id, on_enroll_key, &op);
}

/* ------------------------------------------------------------------ Release */

typedef struct release_op {
    kfd_call *call;
    const Keyfleet__V1__ReleaseRequest *req;
    kfd_policy_decision decision;
    char request_id[65];
    uint8_t enc[32], ct[KF_SEAL_CT_LEN];
    char rewrapped[512];
    bool approved_request;
} release_op;

static void on_release_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    release_op *op = arg;
    kfd_call *call = op->call;
    if (status != 0) {
        /* Fail closed: no durable record, no key. */
        kf_log_error("release_not_recorded", "node=%s volume=%s request=%s error=%s", call->peer->name,
                     kf_log_q(op->req->volume->id), op->request_id, kf_log_q(err->msg));
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "release could not be recorded; no key was released");
        return;
    }
    Keyfleet__V1__SealedKey sk;
    sealed_key(&sk, op->enc, op->ct);
    Keyfleet__V1__ReleaseResponse resp = KEYFLEET__V1__RELEASE_RESPONSE__INIT;
    resp.status = KEYFLEET__V1__RELEASE_STATUS__RELEASE_STATUS_RELEASED;
    resp.request_id = op->request_id;
    resp.sealed_key = &sk;
    resp.audit_seq = res->audit_seq;
    resp.rewrapped_key = op->rewrapped;
    kf_log_info("released", "node=%s volume=%s request=%s audit_seq=%llu rule=%s", call->peer->name,
                kf_log_q(op->req->volume->id), op->request_id, (unsigned long long)res->audit_seq,
                kf_log_q(op->decision.rule));
    kfd_call_reply(call, &resp.base);
}

static void on_rewrapped(void *arg, const kfd_kms_result *res)
{
    release_op *op = arg;
    if (res->status == 0)
        snprintf(op->rewrapped, sizeof(op->rewrapped), "%s", res->wrapped);
}

static void on_release_key(void *arg, const kfd_kms_result *res)
{
    release_op *op = arg;
    kfd_call *call = op->call;
    const char *volume_id = op->req->volume->id;
    if (res->status == -EBADMSG || res->status == -EINVAL) {
        deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_DENY, volume_id, op->request_id,
                     KF_CONNECT_FAILED_PRECONDITION, "the wrapped key does not belong to this volume");
        return;
    }
    if (res->status != 0) {
        kf_log_error("kms_failed", "op=unwrap volume=%s error=%s", kf_log_q(volume_id), kf_log_q(res->message));
        deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_ERROR, volume_id, op->request_id,
                     KF_CONNECT_UNAVAILABLE, "KMS unavailable; no key was released");
        return;
    }
    uint8_t info[KF_SEAL_INFO_MAX];
    size_t info_len = kf_seal_info("release", op->request_id, call->peer->name, volume_id, info, sizeof(info));
    if (info_len == 0 ||
        kf_seal_key(op->req->ephemeral_public_key.data, info, info_len, res->plaintext->data, op->enc, op->ct) != 0) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "cannot seal to ephemeral_public_key");
        return;
    }
    if (res->key_version < res->latest_version) {
        kfd_kms *kms = app_of(call)->kms;
        kms->ops->wrap(kms, volume_id, res->plaintext, on_rewrapped, op);
    }
    kfd_audit_buf a;
    kfd_audit_fill(&a, call, "release", KEYFLEET__V1__DECISION__DECISION_ALLOW, call->peer->name, volume_id,
                   op->request_id, op->decision.explanation);
    Keyfleet__V1__CmdRecordRelease c = KEYFLEET__V1__CMD_RECORD_RELEASE__INIT;
    c.request_id = op->request_id;
    c.node = (char *)call->peer->name;
    c.volume_id = (char *)volume_id;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE;
    cmd.record_release = &c;
    kfd_commit(app_of(call), &cmd, on_release_committed, op);
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
    kfd_call *call;
    char request_id[33];
    int64_t expires_at;
    char webhook_body[1024];
} pending_op;

static void on_pending_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res;
    pending_op *op = arg;
    if (status != 0) {
        kfd_call_error(op->call, KF_CONNECT_UNAVAILABLE, "pending request not recorded: %s", err->msg);
        return;
    }
    kfd_webhook_notify(op->call->srv->app->webhook, op->webhook_body);
    answer_pending(op->call, op->request_id, op->expires_at);
}

static void create_pending(kfd_call *call, const kfd_volume *vol, const kfd_policy_decision *d)
{
    pending_op op = {.call = call};
    kfd_new_request_id(op.request_id);
    int64_t now = time(NULL);
    op.expires_at = now + d->pending_ttl_s;
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:I}", "event", "pending", "request_id", op.request_id,
                          "node", call->peer->name, "volume_id", vol->id, "volume_name", vol->name, "rule", d->rule,
                          "approvals_needed", (int)d->approvals, "expires_at", (json_int_t)op.expires_at);
    char *body = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    snprintf(op.webhook_body, sizeof(op.webhook_body), "%s", body != NULL ? body : "{}");
    free(body);
    json_decref(j);

    kfd_audit_buf a;
    kfd_audit_fill(&a, call, "pending", KEYFLEET__V1__DECISION__DECISION_PENDING, call->peer->name, vol->id,
                   op.request_id, d->explanation);
    Keyfleet__V1__VolumeRef ref = KEYFLEET__V1__VOLUME_REF__INIT;
    ref.id = (char *)vol->id;
    ref.kind = (Keyfleet__V1__VolumeKind)vol->kind;
    ref.name = (char *)vol->name;
    Keyfleet__V1__Timestamp created = KEYFLEET__V1__TIMESTAMP__INIT, expires = KEYFLEET__V1__TIMESTAMP__INIT;
    created.seconds = now;
    expires.seconds = op.expires_at;
    Keyfleet__V1__CmdCreatePending c = KEYFLEET__V1__CMD_CREATE_PENDING__INIT;
    c.request_id = op.request_id;
    c.node = (char *)call->peer->name;
    c.volume = &ref;
    c.source_address = call->source;
    c.created_at = &created;
    c.expires_at = &expires;
    c.approvals_needed = d->approvals;
    c.rule = (char *)d->rule;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_PENDING;
    cmd.create_pending = &c;
    kfd_commit(app_of(call), &cmd, on_pending_committed, &op);
}

/* Handles a poll with an existing request id. Returns true when the release may proceed. */
static bool poll_pending(kfd_call *call, const Keyfleet__V1__ReleaseRequest *req)
{
    kfd_pending p;
    int r = kfd_store_get_pending(app_of(call)->store, req->request_id, &p);
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
            kfd_approvals_expire(app_of(call));
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
    case KFD_PENDING_APPROVED:
        if (time(NULL) >= p.expires_at) {
            kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "approved request %s has expired", p.request_id);
            return false;
        }
        return true;
    }
    return false;
}

void kfd_rpc_release(kfd_call *call)
{
    const Keyfleet__V1__ReleaseRequest *req = (const Keyfleet__V1__ReleaseRequest *)call->request;
    const char *bad = check_volume(req->volume);
    if (bad == NULL && (req->wrapped_key[0] == '\0' || strlen(req->wrapped_key) > WRAPPED_MAX))
        bad = "wrapped_key must be 1..4096 characters";
    if (bad == NULL && req->ephemeral_public_key.len != 32)
        bad = "ephemeral_public_key must be 32 bytes (X25519)";
    if (bad == NULL && req->request_id[0] != '\0' && !kfd_request_id_valid(req->request_id))
        bad = "request_id must be 16..64 of [0-9A-Za-z-]";
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!ensure_ready(call) || check_revoked(call, "release", req->volume->id))
        return;
    kfd_app *app = app_of(call);
    kfd_volume vol;
    int r = kfd_store_get_volume(app->store, req->volume->id, &vol);
    if (r == -ENOENT) {
        deny_audited(call, "release", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_NOT_FOUND, "unknown volume");
        return;
    }
    if (r != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    release_op op = {.call = call, .req = req};
    label_set ls;
    labels_from_json(&ls, vol.labels_json);
    kfd_policy_input in = {.node = call->peer->name, .source = call->source, .volume_id = vol.id,
                           .volume_name = vol.name, .labels = ls.items, .n_labels = ls.n, .now = time(NULL)};
    kfd_policy_evaluate(app->policy, &in, &op.decision);
    json_decref(ls.json);
    if (!op.decision.allow) {
        kfd_volume_clear(&vol);
        deny_audited(call, "policy_deny", KEYFLEET__V1__DECISION__DECISION_DENY, req->volume->id, req->request_id,
                     KF_CONNECT_PERMISSION_DENIED, op.decision.explanation);
        return;
    }
    if (rate_limited(call, &op.decision)) {
        kfd_volume_clear(&vol);
        return;
    }
    if (op.decision.approvals > 0) {
        if (req->request_id[0] == '\0') {
            create_pending(call, &vol, &op.decision);
            kfd_volume_clear(&vol);
            return;
        }
        if (!poll_pending(call, req)) {
            kfd_volume_clear(&vol);
            return;
        }
        op.approved_request = true;
    }
    kfd_volume_clear(&vol);
    if (req->request_id[0] != '\0')
        snprintf(op.request_id, sizeof(op.request_id), "%s", req->request_id);
    else
        kfd_new_request_id(op.request_id);
    app->kms->ops->unwrap(app->kms, req->volume->id, req->wrapped_key, on_release_key, &op);
}

/* ------------------------------------------------------------------ Heartbeat */

typedef struct heartbeat_op {
    kfd_call *call;
    bool revoked;
    int failed;
} heartbeat_op;

static void on_offline_audited(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res, (void)err;
    heartbeat_op *op = arg;
    if (status != 0)
        op->failed++;
}

/* Liveness, and the offline (TPM) unlocks a node made while no coordinator answered: each one is
 * audited as offline_unlock. A revoked node is told to lock (kill switch) instead of refused, so
 * an agent in watch mode can act on it. */
void kfd_rpc_heartbeat(kfd_call *call)
{
    const Keyfleet__V1__HeartbeatRequest *req = (const Keyfleet__V1__HeartbeatRequest *)call->request;
    if (req->n_offline_unlocks > 1000) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "at most 1000 offline unlocks per heartbeat");
        return;
    }
    for (size_t i = 0; i < req->n_offline_unlocks; i++) {
        const Keyfleet__V1__OfflineUnlock *u = req->offline_unlocks[i];
        const char *bad = check_volume(u->volume);
        if (bad == NULL && (u->at == NULL || !printable(u->reason, 512)))
            bad = "offline unlocks need a time and a printable reason of at most 512 characters";
        if (bad != NULL) {
            kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "offline_unlocks[%zu]: %s", i, bad);
            return;
        }
    }
    const char *why;
    if (!kfd_app_ready(app_of(call), &why)) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "coordinator cannot record: %s", why);
        return;
    }
    heartbeat_op op = {.call = call};
    if (kfd_store_node_revoked(app_of(call)->store, call->peer->name, &op.revoked) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    for (size_t i = 0; i < req->n_offline_unlocks; i++) {
        const Keyfleet__V1__OfflineUnlock *u = req->offline_unlocks[i];
        char reason[700];
        snprintf(reason, sizeof(reason), "unlocked from the node's TPM at %lld: %s", (long long)u->at->seconds,
                 u->reason);
        kfd_audit_buf a;
        kfd_audit_fill(&a, call, "offline_unlock", KEYFLEET__V1__DECISION__DECISION_ALLOW, call->peer->name,
                       u->volume->id, "", reason);
        Keyfleet__V1__CmdAppendAudit c = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
        c.audit = &a.entry;
        Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
        cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
        cmd.append_audit = &c;
        kfd_commit(app_of(call), &cmd, on_offline_audited, &op);
    }
    if (op.failed > 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "offline unlocks could not be recorded; report them again");
        return;
    }
    Keyfleet__V1__Timestamp now = KEYFLEET__V1__TIMESTAMP__INIT;
    now.seconds = time(NULL);
    Keyfleet__V1__HeartbeatResponse resp = KEYFLEET__V1__HEARTBEAT_RESPONSE__INIT;
    resp.lock = op.revoked;
    resp.server_time = &now;
    kfd_call_reply(call, &resp.base);
}
