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
#define FRAME_HEADERS 1
#define FRAME_RST_STREAM 3
#define FRAME_SETTINGS 4
#define FRAME_PING 6
#define FRAME_CONTINUATION 9
#define FLAG_END_STREAM 0x1
#define FLAG_ACK 0x1
#define FLAG_PADDED 0x8

/* PING and SETTINGS frames a connection may send at once, refilled at a tenth of that per
 * second: clients send a few (keyfleet's send none after the preface); each costs h2o an answer
 * it queues whether or not the client reads it. */
#define CONTROL_FRAMES 100

/* h2o 2.2.5's server preface (lib/http2/connection.c, expect_preface): one SETTINGS frame,
 * MAX_CONCURRENT_STREAMS 100 and INITIAL_WINDOW_SIZE 16 MiB. */
/* Header fields a request may carry (Connect clients send about a dozen). HPACK lets one byte
 * name a field of the dynamic table again, so a 16 KiB HEADERS frame decodes to some 16,000
 * fields, about 1 MiB of h2o's request pool, held for as long as the stream is open: 32 such
 * streams per connection took 30 MB each, beside the body budgets. */
#define MAX_HEADER_FIELDS 100

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

/* One frame from a budget: cap at once, refilled at a tenth of cap per second. False when it
 * is spent. */
static bool take(kfd_h2guard *g, kfd_h2guard_bucket *b, uint32_t cap)
{
    uint64_t now = uv_now(g->srv->loop);
    uint64_t tokens = b->tokens_milli + (now - b->refilled_ms) * cap / 10;
    if (tokens > (uint64_t)cap * 1000)
        tokens = (uint64_t)cap * 1000;
    b->refilled_ms = now;
    if (tokens < 1000) {
        b->tokens_milli = (uint32_t)tokens;
        return false;
    }
    b->tokens_milli = (uint32_t)(tokens - 1000);
    return true;
}

/* A reset the client sent or made the server send: false when the budget is spent (the caller
 * ends the connection). */
static bool take_reset(kfd_h2guard *g, const char *kind)
{
    g->resets++;
    if (take(g, &g->reset_budget, g->srv->cfg->limits.max_stream_resets))
        return true;
    g->srv->metrics.h2_reset_floods++;
    kf_log_warn("h2_reset_flood", "source=%s resets=%llu limit=%u kind=%s action=goaway", g->source,
                (unsigned long long)g->resets, g->srv->cfg->limits.max_stream_resets, kind);
    return false;
}

static void hold(kfd_h2guard *g, kfd_h2guard_stream *s, uint32_t n)
{
    s->held += n;
    g->held += n;
    g->srv->h2_body_bytes += n;
}

static void release(kfd_h2guard *g, kfd_h2guard_stream *s)
{
    g->held -= s->held;
    g->srv->h2_body_bytes -= s->held;
    s->held = 0;
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

static void free_slot(kfd_h2guard *g, kfd_h2guard_stream *s)
{
    release(g, s);
    *s = (kfd_h2guard_stream){0};
}

static void forget_stream(kfd_h2guard *g, uint32_t id)
{
    kfd_h2guard_stream *s = find_stream(g, id, false);
    if (s != NULL)
        free_slot(g, s);
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
                free_slot(g, s);
                n++;
            }
        }
    }
    return n;
}

/* Consumes a DATA frame of len bytes h2o will not see: its flow-control credit goes back to the
 * connection here. */
static ssize_t swallow(h2o_http2_conn_t *conn, uint32_t len)
{
    if (len != 0) {
        h2o_http2_encode_window_update_frame(&conn->_write.buf, 0, (int32_t)len);
        h2o_http2_conn_request_write(conn);
    }
    return FRAME_HEADER_SIZE + (ssize_t)len;
}

/* Refuses a stream whose body h2o is reading: RST_STREAM REFUSED_STREAM (nothing of it was
 * processed, so a client may retry it later) and h2o drops what it buffered. */
