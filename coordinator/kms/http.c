#include "kms/http.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "kf_log.h"
#include "kf_secmem.h"

typedef struct request {
    kfd_http *h;
    char *method, *url;
    char **headers; /* wiped before free: they can carry tokens */
    size_t n_headers;
    kf_secbuf *body;
    kf_secbuf *resp;
    bool too_big;
    char *peer_cert; /* PEM, with opts.peer_cert */
    int attempt;
    int max_attempts;
    CURL *easy;
    struct curl_slist *slist;
    uv_timer_t timer;
    kfd_http_cb cb;
    void *arg;
    kfd_http_response result; /* set when finishing */
    char errbuf[CURL_ERROR_SIZE];
    kfd_http_headers hdr;     /* of the current attempt's response */
    struct request *next, *prev;
} request;

typedef struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    kfd_http *h;
} sock_ctx;

struct kfd_http {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    kfd_http_opts opts;
    char *ca_file, *protocols, *name, *cert_file, *key_file;
    char *fixed_header; /* sent on every request (kfd_http_set_header), or NULL */
    request *requests;
    kfd_http_stats stats;
};

static void check_done(kfd_http *h);
static void start_attempt(request *q);

static void on_poll(uv_poll_t *p, int status, int events)
{
    sock_ctx *s = p->data;
    int flags = 0, running = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(s->h->multi, s->fd, flags, &running);
    check_done(s->h);
}

static void on_poll_closed(uv_handle_t *handle) { free(handle->data); }

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    kfd_http *h = userp;
    sock_ctx *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, on_poll_closed);
            curl_multi_assign(h->multi, fd, NULL);
        }
        return 0;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL)
            return -1;
        s->fd = fd;
        s->h = h;
        uv_poll_init_socket(h->loop, &s->poll, fd);
        s->poll.data = s;
        curl_multi_assign(h->multi, fd, s);
    }
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

static void on_timeout(uv_timer_t *t)
{
    kfd_http *h = t->data;
    int running = 0;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(h);
}

/* curl's timer callback only (re)arms the uv timer; driving curl from here would recurse. */
static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    kfd_http *h = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&h->timer);
    else
        uv_timer_start(&h->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *userp)
{
    request *q = userp;
    size_t n = size * nmemb;
    size_t used = q->resp != NULL ? q->resp->len : 0;
    if (used + n + 1 > q->h->opts.max_response) {
        q->too_big = true;
        return 0; /* aborts the transfer */
    }
    if (q->resp == NULL || used + n + 1 > q->resp->cap) {
        size_t cap = q->resp != NULL ? q->resp->cap * 2 : 4096;
        while (cap < used + n + 1)
            cap *= 2;
        kf_secbuf *bigger = kf_secbuf_new(cap);
        if (bigger == NULL)
            return 0;
        if (q->resp != NULL)
            memcpy(bigger->data, q->resp->data, used);
        bigger->len = used;
        kf_secbuf_free(q->resp);
        q->resp = bigger;
    }
    memcpy(q->resp->data + used, data, n);
    q->resp->len = used + n;
    q->resp->data[q->resp->len] = '\0';
    return n;
}

uint32_t kfd_http_retry_after(const char *v)
{
    if (*v >= '0' && *v <= '9') {
        char *end = NULL;
        unsigned long n = strtoul(v, &end, 10);
        return *end == '\0' ? (n > 86400 ? 86400 : (uint32_t)n) : 0;
    }
    time_t when = curl_getdate(v, NULL), now = time(NULL);
    if (when < 0 || when <= now)
        return when < 0 ? 0 : 1;
    return when - now > 86400 ? 86400 : (uint32_t)(when - now);
}

