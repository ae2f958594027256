#include "core/app.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "core/audit_sink.h"
#include "core/checkpoint.h"
#include "core/node_seen.h"
#include "core/ratelimit.h"
#include "core/webhook.h"
#include "kf_log.h"
#include "store/store_apply.h"
#include "store/store_audit.h"
#include "store/store_dispute.h"
#include "store/store_judged.h"
#include "store/store_read.h"
#include "kf_node_check.h"

/* Catches up with a KMS rotation made on another replica: loads the new key version if it is
 * here, else says once what is missing. Without it, this replica could not open keys wrapped
 * under that version once it leads. */
void kfd_app_sync_kms(kfd_app *app)
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

/* Replication's hook after each applied entry: a policy write may come from PutPolicy, or from
 * a held change that an approval or its own proposal (admin.approvers 1) completed; the store
 * says which applies wrote it. A restored snapshot may hold any policy. */
static int on_applied(void *arg, const Keyfleet__V1__StateCommand *cmd, bool restored, kf_err *err)
{
    kfd_app *app = arg;
    (void)cmd;
    if (restored || kfd_store_take_policy_changed(app->store))
        kfd_app_load_policy(app);
    /* Before the proposer hears of it: a release whose record a required sink could not take is
     * answered as failed, and no key goes out. */
    return kfd_sinks_stream(app->sinks, err);
}

void kfd_app_flush_sinks(kfd_app *app)
{
    kf_err err = {0};
    kfd_sinks_stream(app->sinks, &err);
}

void kfd_app_reopen_sinks(kfd_app *app) { kfd_sinks_reopen(app->sinks); }

/* Replication's check of a snapshot whose log verified: its newest checkpoint is signed. */
static int check_snapshot(void *arg, const kfd_image_check *check, kf_err *err)
{
    kfd_app *app = arg;
    if (check->newest == NULL)
        return 0;
    if (kfd_checkpoint_verify_record(app->checkpointer, check->newest, err) != 0)
        return kf_err_wrap(err, "snapshot's newest checkpoint (record %llu)", (unsigned long long)check->newest->seq);
    return 0;
}

/* The store's check of a checkpoint command at apply (review rev17, R5). */
static int verify_checkpoint_command(void *arg, const Keyfleet__V1__CmdCheckpoint *c, kf_err *err)
{
    kfd_app *app = arg;
    return kfd_checkpoint_verify_command(app->checkpointer, c, err);
}

/* One checkpoint record of the local log at start: its signature and chain (cached per
 * certificate, review rev17 R6). */
typedef struct local_check {
    kfd_app *app;
    uint64_t seq, count;
    kf_err err;
} local_check;

static int verify_one_local(void *arg, const Keyfleet__V1__AuditRecord *r)
{
    local_check *lc = arg;
    lc->seq = r->seq;
    lc->count++;
    /* Its own applied log: a checkpoint time that was ahead of the clock was refused at apply. */
    return kfd_checkpoint_verify_applied_record(lc->app->checkpointer, r, &lc->err) != 0 ? -EPERM : 0;
}

/* At start: the local log verified against its own checkpoints (kfd_store_open); here every one
 * of them must also carry a coordinator's signature over its text, which names its certificate
 * (v2), or the log could have been recomputed, or its older checkpoints' signature and
 * certificate blobs replaced unnoticed (review rev17, R6). Records after the newest are checked
 * by the leader's next checkpoint. */
static void verify_local_checkpoints(kfd_app *app)
{
    local_check lc = {.app = app};
    if (kfd_store_failed(app->store))
        return;
    int r = kfd_store_each_checkpoint(app->store, verify_one_local, &lc);
    if (r == -EPERM) {
        char why[600];
        int n = snprintf(why, sizeof(why), "checkpoint record %llu: %s", (unsigned long long)lc.seq, lc.err.msg);
        (void)n;
        kfd_store_mark_diverged(app->store, lc.seq, why);
    } else if (r == 0 && lc.count > 0) {
        kf_log_info("audit_checkpoints_verified", "checkpoints=%llu", (unsigned long long)lc.count);
    }
}

