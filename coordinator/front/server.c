#include "front/server.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <h2o/http1.h>
#include <h2o/http2.h>
#include <h2o/socket/uv-binding.h>
#include <openssl/err.h>

#include "core/app.h"
#include "core/audit.h"
#include "core/cidr.h"
#include "front/h1guard.h"
#include "front/h2guard.h"
#include "front/router.h"
#include "kf_log.h"
#include "kf_tls.h"

#define DRAIN_POLL_MS 50
/* Descriptors kept for everything but client connections: the database and its WAL, logs,
 * audit sinks, Raft peers, KMS requests, libuv's own. */
#define RESERVED_FDS 128
#define ACCEPT_ERROR_LOG_MS 1000
/* The longest request body taken over HTTP/1.1: no RPC is served there (the router answers
 * failed_precondition), and h2o holds the whole body first, outside the HTTP/2 guard's body
 * budgets: at 16 x max_body_bytes, 100 connections held 110 MB. Longer bodies get h2o's 413. */
#define HTTP1_MAX_BODY 4096
/* Open probe_listen connections at most: h2o 2.2.5 holds a request head of up to about 417 KB
 * (H2O_MAX_REQLEN) per HTTP/1.1 connection until req_timeout, with no TLS or certificate asked
 * first (60 connections held 26 MB); a load balancer needs a few (review rev19 P2). */
#define PROBE_MAX_CONNECTIONS 64

typedef struct kfd_listener {
    uv_tcp_t tcp;
    kfd_server *srv;
    int port;
    bool open;
    bool probe; /* probe_listen: plain HTTP/1.1, /healthz and /readyz only (router.c) */
} kfd_listener;

/* Open connections per source address: an open-addressing table with twice as many slots as
 * connections may be open (a fixed 4096 slots refused every new address once 4096 addresses each
 * held one connection, half-open TLS handshakes included). A slot whose count fell to 0 keeps its
 * address, so the chains through it hold; it is reused only once the address asked for is known
 * to have no slot of its own further on.
 *
 * Each slot also holds its address's handshake bucket (limits.handshakes_per_source): a TLS 1.3
 * handshake costs keyfleetd an ECDHE exchange and a signature (about 1 ms of CPU) before any
 * certificate is checked, and the connection limits bound how many run at once, not how fast one
 * address may start them. A slot whose count fell to 0 stays while its bucket is refilling (so
 * connect-and-close does not reset it), and is emptied or reused once the bucket is full again. */
typedef struct source_slot {
    char addr[46];
    uint32_t count;
    uint32_t http1;   /* of them, TLS connections speaking HTTP/1.1 (h1guard.h) */
    uint64_t tokens;  /* handshakes left, in thousandths */
    uint64_t at_ms;   /* when tokens was last brought up to date */
} source_slot;
typedef struct kfd_source_table {
    size_t n; /* a power of two */
    uint64_t burst_milli, per_second;
    uint64_t swept_ms;   /* when refilled slots were last emptied (source_sweep) */
    bool refilling;      /* a slot with no connection is waiting for its bucket to fill */
    source_slot slots[];
} kfd_source_table;

static kfd_source_table *source_table_new(uint32_t max_connections, uint32_t burst, uint32_t per_second)
{
    size_t n = 4096;
    while (n < 2 * (size_t)max_connections)
        n *= 2;
    kfd_source_table *t = calloc(1, sizeof(*t) + n * sizeof(source_slot));
    if (t != NULL) {
        t->n = n;
        t->burst_milli = (uint64_t)burst * 1000;
        t->per_second = per_second;
    }
    return t;
}

/* Brings s's bucket up to now; true when it is full (it then carries no history). */
static bool source_refill(const kfd_source_table *t, source_slot *s, uint64_t now)
{
    if (now > s->at_ms) {
        uint64_t add = (now - s->at_ms) * t->per_second; /* thousandths: ms x per second */
        s->tokens = add >= t->burst_milli - s->tokens ? t->burst_milli : s->tokens + add;
        s->at_ms = now;
    }
    return s->tokens >= t->burst_milli;
}

/* Takes one handshake from s's bucket; false when it is empty. */
static bool source_take_handshake(const kfd_source_table *t, source_slot *s, uint64_t now)
{
    source_refill(t, s, now);
    if (s->tokens < 1000)
        return false;
    s->tokens -= 1000;
    return true;
}

/* A slot no connection holds and whose bucket is full: it may be emptied or reused. */
static bool source_idle(const kfd_source_table *t, source_slot *s, uint64_t now)
{
    return s->addr[0] != '\0' && s->count == 0 && source_refill(t, s, now);
}

