#include "webhook.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "kf_log.h"
#include "kf_secmem.h"

#define MAX_ATTEMPTS 6
#define FIRST_BACKOFF_MS 500
#define REQUEST_TIMEOUT_MS 5000
#define MAX_QUEUED 1000

typedef struct job {
    kfd_webhook *wh;
    char *body;
    int attempt;
    CURL *easy;
    struct curl_slist *headers;
    uv_timer_t retry;
    struct job *next, *prev;
} job;

typedef struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    kfd_webhook *wh;
} sock_ctx;

struct kfd_webhook {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    char *url;
    kf_secbuf *secret;
    job *jobs;
    kfd_webhook_stats stats;
    bool closing;
};

static void check_done(kfd_webhook *wh);
static void start_attempt(job *j);

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
    curl_multi_socket_action(s->wh->multi, s->fd, flags, &running);
    check_done(s->wh);
}

static void on_poll_closed(uv_handle_t *h) { free(h->data); }

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    kfd_webhook *wh = userp;
    sock_ctx *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, on_poll_closed);
            curl_multi_assign(wh->multi, fd, NULL);
        }
        return 0;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL)
            return -1;
        s->fd = fd;
        s->wh = wh;
        uv_poll_init_socket(wh->loop, &s->poll, fd);
        s->poll.data = s;
        curl_multi_assign(wh->multi, fd, s);
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
    kfd_webhook *wh = t->data;
    int running = 0;
    curl_multi_socket_action(wh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(wh);
}

/* curl's timer callback: only (re)arm the uv timer, never drive curl from here. */
static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    kfd_webhook *wh = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&wh->timer);
    else
        uv_timer_start(&wh->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

static void job_unlink(job *j)
{
    if (j->prev != NULL)
        j->prev->next = j->next;
    else
        j->wh->jobs = j->next;
    if (j->next != NULL)
        j->next->prev = j->prev;
}

static void on_job_timer_closed(uv_handle_t *h)
{
    job *j = h->data;
    free(j->body);
    free(j);
}

static void job_finish(job *j)
{
    kfd_webhook *wh = j->wh;
    if (j->easy != NULL) {
        curl_multi_remove_handle(wh->multi, j->easy);
        curl_easy_cleanup(j->easy);
        j->easy = NULL;
    }
    curl_slist_free_all(j->headers);
    j->headers = NULL;
    job_unlink(j);
    wh->stats.queued--;
    uv_close((uv_handle_t *)&j->retry, on_job_timer_closed);
}

static void on_retry(uv_timer_t *t) { start_attempt(t->data); }

static void check_done(kfd_webhook *wh)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(wh->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        job *j = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
        long status = 0;
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
        CURLcode rc = m->data.result;
        curl_multi_remove_handle(wh->multi, j->easy);
        curl_easy_cleanup(j->easy);
        j->easy = NULL;
        curl_slist_free_all(j->headers);
        j->headers = NULL;
        if (rc == CURLE_OK && status >= 200 && status < 300) {
            wh->stats.delivered++;
            kf_log_info("webhook_delivered", "status=%ld attempt=%d", status, j->attempt);
            job_finish(j);
        } else if (j->attempt >= MAX_ATTEMPTS) {
            wh->stats.failed++;
            kf_log_warn("webhook_failed", "status=%ld error=%s attempts=%d action=dropped", status,
                        kf_log_q(curl_easy_strerror(rc)), j->attempt);
            job_finish(j);
        } else {
            uint64_t delay = (uint64_t)FIRST_BACKOFF_MS << (j->attempt - 1);
            wh->stats.retries++;
            kf_log_warn("webhook_retry", "status=%ld error=%s attempt=%d retry_in_ms=%llu", status,
                        kf_log_q(curl_easy_strerror(rc)), j->attempt, (unsigned long long)delay);
            uv_timer_start(&j->retry, on_retry, delay, 0);
        }
    }
}

static void sign(const kfd_webhook *wh, const char *ts, const char *body, char out[72])
{
    size_t tlen = strlen(ts), blen = strlen(body);
    unsigned char *msg = malloc(tlen + 1 + blen), mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    out[0] = '\0';
    if (msg == NULL)
        return;
    memcpy(msg, ts, tlen);
    msg[tlen] = '.';
    memcpy(msg + tlen + 1, body, blen);
    if (HMAC(EVP_sha256(), wh->secret->data, (int)wh->secret->len, msg, tlen + 1 + blen, mac, &mac_len) != NULL) {
        memcpy(out, "sha256=", 7);
        for (unsigned i = 0; i < mac_len && i < 32; i++)
            snprintf(out + 7 + 2 * i, 3, "%02x", mac[i]);
    }
    free(msg);
}