void kfd_http_header_line(kfd_http_headers *hd, const char *data, size_t n)
{
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        hd->location[0] = '\0';
        hd->retry_after_s = 0;
        return;
    }
    const char *colon = memchr(data, ':', n);
    if (colon == NULL)
        return;
    size_t name_len = (size_t)(colon - data);
    const char *v = colon + 1;
    size_t v_len = n - name_len - 1;
    while (v_len > 0 && (*v == ' ' || *v == '\t'))
        v++, v_len--;
    while (v_len > 0 && (v[v_len - 1] == '\r' || v[v_len - 1] == '\n' || v[v_len - 1] == ' '))
        v_len--;
    if (name_len == 8 && strncasecmp(data, "location", 8) == 0) {
        size_t keep = v_len < sizeof(hd->location) - 1 ? v_len : sizeof(hd->location) - 1;
        memcpy(hd->location, v, keep);
        hd->location[keep] = '\0';
    } else if (name_len == 11 && strncasecmp(data, "retry-after", 11) == 0 && v_len < 64) {
        char buf[64];
        memcpy(buf, v, v_len);
        buf[v_len] = '\0';
        hd->retry_after_s = kfd_http_retry_after(buf);
    }
}

/* Keeps the response headers callers act on: Location and Retry-After. */
static size_t on_header(char *data, size_t size, size_t nitems, void *userp)
{
    request *q = userp;
    kfd_http_header_line(&q->hdr, data, size * nitems);
    return size * nitems;
}

static void wipe_slist(request *q)
{
    for (struct curl_slist *l = q->slist; l != NULL; l = l->next)
        kf_wipe(l->data, strlen(l->data));
    curl_slist_free_all(q->slist);
    q->slist = NULL;
}

static void release_easy(request *q)
{
    if (q->easy != NULL) {
        curl_multi_remove_handle(q->h->multi, q->easy);
        curl_easy_cleanup(q->easy);
        q->easy = NULL;
    }
    wipe_slist(q);
}

static void on_request_closed(uv_handle_t *handle)
{
    request *q = handle->data;
    for (size_t i = 0; i < q->n_headers; i++) {
        kf_wipe(q->headers[i], strlen(q->headers[i]));
        free(q->headers[i]);
    }
    free(q->headers);
    kf_secbuf_free(q->body);
    kf_secbuf_free(q->resp);
    free(q->peer_cert);
    free(q->method);
    free(q->url);
    free(q);
}

static void unlink_request(request *q)
{
    if (q->prev != NULL)
        q->prev->next = q->next;
    else
        q->h->requests = q->next;
    if (q->next != NULL)
        q->next->prev = q->prev;
    q->next = q->prev = NULL;
}

static void deliver(uv_timer_t *t)
{
    request *q = t->data;
    unlink_request(q);
    q->result.attempts = q->attempt;
    if (q->result.status == 0) {
        q->result.body = q->resp != NULL ? (const char *)q->resp->data : "";
        q->result.body_len = q->resp != NULL ? q->resp->len : 0;
        q->result.location = q->hdr.location[0] != '\0' ? q->hdr.location : NULL;
        q->result.retry_after_s = q->hdr.retry_after_s;
        q->result.peer_cert = q->peer_cert;
    }
    q->cb(q->arg, &q->result);
    uv_close((uv_handle_t *)&q->timer, on_request_closed);
}

/* Finishes later on the loop, so a callback never runs inside kfd_http_send. */
static void finish(request *q, int status, long code, const char *error)
{
    q->result.status = status;
    q->result.code = code;
    q->result.error = error;
    if (status != 0)
        q->h->stats.failures++;
    uv_timer_start(&q->timer, deliver, 0, 0);
}

/* The server's certificate of this attempt (curl's CERTINFO: the chain, leaf first, each with a
 * "Cert:" PEM line). A connection reused would carry none: callers that ask use no_reuse. */
static void keep_peer_cert(request *q, CURL *e)
{
    free(q->peer_cert);
    q->peer_cert = NULL;
    struct curl_certinfo *ci = NULL;
    if (curl_easy_getinfo(e, CURLINFO_CERTINFO, &ci) != CURLE_OK || ci == NULL || ci->num_of_certs < 1)
        return;
    for (struct curl_slist *l = ci->certinfo[0]; l != NULL; l = l->next)
        if (strncmp(l->data, "Cert:", 5) == 0) {
            q->peer_cert = strdup(l->data + 5);
            return;
        }
}

static int transport_errno(CURLcode rc, bool too_big)
{
    if (too_big)
        return -EMSGSIZE;
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
        return -EHOSTUNREACH;
    default:
        return -EIO;
    }
}

static void on_retry(uv_timer_t *t) { start_attempt(t->data); }

