#include "front/server.h"

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
#include "front/h2guard.h"
#include "front/router.h"
#include "kf_log.h"
#include "kf_tls.h"

#define DRAIN_POLL_MS 50
/* Descriptors kept for everything but client connections: the database and its WAL, logs,
 * audit sinks, Raft peers, KMS requests, libuv's own. */
#define RESERVED_FDS 128
#define ACCEPT_ERROR_LOG_MS 1000

typedef struct kfd_listener {
    uv_tcp_t tcp;
    kfd_server *srv;
    int port;
    bool open;
    bool probe; /* probe_listen: plain HTTP/1.1, /healthz and /readyz only (router.c) */
} kfd_listener;

/* Open connections per source address: a small open-addressing table. */
#define SOURCE_SLOTS 4096
typedef struct source_slot {
    char addr[46];
    uint32_t count;
} source_slot;
typedef struct kfd_source_table {
    source_slot slots[SOURCE_SLOTS];
} kfd_source_table;

typedef struct kfd_conn {
    uv_tcp_t tcp;
    kfd_server *srv;
    source_slot *slot;
    h2o_socket_t *sock;
    struct timeval connected_at;
    h2o_timeout_entry_t handshake_timeout; /* linked while the TLS handshake runs */
    kfd_h2guard h2;
} kfd_conn;

typedef struct kfd_handler {
    h2o_handler_t super;
    kfd_server *srv;
} kfd_handler;

static source_slot *source_find(kfd_source_table *t, const char *addr, bool create)
{
    uint32_t h = 2166136261u;
    for (const char *p = addr; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    for (size_t i = 0; i < SOURCE_SLOTS; i++) {
        source_slot *s = &t->slots[(h + i) % SOURCE_SLOTS];
        if (strcmp(s->addr, addr) == 0)
            return s;
        if (s->addr[0] == '\0' || (create && s->count == 0)) {
            if (!create)
                return NULL;
            snprintf(s->addr, sizeof(s->addr), "%s", addr);
            s->count = 0;
            return s;
        }
    }
    return NULL;
}

static void on_conn_close(uv_handle_t *handle)
{
    kfd_conn *conn = (kfd_conn *)((char *)handle - offsetof(kfd_conn, tcp));
    kfd_server *srv = conn->srv;
    if (h2o_timeout_is_linked(&conn->handshake_timeout))
        h2o_timeout_unlink(&conn->handshake_timeout);
    kfd_h2guard_dispose(&conn->h2);
    if (conn->slot != NULL && conn->slot->count > 0)
        conn->slot->count--;
    srv->connections--;
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
            (void)kfd_h2guard_accept(&conn->h2, conn->srv, sock, conn->slot->addr, conn->connected_at);
            return;
        }
    }
    h2o_http1_accept(&conn->srv->accept_ctx, sock, conn->connected_at);
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
    source_slot *slot = source_find(srv->sources, addr, true);
    const kfd_limits *lim = &srv->cfg->limits;
    if (srv->draining || slot == NULL || slot->count >= lim->max_connections_per_source ||
        srv->connections >= lim->max_connections) {
        srv->metrics.connections_rejected++;
        kf_log_warn("connection_rejected", "source=%s reason=%s", addr,
                    srv->draining ? "draining" : slot == NULL || slot->count >= lim->max_connections_per_source
                                                     ? "per_source_limit"
                                                     : "connection_limit");
        uv_close((uv_handle_t *)&conn->tcp, on_rejected_close);
        return;
    }
    slot->count++;
    conn->slot = slot;
    srv->connections++;
    srv->metrics.connections_accepted++;
    uv_tcp_nodelay(&conn->tcp, 1);
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&conn->tcp, on_conn_close);
    conn->sock = sock;
    sock->data = conn;
    gettimeofday(&conn->connected_at, NULL);
    conn->handshake_timeout.cb = on_handshake_timeout;
    if (l->probe) { /* no TLS: the router answers such a connection as a probe only */
        h2o_http1_accept(&srv->accept_ctx, sock, conn->connected_at);
        return;
    }
    h2o_timeout_link(srv->loop, &srv->ctx.handshake_timeout, &conn->handshake_timeout);
    h2o_socket_ssl_handshake(sock, srv->accept_ctx.ssl_ctx, NULL, on_handshake);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    return kfd_router_on_req(((kfd_handler *)self)->srv, req);
}

/* Counts handshakes; the SSL's ex-data has no room for the server, so a static is used
 * (one server per process). */
static kfd_server *the_server;

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

int kfd_server_init(kfd_server *srv, uv_loop_t *loop, kfd_config *cfg, kf_err *err)
{
    memset(srv, 0, sizeof(*srv));
    srv->loop = loop;
    srv->cfg = cfg;
    srv->started = time(NULL);
    srv->sources = calloc(1, sizeof(*srv->sources));
    if (srv->sources == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    the_server = srv;
    fit_fd_limits(&cfg->limits);

    h2o_config_init(&srv->globalconf);
    /* h2o buffers whole bodies and resets streams past this size; keep it well above the protocol
     * limit so oversized bodies reach the router and get a proper resource_exhausted. */
    srv->globalconf.max_request_entity_size = cfg->limits.max_body_bytes * 16u;
    srv->globalconf.http2.max_concurrent_requests_per_connection = cfg->limits.max_streams_per_connection;
    srv->globalconf.http2.idle_timeout = cfg->limits.idle_timeout_ms;
    srv->globalconf.http1.req_timeout = cfg->limits.idle_timeout_ms;
    srv->globalconf.http2.graceful_shutdown_timeout = cfg->limits.shutdown_grace_ms;
    srv->globalconf.server_name = h2o_iovec_init(H2O_STRLIT("keyfleetd"));
    h2o_hostconf_t *host = h2o_config_register_host(&srv->globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    kfd_handler *handler = (kfd_handler *)h2o_create_handler(path, sizeof(*handler));
    handler->super.on_req = on_req;
    handler->srv = srv;
    h2o_context_init(&srv->ctx, loop, &srv->globalconf);

    SSL_CTX *ctx = NULL;
    int r = build_ssl_ctx(srv, &ctx, err);
    if (r != 0)
        return r;
    srv->accept_ctx.ctx = &srv->ctx;
    srv->accept_ctx.hosts = srv->globalconf.hosts;
    srv->accept_ctx.ssl_ctx = ctx;
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
                              (uv_handle_t *)&srv->log_flush};
    for (size_t i = 0; i < sizeof(handles) / sizeof(handles[0]); i++)
        if (handles[i]->loop != NULL && !uv_is_closing(handles[i]))
            uv_close(handles[i], on_handle_closed);
    uv_run(srv->loop, UV_RUN_NOWAIT);
    /* request_shutdown leaves its timer armed; h2o asserts every timeout is empty on dispose. */
    if (h2o_timeout_is_linked(&srv->ctx.http2._graceful_shutdown_timeout))
        h2o_timeout_unlink(&srv->ctx.http2._graceful_shutdown_timeout);
    h2o_context_dispose(&srv->ctx);
    h2o_config_dispose(&srv->globalconf);
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
