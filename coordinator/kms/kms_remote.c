#include "kms/kms_remote.h"

#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "kf_log.h"
#include "kf_secmem.h"

#define BODY_MAX 8192
#define DESCRIBE_INTERVAL_MS 60000

int kfd_remote_body(kfd_remote_call *c, const char *fmt, ...)
{
    kf_secbuf_free(c->body);
    c->body = kf_secbuf_new(BODY_MAX);
    if (c->body == NULL)
        return -ENOMEM;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf((char *)c->body->data, BODY_MAX, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= BODY_MAX) {
        kf_secbuf_free(c->body);
        c->body = NULL;
        return -ENOSPC;
    }
    c->body->len = (size_t)n;
    return 0;
}

void kfd_remote_clear(kfd_remote_call *c)
{
    kf_secbuf_free(c->body);
    c->body = NULL;
}

static void on_answer(void *arg, const kfd_http_response *res)
{
    kfd_remote_call *c = arg;
    if (res->status == 0 && (res->code == 401 || res->code == 403) && c->token != NULL) {
        if (c->refused != NULL) {
            c->refused(c, res);
            return;
        }
        /* A token revoked or expired early: fetch a new one and try once more, unless a refusal
         * just did (then it is more likely the KMS's access policy). */
        char why[96];
        snprintf(why, sizeof(why), "HTTP %ld to a call with the cached token", res->code);
        if (!c->auth_retried && kfd_token_refused(c->token, why)) {
            c->auth_retried = true;
            kfd_remote_start(c);
            return;
        }
    }
    if (res->status == 0 && res->code < 300 && c->auth_retried && c->token != NULL)
        kfd_token_refusal_cured(c->token);
    c->done(c, res);
}

static void send_with(kfd_remote_call *c, const char *token)
{
    char auth[16500] = "";
    const char *headers[4];
    size_t n = 0;
    headers[n++] = "Accept: application/json";
    if (c->body != NULL)
        headers[n++] = c->content_type != NULL ? c->content_type : "Content-Type: application/json";
    if (token != NULL) {
        snprintf(auth, sizeof(auth), "%s%s", c->auth_format, token);
        headers[n++] = auth;
    }
    headers[n] = NULL;
    (c->once ? kfd_http_send_once : kfd_http_send)(c->http, c->method, c->url, headers,
                                                   c->body != NULL ? c->body->data : NULL,
                                                   c->body != NULL ? c->body->len : 0, on_answer, c);
    kf_wipe(auth, sizeof(auth));
}

static void on_token(void *arg, int status, const char *token, const char *message)
{
    kfd_remote_call *c = arg;
    if (status != 0) {
        kfd_http_response res = {.status = status, .error = message};
        c->login_failed = true;
        c->done(c, &res);
        return;
    }
    send_with(c, token);
}

void kfd_remote_start(kfd_remote_call *c)
{
    if (c->token != NULL)
        kfd_token_get(c->token, on_token, c);
    else
        send_with(c, c->fixed_token);
}

json_t *kfd_remote_json(const kfd_http_response *res)
{
    return res->status == 0 ? kfd_json_object(res->body, res->body_len) : NULL;
}

void kfd_remote_fail(kfd_kms_cb cb, void *arg, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    kfd_kms_result res = {.status = status, .message = msg};
    cb(arg, &res);
}

/* jansson's strings can hold data keys (base64) and tokens: wipe every block it frees. */
static void wiping_free(void *p)
{
    if (p != NULL)
        kf_wipe(p, malloc_usable_size(p));
    free(p);
}

void kfd_json_wipe_on_free(void) { json_set_alloc_funcs(malloc, wiping_free); }

static void on_described(void *arg, const kfd_kms_result *res)
{
    kfd_remote_kms *k = arg;
    k->describing = false;
    if (res->status != 0)
        kf_log_warn("kms_describe_failed", "backend=%s error=%s", k->super.ops->name, kf_log_q(res->message));
}

static void on_describe_timer(uv_timer_t *t)
{
    kfd_remote_kms *k = t->data;
    if (k->describing)
        return;
    k->describing = true;
    k->read_key(k, on_described, k);
}

int kfd_remote_kms_init(kfd_remote_kms *k, uv_loop_t *loop, const kfd_kms_ops *ops, const kfd_kms_config *cfg,
                        const char *name, uint32_t max_retry_after_ms, kfd_token_fetch_fn fetch,
                        kfd_remote_read_key_fn read_key, kf_err *err)
{
    k->super.ops = ops;
    k->super.loop = loop;
    k->read_key = read_key;
    uv_timer_init(loop, &k->describe_timer);
    uv_unref((uv_handle_t *)&k->describe_timer);
    k->describe_timer.data = k;
    kfd_http_opts opts = {.name = name,
                          .ca_file = cfg->ca_file,
                          .protocols = "https",
                          .timeout_ms = (uint32_t)cfg->timeout_ms,
                          .first_backoff_ms = 200,
                          .max_retry_after_ms = max_retry_after_ms,
                          .max_attempts = (int)cfg->attempts,
                          .max_response = 64 * 1024};
    int r = kfd_http_new(loop, &opts, &k->http, err);
    if (r == 0 && (k->token = kfd_token_new(loop, name, fetch, k)) == NULL)
        r = kf_err_set(err, -ENOMEM, "out of memory");
    return r;
}

void kfd_remote_kms_start(kfd_remote_kms *k)
{
    /* Learn the key's versions without delaying start-up; a down KMS shows in readyz. */
    uv_timer_start(&k->describe_timer, on_describe_timer, 0, DESCRIBE_INTERVAL_MS);
}

static void on_base_closed(uv_handle_t *h) { free(h->data); }

void kfd_remote_kms_destroy(kfd_remote_kms *k)
{
    kfd_http_free(k->http);
    kfd_token_free(k->token);
    kfd_remote_clear(&k->login);
    uv_timer_stop(&k->describe_timer);
    uv_close((uv_handle_t *)&k->describe_timer, on_base_closed);
}

void kfd_remote_kms_answered(kfd_remote_kms *k, const kfd_http_response *res)
{
    /* A refused or unusable login (-EACCES, -EPROTO, -EAGAIN) is still an answer from the KMS. */
    k->reachable = res->status == 0 || res->status == -EACCES || res->status == -EPROTO || res->status == -EAGAIN;
}

kfd_remote_kms *kfd_remote_kms_of_login(kfd_remote_call *rc)
{
    return (kfd_remote_kms *)(void *)((char *)rc - offsetof(kfd_remote_kms, login));
}

char *kfd_strdup_opt(const char *s, bool *ok)
{
    char *d = s != NULL ? strdup(s) : NULL;
    if (s != NULL && d == NULL)
        *ok = false;
    return d;
}