static ssize_t refuse_body(kfd_h2guard *g, h2o_http2_conn_t *conn, h2o_http2_stream_t *stream, uint32_t len,
                           const char *reason)
{
    uint32_t id = stream->stream_id;
    forget_stream(g, id);
    h2o_http2_encode_rst_stream_frame(&conn->_write.buf, id, -H2O_HTTP2_ERROR_REFUSED_STREAM);
    h2o_http2_conn_request_write(conn);
    h2o_http2_stream_reset(conn, stream);
    g->srv->metrics.h2_streams_refused++;
    kf_log_warn("h2_stream_refused", "source=%s stream=%u reason=%s connection_bytes=%llu total_bytes=%llu", g->source,
                id, reason, (unsigned long long)g->held, (unsigned long long)g->srv->h2_body_bytes);
    return swallow(conn, len);
}

/* A DATA frame (complete in src). Returns 0 to hand it to h2o, or the bytes it consumed itself
 * (the rest of a body that was ended early, or a refused stream's frame). */
static ssize_t on_data(kfd_h2guard *g, h2o_http2_conn_t *conn, uint8_t *frame, uint32_t len, uint32_t id)
{
    uint8_t flags = frame[4];
    uint32_t payload = len;
    if (flags & FLAG_PADDED) {
        if (len < 1 || (uint32_t)frame[FRAME_HEADER_SIZE] >= len)
            return 0; /* h2o refuses it */
        payload = len - 1 - frame[FRAME_HEADER_SIZE];
    }
    kfd_h2guard_stream *s = find_stream(g, id, false);
    if (s != NULL && s->cut) {
        if ((uint64_t)s->bytes + len > g->srv->globalconf.max_request_entity_size) {
            /* Still sending long after the answer: h2o tells it the stream is closed. */
            forget_stream(g, id);
            return 0;
        }
        s->bytes += len;
        if (flags & FLAG_END_STREAM)
            forget_stream(g, id);
        return swallow(conn, len);
    }
    h2o_http2_stream_t *stream = find_h2o_stream(&conn->scheduler, id, 0);
    if (stream == NULL || stream->state != H2O_HTTP2_STREAM_STATE_RECV_BODY || stream->_req_body == NULL) {
        /* No body h2o is reading: h2o answers the frame (STREAM_CLOSED or a protocol error)
         * and buffers none of it. */
        if (s != NULL)
            forget_stream(g, id);
        return 0;
    }
    if (s == NULL && (s = find_stream(g, id, true)) == NULL && reclaim_streams(g, conn) > 0)
        s = find_stream(g, id, true);
    if (s == NULL) /* cannot be (streams past the count are refused): fail closed */
        return refuse_body(g, conn, stream, len, "untracked");
    const kfd_limits *lim = &g->srv->cfg->limits;
    if (g->held + payload > lim->max_connection_body_bytes || g->srv->h2_body_bytes + payload > lim->max_total_body_bytes)
        reclaim_streams(g, conn); /* bodies h2o has dropped itself hold nothing */
    if (g->held + payload > lim->max_connection_body_bytes)
        return refuse_body(g, conn, stream, len, "connection_body_budget");
    if (g->srv->h2_body_bytes + payload > lim->max_total_body_bytes)
        return refuse_body(g, conn, stream, len, "total_body_budget");
    s->bytes += payload;
    hold(g, s, payload);
    if (flags & FLAG_END_STREAM) {
        forget_stream(g, id);
        return 0;
    }
    if (s->bytes > lim->max_body_bytes) {
        /* The body is already too large: end it here, so h2o hands the request (over the limit
         * by this frame) to the router, which answers resource_exhausted. h2o would refuse a
         * body shorter than its content-length: the stream no longer expects one. */
        stream->_expected_content_length = SIZE_MAX;
        frame[4] |= FLAG_END_STREAM;
        release(g, s);
        s->cut = true;
        g->srv->metrics.h2_bodies_cut++;
        kf_log_info("request_body_cut", "source=%s stream=%u bytes=%u limit=%u", g->source, id, s->bytes,
                    lim->max_body_bytes);
    }
    return 0;
}

/* Brings the server's count of open streams in step with this connection's: h2o opens a stream
 * on its HEADERS and closes it as its answer finishes or it is reset, so this runs after every
 * frame and every completed write. Each open stream costs h2o some 6.5 KB (its request pool),
 * which no body budget counts. */
