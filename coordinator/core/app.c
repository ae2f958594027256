#include "core/app.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "kf_log.h"
#include "cluster/replication.h"
#include "core/webhook.h"

#define EXPIRY_TICK_MS 1000

static void on_timer_closed(uv_handle_t *h) { (void)h; }

/* Catches up with a KMS rotation made on another replica: loads the new key version if it is
 * here, else says once what is missing. Without it, this replica could not open keys wrapped
 * under that version once it leads. */
static void kms_sync(kfd_app *app)
{
    if (app->kms->ops->sync == NULL || kfd_store_failed(app->store))
        return;
    kfd_kms_info info;
    app->kms->ops->describe(app->kms, &info);
    uint32_t want = 0;
    if (kfd_store_kms_latest(app->store, app->kms->ops->name, &want) != 0 || want <= info.latest_version) {
        app->kek_missing = 0;
        return;
    }
    kf_err err = {0};
    if (app->kms->ops->sync(app->kms, want, &err) == 0) {
        app->kek_missing = 0;
        return;
    }
    if (app->kek_missing != want)
        kf_log_error("kek_missing", "version=%u error=%s hint=\"copy it from the coordinator where keyfleetctl kms "
                                    "rotate ran; it is loaded within a second\"",
                     want, kf_log_q(err.msg));
    app->kek_missing = want;
}

static void on_expiry_tick(uv_timer_t *t)
{
    kfd_approvals_expire(t->data);
    kms_sync(t->data);
}

int kfd_app_open(kfd_app *app, kfd_server *srv, kf_err *err)
{
    memset(app, 0, sizeof(*app));
    app->srv = srv;
    const kfd_config *cfg = srv->cfg;
    char path[4096];
    snprintf(path, sizeof(path), "%s/keyfleet.db", cfg->state_dir);
    kf_err serr = {0};
    if (kfd_store_open(path, &app->store, &serr) != 0)
        kf_log_error("store_open_failed", "path=%s error=%s action=\"answering unavailable\"", kf_log_q(path),
                     kf_log_q(serr.msg));
    int r = kfd_kms_open(srv->loop, &cfg->kms, &app->kms, err);
    if (r != 0)
        return r;
    if ((app->ratelimit = kfd_ratelimit_new()) == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    if (cfg->webhook_url != NULL &&
        (r = kfd_webhook_new(srv->loop, cfg->webhook_url, cfg->webhook_secret_file, &app->webhook, err)) != 0)
        return r;
    kfd_app_load_policy(app);
    if ((r = kfd_repl_open(app, err)) != 0)
        return kf_err_wrap(err, "replication");
    kms_sync(app);
    kfd_kms_info info;
    app->kms->ops->describe(app->kms, &info);
    kf_log_info("app_ready", "kms=%s kek_version=%u policy_version=%llu store=%s", info.backend, info.latest_version,
                (unsigned long long)app->policy_version, kfd_store_failed(app->store) ? "failed" : "ok");
    uv_timer_init(srv->loop, &app->expiry_timer);
    app->expiry_timer.data = app;
    uv_timer_start(&app->expiry_timer, on_expiry_tick, EXPIRY_TICK_MS, EXPIRY_TICK_MS);
    uv_unref((uv_handle_t *)&app->expiry_timer);
    return 0;
}

void kfd_app_close(kfd_app *app)
{
    /* Raft first: it may still apply committed entries to the store while it stops. */
    kfd_repl_close(app);
    if (app->expiry_timer.loop != NULL && !uv_is_closing((uv_handle_t *)&app->expiry_timer)) {
        uv_timer_stop(&app->expiry_timer);
        uv_close((uv_handle_t *)&app->expiry_timer, on_timer_closed);
    }
    kfd_webhook_free(app->webhook);
    kfd_ratelimit_free(app->ratelimit);
    kfd_policy_free(app->policy);
    if (app->kms != NULL)
        app->kms->ops->destroy(app->kms);
    kfd_store_close(app->store);
    /* Not memset: the timer handle stays queued in the loop until its close callback runs. */
    app->webhook = NULL;
    app->ratelimit = NULL;
    app->policy = NULL;
    app->kms = NULL;
    app->store = NULL;
}

void kfd_app_load_policy(kfd_app *app)
{
    char *yaml = NULL;
    uint64_t version = 0;
    if (kfd_store_failed(app->store) || kfd_store_get_policy(app->store, &yaml, &version) != 0)
        return;
    if (version == app->policy_version && app->policy != NULL) {
        free(yaml);
        return;
    }
    kfd_policy *parsed = NULL;
    kf_err perr = {0};
    if (kfd_policy_parse("policy", yaml != NULL ? yaml : "", yaml != NULL ? strlen(yaml) : 0, &parsed, &perr) != 0)
        kf_log_error("policy_load_failed", "version=%llu error=%s action=\"denying everything\"",
                     (unsigned long long)version, kf_log_q(perr.msg));
    free(yaml);
    kfd_policy_free(app->policy);
    app->policy = parsed;
    app->policy_version = version;
}

bool kfd_app_ready(const kfd_app *app, const char **ret_why)
{
    if (app == NULL || app->kms == NULL) {
        *ret_why = "KMS not loaded";
        return false;
    }
    if (kfd_store_failed(app->store)) {
        *ret_why = "state store failed; restart after fixing it";
        return false;
    }
    return true;
}

bool kfd_app_kms_reachable(const kfd_app *app, const char **ret_why)
{
    kfd_kms_info info = {0};
    app->kms->ops->describe(app->kms, &info);
    if (!info.reachable) {
        *ret_why = "KMS unreachable (see the log's kms_failed and kms_token_failed events)";
        return false;
    }
    if (info.problem != NULL) {
        static char why[200];
        snprintf(why, sizeof(why), "KMS not usable: %s", info.problem);
        *ret_why = why;
        return false;
    }
    return true;
}

bool kfd_app_kms_complete(const kfd_app *app, const char **ret_why)
{
    static char why[160];
    if (app->kek_missing == 0)
        return true;
    snprintf(why, sizeof(why), "KMS key version %u, which the cluster rotated to, is missing here (kek_missing in the log)",
             app->kek_missing);
    *ret_why = why;
    return false;
}

void kfd_commit(kfd_app *app, Keyfleet__V1__StateCommand *cmd, kfd_commit_cb cb, void *arg)
{
    cmd->command_id = ++app->next_command_id;
    cmd->proposer = app->srv->cfg->name;
    uint8_t stackbuf[4096];
    size_t len = protobuf_c_message_get_packed_size(&cmd->base);
    uint8_t *packed = len <= sizeof(stackbuf) ? stackbuf : malloc(len);
    if (packed == NULL) {
        kf_err err;
        kf_err_set(&err, -ENOMEM, "out of memory");
        kfd_apply_result res = {0};
        cb(arg, -ENOMEM, &res, &err);
        return;
    }
    protobuf_c_message_pack(&cmd->base, packed);
    kfd_repl_submit(app->repl, packed, len, cb, arg);
    if (packed != stackbuf)
        free(packed);
}

void kfd_audit_fill(kfd_audit_buf *b, const kfd_call *call, const char *action, Keyfleet__V1__Decision decision,
                    const char *node, const char *volume_id, const char *request_id, const char *reason)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    keyfleet__v1__audit_entry__init(&b->entry);
    keyfleet__v1__timestamp__init(&b->time);
    keyfleet__v1__principal__init(&b->actor);
    b->time.seconds = now.tv_sec;
    b->time.nanos = (int32_t)now.tv_nsec;
    if (call != NULL && call->peer != NULL) {
        b->actor.kind = (Keyfleet__V1__PrincipalKind)call->peer->kind;
        b->actor.name = (char *)call->peer->name;
        b->actor.auth = (char *)(call->auth != NULL ? call->auth : "mtls");
    } else {
        b->actor.kind = KEYFLEET__V1__PRINCIPAL_KIND__PRINCIPAL_KIND_COORDINATOR;
        b->actor.name = (char *)"keyfleetd";
        b->actor.auth = (char *)"internal";
    }
    b->entry.time = &b->time;
    b->entry.actor = &b->actor;
    b->entry.action = (char *)action;
    b->entry.decision = decision;
    b->entry.node = (char *)(node != NULL ? node : "");
    b->entry.volume_id = (char *)(volume_id != NULL ? volume_id : "");
    b->entry.request_id = (char *)(request_id != NULL ? request_id : "");
    b->entry.reason = (char *)(reason != NULL ? reason : "");
    b->entry.source_address = (char *)(call != NULL ? call->source : "");
}

