/* The HTTP/2 guard (h2guard.h). The one file that reads h2o 2.2.5's private HTTP/2 connection
 * (<h2o/http2_internal.h>, installed with libh2o-dev by the same Debian package as the library,
 * so its layout is the library's). It checks that layout on every connection before it hooks
 * anything, and a connection that does not match is closed, never served unguarded. */
#include "front/h2guard.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <h2o/http2.h>
#include <h2o/http2_internal.h>

#include "front/server.h"
#include "kf_log.h"

typedef ssize_t (*frame_reader)(h2o_http2_conn_t *conn, const uint8_t *src, size_t len, const char **err_desc);

#define FRAME_HEADER_SIZE 9
#define FRAME_DATA 0
#define FRAME_RST_STREAM 3
#define FLAG_END_STREAM 0x1
#define FLAG_PADDED 0x8

/* h2o 2.2.5's server preface (lib/http2/connection.c, expect_preface): one SETTINGS frame,
 * MAX_CONCURRENT_STREAMS 100 and INITIAL_WINDOW_SIZE 16 MiB. */
static const uint8_t h2o_server_settings[] = {0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 4, 1, 0, 0, 0};
#define MAX_STREAMS_VALUE_AT 11

static bool warned_settings;

static uint32_t be24(const uint8_t *p) { return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2]; }

static uint32_t be31(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]) & 0x7fffffffu;
}