static void count_streams(kfd_h2guard *g, h2o_http2_conn_t *conn)
{
    uint32_t open = conn->num_streams.pull.open;
    g->srv->h2_open_streams = g->srv->h2_open_streams - g->open_counted + open;
    g->open_counted = open;
}

static uint64_t stream_errors_sent(h2o_http2_conn_t *conn)
{
    uint64_t n = 0;
    for (int i = 0; i < H2O_HTTP2_ERROR_MAX; i++)
        n += conn->super.ctx->http2.events.protocol_level_errors[i];
    return n;
}

/* Calls h2o's reader. While a HEADERS block that opens a stream past the advertised count is
 * read, h2o's count of open streams is raised past its own cap of 100 so that h2o decodes the
 * header block (the HPACK table stays in step) and then refuses the stream itself, with
 * RST_STREAM REFUSED_STREAM, before any of it is processed. */
static ssize_t call_inner(kfd_h2guard *g, h2o_http2_conn_t *conn, const uint8_t *src, size_t len,
                          const char **err_desc)
{
    frame_reader inner = (frame_reader)g->inner;
    if (!g->refusing)
        return inner(conn, src, len, err_desc);
    const uint32_t lift = H2O_HTTP2_SETTINGS_HOST.max_concurrent_streams;
    conn->num_streams.pull.open += lift;
    ssize_t r = inner(conn, src, len, err_desc);
    conn->num_streams.pull.open -= lift;
    if (conn->_headers_unparsed == NULL) /* the block is whole: the stream was refused */
        g->refusing = false;
    return r;
}

/* After h2o decoded a whole header block: a stream whose request has more than MAX_HEADER_FIELDS
 * fields is reset (ENHANCE_YOUR_CALM: a retry would be refused alike), which frees what h2o
 * decoded, as a client's RST_STREAM would, and takes from the reset budget. False when that is
 * spent (the caller ends the connection). */
static bool too_many_fields(kfd_h2guard *g, h2o_http2_conn_t *conn, uint32_t id)
{
    h2o_http2_stream_t *stream = find_h2o_stream(&conn->scheduler, id, 0);
    if (stream == NULL || stream->req.headers.size <= MAX_HEADER_FIELDS || conn->state >= H2O_HTTP2_CONN_STATE_IS_CLOSING)
        return true;
    size_t fields = stream->req.headers.size;
    forget_stream(g, id);
    h2o_http2_encode_rst_stream_frame(&conn->_write.buf, id, -H2O_HTTP2_ERROR_ENHANCE_YOUR_CALM);
    h2o_http2_conn_request_write(conn);
    h2o_http2_stream_reset(conn, stream);
    g->srv->metrics.h2_streams_refused++;
    kf_log_warn("h2_stream_refused", "source=%s stream=%u reason=header_fields fields=%zu limit=%d", g->source, id,
                fields, MAX_HEADER_FIELDS);
    g->last_provoked = id;
    return take_reset(g, "header_fields");
}

