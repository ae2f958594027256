/* Outbound HTTPS from the coordinator's loop: libcurl multi driven by libuv, so a slow server
 * never blocks other requests. Used by the KMS backends and the webhook. Request and response
 * bodies live in secure memory (they carry data keys, secret ids and tokens) and are wiped;
 * header strings are wiped before they are freed. Transport errors, 412, 429 and 5xx are retried with
 * exponential backoff up to max_attempts; a Retry-After on 429 or 503 sets the wait instead, and
 * one longer than max_retry_after_ms is not waited for: the answer goes back to the caller with
 * it. Redirects are never followed: a 3xx comes back with its Location. */
#ifndef KFD_HTTP_H
#define KFD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "kf_err.h"

typedef struct kfd_http kfd_http;

typedef struct kfd_http_opts {
    const char *name;          /* names this client in logs, e.g. "webhook" */
    const char *ca_file;       /* NULL: the system trust store */
    const char *cert_file;     /* with key_file: a client certificate (PEM), else none */
    const char *key_file;
    bool no_reuse;             /* a connection per request, closed after it (rare calls) */
    const char *protocols;     /* curl protocol list, e.g. "https" */
    uint32_t timeout_ms;       /* per attempt */
    uint32_t first_backoff_ms; /* doubled per retry */
    uint32_t max_retry_after_ms;
    int max_attempts;          /* 1 means no retry */
    size_t max_response;       /* larger responses fail with -EMSGSIZE */
    bool no_proxy;             /* never through a proxy (http_proxy etc.): Azure's IMDS must be reached directly */
    bool peer_cert;            /* hand the callback the server's certificate (a caller that checks who answered) */
} kfd_http_opts;

typedef struct kfd_http_response {
    int status;          /* 0 when an HTTP answer came, else -errno (-ETIMEDOUT, -EHOSTUNREACH, -EMSGSIZE, -EIO) */
    long code;           /* HTTP status when status is 0 */
    const char *body;    /* NUL-terminated, in secure memory, wiped after the callback */
    size_t body_len;
    const char *error;   /* transport error text when status < 0 */
    int attempts;
    /* Response headers the callers act on (of the last attempt, when status is 0): */
    const char *location;  /* Location (3xx), or NULL; valid during the callback */
    uint32_t retry_after_s; /* Retry-After (seconds or an HTTP date), 0 when absent */
    const char *peer_cert;  /* with opts.peer_cert: the server's certificate (PEM) of the last attempt, or NULL */
} kfd_http_response;

typedef void (*kfd_http_cb)(void *arg, const kfd_http_response *res);

/* The response headers kept from one response: its Location and Retry-After. */
typedef struct kfd_http_headers {
    char location[1024]; /* "" when none; cut to fit */
    uint32_t retry_after_s;
} kfd_http_headers;
/* Takes one header line as curl hands it (n bytes, "Name: value\r\n", not NUL-terminated); a
 * status line starts a new response (an interim 100 Continue, or the answer after it), whose
 * headers replace the old ones. Fuzzed (tests/fuzz/fuzz_http_header.c). */
void kfd_http_header_line(kfd_http_headers *hd, const char *data, size_t n);
/* Retry-After is delta-seconds or an HTTP date (RFC 9110 10.2.3), at most a day; 0 when
 * unreadable. */
uint32_t kfd_http_retry_after(const char *value);

int kfd_http_new(uv_loop_t *loop, const kfd_http_opts *opts, kfd_http **ret, kf_err *err);
/* Drops requests still in flight without calling their callbacks; the owner drains first. */
void kfd_http_free(kfd_http *h);

/* method is "GET" or "POST"; headers is NULL-terminated (may be NULL); body may be NULL. The
 * callback always runs later, on the loop, exactly once. */
void kfd_http_send(kfd_http *h, const char *method, const char *url, const char *const *headers, const void *body,
                   size_t body_len, kfd_http_cb cb, void *arg);

/* The same, in one attempt: for a call that must not be repeated (a key rotation). */
void kfd_http_send_once(kfd_http *h, const char *method, const char *url, const char *const *headers,
                        const void *body, size_t body_len, kfd_http_cb cb, void *arg);
/* A header line sent on every request from now on ("X-Vault-Namespace: admin"); NULL removes it.
 * Returns 0 or -ENOMEM. */
int kfd_http_set_header(kfd_http *h, const char *line);

typedef struct kfd_http_stats {
    uint64_t requests, retries, failures;
} kfd_http_stats;
kfd_http_stats kfd_http_get_stats(const kfd_http *h);

#endif
