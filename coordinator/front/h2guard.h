/* What keyfleetd changes in h2o 2.2.5's HTTP/2 connections, where h2o has no API for it
 * (docs/architecture.md, "The HTTP/2 guard"):
 *  - the SETTINGS frame advertises limits.max_streams_per_connection, not h2o's fixed 100;
 *  - each connection has a budget of stream resets from the client (rapid reset, CVE-2023-44487):
 *    past it the connection ends with GOAWAY ENHANCE_YOUR_CALM;
 *  - a request body past limits.max_body_bytes is ended early, so the router answers
 *    resource_exhausted, where h2o would reset the stream with REFUSED_STREAM (which clients
 *    retry); the rest of that body is read and dropped, with its flow-control credit returned.
 * It wraps the connection's frame reader (h2o_http2_conn_t::_read_expect), which sees each
 * frame before h2o handles it. Only front/h2guard.c touches h2o's HTTP/2 internals. */
#ifndef KFD_H2GUARD_H
#define KFD_H2GUARD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/time.h>

#include <h2o.h>

struct kfd_server;

typedef struct kfd_h2guard_stream {
    uint32_t id;    /* 0: a free slot */
    uint32_t bytes; /* DATA bytes (frame lengths) received on it */
    bool cut;       /* ended early: the rest of its DATA is dropped here */
} kfd_h2guard_stream;

typedef struct kfd_h2guard {
    struct kfd_server *srv;
    char source[46];     /* the client's address, for logs */
    h2o_socket_t *sock;  /* NULL once h2o has disposed of the socket */
    void (*inner)(void); /* h2o's reader for the next frame */
    bool preface_done;
    uint32_t reset_tokens_milli; /* the reset budget, in thousandths of a reset */
    uint64_t reset_refilled_ms;
    uint64_t resets;
    kfd_h2guard_stream *streams; /* limits.max_streams_per_connection slots, made on first DATA */
} kfd_h2guard;

/* Hands an HTTP/2 (ALPN h2) connection whose TLS handshake is done to h2o and hooks its frame
 * reader. Returns 0, or -EPROTO when the connection does not have the layout of the h2o this
 * was built for (or the socket's close hook is taken): the connection is then already closing. */
int kfd_h2guard_accept(kfd_h2guard *g, struct kfd_server *srv, h2o_socket_t *sock, const char *source,
                       struct timeval connected_at);

/* Frees what the guard holds; called once the socket is closed. */
void kfd_h2guard_dispose(kfd_h2guard *g);

#endif