static ssize_t guard_frame(kfd_h2guard *g, h2o_http2_conn_t *conn, const uint8_t *src, size_t len,
                           const char **err_desc)
{
    /* A whole frame (h2o reads one at a time, from sock->input, which is ours to edit); one
     * larger than h2o allows goes to h2o, which ends the connection for it. */
    uint32_t flen = be24(src), id = be31(src + 5);
    uint8_t type = src[3], flags = src[4];
    uint8_t *frame = (uint8_t *)conn->sock->input->bytes;
    if (type == FRAME_RST_STREAM) {
        /* Only a reset of a stream h2o still serves takes from the budget: that is rapid reset
         * (the server's work dropped, the slot freed for the next). A stream whose answer is
         * already whole is gone from h2o's streams, and its reset costs nothing; libcurl sends one
         * after each finished stream, so counting them ended every connection of a client (an
         * agent with many volumes, keyfleet-bench's warm path) after ~100 requests. */
        bool serving = find_h2o_stream(&conn->scheduler, id, 0) != NULL;
        forget_stream(g, id);
        if (serving && !take_reset(g, "sent")) {
            *err_desc = "too many stream resets";
            return H2O_HTTP2_ERROR_ENHANCE_YOUR_CALM;
        }
    } else if ((type == FRAME_PING || type == FRAME_SETTINGS) && !(flags & FLAG_ACK)) {
        g->control_frames++;
        if (!take(g, &g->control_budget, CONTROL_FRAMES)) {
            g->srv->metrics.h2_control_floods++;
            kf_log_warn("h2_control_flood", "source=%s frames=%llu limit=%u action=goaway", g->source,
                        (unsigned long long)g->control_frames, CONTROL_FRAMES);
            *err_desc = "too many PING or SETTINGS frames";
            return H2O_HTTP2_ERROR_ENHANCE_YOUR_CALM;
        }
    } else if (type == FRAME_HEADERS && (id & 1) != 0 && id > conn->pull_stream_ids.max_open &&
               (conn->num_streams.pull.open >= g->srv->cfg->limits.max_streams_per_connection ||
                g->srv->h2_open_streams >= g->srv->cfg->limits.max_open_streams)) {
        bool here = conn->num_streams.pull.open >= g->srv->cfg->limits.max_streams_per_connection;
        g->refusing = true;
        g->srv->metrics.h2_streams_refused++;
        kf_log_info("h2_stream_refused", "source=%s stream=%u reason=%s open=%llu limit=%u", g->source, id,
                    here ? "max_streams" : "max_open_streams",
                    here ? (unsigned long long)conn->num_streams.pull.open : (unsigned long long)g->srv->h2_open_streams,
                    here ? g->srv->cfg->limits.max_streams_per_connection : g->srv->cfg->limits.max_open_streams);
    } else if (type == FRAME_DATA && id != 0 && frame == src) {
        ssize_t r = on_data(g, conn, frame, flen, id);
        if (r != 0)
            return r;
    }
    /* Resets h2o sends because of this frame (a bad WINDOW_UPDATE, DATA on a closed stream, a
     * refused stream...) take from the same budget, once per stream. */
    uint64_t errors = stream_errors_sent(conn);
    ssize_t r = call_inner(g, conn, src, len, err_desc);
    if (r >= 0 && (type == FRAME_HEADERS || type == FRAME_CONTINUATION) && conn->_headers_unparsed == NULL &&
        !too_many_fields(g, conn, id)) {
        *err_desc = "too many stream resets";
        return H2O_HTTP2_ERROR_ENHANCE_YOUR_CALM;
    }
    if (r >= 0 && id != 0 && stream_errors_sent(conn) != errors && id != g->last_provoked) {
        g->last_provoked = id;
        if (!take_reset(g, "provoked")) {
            *err_desc = "too many stream errors";
            return H2O_HTTP2_ERROR_ENHANCE_YOUR_CALM;
        }
    }
    return r;
}

static ssize_t guard_reader(h2o_http2_conn_t *conn, const uint8_t *src, size_t len, const char **err_desc)
{
    kfd_h2guard *g = conn->sock->on_close.data;
    ssize_t r = 0;
    if (!g->preface_done) {
        r = call_inner(g, conn, src, len, err_desc);
        if (r > 0) {
            g->preface_done = true;
            advertise_streams(g, conn);
        }
    } else if (len >= FRAME_HEADER_SIZE && len - FRAME_HEADER_SIZE >= be24(src) &&
               be24(src) <= H2O_HTTP2_SETTINGS_HOST.max_frame_size) {
        r = guard_frame(g, conn, src, len, err_desc);
    } else {
        r = call_inner(g, conn, src, len, err_desc);
    }
    count_streams(g, conn);
    /* h2o picks the reader for the next frame (preface, frames, CONTINUATION): keep it wrapped. */
    if (conn->_read_expect != guard_reader) {
        g->inner = (void (*)(void))conn->_read_expect;
        conn->_read_expect = guard_reader;
    }
    return r;
}

/* h2o 2.2.5 closes a connection whose write failed with close_connection_now, in the state it
 * is in. Closing its streams then starts queued requests and their answers ask for a write:
 * the write timer is linked again and h2o's assertion that it is not aborts keyfleetd (fixed
 * upstream by h2o PR #1859, unlinking it, and PR #2844, marking the connection closing first).
 * The guard does both, on the socket's write-complete callback, before h2o's runs. */
