/* The release loop: one long-lived HTTP/2 connection per run, coordinators tried in turn (by
 * kf_rpc_client), transport errors and `unavailable` retried with jittered exponential backoff,
 * PENDING polled at the coordinator's pace, all bounded by the run's deadline. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "agent.h"
#include "kf_tpm_evidence.h"
#include "kf_secmem.h"
#include "kf_time.h"
#include "tpm2.h"
#include "kf_log.h"
#include "kf_tpmkey.h"

#define BACKOFF_FIRST_MS 200
#define BACKOFF_MAX_MS 5000

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* AppRole: role_id + secret_id for a bearer token that stands for this node. */
static int login(kfa_ctx *ctx, kf_err *err)
{
    kf_secbuf *role_id = NULL, *secret_id = NULL;
    int r = kf_secbuf_read_file(ctx->cfg->role_id_file, 256, &role_id, err);
    if (r == 0 && ctx->cfg->secret_id_file != NULL) {
        r = kf_secbuf_read_file(ctx->cfg->secret_id_file, 256, &secret_id, err);
    } else if (r == 0) {
        kf_secbuf *blob = NULL;
        r = kf_secbuf_read_file(ctx->cfg->secret_id_tpm_file, KFA_TPM_BLOB_MAX, &blob, err);
        if (r == 0)
            r = kfa_tpm_unseal(ctx->cfg->tpm_tcti, (const char *)blob->data, &secret_id, KFA_TPM_TIMEOUT_MS, err);
        kf_secbuf_free(blob);
        if (r != 0)
            kf_err_wrap(err, "AppRole secret id sealed in %s", ctx->cfg->secret_id_tpm_file);
    }
    /* Secure buffers are zeroed and page-sized, so the secret id is NUL-terminated. */
    if (r == 0 && secret_id->len >= secret_id->cap)
        r = kf_err_set(err, -EINVAL, "AppRole secret id too long");
    if (r != 0) {
        kf_secbuf_free(secret_id);
        kf_secbuf_free(role_id);
        return -EACCES; /* a local problem: retrying will not fix it */
    }
    Keyfleet__V1__LoginRequest req = KEYFLEET__V1__LOGIN_REQUEST__INIT;
    req.role_id = (char *)role_id->data;
    req.secret_id = (char *)secret_id->data;
    ProtobufCMessage *m = NULL;
    kf_rpc_status st;
    r = kf_rpc_call(ctx->client, "keyfleet.v1.NodeService/Login", &req.base, &keyfleet__v1__login_response__descriptor,
                    &m, &st, err);
    kf_secbuf_free(role_id);
    kf_secbuf_free(secret_id);
    if (r != 0)
        return r;
    ctx->reachable = true;
    if (st.code != KF_CONNECT_OK) {
        bool transient = st.code == KF_CONNECT_UNAVAILABLE || st.code == KF_CONNECT_RESOURCE_EXHAUSTED;
        kf_err_set(err, transient ? -EAGAIN : -EACCES, "AppRole login: %s: %s", kf_connect_code_name(st.code),
                   st.message);
        return transient ? -EAGAIN : -EACCES;
    }
    Keyfleet__V1__LoginResponse *resp = (Keyfleet__V1__LoginResponse *)m;
    r = kf_name_valid(resp->node_name, strlen(resp->node_name)) ? kf_rpc_client_set_bearer(ctx->client, resp->token)
                                                                : -EPROTO;
    if (r == 0) {
        snprintf(ctx->me.name, sizeof(ctx->me.name), "%s", resp->node_name);
        ctx->logged_in = true;
        kf_log_info("login", "node=%s ttl_s=%u", ctx->me.name, resp->ttl_seconds);
    } else {
        kf_err_set(err, -EACCES, "AppRole login: the answer names no valid node");
        r = -EACCES;
    }
    kf_wipe(resp->token, strlen(resp->token));
    protobuf_c_message_free_unpacked(m, NULL);
    return r;
}