typedef struct kfd_conn {
    uv_tcp_t tcp;
    kfd_server *srv;
    source_slot *slot;
    char addr[64]; /* the peer's address, which logs name (slot->addr may be an IPv6 prefix) */
    h2o_socket_t *sock;
    struct timeval connected_at;
    h2o_timeout_entry_t handshake_timeout; /* linked while the TLS handshake runs */
    kfd_h2guard h2;
    kfd_h1guard h1;
    struct kfd_conn *prev, *next; /* srv->conns */
    /* A write libuv refused, handed back to h2o later in the loop turn (uv_write below) */
    struct kfd_conn *next_refused;
    uv_write_t *refused_req;
    uv_write_cb refused_cb;
    int refused_status;
    bool probe; /* counted in srv->probe_connections */
    bool http1; /* counted in slot->http1 */
} kfd_conn;

typedef struct kfd_handler {
    h2o_handler_t super;
    kfd_server *srv;
} kfd_handler;

static source_slot *source_find(kfd_source_table *t, const char *addr, bool create, uint64_t now)
{
    uint32_t h = 2166136261u;
    for (const char *p = addr; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    source_slot *reuse = NULL, *spare = NULL;
    for (size_t i = 0; i < t->n; i++) {
        source_slot *s = &t->slots[(h + i) & (t->n - 1)];
        if (s->addr[0] == '\0') {
            if (reuse == NULL)
                reuse = s;
            break;
        }
        if (strcmp(s->addr, addr) == 0)
            return s;
        if (s->count == 0 && reuse == NULL && source_idle(t, s, now))
            reuse = s;
        if (s->count == 0 && spare == NULL)
            spare = s;
    }
    /* Every slot is taken and every bucket still refilling: the bucket's history is given up
     * rather than a new address refused (the table has twice max_connections slots). */
    if (reuse == NULL)
        reuse = spare;
    if (!create || reuse == NULL)
        return NULL;
    snprintf(reuse->addr, sizeof(reuse->addr), "%s", addr);
    reuse->count = 0;
    reuse->tokens = t->burst_milli;
    reuse->at_ms = now;
    return reuse;
}

/* Empties slot i and the slots before it while no connection holds them, their buckets are full
 * and no chain goes on through them (the slot after is empty). */
static void source_empty_back(kfd_source_table *t, size_t i, uint64_t now)
{
    for (size_t k = 0; k < t->n && source_idle(t, &t->slots[i], now) && t->slots[(i + 1) & (t->n - 1)].addr[0] == '\0';
         k++) {
        t->slots[i].addr[0] = '\0';
        i = (i - 1) & (t->n - 1);
    }
}

/* One connection from s's address fewer. A slot whose count falls to 0 is emptied when its bucket
 * is full and the slot after it is empty (no chain goes on through it), and so are the freed
 * slots before it, so addresses come and gone do not leave every lookup walking the whole table.
 * One whose bucket is still refilling is left to source_sweep. */
static void source_release(kfd_source_table *t, source_slot *s, uint64_t now)
{
    if (s == NULL || s->count == 0 || --s->count != 0)
        return;
    if (!source_refill(t, s, now))
        t->refilling = true;
    source_empty_back(t, (size_t)(s - t->slots), now);
}

/* At most once a second, while slots wait for their buckets to fill: empties those now full, from
 * the end of each chain back (walking down from an empty slot sees every chain's end first). */
static void source_sweep(kfd_source_table *t, uint64_t now)
{
    if (!t->refilling || now - t->swept_ms < 1000)
        return;
    t->swept_ms = now;
    size_t start = t->n;
    for (size_t i = 0; i < t->n && start == t->n; i++)
        if (t->slots[i].addr[0] == '\0')
            start = i;
    if (start == t->n)
        return;
    t->refilling = false;
    for (size_t k = 1; k < t->n; k++) {
        size_t i = (start - k) & (t->n - 1);
        source_slot *s = &t->slots[i];
        source_empty_back(t, i, now);
        if (s->addr[0] != '\0' && s->count == 0 && s->tokens < t->burst_milli)
            t->refilling = true;
    }
}

static void on_conn_close(uv_handle_t *handle)
{
    kfd_conn *conn = (kfd_conn *)((char *)handle - offsetof(kfd_conn, tcp));
    kfd_server *srv = conn->srv;
    for (kfd_conn **p = &srv->refused; *p != NULL; p = &(*p)->next_refused) {
        if (*p == conn) {
            *p = conn->next_refused;
            break;
        }
    }
    if (conn->prev != NULL)
        conn->prev->next = conn->next;
    else
        srv->conns = conn->next;
    if (conn->next != NULL)
        conn->next->prev = conn->prev;
    if (h2o_timeout_is_linked(&conn->handshake_timeout))
        h2o_timeout_unlink(&conn->handshake_timeout);
    kfd_h2guard_dispose(&conn->h2);
    if (conn->http1)
        conn->slot->http1--;
    source_release(srv->sources, conn->slot, uv_now(srv->loop));
    srv->connections--;
    if (conn->probe)
        srv->probe_connections--;
    free(conn);
}

static void on_rejected_close(uv_handle_t *handle)
{
    free((char *)handle - offsetof(kfd_conn, tcp));
}

static void peer_address(uv_tcp_t *tcp, char *buf, size_t size)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    buf[0] = '\0';
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, buf, size);
    else if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, buf, size);
}