static void guard_on_write(h2o_socket_t *sock, const char *err);

/* Whether h2o's connection is still there: closing it closes the socket, which stops reading
 * or disposes of it (g->sock NULL), so the guard's read callback is no longer the socket's. */
static void guard_on_read(h2o_socket_t *sock, const char *err);
static bool conn_alive(kfd_h2guard *g) { return g->sock != NULL && g->sock->_cb.read == guard_on_read; }

/* After h2o may have started a write (the socket's write callback is h2o's): wrap it. */
static void hook_write(kfd_h2guard *g)
{
    h2o_socket_t *sock = g->sock;
    h2o_http2_conn_t *conn = sock->data;
    if (sock->_cb.write != NULL && sock->_cb.write != guard_on_write && conn->_write.buf_in_flight != NULL) {
        g->h2o_on_write = sock->_cb.write;
        sock->_cb.write = guard_on_write;
    }
}

static void guard_on_write(h2o_socket_t *sock, const char *err)
{
    kfd_h2guard *g = sock->on_close.data;
    h2o_http2_conn_t *conn = sock->data;
    h2o_socket_cb h2o_cb = g->h2o_on_write;
    g->h2o_on_write = NULL;
    if (err != NULL) {
        if (conn->state < H2O_HTTP2_CONN_STATE_IS_CLOSING)
            kf_log_info("h2_write_failed", "source=%s error=%s action=close", g->source, kf_log_q(err));
        conn->state = H2O_HTTP2_CONN_STATE_IS_CLOSING;
        if (h2o_timeout_is_linked(&conn->_write.timeout_entry))
            h2o_timeout_unlink(&conn->_write.timeout_entry);
        h2o_cb(sock, err); /* h2o closes the connection */
        return;
    }
    h2o_cb(sock, err);
    if (conn_alive(g)) {
        hook_write(g);
        count_streams(g, conn);
    }
}

static void guard_on_read(h2o_socket_t *sock, const char *err)
{
    kfd_h2guard *g = sock->on_close.data;
    g->h2o_on_read(sock, err);
    if (conn_alive(g)) {
        hook_write(g);
        count_streams(g, sock->data);
    }
}

/* h2o's deferred write (the zero timeout), wrapped likewise. */
static void guard_emit(h2o_timeout_entry_t *entry)
{
    h2o_http2_conn_t *conn = H2O_STRUCT_FROM_MEMBER(h2o_http2_conn_t, _write.timeout_entry, entry);
    kfd_h2guard *g = conn->sock->on_close.data;
    g->h2o_emit(entry);
    if (conn_alive(g)) {
        hook_write(g);
        count_streams(g, conn);
    }
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
        sock->on_close.cb != NULL || sock->_cb.read == NULL || sock->_cb.write != NULL ||
        conn->_write.timeout_entry.cb == NULL || h2o_timeout_is_linked(&conn->_write.timeout_entry)) {
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
    g->h2o_on_read = sock->_cb.read;
    sock->_cb.read = guard_on_read;
    g->h2o_emit = conn->_write.timeout_entry.cb;
    conn->_write.timeout_entry.cb = guard_emit;
    uint64_t now = uv_now(srv->loop);
    g->reset_budget = (kfd_h2guard_bucket){.tokens_milli = srv->cfg->limits.max_stream_resets * 1000u, .refilled_ms = now};
    g->control_budget = (kfd_h2guard_bucket){.tokens_milli = CONTROL_FRAMES * 1000u, .refilled_ms = now};
    if (sock->input->size != 0)
        sock->_cb.read(sock, NULL);
    return 0;
}

void kfd_h2guard_dispose(kfd_h2guard *g)
{
    if (g->srv != NULL) {
        g->srv->h2_open_streams -= g->open_counted;
        g->open_counted = 0;
    }
    for (size_t i = 0; g->streams != NULL && i < g->srv->cfg->limits.max_streams_per_connection; i++)
        release(g, &g->streams[i]);
    free(g->streams);
    g->streams = NULL;
}