int kfa_client(kfa_ctx *ctx, kf_err *err)
{
    char prefer[256] = "";
    if (ctx->client != NULL && !kf_rpc_client_usable(ctx->client)) {
        /* Its TPM key was let go of for a quote, and its connection is gone: a new client, sent
         * where the old one would have gone (the leader a follower named). */
        snprintf(prefer, sizeof(prefer), "%s", kf_rpc_client_current(ctx->client));
        kfa_client_close_for_tpm(ctx);
    }
    if (ctx->client != NULL)
        return 0;
    kf_rpc_opts opts = {
        .servers = (const char *const *)ctx->cfg->coordinators.v,
        .n_servers = ctx->cfg->coordinators.n,
        .cert_file = ctx->cfg->cert,
        .key_file = ctx->cfg->key,
        .tpm_key_file = ctx->cfg->tpm_key,
        .tpm_tcti = ctx->cfg->tpm_key != NULL ? ctx->cfg->tpm_tcti : NULL,
        .ca_file = ctx->cfg->ca,
        .timeout_ms = (long)ctx->cfg->call_timeout_ms,
    };
    int r = kf_rpc_client_new(&opts, &ctx->client, err);
    if (r == 0 && prefer[0] != '\0' && (r = kf_rpc_client_prefer(ctx->client, prefer)) != 0)
        r = kf_err_set(err, r, "%s: %s", prefer, strerror(-r));
    return r;
}

void kfa_client_close_for_tpm(kfa_ctx *ctx)
{
    if (ctx->cfg->tpm_key == NULL)
        return;
    kf_rpc_client_free(ctx->client);
    ctx->client = NULL;
    kf_tpmkey_unload();
}

int kfa_connect(kfa_ctx *ctx, kf_err *err)
{
    int r = kfa_client(ctx, err);
    return r == 0 && ctx->cfg->role_id_file != NULL && !ctx->logged_in ? login(ctx, err) : r;
}

int kfa_identify(kfa_ctx *ctx, kf_err *err)
{
    if (ctx->cfg->cert == NULL) {
        ctx->me.kind = KF_PEER_NODE; /* AppRole: the name comes with the login */
        return 0;
    }
    if (kfa_client(ctx, err) != 0)
        return -EINVAL;
    if (kf_rpc_client_identity(ctx->client, &ctx->me, err) != 0 || ctx->me.kind != KF_PEER_NODE)
        return kf_err_set(err, -EINVAL, "%s: %s", ctx->cfg->cert,
                          err->msg[0] ? err->msg : "not a node certificate (keyfleet://node/NAME)");
    return 0;
}

kf_seal_receiver *kfa_receiver(kfa_ctx *ctx)
{
    if (ctx->receiver == NULL && kf_seal_receiver_new(ctx->me.name, &ctx->receiver) != 0)
        ctx->receiver = NULL;
    return ctx->receiver;
}

static int attest_with(kfa_ctx *ctx, const char *method, const char *volume_id, const unsigned char *eph,
                       size_t eph_len, const char *request_id, kfa_quote *q, Keyfleet__V1__TpmQuote *msg, kf_err *err);

