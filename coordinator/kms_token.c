#include "kms_token.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kf_log.h"
#include "kf_secmem.h"

#define NO_EXPIRY_REFRESH_MS (3600 * 1000ull)
#define MAX_TOKEN_LEN 16384

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
};

static bool valid(const kfd_token *t)
{
    return t->value != NULL && (t->expires_ms == 0 || uv_now(t->loop) < t->expires_ms);
}

static void start_fetch(kfd_token *t)
{
    if (t->fetching)
        return;
    t->fetching = true;
    t->fetch(t->ctx, t);
}

static void on_refresh(uv_timer_t *timer) { start_fetch(timer->data); }

void kfd_token_get(kfd_token *t, kfd_token_cb cb, void *arg)
{
    if (valid(t)) {
        cb(arg, 0, (const char *)t->value->data, NULL);
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
        }
    }
    if (status != 0) {
        kf_log_warn("kms_token_failed", "client=%s error=%s", t->name, kf_log_q(message));
        /* Try again soon while the old token, if any, still serves. */
        uv_timer_start(&t->refresh, on_refresh, 5000, 0);
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
