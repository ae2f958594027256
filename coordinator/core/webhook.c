#include "core/webhook.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


#include "kms/http.h"
#include "kf_hmac.h"
#include "kf_log.h"
#include "kf_secmem.h"

#define MAX_ATTEMPTS 6
#define FIRST_BACKOFF_MS 500
#define REQUEST_TIMEOUT_MS 5000
#define MAX_QUEUED 1000

struct kfd_webhook {
    kfd_http *http;
    char *url;
    kf_secbuf *secret;
    kfd_webhook_stats stats;
};

static void on_delivered(void *arg, const kfd_http_response *res)
{
    kfd_webhook *wh = arg;
    wh->stats.queued--;
    if (res->status == 0 && res->code >= 200 && res->code < 300) {
        wh->stats.delivered++;
        kf_log_info("webhook_delivered", "status=%ld attempt=%d", res->code, res->attempts);
    } else {
        wh->stats.failed++;
        kf_log_warn("webhook_failed", "status=%ld error=%s attempts=%d action=dropped", res->code,
                    kf_log_q(res->error != NULL ? res->error : "-"), res->attempts);
    }
}

static int sign(const kfd_webhook *wh, const char *ts, const char *body, char out[72])
{
    uint8_t mac[KF_HMAC_SHA256_LEN];
    const kf_span msg[3] = {{ts, strlen(ts)}, {".", 1}, {body, strlen(body)}};
    int r = kf_hmac_sha256(wh->secret->data, wh->secret->len, msg, 3, mac);
    if (r != 0)
        return r;
    memcpy(out, "sha256=", 7);
    for (unsigned i = 0; i < sizeof(mac); i++)
        snprintf(out + 7 + 2 * i, 3, "%02x", mac[i]);
    return 0;
}

void kfd_webhook_notify(kfd_webhook *wh, const char *json_body)
{
    if (wh == NULL)
        return;
    if (wh->stats.queued >= MAX_QUEUED) {
        wh->stats.failed++;
        kf_log_warn("webhook_dropped", "reason=queue_full queued=%llu", (unsigned long long)wh->stats.queued);
        return;
    }
    /* Signed once: retries carry the first attempt's timestamp, which receivers see as age. */
    char ts[32], sig[72], h1[64], h2[96];
    snprintf(ts, sizeof(ts), "%lld", (long long)time(NULL));
    if (sign(wh, ts, json_body, sig) != 0) {
        /* Never sent unsigned: a receiver that checks would drop it, one that does not would trust it. */
        wh->stats.failed++;
        kf_log_error("webhook_dropped", "reason=signing_failed");
        return;
    }
    snprintf(h1, sizeof(h1), "X-Keyfleet-Timestamp: %s", ts);
    snprintf(h2, sizeof(h2), "X-Keyfleet-Signature: %s", sig);
    const char *headers[] = {"Content-Type: application/json", h1, h2, NULL};
    wh->stats.queued++;
    kfd_http_send(wh->http, "POST", wh->url, headers, json_body, strlen(json_body), on_delivered, wh);
}

kfd_webhook_stats kfd_webhook_get_stats(const kfd_webhook *wh)
{
    kfd_webhook_stats none = {0};
    if (wh == NULL)
        return none;
    kfd_webhook_stats st = wh->stats;
    st.retries = kfd_http_get_stats(wh->http).retries;
    return st;
}

int kfd_webhook_new(uv_loop_t *loop, const char *url, const char *secret_file, kfd_webhook **ret, kf_err *err)
{
    kf_secbuf *secret = NULL;
    int rr = kf_secbuf_read_file(secret_file, 4096, &secret, err);
    if (rr != 0) {
        kf_err_wrap(err, "webhook secret");
        return rr;
    }
    if (secret->len < 16) {
        kf_secbuf_free(secret);
        return kf_err_set(err, -EINVAL, "webhook secret %s: needs at least 16 bytes", secret_file);
    }
    kfd_webhook *wh = calloc(1, sizeof(*wh));
    kfd_http_opts opts = {.name = "webhook",
                          .protocols = "http,https",
                          .timeout_ms = REQUEST_TIMEOUT_MS,
                          .first_backoff_ms = FIRST_BACKOFF_MS,
                          .max_retry_after_ms = 60000,
                          .max_attempts = MAX_ATTEMPTS,
                          .max_response = 64 * 1024};
    int r = wh == NULL || (wh->url = strdup(url)) == NULL ? kf_err_set(err, -ENOMEM, "out of memory")
                                                          : kfd_http_new(loop, &opts, &wh->http, err);
    if (r != 0) {
        if (wh != NULL)
            free(wh->url);
        free(wh);
        kf_secbuf_free(secret);
        return r;
    }
    wh->secret = secret;
    *ret = wh;
    return 0;
}

void kfd_webhook_free(kfd_webhook *wh)
{
    if (wh == NULL)
        return;
    kfd_http_free(wh->http);
    kf_secbuf_free(wh->secret);
    free(wh->url);
    free(wh);
}
