#include "core/checkpoint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "core/app.h"
#include "core/audit.h"
#include "kf_audit.h"
#include "kf_log.h"

/* A checkpoint at most this long after records were applied (the issue asks for <= 1 s), or
 * once this many records wait, whichever comes first; one in flight at a time. */
#define CHECKPOINT_MS 200
#define CHECKPOINT_RECORDS 1000
#define TICK_MS 25

struct kfd_checkpointer {
    struct kfd_app *app;
    uv_timer_t timer;
    EVP_PKEY *key;
    uint8_t *cert_der;
    size_t cert_len;
    X509_STORE *ca;
    char cluster[40];
    bool inflight, closing;
    uint64_t last_at; /* loop time of the last proposal */
    kfd_checkpoint_stats stats;
};

static int load_key_cert(kfd_checkpointer *c, const kfd_config *cfg, kf_err *err)
{
    FILE *f = fopen(cfg->tls_key, "r");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: %s", cfg->tls_key, strerror(errno));
    c->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (c->key == NULL)
        return kf_err_set(err, -EINVAL, "%s: no private key", cfg->tls_key);
    if ((f = fopen(cfg->tls_cert, "r")) == NULL)
        return kf_err_set(err, -errno, "%s: %s", cfg->tls_cert, strerror(errno));
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    unsigned char *der = NULL;
    int n = x != NULL ? i2d_X509(x, &der) : -1;
    X509_free(x);
    if (n <= 0)
        return kf_err_set(err, -EINVAL, "%s: no certificate", cfg->tls_cert);
    c->cert_der = der;
    c->cert_len = (size_t)n;
    return 0;
}

static void on_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    kfd_checkpointer *c = arg;
    c->inflight = false;
    if (status != 0) {
        c->stats.failed_total++;
        kf_log_warn("audit_checkpoint_failed", "error=%s", kf_log_q(err->msg));
        return;
    }
    c->stats.signed_total++;
    (void)res;
}

static void propose(kfd_checkpointer *c, const kfd_audit_head *h)
{
    kfd_app *app = c->app;
    kf_checkpoint cp;
    memset(&cp, 0, sizeof(cp));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    memcpy(cp.cluster, c->cluster, sizeof(cp.cluster));
    cp.size = h->seq;
    memcpy(cp.root, h->root, KF_AUDIT_HASH);
    memcpy(cp.chain, h->chain, KF_AUDIT_HASH);
    cp.seconds = now.tv_sec;
    cp.nanos = (int32_t)now.tv_nsec;
    snprintf(cp.signer, sizeof(cp.signer), "%s", app->cfg->name);
    char text[KF_CHECKPOINT_TEXT_MAX];
    int len = kf_checkpoint_format(&cp, text, sizeof(text));
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    kf_err err = {0};
    if (len < 0 || kf_checkpoint_sign(c->key, text, (size_t)len, &sig, &sig_len, &err) != 0) {
        c->stats.failed_total++;
        kf_log_error("audit_checkpoint_failed", "error=%s", kf_log_q(len < 0 ? "formatting" : err.msg));
        return;
    }
    kfd_audit_buf a;
    kfd_actor self = {0};
    kfd_audit_fill(&a, self, KF_AUDIT_CHECKPOINT_ACTION, KEYFLEET__V1__DECISION__DECISION_ALLOW, "", "", "", text);
    a.time.seconds = cp.seconds;
    a.time.nanos = cp.nanos;
    a.actor.name = app->cfg->name;
    Keyfleet__V1__CmdCheckpoint cc = KEYFLEET__V1__CMD_CHECKPOINT__INIT;
    cc.text = text;
    cc.signature.data = sig;
    cc.signature.len = sig_len;
    cc.cert.data = c->cert_der;
    cc.cert.len = c->cert_len;
    cc.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CHECKPOINT;
    cmd.checkpoint = &cc;
    c->inflight = true;
    c->last_at = uv_now(c->timer.loop);
    c->stats.last_size = cp.size;
    kfd_commit(app, &cmd, on_committed, c); /* serialized at once */
    OPENSSL_free(sig);
}

static void on_tick(uv_timer_t *t)
{
    kfd_checkpointer *c = t->data;
    kfd_app *app = c->app;
    if (c->inflight || app->store == NULL || kfd_store_failed(app->store) ||
        kfd_store_audit_diverged(app->store, NULL) != 0)
        return;
    const char *why;
    char leader[280];
    if (!kfd_repl_writable(app->repl, &why, leader, sizeof(leader)))
        return;
    kfd_audit_head h;
    kfd_store_audit_head(app->store, &h);
    /* Nothing since the newest checkpoint record (which a checkpoint itself is). */
    if (h.seq == 0 || h.seq == h.checkpoint_seq)
        return;
    if (uv_now(t->loop) - c->last_at < CHECKPOINT_MS && h.seq - h.checkpoint_size < CHECKPOINT_RECORDS)
        return;
    propose(c, &h);
}

int kfd_checkpointer_new(kfd_app *app, uv_loop_t *loop, kfd_checkpointer **ret, kf_err *err)
{
    kfd_checkpointer *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    c->app = app;
    int r = load_key_cert(c, app->cfg, err);
    if (r == 0)
        r = kf_checkpoint_ca_load(app->cfg->tls_ca, &c->ca, c->cluster, err);
    ERR_clear_error();
    if (r != 0) {
        EVP_PKEY_free(c->key);
        OPENSSL_free(c->cert_der);
        free(c);
        return kf_err_wrap(err, "audit checkpoints");
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    uv_timer_start(&c->timer, on_tick, TICK_MS, TICK_MS);
    uv_unref((uv_handle_t *)&c->timer);
    *ret = c;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    kfd_checkpointer *c = h->data;
    EVP_PKEY_free(c->key);
    OPENSSL_free(c->cert_der);
    X509_STORE_free(c->ca);
    free(c);
}

void kfd_checkpointer_free(kfd_checkpointer *c)
{
    if (c == NULL)
        return;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_closed);
}

int kfd_checkpoint_verify_record(kfd_checkpointer *c, const Keyfleet__V1__AuditRecord *r, kf_err *err)
{
    if (r == NULL || strcmp(r->action, KF_AUDIT_CHECKPOINT_ACTION) != 0)
        return kf_err_set(err, -EPERM, "not a checkpoint record");
    return kf_checkpoint_verify(r->reason, strlen(r->reason), r->signature.data, r->signature.len,
                                r->signer_cert.data, r->signer_cert.len, c->ca, c->cluster, NULL, err);
}

void kfd_checkpointer_stats(const kfd_checkpointer *c, kfd_checkpoint_stats *ret)
{
    if (c == NULL)
        memset(ret, 0, sizeof(*ret));
    else
        *ret = c->stats;
}
