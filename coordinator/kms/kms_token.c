#include "kms/kms_token.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kf_log.h"
#include "kf_secmem.h"

#define NO_EXPIRY_REFRESH_MS (3600 * 1000ull)
#define MAX_TOKEN_LEN 16384
#define BACKOFF_FLOOR_MS 1000ull
#define BACKOFF_CEIL_MS 60000ull
#define MSG_MAX 512

typedef struct waiter {
    kfd_token_cb cb;
    void *arg;
    struct waiter *next;
} waiter;

struct kfd_token {
    uv_loop_t *loop;
    char *name;
    kfd_token_fetch_fn fetch;
    void *ctx;
    kf_secbuf *value;
    uint64_t expires_ms; /* loop time; 0: never */
    bool fetching;
    waiter *waiters, **tail;
    uv_timer_t refresh;
    /* The current streak of failed fetches (fails 0: the last one worked). */
    unsigned fails;
    int fail_status;
    uint64_t fail_since_ms, backoff_ms, retry_at_ms;
    uint64_t hint_ms;        /* the KMS's Retry-After for the fetch in flight */
    char first[2 * MSG_MAX]; /* the streak's first failure */
    char last[2 * MSG_MAX];
    char report[4 * MSG_MAX + 128];
    char cause[MSG_MAX];     /* why the fetch in flight started, when a refusal started it */
    /* Refusal-driven fetches: at most one per period. */
    uint64_t refusal_period_ms, refusal_at_ms;
};

static uint64_t next_backoff(uint64_t cur)
{
    return cur == 0 ? BACKOFF_FLOOR_MS : cur * 2 > BACKOFF_CEIL_MS ? BACKOFF_CEIL_MS : cur * 2;
}

/* The failure as callers see it: the last cause, the first when it differs, the wait. */
static const char *make_report(kfd_token *t)
{
    uint64_t now = uv_now(t->loop);
    bool differs = strcmp(t->first, t->last) != 0;
    char streak[sizeof(t->first) + 96] = "", wait[64] = "";
    if (t->fails > 1)
        snprintf(streak, sizeof(streak), " (%u failures in a row over %llu s%s%s)", t->fails,
                 (unsigned long long)((now - t->fail_since_ms) / 1000), differs ? "; the first: " : "",
                 differs ? t->first : "");
    if (t->retry_at_ms > now)
        snprintf(wait, sizeof(wait), "; next attempt in %llu ms", (unsigned long long)(t->retry_at_ms - now));
    /* A report past its buffer is cut; the return value is taken so that GCC's -O0 truncation
     * check (the ASan build) does not make that an error. */
    int n = snprintf(t->report, sizeof(t->report), "%s%s%s", t->last, streak, wait);
    (void)n;
    return t->report;
}

static bool valid(const kfd_token *t)
{
    return t->value != NULL && (t->expires_ms == 0 || uv_now(t->loop) < t->expires_ms);
}

static void start_fetch(kfd_token *t)
{
    if (t->fetching)
        return;
    t->fetching = true;
    t->hint_ms = 0;
    t->fetch(t->ctx, t);
}

static void on_refresh(uv_timer_t *timer) { start_fetch(timer->data); }

void kfd_token_get(kfd_token *t, kfd_token_cb cb, void *arg)
{
    if (valid(t)) {
        cb(arg, 0, (const char *)t->value->data, NULL);
        return;
    }
    if (!t->fetching && t->fails > 0 && uv_now(t->loop) < t->retry_at_ms) {
        /* Backing off: the same answer as the failed fetch, and no new one (each AppRole login
         * can spend a use of the secret id). The refresh timer tries again at retry_at_ms. */
        cb(arg, t->fail_status, NULL, make_report(t));
        return;
    }
    waiter *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        cb(arg, -ENOMEM, NULL, "out of memory");
        return;
    }
    w->cb = cb;
    w->arg = arg;
    *t->tail = w;
    t->tail = &w->next;
    start_fetch(t);
}

