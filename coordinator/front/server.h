/* keyfleetd's server: h2o on libuv, listeners with per-source connection limits, the Connect
 * router, signals (TERM/INT drain and exit 0, HUP reloads certificates), and metrics. */
#ifndef KFD_SERVER_H
#define KFD_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <h2o.h>
#include <protobuf-c/protobuf-c.h>
#include <uv.h>

#include "config/config.h"
#include "kf_connect.h"
#include "kf_identity.h"
#include "front/metrics.h"

typedef struct kfd_server kfd_server;

/* One RPC in progress. Lives in the request's pool; handlers answer through kfd_call_reply or
 * kfd_call_error exactly once, possibly later from a callback. */
typedef struct kfd_call {
    h2o_req_t *req;
    kfd_server *srv;
    const struct kfd_method *method;
    const kf_identity *peer;
    kf_identity token_peer; /* peer points here for AppRole bearer-token callers */
    const char *auth;       /* how peer was authenticated: "mtls" or "approle" */
    ProtobufCMessage *request;
    char source[64]; /* client IP address */
    bool answered;
    struct kfd_op *op; /* work outliving the handler, told when the request goes away */
} kfd_call;

/* State of work that outlives the handler (a commit, a KMS call). Embed it first in the op's
 * struct. When the client goes away first, op->call becomes NULL: do the work, skip the answer. */
typedef struct kfd_op {
    kfd_call *call;
} kfd_op;

/* Allocates a zeroed op of size bytes bound to call. */
void *kfd_op_new(kfd_call *call, size_t size);
/* Unbinds and frees op. */
void kfd_op_free(void *op);

typedef void (*kfd_method_fn)(kfd_call *call);

typedef struct kfd_method {
    const char *path; /* "/keyfleet.v1.NodeService/Release" */
    const ProtobufCMessageDescriptor *request_desc;
    kf_peer_kind caller; /* who may call it */
    kfd_method_fn fn;    /* NULL: not implemented yet (answers unimplemented) */
    bool write;          /* changes state: served by the Raft leader only */
} kfd_method;

/* The RPC table (rpc_table.c). */
extern const kfd_method kfd_methods[];
extern const size_t kfd_methods_count;

void kfd_call_reply(kfd_call *call, const ProtobufCMessage *resp);
void kfd_call_error(kfd_call *call, kf_connect_code code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

struct kfd_server {
    uv_loop_t *loop;
    kfd_config *cfg;
    h2o_globalconf_t globalconf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    struct kfd_listener *listeners;
    size_t n_listeners;
    struct kfd_ssl_generation *ssl_generations; /* every SSL_CTX ever served, newest first */
    struct kfd_source_table *sources;
    uint32_t connections;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t drain_timer;
    uv_prepare_t log_flush; /* writes the turn's log lines before the loop waits */
    uint64_t drain_deadline;
    bool draining;
    int exit_code;
    time_t started;
    kfd_metrics metrics;
    struct kfd_app *app; /* store, KMS, policy (app.h) */
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

/* The verified peer identity of the request's connection (peer.c). */
int kfd_req_peer(kfd_server *srv, h2o_req_t *req, const kf_identity **ret);
/* The request's TLS connection, or NULL (plain HTTP, or not a socket this server made). */
SSL *kfd_req_ssl(kfd_server *srv, h2o_req_t *req);

/* Router entry point (router.c). */
int kfd_router_on_req(kfd_server *srv, h2o_req_t *req);

#endif
