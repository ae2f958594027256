/* Counters exported at GET /metrics in the Prometheus text format. Single-threaded: the loop
 * owns them. */
#ifndef KFD_METRICS_H
#define KFD_METRICS_H

#include <stdint.h>

#include "kf_connect.h"

#define KFD_METRICS_MAX_METHODS 48

typedef struct kfd_metrics {
    /* [method index][code]; the last method row counts unknown routes */
    uint64_t requests[KFD_METRICS_MAX_METHODS + 1][KF_CONNECT_CODE_COUNT];
    uint64_t tls_handshakes_ok;
    uint64_t tls_handshakes_failed;
    uint64_t auth_failures;
    uint64_t connections_accepted;
    uint64_t connections_rejected;
    uint64_t tls_reloads;
    uint64_t h2_reset_floods; /* connections ended for too many stream resets */
    uint64_t h2_bodies_cut;   /* request bodies ended early for being over the limit */
    uint64_t h2_control_floods; /* connections ended for too many PING/SETTINGS frames */
    uint64_t h2_streams_refused; /* streams refused: past the advertised count, or over a body budget */
    uint64_t accept_errors;      /* accept(2) failures (EMFILE, ENFILE, ...) */
    uint64_t handshakes_rate_limited; /* connections closed past limits.handshakes_per_source, before TLS */
    uint64_t http1_heads_refused; /* HTTP/1.1 connections closed for a request head over the limits (h1guard.h) */
    uint64_t writes_refused;     /* writes libuv refused at once, handed back to h2o as failed (server.c) */
} kfd_metrics;

struct kfd_server;
/* Renders the metrics into a malloc'ed string. */
char *kfd_metrics_render(const struct kfd_server *srv, size_t *ret_len);

#endif