static void on_auth_audit(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)arg, (void)res;
    if (status != 0)
        kf_log_warn("auth_audit_failed", "error=%s", kf_log_q(err->msg));
}

void kfd_audit_auth_failure(kfd_app *app, const kfd_call *call, const char *subject, const char *reason)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    if (app == NULL || app->store == NULL || kfd_store_failed(app->store) ||
        kfd_ratelimit_take(app->ratelimit, " auth-failures", 600, 50, now) != 0)
        return;
    kfd_audit_buf a;
    kfd_audit_fill(&a, call, "auth_fail", KEYFLEET__V1__DECISION__DECISION_DENY, subject, "", "", reason);
    if (call == NULL) {
        /* Refused during the TLS handshake: there is no verified actor, only what it presented. */
        a.actor.kind = KEYFLEET__V1__PRINCIPAL_KIND__PRINCIPAL_KIND_UNSPECIFIED;
        a.actor.name = (char *)subject;
        a.actor.auth = (char *)"tls";
    }
    Keyfleet__V1__CmdAppendAudit c = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
    cmd.append_audit = &c;
    kfd_commit(app, &cmd, on_auth_audit, NULL);
}

void kfd_new_request_id(char out[33])
{
    /* Request ids are not secrets (they appear in logs and answers): one RAND_bytes call serves
     * a hundred of them, as its fixed cost under OpenSSL 3.0 is most of a short request's. */
    static uint8_t pool[1000];
    static size_t left;
    static const char hex[] = "0123456789abcdef";
    if (left < 10) {
        if (RAND_bytes(pool, sizeof(pool)) != 1)
            abort(); /* the DRBG failed: nothing random can be trusted any more */
        left = sizeof(pool);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    for (int i = 11; i >= 0; i--, ms >>= 4)
        out[i] = hex[ms & 0xf];
    uint8_t *r = pool + sizeof(pool) - left;
    for (int i = 0; i < 10; i++) {
        out[12 + 2 * i] = hex[r[i] >> 4];
        out[13 + 2 * i] = hex[r[i] & 0xf];
    }
    out[32] = '\0';
    OPENSSL_cleanse(r, 10); /* each random byte is used once */
    left -= 10;
}

bool kfd_request_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 16 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-'))
            return false;
    }
    return true;
}