static void on_handshake_timeout(h2o_timeout_entry_t *entry)
{
    kfd_conn *conn = (kfd_conn *)((char *)entry - offsetof(kfd_conn, handshake_timeout));
    h2o_socket_close(conn->sock);
}

/* h2o_accept's TLS path, so that an HTTP/2 connection goes through the guard (front/h2guard.h)
 * from its first frame: the handshake under h2o's handshake timeout, then HTTP/2 or HTTP/1.1
 * by ALPN. */
static void on_handshake(h2o_socket_t *sock, const char *err)
{
    kfd_conn *conn = sock->data;
    sock->data = NULL;
    h2o_timeout_unlink(&conn->handshake_timeout);
    if (err != NULL) {
        h2o_socket_close(sock);
        return;
    }
    h2o_iovec_t proto = h2o_socket_ssl_get_selected_protocol(sock);
    for (const h2o_iovec_t *id = h2o_http2_alpn_protocols; id->len != 0; id++) {
        if (proto.len == id->len && memcmp(proto.base, id->base, proto.len) == 0) {
            (void)kfd_h2guard_accept(&conn->h2, conn->srv, sock, conn->addr, conn->connected_at);
            return;
        }
    }
    /* HTTP/1.1 (ALPN http/1.1, or none): counted per source apart (h1guard.h). */
    kfd_server *srv = conn->srv;
    if (conn->slot->http1 >= KFD_H1_PER_SOURCE) {
        srv->metrics.connections_rejected++;
        uint64_t now = uv_now(srv->loop);
        if (srv->http1_rejected_logged_ms == 0 || now - srv->http1_rejected_logged_ms >= ACCEPT_ERROR_LOG_MS) {
            kf_log_warn("connection_rejected", "source=%s reason=http1_per_source limit=%d suppressed=%llu",
                        conn->addr, KFD_H1_PER_SOURCE, (unsigned long long)srv->http1_rejected_suppressed);
            srv->http1_rejected_logged_ms = now;
            srv->http1_rejected_suppressed = 0;
        } else {
            srv->http1_rejected_suppressed++;
        }
        h2o_socket_close(sock);
        return;
    }
    conn->slot->http1++;
    conn->http1 = true;
    kfd_h1guard_accept(&conn->h1, srv, &srv->http1_accept, sock, conn->addr, conn->connected_at);
}

