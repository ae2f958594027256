/* What keyfleetd bounds in h2o 2.2.5's HTTP/1.1 connections (TLS with ALPN http/1.1 or none, and
 * the plain probe_listen listener), where h2o has no knob for it (review rev19 P2): h2o holds a
 * request head of up to about 417 KB (H2O_MAX_REQLEN) per connection until req_timeout, and
 * with tls.client_auth: optional a client needs no certificate to send one. No RPC is served over
 * HTTP/1.1 (health probes and scrapers only), so:
 *  - a request head may be at most KFD_H1_HEAD_MAX bytes and KFD_H1_HEAD_LINES lines (the
 *    request line and the header fields); a connection whose unparsed input passes either
 *    without the head's final blank line is closed as it arrives (early close: not at
 *    req_timeout), logged http1_head_refused (at most once a second) and counted in
 *    keyfleet_http1_heads_refused_total;
 *  - TLS connections that speak HTTP/1.1 are counted per source address apart from the others:
 *    past KFD_H1_PER_SOURCE open at once, a new one is closed after its handshake
 *    (server.c, connection_rejected reason=http1_per_source), so one address holds at most
 *    KFD_H1_PER_SOURCE x KFD_H1_HEAD_MAX bytes of request heads (probe_listen has its own
 *    limit of 64 connections in all).
 * It wraps the socket's read callback (and, so as to wrap it again when h2o starts reading the
 * next request after a response, the write-complete callback): the check runs on sock->input
 * before h2o parses it, and a refusal is handed to h2o as a read error, the path a client's TCP
 * reset takes.
 * Pipelining (review rev18c F1): h2o parses a request already in the buffer straight from it once
 * the answer before it is sent (reqread_start), with no read for the guard to check, so each read
 * checks every head pipelined in the buffer too, up to a request with a body (where a body ends
 * is h2o's to know); server.c answers a request with a body with Connection: close, so nothing
 * behind one is parsed (tests/integration/h1guard_pipeline.sh). */
#ifndef KFD_H1GUARD_H
#define KFD_H1GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/time.h>

#include <h2o.h>
#include <h2o/http1.h>

#define KFD_H1_HEAD_MAX 8192
#define KFD_H1_HEAD_LINES 64
#define KFD_H1_PER_SOURCE 16

struct kfd_server;

typedef struct kfd_h1guard {
    struct kfd_server *srv;
    char source[46];            /* the client's address, for logs */
    h2o_socket_t *sock;         /* NULL once h2o has disposed of the socket */
    h2o_socket_cb h2o_reader;   /* h2o's request reader, as set at accept: only it is checked */
    h2o_socket_cb h2o_on_read;  /* the read callback h2o set last, which the guard's wraps */
    h2o_socket_cb h2o_on_write; /* h2o's write-complete callback while a write is in flight */
} kfd_h1guard;

/* What a request head in the first len bytes of p amounts to: 0 when it is within the limits
 * (complete or not), else a static text naming the limit passed. *lines is the head's lines
 * seen. Pure: tests and the fuzzer call it. */
const char *kfd_h1_head_check(const char *p, size_t len, size_t *lines);

/* Hands an HTTP/1.1 connection (its TLS handshake done, or plain) to h2o with accept_ctx, and
 * hooks its reads. */
void kfd_h1guard_accept(kfd_h1guard *g, struct kfd_server *srv, h2o_accept_ctx_t *accept_ctx, h2o_socket_t *sock,
                        const char *source, struct timeval connected_at);

#endif
