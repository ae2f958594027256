/* keyfleetd's server: h2o on libuv, listeners with per-source connection limits, signals
 * (TERM/INT drain and exit 0, HUP reloads certificates); every request goes to the router. */
#ifndef KFD_SERVER_H
#define KFD_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <h2o.h>
#include <uv.h>

#include "config/config.h"
#include "front/metrics.h"
#include "front/peer.h"

typedef struct kfd_server kfd_server;
struct kfd_method;

struct kfd_server {
    uv_loop_t *loop;
    kfd_config *cfg;
    h2o_globalconf_t globalconf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    /* HTTP/1.1 connections (ALPN http/1.1: health checks and scrapers; RPCs need HTTP/2) have
     * their own h2o configuration: h2o reads a whole HTTP/1.1 body before the router sees it,
     * and the HTTP/2 guard's body budgets do not reach it, so a body there is kept short. */
    h2o_globalconf_t http1_conf;
    h2o_context_t http1_ctx;
    h2o_accept_ctx_t http1_accept;
    struct kfd_listener *listeners;
    size_t n_listeners;
    kfd_ssl_generation *ssl_generations; /* every SSL_CTX ever served, newest first (peer.h) */
    struct kfd_source_table *sources;
    uint32_t connections;
    uint32_t probe_connections; /* of them, on probe_listen (bounded apart, server.c) */
    uint64_t h2_body_bytes; /* request body bytes h2o holds for bodies still arriving (h2guard.h) */
    uint64_t h2_open_streams; /* HTTP/2 streams open on all connections, as the guards last saw them */
    uint64_t accept_errors_logged_ms; /* when an accept error was last logged (rate limit) */
    uint64_t handshake_limit_logged_ms; /* ... and a connection past its handshake rate */
    uint64_t handshake_limit_suppressed; /* past it since then, not logged */
    uint64_t http1_refused_logged_ms, http1_refused_suppressed;   /* http1_head_refused (h1guard.c) */
    uint64_t http1_rejected_logged_ms, http1_rejected_suppressed; /* reason=http1_per_source */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t drain_timer;
    uv_prepare_t log_flush; /* writes the turn's log lines before the loop waits */
    uv_check_t refused_writes;   /* hands writes libuv refused back to h2o (server.c, uv_write) */
    struct kfd_conn *conns;      /* every client connection */
    struct kfd_conn *refused;    /* those with a refused write to hand back this loop turn */
    uint64_t drain_deadline;
    bool draining;
    int exit_code;
    time_t started;
    kfd_metrics metrics;
    struct kfd_app *app; /* store, KMS, policy (app.h) */
    const struct kfd_method *methods; /* bound by main (kfd_router_bind) */
    size_t n_methods;
};

int kfd_server_init(kfd_server *srv, uv_loop_t *loop, kfd_config *cfg, kf_err *err);
/* Binds the listeners and writes the port file. */
int kfd_server_listen(kfd_server *srv, kf_err *err);
/* Runs until a signal stops it; returns the process exit code. */
int kfd_server_run(kfd_server *srv);
void kfd_server_dispose(kfd_server *srv);

/* The port listener i is bound to (0 if none). */
int kfd_server_port(const kfd_server *srv, size_t i);

/* Rebuilds the TLS context from the configured files (SIGHUP). Returns 0 or a negative errno. */
int kfd_server_reload_tls(kfd_server *srv, kf_err *err);

#endif