static void on_accept(uv_stream_t *listener, int status)
{
    kfd_listener *l = (kfd_listener *)listener;
    kfd_server *srv = l->srv;
    if (status != 0) {
        /* EMFILE/ENFILE: libuv accepts and closes the waiting connection (its spare descriptor),
         * so this is called once per refused client: log once a second, count each. */
        static uint64_t suppressed;
        srv->metrics.accept_errors++;
        uint64_t now = uv_now(srv->loop);
        if (srv->accept_errors_logged_ms == 0 || now - srv->accept_errors_logged_ms >= ACCEPT_ERROR_LOG_MS) {
            kf_log_warn("accept_failed", "error=%s suppressed=%llu open_connections=%u", uv_strerror(status),
                        (unsigned long long)suppressed, srv->connections);
            srv->accept_errors_logged_ms = now;
            suppressed = 0;
        } else {
            suppressed++;
        }
        return;
    }
    kfd_conn *conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return;
    conn->srv = srv;
    uv_tcp_init(srv->loop, &conn->tcp);
    if (uv_accept(listener, (uv_stream_t *)&conn->tcp) != 0) {
        uv_close((uv_handle_t *)&conn->tcp, on_rejected_close);
        return;
    }
    char addr[64];
    peer_address(&conn->tcp, addr, sizeof(addr));
    uint64_t now = uv_now(srv->loop);
    source_sweep(srv->sources, now);
    /* Counted per address, or per IPv6 prefix (limits.ipv6_source_prefix); logs name the address. */
    char key[sizeof(((source_slot *)0)->addr)];
    kfd_source_key(addr, srv->cfg->limits.ipv6_source_prefix, key, sizeof(key));
    source_slot *slot = source_find(srv->sources, key, true, now);
    const kfd_limits *lim = &srv->cfg->limits;
    bool probe_full = l->probe && srv->probe_connections >= PROBE_MAX_CONNECTIONS;
    if (srv->draining || slot == NULL || slot->count >= lim->max_connections_per_source ||
        srv->connections >= lim->max_connections || probe_full) {
        srv->metrics.connections_rejected++;
        kf_log_warn("connection_rejected", "source=%s reason=%s", addr,
                    srv->draining ? "draining"
                    : slot == NULL || slot->count >= lim->max_connections_per_source ? "per_source_limit"
                    : probe_full                                                     ? "probe_limit"
                                                                                     : "connection_limit");
        uv_close((uv_handle_t *)&conn->tcp, on_rejected_close);
        return;
    }
    /* Before any TLS work: the handshake is what costs. Logged once a second (a flood would
     * otherwise write a line per connection), each one counted. */
    if (!l->probe && !source_take_handshake(srv->sources, slot, now)) {
        srv->metrics.connections_rejected++;
        srv->metrics.handshakes_rate_limited++;
        if (srv->handshake_limit_logged_ms == 0 || now - srv->handshake_limit_logged_ms >= ACCEPT_ERROR_LOG_MS) {
            kf_log_warn("connection_rejected", "source=%s reason=handshake_rate burst=%u per_second=%u suppressed=%llu",
                        addr, lim->handshakes_per_source.burst, lim->handshakes_per_source.per_second,
                        (unsigned long long)srv->handshake_limit_suppressed);
            srv->handshake_limit_logged_ms = now;
            srv->handshake_limit_suppressed = 0;
        } else {
            srv->handshake_limit_suppressed++;
        }
        uv_close((uv_handle_t *)&conn->tcp, on_rejected_close);
        return;
    }
    slot->count++;
    conn->slot = slot;
    snprintf(conn->addr, sizeof(conn->addr), "%s", addr);
    conn->next = srv->conns;
    if (srv->conns != NULL)
        srv->conns->prev = conn;
    srv->conns = conn;
    srv->connections++;
    srv->metrics.connections_accepted++;
    uv_tcp_nodelay(&conn->tcp, 1);
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&conn->tcp, on_conn_close);
    conn->sock = sock;
    sock->data = conn;
    gettimeofday(&conn->connected_at, NULL);
    conn->handshake_timeout.cb = on_handshake_timeout;
    if (l->probe) { /* no TLS: the router answers such a connection as a probe only */
        conn->probe = true;
        srv->probe_connections++;
        /* HTTP/1.1's context: its 4 KiB body limit, and no HTTP/2 (an h2c upgrade or prior
         * knowledge would bypass the h2 guard's budgets; review rev19 P1). */
        kfd_h1guard_accept(&conn->h1, srv, &srv->http1_accept, sock, addr, conn->connected_at);
        return;
    }
    h2o_timeout_link(srv->loop, &srv->ctx.handshake_timeout, &conn->handshake_timeout);
    h2o_socket_ssl_handshake(sock, srv->accept_ctx.ssl_ctx, NULL, on_handshake);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    /* An HTTP/1.1 request with a body ends its connection: the HTTP/1.1 guard cannot tell where
     * a body ends, so it does not check heads pipelined behind one (front/h1guard.c, rev18c F1).
     * h2o 2.2.5 was seen to close such a connection already (h1guard_pipeline passes without
     * this line, so no mutant covers it): this says so rather than rely on it. */
    if (req->version < 0x200 && req->entity.base != NULL)
        req->http1_is_persistent = 0;
    return kfd_router_on_req(((kfd_handler *)self)->srv, req);
}

/* Counts handshakes; the SSL's ex-data has no room for the server, so a static is used
 * (one server per process). */
static kfd_server *the_server;

/* Hands the writes libuv refused back to h2o (uv_write below); a callback that writes again and is
 * refused again is handed back in the same pass. A connection already closing has been disposed of
 * by h2o, which wants no callback then. */
static void on_refused_writes(uv_check_t *check)
{
    kfd_server *srv = check->data;
    while (srv->refused != NULL) {
        kfd_conn *conn = srv->refused;
        srv->refused = conn->next_refused;
        conn->next_refused = NULL;
        uv_write_cb cb = conn->refused_cb;
        conn->refused_cb = NULL;
        if (!uv_is_closing((uv_handle_t *)&conn->tcp))
            cb(conn->refused_req, conn->refused_status);
    }
    uv_check_stop(check);
}