int kfa_attest(kfa_ctx *ctx, const char *method, const char *volume_id, const char *request_id, kfa_quote *q,
               Keyfleet__V1__TpmQuote *msg, kf_err *err)
{
    if (ctx->cfg->tpm_key == NULL || !ctx->cfg->tpm_attest || !ctx->me.tpm_key)
        return 1;
    kf_seal_receiver *rx = kfa_receiver(ctx);
    if (rx == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    return attest_with(ctx, method, volume_id, kf_seal_receiver_public_key(rx), 32, request_id, q, msg, err);
}

int kfa_attest_keyless(kfa_ctx *ctx, const char *method, const char *volume_id, const char *request_id, kfa_quote *q,
                       Keyfleet__V1__TpmQuote *msg, kf_err *err)
{
    if (ctx->cfg->tpm_key == NULL || !ctx->cfg->tpm_attest || !ctx->me.tpm_key)
        return 1;
    return attest_with(ctx, method, volume_id, NULL, 0, request_id, q, msg, err);
}

int kfa_attest_heartbeat(kfa_ctx *ctx, kfa_quote *q, Keyfleet__V1__TpmQuote *msg, kf_err *err)
{
    return kfa_attest_keyless(ctx, "Heartbeat", "", "", q, msg, err);
}

/* The quote for method on the current connection (connecting first), bound to its exporter. */
static int attest_with(kfa_ctx *ctx, const char *method, const char *volume_id, const unsigned char *eph,
                       size_t eph_len, const char *request_id, kfa_quote *q, Keyfleet__V1__TpmQuote *msg, kf_err *err)
{
    unsigned char exporter[32], qual[32];
    int r = kfa_connect(ctx, err);
    if (r == 0)
        r = kf_rpc_client_export(ctx->client, KF_TPM_QUOTE_EXPORTER_LABEL, exporter, sizeof(exporter), err);
    if (r != 0)
        return r;
    kf_tpm_quote_qualifying(exporter, method, volume_id, eph, eph_len, request_id != NULL ? request_id : "", qual);
    /* The handshake is done: close the provider's TPM connection, keep the TLS one. */
    kf_rpc_client_release_tpm(ctx->client);
    if (kfa_tpm_quote(ctx->cfg->tpm_tcti, ctx->cfg->tpm_attest_pcrs, qual, q, err) != 0)
        return kf_err_wrap(err, "quote for measured-boot attestation"), -ENXIO;
    Keyfleet__V1__TpmQuote init = KEYFLEET__V1__TPM_QUOTE__INIT;
    *msg = init;
    msg->quoted = (ProtobufCBinaryData){.data = q->quoted, .len = q->quoted_len};
    msg->signature = (ProtobufCBinaryData){.data = q->sig, .len = q->sig_len};
    msg->ak_public = (ProtobufCBinaryData){.data = q->ak_pub, .len = q->ak_pub_len};
    msg->pcr_values = (ProtobufCBinaryData){.data = q->values, .len = q->values_len};
    memcpy(q->nonce, qual, sizeof(qual));
    msg->nonce = (ProtobufCBinaryData){.data = q->nonce, .len = sizeof(qual)};
    return 0;
}

/* Waits before the next attempt; false when that would pass the deadline. */
static bool wait_until_next(const kfa_ctx *ctx, uint64_t ms)
{
    uint64_t now = kf_monotonic_ms();
    if (now + ms >= ctx->deadline)
        return false;
    sleep_ms(ms);
    return true;
}

/* Milliseconds a pending request has left: the run's deadline, or the request's expiry when
 * that comes first (expires_at: Unix seconds from the coordinator; 0 when not said). */
static uint64_t approval_left_ms(const kfa_ctx *ctx, int64_t expires_at)
{
    uint64_t now = kf_monotonic_ms();
    uint64_t left = ctx->deadline > now ? ctx->deadline - now : 0;
    int64_t wall = (int64_t)time(NULL);
    if (expires_at > 0) {
        /* An expiry the coordinator set far ahead must not wrap to a short countdown. */
        uint64_t secs = expires_at > wall ? (uint64_t)(expires_at - wall) : 0;
        uint64_t req = secs > left / 1000 ? left : secs * 1000;
        if (req < left)
            left = req;
    }
    return left;
}

/* The live countdown line on a terminal: rewritten in place; "" clears it. */
static void live_line(const char *text)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "\r\033[K%s", text);
    if (n > 0 && write(STDERR_FILENO, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1) < 0)
        return; /* the terminal is gone: the log lines still say it */
}

/* Waits ms before the next poll of a pending request, redrawing the countdown every second on
 * a terminal; false when that would pass the deadline. */
static bool wait_pending(const kfa_ctx *ctx, const kfa_volume *v, const kf_released *rel, uint64_t ms)
{
    if (!ctx->live)
        return wait_until_next(ctx, ms);
    uint64_t end = kf_monotonic_ms() + ms;
    if (end >= ctx->deadline)
        return false;
    for (uint64_t now = kf_monotonic_ms(); now < end; now = kf_monotonic_ms()) {
        uint64_t left = approval_left_ms(ctx, rel->expires_at) / 1000;
        char text[400];
        snprintf(text, sizeof(text), "%.200s: waiting for approval (keyfleetctl approve %.64s): %llu:%02llu left", v->path,
                 rel->request_id, (unsigned long long)(left / 60), (unsigned long long)(left % 60));
        live_line(text);
        sleep_ms(end - now < 1000 ? end - now : 1000);
    }
    return true;
}

static uint64_t jitter(uint64_t ms)
{
    uint16_t r = 0;
    RAND_bytes((unsigned char *)&r, sizeof(r));
    return ms / 2 + (ms * r) / 65535; /* 0.5x .. 1.5x */
}

static int release_loop(kfa_ctx *ctx, const kfa_volume *v, kf_released *ret, bool *waited, kf_err *err);

int kfa_release(kfa_ctx *ctx, const kfa_volume *v, kf_released *ret, kf_err *err)
{
    bool waited = false;
    int r = release_loop(ctx, v, ret, &waited, err);
    if (waited && ctx->live)
        live_line(""); /* the countdown is over, whatever the outcome */
    return r;
}