int kfd_app_open(kfd_app *app, uv_loop_t *loop, const kfd_config *cfg, kf_err *err)
{
    memset(app, 0, sizeof(*app));
    app->cfg = cfg;
    char path[4096];
    snprintf(path, sizeof(path), "%s/keyfleet.db", cfg->state_dir);
    kf_err serr = {0};
    if (kfd_store_open(path, &app->store, &serr) != 0)
        kf_log_error("store_open_failed", "path=%s error=%s action=\"answering unavailable\"", kf_log_q(path),
                     kf_log_q(serr.msg));
    int r = kfd_kms_open(loop, &cfg->kms, &app->kms, err);
    if (r != 0)
        return r;
    if ((app->ratelimit = kfd_ratelimit_new()) == NULL || (app->seen = kfd_node_seen_new()) == NULL ||
        (app->report_limit = kfd_ratelimit_new()) == NULL || (app->heartbeat_limit = kfd_ratelimit_new()) == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    if (cfg->webhook_url != NULL &&
        (r = kfd_webhook_new(loop, cfg->webhook_url, cfg->webhook_secret_file, &app->webhook, err)) != 0)
        return r;
    kfd_app_load_policy(app);
    if ((r = kfd_checkpointer_new(app, loop, &app->checkpointer, err)) != 0)
        return r;
    verify_local_checkpoints(app);
    kfd_store_set_checkpoint_verifier(app->store, verify_checkpoint_command, app);
    if ((r = kfd_sinks_open(&cfg->audit, cfg->name, app->store, &app->sinks, err)) != 0)
        return r;
    kfd_repl_env env = {.loop = loop, .cfg = cfg, .store = app->store, .on_applied = on_applied,
                        .check_snapshot = check_snapshot, .arg = app};
    if ((r = kfd_repl_open(&env, &app->repl, err)) != 0)
        return kf_err_wrap(err, "replication");
    kfd_app_sync_kms(app);
    kfd_kms_info info;
    app->kms->ops->describe(app->kms, &info);
    kf_log_info("app_ready", "kms=%s kek_version=%u policy_version=%llu store=%s", info.backend, info.latest_version,
                (unsigned long long)app->policy_version, kfd_store_failed(app->store) ? "failed" : "ok");
    return 0;
}

void kfd_app_close(kfd_app *app)
{
    /* The checkpoint timer is closed by the loop turns raft's close runs. */
    kfd_checkpointer_free(app->checkpointer);
    app->checkpointer = NULL;
    /* Raft first: it may still apply committed entries to the store while it stops. */
    kfd_repl_close(app->repl);
    app->repl = NULL;
    kfd_sinks_free(app->sinks);
    app->sinks = NULL;
    kfd_webhook_free(app->webhook);
    kfd_ratelimit_free(app->ratelimit);
    kfd_node_seen_free(app->seen);
    app->seen = NULL;
    kfd_ratelimit_free(app->report_limit);
    kfd_ratelimit_free(app->heartbeat_limit);
    kfd_policy_free(app->policy);
    if (app->kms != NULL)
        app->kms->ops->destroy(app->kms);
    kfd_store_close(app->store);
    app->webhook = NULL;
    app->ratelimit = NULL;
    app->report_limit = NULL;
    app->heartbeat_limit = NULL;
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
    if (kfd_judged_policy(yaml, app->policy_judged) != 0)
        kf_err_set(&perr, -EIO, "cannot digest the policy text");
    else if (kfd_policy_parse("policy", yaml != NULL ? yaml : "", yaml != NULL ? strlen(yaml) : 0, &parsed, &perr) != 0)
        parsed = NULL;
    if (parsed == NULL)
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
    if (!kfd_sinks_ok(app->sinks, ret_why))
        return false;
    const char *diverged_why = NULL;
    uint64_t seq = kfd_store_audit_diverged(app->store, &diverged_why);
    if (seq != 0) {
        static char why[400];
        int n = snprintf(why, sizeof(why), "audit log diverged at seq %llu: %s", (unsigned long long)seq, diverged_why);
        (void)n;
        *ret_why = why;
        return false;
    }
    if ((seq = kfd_store_audit_disputed(app->store, &diverged_why)) != 0) {
        static char why[400];
        int n = snprintf(why, sizeof(why), "audit disputed at seq %llu (a majority of voters settles it): %s",
                         (unsigned long long)seq, diverged_why);
        (void)n;
        *ret_why = why;
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
    /* A leader whose audit head no majority confirmed yet proposes nothing but the check that
     * confirms it: no record is appended to a log that may be a forgery (docs/audit.md). */
    const char *why;
    char leader[280];
    if (cmd->cmd_case != KEYFLEET__V1__STATE_COMMAND__CMD_AUDIT_HEAD_CHECK &&
        !kfd_repl_writable(app->repl, &why, leader, sizeof(leader))) {
        kf_err err;
        kf_err_set(&err, -EAGAIN, "%s", why);
        kfd_apply_result res = {0};
        cb(arg, -EAGAIN, &res, &err);
        return;
    }
    cmd->command_id = ++app->next_command_id;
    cmd->proposer = app->cfg->name;
    cmd->refusals_recorded = true;
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

bool kfd_request_id_valid(const char *s) { return kf_request_id_valid(s); }