/* h2o 2.2.5 ignores what uv_write returns (lib/common/socket/uv-binding.c.h, do_write): a write
 * that libuv refuses at once never calls back, and h2o waits for that callback before it closes
 * anything. libuv refuses every write on a stream whose read failed (UV_EPIPE: a client's TCP
 * reset clears the stream's writable flag), and h2o starts writes after such a read: the HTTP/2
 * frames queued for the loop's zero timeout, or TLS's close_notify as it closes the socket. Such
 * a connection stayed open until keyfleetd stopped (a PING flood ended by a reset, on a loaded
 * server that read the pings and the reset in one go). keyfleetd's uv_write, which the dynamic
 * linker finds before libuv's, hands a refusal on a client connection back to h2o the way libuv
 * reports a write that fails later: through the callback, in the same loop turn's check phase,
 * before the turn closes any handle (h2o's socket is still there), never from within the call. */
int uv_write(uv_write_t *req, uv_stream_t *handle, const uv_buf_t bufs[], unsigned int nbufs, uv_write_cb cb)
{
    static int (*libuv_write)(uv_write_t *, uv_stream_t *, const uv_buf_t[], unsigned int, uv_write_cb);
    if (libuv_write == NULL)
        *(void **)&libuv_write = dlsym(RTLD_NEXT, "uv_write");
    if (libuv_write == NULL)
        return UV_ENOSYS;
    int r = libuv_write(req, handle, bufs, nbufs, cb);
    kfd_server *srv = the_server;
    if (r == 0 || cb == NULL || srv == NULL || handle->loop != srv->loop || srv->refused_writes.loop == NULL)
        return r;
    kfd_conn *conn = srv->conns;
    while (conn != NULL && (uv_stream_t *)&conn->tcp != handle)
        conn = conn->next;
    if (conn == NULL || conn->refused_cb != NULL) /* not h2o's; or a second one, which h2o never starts */
        return r;
    kf_log_info("write_refused", "source=%s error=%s action=close", conn->addr, uv_err_name(r));
    srv->metrics.writes_refused++;
    conn->refused_req = req;
    conn->refused_cb = cb;
    conn->refused_status = r;
    conn->next_refused = srv->refused;
    srv->refused = conn;
    uv_check_start(&srv->refused_writes, on_refused_writes);
    return r;
}

static void on_tls_info(const SSL *ssl, int where, int ret)
{
    (void)ssl;
    if (the_server == NULL)
        return;
    if (where & SSL_CB_HANDSHAKE_DONE) {
        the_server->metrics.tls_handshakes_ok++;
    } else if ((where & SSL_CB_ALERT) && (where & SSL_CB_WRITE) && (ret >> 8) == SSL3_AL_FATAL) {
        the_server->metrics.tls_handshakes_failed++;
        int alert = ret & 0xff;
        /* OpenSSL 3.0 has no name for TLS 1.3's certificate_required (116). */
        const char *name = alert == 116 ? "certificate required" : SSL_alert_desc_string_long(ret);
        if (alert == 116)
            the_server->metrics.auth_failures++;
        kf_log_info("tls_handshake_failed", "alert=%d reason=%s", alert, kf_log_q(name));
    }
}

static int on_verify(int preverify_ok, X509_STORE_CTX *store)
{
    if (!preverify_ok && the_server != NULL) {
        the_server->metrics.auth_failures++;
        int e = X509_STORE_CTX_get_error(store);
        const char *why = X509_verify_cert_error_string(e);
        /* The subject is what the client claimed, unverified: recorded as such. */
        char subject[128] = "";
        X509 *cert = X509_STORE_CTX_get_current_cert(store);
        if (cert != NULL)
            X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, subject, sizeof(subject));
        kf_log_warn("tls_client_rejected", "reason=%s depth=%d subject=%s", kf_log_q(why),
                    X509_STORE_CTX_get_error_depth(store), kf_log_q(subject));
        char reason[192];
        snprintf(reason, sizeof(reason), "client certificate rejected: %s", why);
        kfd_audit_auth_failure(the_server->app, (kfd_actor){0}, subject, reason);
    }
    return preverify_ok;
}