static void check_done(kfd_http *h)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        request *q = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&q);
        long code = 0;
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
        CURLcode rc = m->data.result;
        if (q->h->opts.peer_cert)
            keep_peer_cert(q, m->easy_handle);
        release_easy(q);
        bool transport = rc != CURLE_OK;
        /* 412: a Vault Enterprise performance standby has not yet seen the write an index
         * header names; Vault's docs say to retry. */
        bool retryable = (transport && !q->too_big) || code == 412 || code == 429 || (code >= 500 && code != 501);
        /* The server said when to come back: sooner would be refused again, and a wait longer
         * than we allow goes back to the caller, which holds off as asked. */
        bool asked_wait = !transport && (code == 429 || code == 503) && q->hdr.retry_after_s > 0;
        uint64_t wanted = asked_wait ? (uint64_t)q->hdr.retry_after_s * 1000 : 0;
        if (asked_wait && wanted > h->opts.max_retry_after_ms)
            retryable = false;
        if (!retryable || q->attempt >= q->max_attempts) {
            if (transport)
                finish(q, transport_errno(rc, q->too_big), 0,
                       q->too_big ? "response too large" : q->errbuf[0] ? q->errbuf : curl_easy_strerror(rc));
            else
                finish(q, 0, code, NULL);
            continue;
        }
        uint64_t delay = asked_wait ? wanted : (uint64_t)h->opts.first_backoff_ms << (q->attempt - 1);
        h->stats.retries++;
        kf_log_warn("http_retry", "client=%s method=%s url=%s status=%ld error=%s attempt=%d retry_in_ms=%llu", h->name, q->method,
                    kf_log_q(q->url), code, kf_log_q(transport ? curl_easy_strerror(rc) : "-"), q->attempt,
                    (unsigned long long)delay);
        kf_secbuf_free(q->resp);
        q->resp = NULL;
        uv_timer_start(&q->timer, on_retry, delay, 0);
    }
}

static void start_attempt(request *q)
{
    kfd_http *h = q->h;
    q->attempt++;
    q->too_big = false;
    q->errbuf[0] = '\0';
    q->hdr.location[0] = '\0';
    q->hdr.retry_after_s = 0;
    q->easy = curl_easy_init();
    bool ok = q->easy != NULL;
    for (size_t i = 0; ok && i <= q->n_headers; i++) {
        const char *line = i < q->n_headers ? q->headers[i] : h->fixed_header;
        if (line == NULL)
            continue;
        struct curl_slist *l = curl_slist_append(q->slist, line);
        ok = l != NULL;
        if (ok)
            q->slist = l;
    }
    if (!ok) {
        release_easy(q);
        finish(q, -ENOMEM, 0, "out of memory");
        return;
    }
    CURL *e = q->easy;
    curl_easy_setopt(e, CURLOPT_URL, q->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, h->protocols);
    if (h->opts.no_proxy)
        curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, q->slist);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)h->opts.timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)h->opts.timeout_ms);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PRIVATE, q);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, q);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, q);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, q->errbuf);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (h->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, h->ca_file);
    if (h->opts.no_reuse)
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    if (h->opts.peer_cert)
        curl_easy_setopt(e, CURLOPT_CERTINFO, 1L);
    if (h->cert_file != NULL && h->key_file != NULL) {
        curl_easy_setopt(e, CURLOPT_SSLCERT, h->cert_file);
        curl_easy_setopt(e, CURLOPT_SSLKEY, h->key_file);
    }
    if (strcmp(q->method, "POST") == 0) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->body != NULL ? (const char *)q->body->data : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)(q->body != NULL ? q->body->len : 0));
    } else {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    }
    if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
        release_easy(q);
        finish(q, -EIO, 0, "curl_multi_add_handle failed");
    }
}