void kfd_token_fetched(kfd_token *t, int status, const char *value, size_t len, uint64_t ttl_s, const char *message)
{
    t->fetching = false;
    if (status == 0 && (len == 0 || len > MAX_TOKEN_LEN))
        status = -EPROTO, message = "the token in the answer is empty or too long";
    if (status == 0) {
        kf_secbuf *b = kf_secbuf_new(len + 1);
        if (b == NULL) {
            status = -ENOMEM, message = "out of memory";
        } else {
            memcpy(b->data, value, len);
            b->len = len;
            kf_secbuf_free(t->value);
            t->value = b;
            uint64_t now = uv_now(t->loop), ttl_ms = ttl_s * 1000;
            t->expires_ms = ttl_s > 0 ? now + ttl_ms : 0;
            uv_timer_start(&t->refresh, on_refresh, ttl_s > 0 ? ttl_ms * 2 / 3 : NO_EXPIRY_REFRESH_MS, 0);
            kf_log_info("kms_token", "client=%s ttl_s=%llu", t->name, (unsigned long long)ttl_s);
            t->fails = 0;
            t->fail_status = 0;
            t->backoff_ms = 0;
            t->retry_at_ms = 0;
            t->cause[0] = '\0';
        }
    }
    if (status != 0) {
        uint64_t now = uv_now(t->loop);
        if (message == NULL)
            message = "unknown error";
        if (t->fails == 0)
            t->fail_since_ms = now;
        if (t->cause[0] != '\0')
            snprintf(t->last, sizeof(t->last), "%s, after %s", message, t->cause);
        else
            snprintf(t->last, sizeof(t->last), "%s", message);
        if (t->fails == 0)
            memcpy(t->first, t->last, sizeof(t->first));
        t->cause[0] = '\0';
        t->fails++;
        t->fail_status = status;
        t->backoff_ms = next_backoff(t->backoff_ms);
        uint64_t wait = t->hint_ms > t->backoff_ms ? t->hint_ms : t->backoff_ms;
        t->retry_at_ms = now + wait;
        message = make_report(t);
        kf_log_warn("kms_token_failed", "client=%s error=%s failures=%u retry_in_ms=%llu", t->name, kf_log_q(message),
                    t->fails, (unsigned long long)wait);
        /* Try again after the back-off while the old token, if any, still serves. */
        uv_timer_start(&t->refresh, on_refresh, wait, 0);
    }
    waiter *w = t->waiters;
    t->waiters = NULL;
    t->tail = &t->waiters;
    while (w != NULL) {
        waiter *next = w->next;
        if (status == 0 || valid(t))
            w->cb(w->arg, 0, (const char *)t->value->data, NULL);
        else
            w->cb(w->arg, status, NULL, message);
        free(w);
        w = next;
    }
}

void kfd_token_invalidate(kfd_token *t)
{
    kf_secbuf_free(t->value);
    t->value = NULL;
}

bool kfd_token_refused(kfd_token *t, const char *why)
{
    uint64_t now = uv_now(t->loop);
    if (t->refusal_at_ms != 0 && now < t->refusal_at_ms)
        return false;
    t->refusal_period_ms = next_backoff(t->refusal_period_ms);
    t->refusal_at_ms = now + t->refusal_period_ms;
    snprintf(t->cause, sizeof(t->cause), "%s", why != NULL ? why : "the KMS refused the token");
    kfd_token_invalidate(t);
    return true;
}

void kfd_token_refusal_cured(kfd_token *t)
{
    t->refusal_period_ms = 0;
    t->refusal_at_ms = 0;
}

void kfd_token_hold_off(kfd_token *t, uint32_t seconds) { t->hint_ms = (uint64_t)seconds * 1000; }

const char *kfd_token_problem(const kfd_token *t)
{
    return valid(t) || t->fails == 0 ? NULL : t->last;
}

const char *kfd_token_current(const kfd_token *t) { return t->value != NULL ? (const char *)t->value->data : NULL; }

kfd_token *kfd_token_new(uv_loop_t *loop, const char *name, kfd_token_fetch_fn fetch, void *ctx)
{
    kfd_token *t = calloc(1, sizeof(*t));
    if (t == NULL || (t->name = strdup(name)) == NULL) {
        free(t);
        return NULL;
    }
    t->loop = loop;
    t->fetch = fetch;
    t->ctx = ctx;
    t->tail = &t->waiters;
    uv_timer_init(loop, &t->refresh);
    uv_unref((uv_handle_t *)&t->refresh);
    t->refresh.data = t;
    return t;
}

static void on_closed(uv_handle_t *h)
{
    kfd_token *t = h->data;
    free(t->name);
    free(t);
}

void kfd_token_free(kfd_token *t)
{
    if (t == NULL)
        return;
    while (t->waiters != NULL) {
        waiter *w = t->waiters;
        t->waiters = w->next;
        free(w);
    }
    kf_secbuf_free(t->value);
    uv_timer_stop(&t->refresh);
    uv_close((uv_handle_t *)&t->refresh, on_closed);
}
