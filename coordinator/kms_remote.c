#include "kms_remote.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "kf_secmem.h"

#define BODY_MAX 8192

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
    if (res->status == 0 && (res->code == 401 || res->code == 403) && c->token != NULL && !c->auth_retried) {
        /* A token revoked or expired early: fetch a new one and try once more. */
        c->auth_retried = true;
        kfd_token_invalidate(c->token);
        kfd_remote_start(c);
        return;
    }
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
    kfd_http_send(c->http, c->method, c->url, headers, c->body != NULL ? c->body->data : NULL,
                  c->body != NULL ? c->body->len : 0, on_answer, c);
    kf_wipe(auth, sizeof(auth));
}

static void on_token(void *arg, int status, const char *token, const char *message)
{
    kfd_remote_call *c = arg;
    if (status != 0) {
        kfd_http_response res = {.status = status == -EACCES ? -EACCES : -EIO, .error = message};
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
    if (res->status != 0 || res->body == NULL || res->body_len == 0)
        return NULL;
    json_t *j = json_loadb(res->body, res->body_len, JSON_REJECT_DUPLICATES, NULL);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

const char *kfd_json_str(const json_t *obj, const char *key1, const char *key2)
{
    const json_t *v = json_object_get(obj, key1);
    if (key2 != NULL)
        v = json_object_get(v, key2);
    return json_string_value(v);
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

bool kfd_json_safe(const char *s)
{
    for (; *s; s++)
        if (*s < ' ' || *s > '~' || *s == '"' || *s == '\\')
            return false;
    return true;
}

/* jansson's strings can hold data keys (base64) and tokens: wipe every block it frees. */
static void wiping_free(void *p)
{
    if (p != NULL)
        kf_wipe(p, malloc_usable_size(p));
    free(p);
}

void kfd_json_wipe_on_free(void) { json_set_alloc_funcs(malloc, wiping_free); }