/* Rewrites the MAX_CONCURRENT_STREAMS value of the SETTINGS frame h2o has just queued. */
static void advertise_streams(kfd_h2guard *g, h2o_http2_conn_t *conn)
{
    h2o_buffer_t *buf = conn->_write.buf;
    size_t n = sizeof(h2o_server_settings);
    if (buf->size < n || memcmp(buf->bytes + buf->size - n, h2o_server_settings, n) != 0) {
        if (!warned_settings)
            kf_log_warn("h2_settings_not_found", "advertised=h2o_default detail=%s",
                        kf_log_q("h2o's SETTINGS frame is not the one of h2o 2.2.5"));
        warned_settings = true;
        return;
    }
    uint32_t v = g->srv->cfg->limits.max_streams_per_connection;
    uint8_t *p = (uint8_t *)buf->bytes + buf->size - n + MAX_STREAMS_VALUE_AT;
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* One reset from the budget: limits.max_stream_resets at once, refilled at a tenth of that per
 * second. False when it is spent. */
static bool take_reset(kfd_h2guard *g)
{
    uint64_t cap = (uint64_t)g->srv->cfg->limits.max_stream_resets;
    uint64_t now = uv_now(g->srv->loop);
    uint64_t tokens = g->reset_tokens_milli + (now - g->reset_refilled_ms) * cap / 10;
    if (tokens > cap * 1000)
        tokens = cap * 1000;
    g->reset_refilled_ms = now;
    if (tokens < 1000) {
        g->reset_tokens_milli = (uint32_t)tokens;
        return false;
    }
    g->reset_tokens_milli = (uint32_t)(tokens - 1000);
    return true;
}

static kfd_h2guard_stream *find_stream(kfd_h2guard *g, uint32_t id, bool create)
{
    size_t n = g->srv->cfg->limits.max_streams_per_connection;
    if (g->streams == NULL) {
        if (!create || (g->streams = calloc(n, sizeof(*g->streams))) == NULL)
            return NULL;
    }
    kfd_h2guard_stream *free_slot = NULL;
    for (size_t i = 0; i < n; i++) {
        if (g->streams[i].id == id)
            return &g->streams[i];
        if (g->streams[i].id == 0 && free_slot == NULL)
            free_slot = &g->streams[i];
    }
    if (!create || free_slot == NULL)
        return NULL;
    *free_slot = (kfd_h2guard_stream){.id = id};
    return free_slot;
}

/* h2o's stream ID, found through the priority tree every open stream is in (h2o's stream table
 * is a khash this file cannot read); depth-first, as deep as h2o's 100 open streams can chain. */
static h2o_http2_stream_t *find_h2o_stream(h2o_http2_scheduler_node_t *node, uint32_t id, unsigned depth)
{
    if (depth > 128)
        return NULL;
    for (h2o_linklist_t *l = node->_all_refs.next; l != &node->_all_refs; l = l->next) {
        h2o_http2_scheduler_openref_t *ref = H2O_STRUCT_FROM_MEMBER(h2o_http2_scheduler_openref_t, _all_link, l);
        h2o_http2_stream_t *stream = H2O_STRUCT_FROM_MEMBER(h2o_http2_stream_t, _refs.scheduler, ref);
        if (stream->stream_id == id)
            return stream;
        h2o_http2_stream_t *found = find_h2o_stream(&ref->node, id, depth + 1);
        if (found != NULL)
            return found;
    }
    return NULL;
}

static void forget_stream(kfd_h2guard *g, uint32_t id)
{
    kfd_h2guard_stream *s = find_stream(g, id, false);
    if (s != NULL)
        *s = (kfd_h2guard_stream){0};
}

/* Frees the slots of streams h2o no longer has (it reset them itself, or the client stopped
 * sending without a reset); those of bodies ended early (whose rest is still dropped here)
 * only when no other slot is free. Returns how many. */
static size_t reclaim_streams(kfd_h2guard *g, h2o_http2_conn_t *conn)
{
    size_t n = 0;
    for (int pass = 0; pass < 2 && n == 0; pass++) {
        for (size_t i = 0; g->streams != NULL && i < g->srv->cfg->limits.max_streams_per_connection; i++) {
            kfd_h2guard_stream *s = &g->streams[i];
            if (s->id != 0 && (pass == 1 || !s->cut) && find_h2o_stream(&conn->scheduler, s->id, 0) == NULL) {
                *s = (kfd_h2guard_stream){0};
                n++;
            }
        }
    }
    return n;
}

/* A DATA frame (complete in src). Returns 0 to hand it to h2o, or the bytes it consumed itself
 * (the rest of a body that was ended early). */
static ssize_t on_data(kfd_h2guard *g, h2o_http2_conn_t *conn, uint8_t *frame, uint32_t len, uint32_t id)
{
    uint8_t flags = frame[4];
    uint32_t payload = len;
    if (flags & FLAG_PADDED) {
        if (len < 1 || (uint32_t)frame[FRAME_HEADER_SIZE] >= len)
            return 0; /* h2o refuses it */
        payload = len - 1 - frame[FRAME_HEADER_SIZE];
    }
    kfd_h2guard_stream *s = find_stream(g, id, true);
    if (s == NULL && reclaim_streams(g, conn) > 0)
        s = find_stream(g, id, true);
    if (s == NULL)
        return 0; /* more streams than advertised: h2o's own cap bounds them */
    if (s->cut) {
        if ((uint64_t)s->bytes + len > g->srv->globalconf.max_request_entity_size) {
            /* Still sending long after the answer: h2o tells it the stream is closed. */
            forget_stream(g, id);
            return 0;
        }
        s->bytes += len;
        if (flags & FLAG_END_STREAM)
            forget_stream(g, id);
        if (len != 0) {
            /* h2o never sees these bytes, so give the connection's window back here. */
            h2o_http2_encode_window_update_frame(&conn->_write.buf, 0, (int32_t)len);
            h2o_http2_conn_request_write(conn);
        }
        return FRAME_HEADER_SIZE + (ssize_t)len;
    }
    s->bytes += payload;
    if (flags & FLAG_END_STREAM) {
        forget_stream(g, id);
        return 0;
    }
    uint32_t limit = g->srv->cfg->limits.max_body_bytes;
    if (s->bytes > limit) {
        /* The body is already too large: end it here, so h2o hands the request (over the limit
         * by this frame) to the router, which answers resource_exhausted. h2o would refuse a
         * body shorter than its content-length: the stream no longer expects one. */
        h2o_http2_stream_t *stream = find_h2o_stream(&conn->scheduler, id, 0);
        if (stream == NULL || stream->state != H2O_HTTP2_STREAM_STATE_RECV_BODY || stream->_req_body == NULL)
            return 0; /* not a body h2o is reading: h2o's own cap applies */
        stream->_expected_content_length = SIZE_MAX;
        frame[4] |= FLAG_END_STREAM;
        s->cut = true;
        g->srv->metrics.h2_bodies_cut++;
        kf_log_info("request_body_cut", "source=%s stream=%u bytes=%u limit=%u", g->source, id, s->bytes, limit);
    }
    return 0;
}

static ssize_t guard_reader(h2o_http2_conn_t *conn, const uint8_t *src, size_t len, const char **err_desc)
{
    kfd_h2guard *g = conn->sock->on_close.data;
    frame_reader inner = (frame_reader)g->inner;
    ssize_t r = 0;
    if (!g->preface_done) {
        r = inner(conn, src, len, err_desc);
        if (r > 0) {
            g->preface_done = true;
            advertise_streams(g, conn);
        }
    } else if (len >= FRAME_HEADER_SIZE && len - FRAME_HEADER_SIZE >= be24(src) &&
               be24(src) <= H2O_HTTP2_SETTINGS_HOST.max_frame_size) {
        /* A whole frame (h2o reads one at a time, from sock->input, which is ours to edit); one
         * larger than h2o allows goes to h2o, which ends the connection for it. */
        uint32_t flen = be24(src), id = be31(src + 5);
        uint8_t *frame = (uint8_t *)conn->sock->input->bytes;
        if (src[3] == FRAME_RST_STREAM) {
            forget_stream(g, id);
            g->resets++;
            if (!take_reset(g)) {
                g->srv->metrics.h2_reset_floods++;
                kf_log_warn("h2_reset_flood", "source=%s resets=%llu limit=%u action=goaway", g->source,
                            (unsigned long long)g->resets, g->srv->cfg->limits.max_stream_resets);
                *err_desc = "too many stream resets";
                return H2O_HTTP2_ERROR_ENHANCE_YOUR_CALM;
            }
        } else if (src[3] == FRAME_DATA && id != 0 && frame == src) {
            r = on_data(g, conn, frame, flen, id);
        }
        if (r == 0)
            r = inner(conn, src, len, err_desc);
    } else {
        r = inner(conn, src, len, err_desc);
    }
    /* h2o picks the reader for the next frame (preface, frames, CONTINUATION): keep it wrapped. */
    if (conn->_read_expect != guard_reader) {
        g->inner = (void (*)(void))conn->_read_expect;
        conn->_read_expect = guard_reader;
    }
    return r;
}

static void on_sock_dispose(void *data)
{
    kfd_h2guard *g = data;
    g->sock = NULL;
}

int kfd_h2guard_accept(kfd_h2guard *g, kfd_server *srv, h2o_socket_t *sock, const char *source,
                       struct timeval connected_at)
{
    memset(g, 0, sizeof(*g));
    g->srv = srv;
    snprintf(g->source, sizeof(g->source), "%s", source);
    /* h2o_http2_accept reads what came with the handshake at once, before the reader could be
     * wrapped: hold it back until then. */
    h2o_buffer_t *early = sock->input;
    h2o_buffer_init(&sock->input, &h2o_socket_buffer_prototype);
    h2o_http2_accept(&srv->accept_ctx, sock, connected_at);
    h2o_buffer_dispose(&sock->input);
    sock->input = early;
    h2o_http2_conn_t *conn = sock->data;
    if (conn == NULL || conn->sock != sock || conn->super.ctx != &srv->ctx || conn->_read_expect == NULL ||
        conn->_write.buf == NULL || conn->_write.buf_in_flight != NULL || conn->state != H2O_HTTP2_CONN_STATE_OPEN ||
        sock->on_close.cb != NULL) {
        kf_log_error("h2_layout_mismatch", "source=%s action=close detail=%s", g->source,
                     kf_log_q("h2o's HTTP/2 connection is not laid out as in h2o 2.2.5"));
        sock->_cb.read(sock, "h2o layout mismatch"); /* h2o closes its connection */
        return -EPROTO;
    }
    g->sock = sock;
    g->inner = (void (*)(void))conn->_read_expect;
    conn->_read_expect = guard_reader;
    sock->on_close.cb = on_sock_dispose;
    sock->on_close.data = g;
    g->reset_tokens_milli = srv->cfg->limits.max_stream_resets * 1000u;
    g->reset_refilled_ms = uv_now(srv->loop);
    if (sock->input->size != 0)
        sock->_cb.read(sock, NULL);
    return 0;
}

void kfd_h2guard_dispose(kfd_h2guard *g)
{
    free(g->streams);
    g->streams = NULL;
}
