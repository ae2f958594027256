/* The release loop: one long-lived HTTP/2 connection per run, coordinators tried in turn (by
 * kf_rpc_client), transport errors and `unavailable` retried with jittered exponential backoff,
 * PENDING polled at the coordinator's pace, all bounded by the run's deadline. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "agent.h"
#include "kf_log.h"

#define BACKOFF_FIRST_MS 200
#define BACKOFF_MAX_MS 5000

uint64_t kfa_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int kfa_connect(kfa_ctx *ctx, kf_err *err)
{
    if (ctx->client != NULL)
        return 0;
    kf_rpc_opts opts = {
        .servers = (const char *const *)ctx->cfg->coordinators.v,
        .n_servers = ctx->cfg->coordinators.n,
        .cert_file = ctx->cfg->cert,
        .key_file = ctx->cfg->key,
        .ca_file = ctx->cfg->ca,
        .timeout_ms = (long)ctx->cfg->call_timeout_ms,
    };
    return kf_rpc_client_new(&opts, &ctx->client, err);
}

/* Waits before the next attempt; false when that would pass the deadline. */
static bool wait_until_next(const kfa_ctx *ctx, uint64_t ms)
{
    uint64_t now = kfa_now_ms();
    if (now + ms >= ctx->deadline)
        return false;
    sleep_ms(ms);
    return true;
}

static uint64_t jitter(uint64_t ms)
{
    uint16_t r = 0;
    RAND_bytes((unsigned char *)&r, sizeof(r));
    return ms / 2 + (ms * r) / 65535; /* 0.5x .. 1.5x */
}

int kfa_release(kfa_ctx *ctx, const kfa_volume *v, kf_released *ret, kf_err *err)
{
    int r = kfa_connect(ctx, err);
    if (r != 0)
        return r;
    Keyfleet__V1__VolumeRef ref = KEYFLEET__V1__VOLUME_REF__INIT;
    ref.id = (char *)v->id;
    ref.kind = v->kind == KFA_VOL_LUKS2 ? KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2
                                        : KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS;
    ref.name = (char *)v->path;
    char request_id[65] = "";
    uint64_t backoff = BACKOFF_FIRST_MS;
    bool announced = false;
    for (;;) {
        kf_rpc_status st;
        kf_err e = {0};
        r = kf_node_release(ctx->client, ctx->me.name, &ref, v->wrapped, request_id, ret, &st, &e);
        if (r == 0 && st.code == KF_CONNECT_OK && ret->pending) {
            snprintf(request_id, sizeof(request_id), "%s", ret->request_id);
            if (!announced) {
                kf_log_info("waiting_for_approval", "volume=%s request=%s", kf_log_q(v->path), request_id);
                announced = true;
            }
            uint64_t wait = ret->retry_after_ms ? ret->retry_after_ms : 2000;
            if (!wait_until_next(ctx, wait))
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
        kf_log_warn("release_retry", "volume=%s reason=%s backoff_ms=%llu", kf_log_q(v->path),
                    kf_log_q(r != 0 ? e.msg : st.message), (unsigned long long)backoff);
        if (!wait_until_next(ctx, jitter(backoff)))
            /* -EHOSTUNREACH only when no coordinator answered at all: the TPM fallback's condition. */
            return kf_err_set(err, r != 0 ? -EHOSTUNREACH : -ETIMEDOUT,
                              "%s: no coordinator released the key before the deadline (%s)", v->path,
                              r != 0 ? e.msg : st.message);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
}