static int build_ssl_ctx(kfd_server *srv, SSL_CTX **ret, kf_err *err)
{
    kf_tls_opts opts = {
        .role = KF_TLS_SERVER,
        .cert_file = srv->cfg->tls_cert,
        .key_file = srv->cfg->tls_key,
        .ca_file = srv->cfg->tls_ca,
        .peer_mode = srv->cfg->client_auth,
        .server_accept_http11 = true,
    };
    SSL_CTX *ctx = NULL;
    int r = kf_tls_ctx_new(&opts, &ctx, err);
    if (r != 0)
        return r;
    SSL_CTX_set_verify(ctx, SSL_CTX_get_verify_mode(ctx), on_verify);
    SSL_CTX_set_info_callback(ctx, on_tls_info);
    kfd_ssl_generation *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        SSL_CTX_free(ctx);
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    g->ctx = ctx;
    g->next = srv->ssl_generations;
    srv->ssl_generations = g;
    *ret = ctx;
    return 0;
}

int kfd_server_reload_tls(kfd_server *srv, kf_err *err)
{
    SSL_CTX *ctx = NULL;
    int r = build_ssl_ctx(srv, &ctx, err);
    if (r != 0)
        return r;
    /* Live connections keep the context they started with; new ones get this one. */
    srv->accept_ctx.ssl_ctx = ctx;
    srv->metrics.tls_reloads++;
    return 0;
}

/* Fits the connection limits to the descriptors the process may open: the soft limit is raised
 * to the hard one, max_connections lowered to what is left after RESERVED_FDS (a connection
 * past it would fail in accept, or worse, in the database), and the per-source limit to half of
 * that, so one address cannot take every connection. */
static void fit_fd_limits(kfd_limits *lim)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            rl.rlim_cur = was;
    }
    uint64_t nofile = rl.rlim_cur == RLIM_INFINITY ? UINT32_MAX : (uint64_t)rl.rlim_cur;
    uint64_t room = nofile > 2 * RESERVED_FDS ? nofile - RESERVED_FDS : nofile / 2;
    if (lim->max_connections > room) {
        kf_log_warn("connection_limit_lowered", "max_connections=%llu configured=%u nofile=%llu reserved=%d",
                    (unsigned long long)room, lim->max_connections, (unsigned long long)nofile, RESERVED_FDS);
        lim->max_connections = (uint32_t)(room > 0 ? room : 1);
    }
    uint32_t half = lim->max_connections > 1 ? lim->max_connections / 2 : 1;
    if (lim->max_connections_per_source > half) {
        kf_log_warn("connection_limit_lowered", "max_connections_per_source=%u configured=%u max_connections=%u", half,
                    lim->max_connections_per_source, lim->max_connections);
        lim->max_connections_per_source = half;
    }
    kf_log_info("connection_limits", "max_connections=%u max_connections_per_source=%u nofile=%llu",
                lim->max_connections, lim->max_connections_per_source, (unsigned long long)nofile);
}

