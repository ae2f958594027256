/* The HTTP/1.1 request-head guard (front/h1guard.h). */
#include "front/h1guard.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "front/server.h"
#include "kf_log.h"

#define REFUSED_LOG_MS 1000

/* kfd_h1_head_check, and *head_end: the byte after the head's blank line, 0 until it has come. */
static const char *head_check(const char *p, size_t len, size_t *lines, size_t *head_end)
{
    size_t end = len < KFD_H1_HEAD_MAX ? len : KFD_H1_HEAD_MAX, start = 0;
    *lines = 0;
    *head_end = 0;
    while (start < end) {
        const char *nl = memchr(p + start, '\n', end - start);
        if (nl == NULL)
            break;
        size_t at = (size_t)(nl - p), n = at - start;
        if (n > 0 && p[at - 1] == '\r')
            n--;
        start = at + 1;
        if (n == 0) {
            if (*lines > 0) {
                *head_end = start;
                return NULL; /* the blank line that ends the head */
            }
            continue;        /* an empty line before the request line, which h2o skips */
        }
        if (++*lines > KFD_H1_HEAD_LINES)
            return "lines";
    }
    return len > KFD_H1_HEAD_MAX ? "bytes" : NULL;
}

const char *kfd_h1_head_check(const char *p, size_t len, size_t *lines)
{
    size_t head_end;
    return head_check(p, len, lines, &head_end);
}

/* Whether a complete head names a body (Content-Length or Transfer-Encoding, as h2o reads them). */
static bool head_has_body(const char *p, size_t len)
{
    static const char *const names[] = {"content-length:", "transfer-encoding:"};
    for (size_t start = 0; start < len;) {
        const char *nl = memchr(p + start, '\n', len - start);
        size_t n = (nl != NULL ? (size_t)(nl - p) : len) - start;
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            size_t k = strlen(names[i]);
            if (n >= k && strncasecmp(p + start, names[i], k) == 0)
                return true;
        }
        start += n + 1;
    }
    return false;
}

/* The head at the buffer's start and each one pipelined behind it (review rev18c F1): h2o parses
 * a pipelined request straight from the buffer once the answer before it is sent, with no read
 * for the guard to see, so its head is checked now, in the read that brought it. A request with a
 * body ends the scan (where its body ends is h2o's to know): server.c answers such a request with
 * Connection: close, so h2o parses nothing behind it. */
static const char *pipeline_check(const char *p, size_t len, size_t *lines)
{
    for (size_t off = 0;;) {
        size_t end;
        const char *limit = head_check(p + off, len - off, lines, &end);
        if (limit != NULL || end == 0 || head_has_body(p + off, end))
            return limit;
        off += end;
    }
}

static void refused(kfd_h1guard *g, const char *limit, size_t bytes, size_t lines)
{
    kfd_server *srv = g->srv;
    srv->metrics.http1_heads_refused++;
    uint64_t now = uv_now(srv->loop);
    if (srv->http1_refused_logged_ms != 0 && now - srv->http1_refused_logged_ms < REFUSED_LOG_MS) {
        srv->http1_refused_suppressed++;
        return;
    }
    kf_log_warn("http1_head_refused", "source=%s limit=%s bytes=%zu lines=%zu max_bytes=%d max_lines=%d suppressed=%llu "
                "action=close",
                g->source, limit, bytes, lines, KFD_H1_HEAD_MAX, KFD_H1_HEAD_LINES,
                (unsigned long long)srv->http1_refused_suppressed);
    srv->http1_refused_logged_ms = now;
    srv->http1_refused_suppressed = 0;
}

static void guard_on_read(h2o_socket_t *sock, const char *err);
static void guard_on_write(h2o_socket_t *sock, const char *err);

/* After any h2o callback: h2o sets its read callback again for each request (after a response)
 * and its write callback for each write, so both are wrapped again when h2o replaced them. */
static void rehook(kfd_h1guard *g)
{
    h2o_socket_t *sock = g->sock;
    if (sock == NULL)
        return;
    if (sock->_cb.read != NULL && sock->_cb.read != guard_on_read) {
        g->h2o_on_read = sock->_cb.read;
        sock->_cb.read = guard_on_read;
    }
    if (sock->_cb.write != NULL && sock->_cb.write != guard_on_write) {
        g->h2o_on_write = sock->_cb.write;
        sock->_cb.write = guard_on_write;
    }
}

static void guard_on_read(h2o_socket_t *sock, const char *err)
{
    kfd_h1guard *g = sock->on_close.data;
    /* Only h2o's request reader: while TLS shuts down, h2o reads with another callback. */
    if (err == NULL && g->h2o_on_read == g->h2o_reader) {
        size_t lines;
        const char *limit = pipeline_check(sock->input->bytes, sock->input->size, &lines);
        if (limit != NULL) {
            refused(g, limit, sock->input->size, lines);
            err = "request head over the limit";
        }
    }
    g->h2o_on_read(sock, err); /* with an error, h2o closes the connection */
    rehook(g);
}

static void guard_on_write(h2o_socket_t *sock, const char *err)
{
    kfd_h1guard *g = sock->on_close.data;
    h2o_socket_cb cb = g->h2o_on_write;
    g->h2o_on_write = NULL;
    if (cb != NULL)
        cb(sock, err);
    rehook(g);
}

static void on_sock_dispose(void *data)
{
    kfd_h1guard *g = data;
    g->sock = NULL;
}

void kfd_h1guard_accept(kfd_h1guard *g, kfd_server *srv, h2o_accept_ctx_t *accept_ctx, h2o_socket_t *sock,
                        const char *source, struct timeval connected_at)
{
    memset(g, 0, sizeof(*g));
    g->srv = srv;
    snprintf(g->source, sizeof(g->source), "%s", source);
    /* h2o_http1_accept parses what came with the handshake at once, before the reader could be
     * wrapped: hold it back until then. */
    h2o_buffer_t *early = sock->input;
    h2o_buffer_init(&sock->input, &h2o_socket_buffer_prototype);
    h2o_http1_accept(accept_ctx, sock, connected_at);
    h2o_buffer_dispose(&sock->input);
    sock->input = early;
    if (sock->data == NULL || sock->on_close.cb != NULL || sock->_cb.read == NULL || sock->_cb.write != NULL) {
        kf_log_error("h1_layout_mismatch", "source=%s action=close detail=%s", g->source,
                     kf_log_q("h2o's HTTP/1.1 connection is not laid out as in h2o 2.2.5"));
        if (sock->_cb.read != NULL)
            sock->_cb.read(sock, "h2o layout mismatch"); /* h2o closes its connection */
        return;
    }
    g->sock = sock;
    sock->on_close.cb = on_sock_dispose;
    sock->on_close.data = g;
    g->h2o_reader = sock->_cb.read;
    rehook(g);
    if (sock->input->size != 0)
        sock->_cb.read(sock, NULL);
}
