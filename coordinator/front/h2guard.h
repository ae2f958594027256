/* What keyfleetd changes in h2o 2.2.5's HTTP/2 connections, where h2o has no API for it
 * (docs/architecture.md, "The HTTP/2 guard"):
 *  - the SETTINGS frame advertises limits.max_streams_per_connection, not h2o's fixed 100;
 *  - a stream past that count is refused (RST_STREAM REFUSED_STREAM), where h2o would take up
 *    to 100 and queue those past max_concurrent_requests_per_connection;
 *  - each connection has a budget of stream resets (rapid reset, CVE-2023-44487), which the
 *    resets the server sends because of the client's frames take from too ("MadeYouReset",
 *    CVE-2025-8671), and one of PING and SETTINGS frames: past either the connection ends with
 *    GOAWAY ENHANCE_YOUR_CALM;
 *  - request bytes held by h2o for bodies still arriving are budgeted per connection
 *    (limits.max_connection_body_bytes) and in total (limits.max_total_body_bytes): the stream
 *    whose DATA would pass either is refused;
 *  - streams open on all connections together are bounded (limits.max_open_streams): a stream
 *    past it is refused like one past the per-connection count;
 *  - a request with more than 100 header fields (HPACK can name one field thousands of times in
 *    a frame) is reset once h2o has decoded it, which frees it;
 *  - a write error closes the connection as upstream h2o does since PR #1859/#2844 (the pending
 *    write is unlinked and nothing more is started), not through h2o 2.2.5's assertion;
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
    uint32_t held;  /* payload bytes h2o buffers for it, counted in the body budgets */
    bool cut;       /* ended early: the rest of its DATA is dropped here */
} kfd_h2guard_stream;

typedef struct kfd_h2guard_bucket {
    uint32_t tokens_milli; /* in thousandths of a frame */
    uint64_t refilled_ms;
} kfd_h2guard_bucket;

typedef struct kfd_h2guard {
    struct kfd_server *srv;
    char source[46];     /* the client's address, for logs */
    h2o_socket_t *sock;  /* NULL once h2o has disposed of the socket */
    void (*inner)(void); /* h2o's reader for the next frame */
    h2o_socket_cb h2o_on_read;  /* h2o's read callback, which the guard's wraps */
    h2o_socket_cb h2o_on_write; /* h2o's write-complete callback while a write is in flight */
    h2o_timeout_cb h2o_emit;    /* h2o's deferred-write callback (conn->_write.timeout_entry) */
    bool preface_done;
    bool refusing; /* the HEADERS (and CONTINUATIONs) being read open a stream past the count */
    kfd_h2guard_bucket reset_budget, control_budget;
    uint64_t resets;         /* resets the client sent or provoked */
    uint64_t control_frames; /* PING and SETTINGS frames */
    uint32_t last_provoked;  /* the stream of the last reset the server sent (counted once) */
    uint64_t held;           /* sum of the slots' held bytes */
    uint32_t open_counted;   /* this connection's open streams, as counted in srv->h2_open_streams */
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