static void start_attempt(job *j)
{
    kfd_webhook *wh = j->wh;
    j->attempt++;
    char ts[32], sig[72], h1[64], h2[96];
    snprintf(ts, sizeof(ts), "%lld", (long long)time(NULL));
    sign(wh, ts, j->body, sig);
    snprintf(h1, sizeof(h1), "X-Keyfleet-Timestamp: %s", ts);
    snprintf(h2, sizeof(h2), "X-Keyfleet-Signature: %s", sig);
    j->headers = curl_slist_append(NULL, "Content-Type: application/json");
    j->headers = curl_slist_append(j->headers, h1);
    j->headers = curl_slist_append(j->headers, h2);
    j->easy = curl_easy_init();
    if (j->easy == NULL || j->headers == NULL) {
        wh->stats.failed++;
        job_finish(j);
        return;
    }
    curl_easy_setopt(j->easy, CURLOPT_URL, wh->url);
    curl_easy_setopt(j->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(j->easy, CURLOPT_HTTPHEADER, j->headers);
    curl_easy_setopt(j->easy, CURLOPT_POSTFIELDS, j->body);
    curl_easy_setopt(j->easy, CURLOPT_TIMEOUT_MS, (long)REQUEST_TIMEOUT_MS);
    curl_easy_setopt(j->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(j->easy, CURLOPT_PRIVATE, j);
    curl_multi_add_handle(wh->multi, j->easy);
}

void kfd_webhook_notify(kfd_webhook *wh, const char *json_body)
{
    if (wh == NULL || wh->closing)
        return;
    if (wh->stats.queued >= MAX_QUEUED) {
        wh->stats.failed++;
        kf_log_warn("webhook_dropped", "reason=queue_full queued=%llu", (unsigned long long)wh->stats.queued);
        return;
    }
    job *j = calloc(1, sizeof(*j));
    if (j == NULL || (j->body = strdup(json_body)) == NULL) {
        free(j);
        wh->stats.failed++;
        return;
    }
    j->wh = wh;
    uv_timer_init(wh->loop, &j->retry);
    j->retry.data = j;
    j->next = wh->jobs;
    if (wh->jobs != NULL)
        wh->jobs->prev = j;
    wh->jobs = j;
    wh->stats.queued++;
    start_attempt(j);
}

kfd_webhook_stats kfd_webhook_get_stats(const kfd_webhook *wh)
{
    kfd_webhook_stats none = {0};
    return wh != NULL ? wh->stats : none;
}

int kfd_webhook_new(uv_loop_t *loop, const char *url, const char *secret_file, kfd_webhook **ret, kf_err *err)
{
    int fd = open(secret_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kf_err_set(err, -errno, "webhook secret %s: %s", secret_file, strerror(errno));
    kf_secbuf *secret = kf_secbuf_new(4096);
    ssize_t n = secret != NULL ? read(fd, secret->data, 4096) : -1;
    close(fd);
    while (n > 0 && (secret->data[n - 1] == '\n' || secret->data[n - 1] == '\r'))
        n--;
    if (n < 16) {
        kf_secbuf_free(secret);
        return kf_err_set(err, -EINVAL, "webhook secret %s: needs at least 16 bytes", secret_file);
    }
    secret->len = (size_t)n;
    kfd_webhook *wh = calloc(1, sizeof(*wh));
    if (wh == NULL || (wh->url = strdup(url)) == NULL || (wh->multi = curl_multi_init()) == NULL) {
        if (wh != NULL)
            free(wh->url);
        free(wh);
        kf_secbuf_free(secret);
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    wh->secret = secret;
    wh->loop = loop;
    uv_timer_init(loop, &wh->timer);
    wh->timer.data = wh;
    curl_multi_setopt(wh->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(wh->multi, CURLMOPT_SOCKETDATA, wh);
    curl_multi_setopt(wh->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(wh->multi, CURLMOPT_TIMERDATA, wh);
    *ret = wh;
    return 0;
}

static void on_wh_timer_closed(uv_handle_t *h)
{
    kfd_webhook *wh = h->data;
    free(wh->url);
    free(wh);
}

void kfd_webhook_free(kfd_webhook *wh)
{
    if (wh == NULL)
        return;
    wh->closing = true;
    while (wh->jobs != NULL)
        job_finish(wh->jobs);
    curl_multi_cleanup(wh->multi);
    kf_secbuf_free(wh->secret);
    uv_timer_stop(&wh->timer);
    uv_close((uv_handle_t *)&wh->timer, on_wh_timer_closed);
}