static void send_request(kfd_http *h, int max_attempts, const char *method, const char *url,
                         const char *const *headers, const void *body, size_t body_len, kfd_http_cb cb, void *arg)
{
    request *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        kfd_http_response res = {.status = -ENOMEM, .error = "out of memory"};
        cb(arg, &res); /* nothing else can be done without memory */
        return;
    }
    q->h = h;
    q->max_attempts = max_attempts;
    q->cb = cb;
    q->arg = arg;
    uv_timer_init(h->loop, &q->timer);
    q->timer.data = q;
    q->next = h->requests;
    if (h->requests != NULL)
        h->requests->prev = q;
    h->requests = q;
    h->stats.requests++;
    size_t n = 0;
    while (headers != NULL && headers[n] != NULL)
        n++;
    bool ok = (q->method = strdup(method)) != NULL && (q->url = strdup(url)) != NULL &&
              (n == 0 || (q->headers = calloc(n, sizeof(char *))) != NULL);
    for (size_t i = 0; ok && i < n; i++) {
        ok = (q->headers[i] = strdup(headers[i])) != NULL;
        q->n_headers = i + 1;
    }
    if (ok && body != NULL && body_len > 0) {
        ok = (q->body = kf_secbuf_new(body_len)) != NULL;
        if (ok)
            memcpy(q->body->data, body, body_len);
    }
    if (!ok) {
        finish(q, -ENOMEM, 0, "out of memory");
        return;
    }
    start_attempt(q);
}

void kfd_http_send(kfd_http *h, const char *method, const char *url, const char *const *headers, const void *body,
                   size_t body_len, kfd_http_cb cb, void *arg)
{
    send_request(h, h->opts.max_attempts, method, url, headers, body, body_len, cb, arg);
}

void kfd_http_send_once(kfd_http *h, const char *method, const char *url, const char *const *headers,
                        const void *body, size_t body_len, kfd_http_cb cb, void *arg)
{
    send_request(h, 1, method, url, headers, body, body_len, cb, arg);
}

int kfd_http_set_header(kfd_http *h, const char *line)
{
    char *copy = line != NULL ? strdup(line) : NULL;
    if (line != NULL && copy == NULL)
        return -ENOMEM;
    free(h->fixed_header);
    h->fixed_header = copy;
    return 0;
}

kfd_http_stats kfd_http_get_stats(const kfd_http *h)
{
    kfd_http_stats none = {0};
    return h != NULL ? h->stats : none;
}

int kfd_http_new(uv_loop_t *loop, const kfd_http_opts *opts, kfd_http **ret, kf_err *err)
{
    kfd_http *h = calloc(1, sizeof(*h));
    if (h == NULL || (h->multi = curl_multi_init()) == NULL ||
        (opts->ca_file != NULL && (h->ca_file = strdup(opts->ca_file)) == NULL) ||
        (opts->cert_file != NULL && (h->cert_file = strdup(opts->cert_file)) == NULL) ||
        (opts->key_file != NULL && (h->key_file = strdup(opts->key_file)) == NULL) ||
        (h->protocols = strdup(opts->protocols != NULL ? opts->protocols : "https")) == NULL ||
        (h->name = strdup(opts->name != NULL ? opts->name : "http")) == NULL) {
        if (h != NULL) {
            if (h->multi != NULL)
                curl_multi_cleanup(h->multi);
            free(h->ca_file);
            free(h->cert_file);
            free(h->key_file);
            free(h->protocols);
        }
        free(h);
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    h->loop = loop;
    h->opts = *opts;
    h->opts.ca_file = h->ca_file;
    h->opts.cert_file = h->cert_file;
    h->opts.key_file = h->key_file;
    h->opts.protocols = h->protocols;
    h->opts.name = h->name;
    if (h->opts.max_attempts < 1)
        h->opts.max_attempts = 1;
    if (h->opts.max_response == 0)
        h->opts.max_response = 64 * 1024;
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    *ret = h;
    return 0;
}

static void on_http_timer_closed(uv_handle_t *handle)
{
    kfd_http *h = handle->data;
    free(h->ca_file);
    free(h->cert_file);
    free(h->key_file);
    free(h->protocols);
    free(h->name);
    free(h->fixed_header);
    free(h);
}

void kfd_http_free(kfd_http *h)
{
    if (h == NULL)
        return;
    while (h->requests != NULL) {
        request *q = h->requests;
        release_easy(q);
        unlink_request(q);
        uv_timer_stop(&q->timer);
        uv_close((uv_handle_t *)&q->timer, on_request_closed);
    }
    curl_multi_cleanup(h->multi);
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->timer, on_http_timer_closed);
}