/* One h2o configuration, with the router as its only handler, and its context on the loop. */
static void configure_h2o(kfd_server *srv, h2o_globalconf_t *conf, h2o_context_t *ctx, size_t max_body)
{
    const kfd_limits *lim = &srv->cfg->limits;
    h2o_config_init(conf);
    conf->max_request_entity_size = max_body;
    conf->http2.max_concurrent_requests_per_connection = lim->max_streams_per_connection;
    conf->http2.idle_timeout = lim->idle_timeout_ms;
    conf->http1.req_timeout = lim->idle_timeout_ms;
    conf->http2.graceful_shutdown_timeout = lim->shutdown_grace_ms;
    conf->server_name = h2o_iovec_init(H2O_STRLIT("keyfleetd"));
    h2o_hostconf_t *host = h2o_config_register_host(conf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    kfd_handler *handler = (kfd_handler *)h2o_create_handler(path, sizeof(*handler));
    handler->super.on_req = on_req;
    handler->srv = srv;
    h2o_context_init(ctx, srv->loop, conf);
}

int kfd_server_init(kfd_server *srv, uv_loop_t *loop, kfd_config *cfg, kf_err *err)
{
    memset(srv, 0, sizeof(*srv));
    srv->loop = loop;
    srv->cfg = cfg;
    srv->started = time(NULL);
    the_server = srv;
    fit_fd_limits(&cfg->limits);
    srv->sources = source_table_new(cfg->limits.max_connections, cfg->limits.handshakes_per_source.burst,
                                    cfg->limits.handshakes_per_source.per_second);
    if (srv->sources == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");

    /* h2o buffers whole bodies and resets HTTP/2 streams past this size; keep it well above the
     * protocol limit so oversized bodies reach the router and get a proper resource_exhausted. */
    configure_h2o(srv, &srv->globalconf, &srv->ctx, cfg->limits.max_body_bytes * 16u);
    configure_h2o(srv, &srv->http1_conf, &srv->http1_ctx, HTTP1_MAX_BODY);
    /* HTTP/2 only through ALPN h2 and the h2 guard: no "Upgrade: h2c", no plaintext preface. */
    srv->http1_conf.http1.upgrade_to_http2 = 0;

    SSL_CTX *ctx = NULL;
    int r = build_ssl_ctx(srv, &ctx, err);
    if (r != 0)
        return r;
    srv->accept_ctx.ctx = &srv->ctx;
    srv->accept_ctx.hosts = srv->globalconf.hosts;
    srv->accept_ctx.ssl_ctx = ctx;
    srv->http1_accept.ctx = &srv->http1_ctx;
    srv->http1_accept.hosts = srv->http1_conf.hosts;
    return 0;
}

static int parse_listen(const char *spec, struct sockaddr_storage *ss, kf_err *err)
{
    char host[128];
    const char *colon = strrchr(spec, ':');
    size_t hlen = (size_t)(colon - spec);
    if (hlen >= sizeof(host))
        return kf_err_set(err, -EINVAL, "listen address too long: %s", spec);
    memcpy(host, spec, hlen);
    host[hlen] = '\0';
    int port = atoi(colon + 1);
    if (host[0] == '[' && hlen >= 2 && host[hlen - 1] == ']') {
        host[hlen - 1] = '\0';
        if (uv_ip6_addr(host + 1, port, (struct sockaddr_in6 *)ss) == 0)
            return 0;
    } else if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) {
        return 0;
    }
    return kf_err_set(err, -EINVAL, "listen address '%s' needs a numeric IPv4 or [IPv6] host", spec);
}

static int write_port_file(kfd_server *srv, kf_err *err)
{
    const char *path = srv->cfg->port_file;
    if (path == NULL)
        return 0;
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: %s", tmp, strerror(errno));
    for (size_t i = 0; i < srv->n_listeners; i++)
        fprintf(f, "%d\n", srv->listeners[i].port);
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        return kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
    return 0;
}

int kfd_server_listen(kfd_server *srv, kf_err *err)
{
    const kf_strlist *rpc = &srv->cfg->listen, *probe = &srv->cfg->probe_listen;
    srv->listeners = calloc(rpc->n + probe->n, sizeof(*srv->listeners));
    if (srv->listeners == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < rpc->n + probe->n; i++) {
        bool is_probe = i >= rpc->n;
        const char *spec = is_probe ? probe->v[i - rpc->n] : rpc->v[i];
        kfd_listener *li = &srv->listeners[i];
        struct sockaddr_storage ss;
        int r = parse_listen(spec, &ss, err);
        if (r != 0)
            return r;
        li->srv = srv;
        li->probe = is_probe;
        uv_tcp_init(srv->loop, &li->tcp);
        li->open = true;
        srv->n_listeners++;
        if ((r = uv_tcp_bind(&li->tcp, (struct sockaddr *)&ss, 0)) != 0 ||
            (r = uv_listen((uv_stream_t *)&li->tcp, 1024, on_accept)) != 0)
            return kf_err_set(err, r, "listen on %s: %s", spec, uv_strerror(r));
        struct sockaddr_storage bound;
        int len = sizeof(bound);
        uv_tcp_getsockname(&li->tcp, (struct sockaddr *)&bound, &len);
        li->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                     : ((struct sockaddr_in *)&bound)->sin_port);
        kf_log_info("listening", "addr=%s port=%d%s", spec, li->port, is_probe ? " probe=yes" : "");
    }
    return write_port_file(srv, err);
}

int kfd_server_port(const kfd_server *srv, size_t i)
{
    return i < srv->n_listeners ? srv->listeners[i].port : 0;
}

static void on_listener_closed(uv_handle_t *h) { (void)h; }

static void close_listeners(kfd_server *srv)
{
    for (size_t i = 0; i < srv->n_listeners; i++) {
        if (srv->listeners[i].open) {
            srv->listeners[i].open = false;
            uv_close((uv_handle_t *)&srv->listeners[i].tcp, on_listener_closed);
        }
    }
}

static void finish(kfd_server *srv)
{
    uv_timer_stop(&srv->drain_timer);
    uv_signal_stop(&srv->sig_term);
    uv_signal_stop(&srv->sig_int);
    uv_signal_stop(&srv->sig_hup);
    uv_stop(srv->loop);
}

static void on_drain_tick(uv_timer_t *t)
{
    kfd_server *srv = t->data;
    if (srv->connections == 0) {
        kf_log_info("stopped", "reason=drained");
        finish(srv);
    } else if (uv_now(srv->loop) >= srv->drain_deadline) {
        kf_log_warn("stopped", "reason=grace_expired open_connections=%u", srv->connections);
        finish(srv);
    }
}