static int release_loop(kfa_ctx *ctx, const kfa_volume *v, kf_released *ret, bool *waited, kf_err *err)
{
    int r;
    Keyfleet__V1__VolumeRef ref = KEYFLEET__V1__VOLUME_REF__INIT;
    ref.id = (char *)v->id;
    ref.kind = v->kind == KFA_VOL_LUKS2 ? KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2
                                        : KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS;
    ref.name = (char *)v->path;
    char request_id[65] = "";
    uint64_t backoff = BACKOFF_FIRST_MS;
    bool announced = false, relogged = false;
    /* Whether any coordinator answered during this release, even PENDING or unavailable: then the
     * TPM copy is out of reach (a network attacker who cuts the line after an answer must not
     * turn an approval wait or a refusal into an offline unlock). */
    bool answered = false;
    uint64_t announced_at = 0;
    for (;;) {
        kf_rpc_status st = {.code = KF_CONNECT_OK};
        kf_err e = {0};
        r = kfa_connect(ctx, &e);
        if (r == -EACCES)
            return kf_err_set(err, -EACCES, "%s: %s", v->path, e.msg);
        if (r == -EAGAIN) { /* a coordinator answered but cannot log us in now */
            r = 0;
            st.code = KF_CONNECT_UNAVAILABLE;
            snprintf(st.message, sizeof(st.message), "%s", e.msg);
        } else if (r == 0) {
            kfa_quote q;
            Keyfleet__V1__TpmQuote quote;
            int a = kfa_attest(ctx, "Release", v->id, request_id, &q, &quote, &e);
            if (a == -ENXIO || a == -ENOMEM) /* the TPM refused the quote: no retry helps */
                return kf_err_set(err, -EIO, "%s: %s", v->path, e.msg);
            r = a < 0 ? a
                      : kf_node_release(ctx->client, kfa_receiver(ctx), ctx->me.name, &ref, v->wrapped, request_id,
                                        a == 0 ? &quote : NULL, ctx->no_pending, ret, &st, &e);
        }
        answered |= r == 0;
        if (r == 0 && st.code == KF_CONNECT_UNAUTHENTICATED && ctx->logged_in && !relogged) {
            /* The token expired or was revoked: log in again, once. */
            ctx->logged_in = false;
            relogged = true;
            continue;
        }
        if (r == 0 && st.code == KF_CONNECT_OK && ret->pending) {
            snprintf(request_id, sizeof(request_id), "%s", ret->request_id);
            /* The journal (and the boot console) gets a line every approval_log_interval with the
             * time left; a terminal of its own gets one, then the live countdown. */
            uint64_t now = kf_monotonic_ms();
            if (!announced || (!ctx->live && now - announced_at >= ctx->cfg->approval_log_interval_ms)) {
                kf_log_info("waiting_for_approval", "volume=%s request=%s seconds_left=%llu expires_at=%lld",
                            kf_log_q(v->path), request_id,
                            (unsigned long long)(approval_left_ms(ctx, ret->expires_at) / 1000),
                            (long long)ret->expires_at);
                announced = true;
                announced_at = now;
            }
            *waited = true;
            uint64_t wait = ret->retry_after_ms ? ret->retry_after_ms : 2000;
            if (!wait_pending(ctx, v, ret, wait))
                return kf_err_set(err, -ETIMEDOUT, "%s: still waiting for approval (request %s) at the deadline",
                                  v->path, request_id);
            continue;
        }
        if (r == 0 && st.code == KF_CONNECT_OK)
            return 0;
        bool transient = r != 0 || st.code == KF_CONNECT_UNAVAILABLE || st.code == KF_CONNECT_DEADLINE_EXCEEDED;
        if (r == 0 && st.code == KF_CONNECT_RESOURCE_EXHAUSTED)
            transient = true;
        if (!transient)
            return kf_err_set(err, st.code == KF_CONNECT_PERMISSION_DENIED ? -EACCES : -EPROTO, "%s: %s: %s",
                              v->path, kf_connect_code_name(st.code), st.message);
        if (*waited && ctx->live)
            live_line(""); /* the log line starts on a line of its own */
        kf_log_warn("release_retry", "volume=%s reason=%s backoff_ms=%llu", kf_log_q(v->path),
                    kf_log_q(r != 0 ? e.msg : st.message), (unsigned long long)backoff);
        if (!wait_until_next(ctx, jitter(backoff)))
            /* -EHOSTUNREACH only when no coordinator answered at all: the TPM fallback's condition. */
            return kf_err_set(err, !answered ? -EHOSTUNREACH : -ETIMEDOUT,
                              "%s: no coordinator released the key before the deadline (%s)", v->path,
                              r != 0 ? e.msg : st.message);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
}