static void on_stop_signal(uv_signal_t *sig, int signum)
{
    kfd_server *srv = sig->data;
    if (srv->draining)
        return;
    srv->draining = true;
    kf_log_info("stopping", "signal=%s open_connections=%u", signum == SIGTERM ? "TERM" : "INT", srv->connections);
    close_listeners(srv);
    /* GOAWAY to HTTP/2 clients, close idle HTTP/1 ones; in-flight requests finish. */
    h2o_context_request_shutdown(&srv->ctx);
    h2o_context_request_shutdown(&srv->http1_ctx);
    srv->drain_deadline = uv_now(srv->loop) + srv->cfg->limits.shutdown_grace_ms;
    uv_timer_start(&srv->drain_timer, on_drain_tick, 0, DRAIN_POLL_MS);
}

static void on_hup(uv_signal_t *sig, int signum)
{
    (void)signum;
    kfd_server *srv = sig->data;
    kf_err err = {0};
    kfd_app_reopen_sinks(srv->app);
    if (kfd_server_reload_tls(srv, &err) != 0)
        kf_log_error("tls_reload_failed", "error=%s keeping=previous", kf_log_q(err.msg));
    else
        kf_log_info("tls_reloaded", "cert=%s", kf_log_q(srv->cfg->tls_cert));
}

static void on_log_flush(uv_prepare_t *h)
{
    (void)h;
    kf_log_flush();
}

int kfd_server_run(kfd_server *srv)
{
    /* A release logs a line; one write per loop turn instead of one per line. */
    uv_prepare_init(srv->loop, &srv->log_flush);
    uv_prepare_start(&srv->log_flush, on_log_flush);
    uv_unref((uv_handle_t *)&srv->log_flush);
    uv_check_init(srv->loop, &srv->refused_writes);
    srv->refused_writes.data = srv;
    uv_unref((uv_handle_t *)&srv->refused_writes);
    kf_log_set_buffered(true);
    uv_signal_init(srv->loop, &srv->sig_term);
    uv_signal_init(srv->loop, &srv->sig_int);
    uv_signal_init(srv->loop, &srv->sig_hup);
    uv_timer_init(srv->loop, &srv->drain_timer);
    srv->sig_term.data = srv->sig_int.data = srv->sig_hup.data = srv->drain_timer.data = srv;
    uv_signal_start(&srv->sig_term, on_stop_signal, SIGTERM);
    uv_signal_start(&srv->sig_int, on_stop_signal, SIGINT);
    uv_signal_start(&srv->sig_hup, on_hup, SIGHUP);
    uv_run(srv->loop, UV_RUN_DEFAULT);
    kf_log_set_buffered(false);
    return srv->exit_code;
}

static void on_handle_closed(uv_handle_t *h) { (void)h; }

void kfd_server_dispose(kfd_server *srv)
{
    close_listeners(srv);
    uv_handle_t *handles[] = {(uv_handle_t *)&srv->sig_term, (uv_handle_t *)&srv->sig_int,
                              (uv_handle_t *)&srv->sig_hup, (uv_handle_t *)&srv->drain_timer,
                              (uv_handle_t *)&srv->log_flush, (uv_handle_t *)&srv->refused_writes};
    for (size_t i = 0; i < sizeof(handles) / sizeof(handles[0]); i++)
        if (handles[i]->loop != NULL && !uv_is_closing(handles[i]))
            uv_close(handles[i], on_handle_closed);
    uv_run(srv->loop, UV_RUN_NOWAIT);
    /* request_shutdown leaves its timer armed; h2o asserts every timeout is empty on dispose. */
    h2o_context_t *ctxs[] = {&srv->ctx, &srv->http1_ctx};
    for (size_t i = 0; i < 2; i++) {
        if (h2o_timeout_is_linked(&ctxs[i]->http2._graceful_shutdown_timeout))
            h2o_timeout_unlink(&ctxs[i]->http2._graceful_shutdown_timeout);
        h2o_context_dispose(ctxs[i]);
    }
    h2o_config_dispose(&srv->globalconf);
    h2o_config_dispose(&srv->http1_conf);
    while (srv->ssl_generations != NULL) {
        kfd_ssl_generation *g = srv->ssl_generations;
        srv->ssl_generations = g->next;
        SSL_CTX_free(g->ctx);
        free(g);
    }
    free(srv->listeners);
    free(srv->sources);
    the_server = NULL;
}
