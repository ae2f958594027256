/* The Connect unary router: POST /keyfleet.v1.SERVICE/METHOD with an application/proto body,
 * plus GET /healthz, /readyz and /metrics. Checks run in a fixed order, each with its own answer,
 * the HTTP status always the one Connect's table gives for the code (415 excepted, as the spec
 * asks): route and method (unimplemented, 501), HTTP/2 (failed_precondition, 400), content type
 * (415), content encoding (unimplemented, 501), deadline header (invalid_argument, 400), size
 * (resource_exhausted, 429), identity (401/403), body (400), deadline passed (deadline_exceeded,
 * 504), then the handler. Paths that are not RPCs get plain HTTP answers (404, 405). Over
 * HTTP/1.1 h2o itself answers 413 to a body past 4 KiB (front/server.c, HTTP1_MAX_BODY). */
#include "front/router.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "cluster/replication.h"
#include "core/app.h"
#include "core/approle.h"
#include "core/audit.h"
#include "core/node_seen.h"
#include "front/call.h"
#include "front/metrics.h"
#include "front/peer.h"
#include "front/server.h"
#include "kf_log.h"
#include "kf_pb_alloc.h"
#include "kf_time.h"
#include "store/store_guard.h"

static bool path_is(const h2o_req_t *req, const char *path)
{
    return h2o_memis(req->path_normalized.base, req->path_normalized.len, path, strlen(path));
}

static const kfd_method *find_method(const kfd_server *srv, const h2o_req_t *req)
{
    for (size_t i = 0; i < srv->n_methods; i++)
        if (path_is(req, srv->methods[i].path))
            return &srv->methods[i];
    return NULL;
}

static void send_text(h2o_req_t *req, int status, const char *ctype, const char *body, size_t len)
{
    req->res.status = status;
    req->res.reason = status == 200 ? "OK" : "Error";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ctype, strlen(ctype));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_send_inline(req, body, len);
}

/* Ready means a release sent here can be served: by this replica as leader, or by the leader it
 * points to. Without a known leader (an election, or a lost quorum) nothing can be released. */
static bool leader_known(kfd_server *srv, const char **why)
{
    char leader[128];
    const char *repl_why = NULL;
    if (kfd_repl_writable(srv->app->repl, &repl_why, leader, sizeof(leader)) || leader[0] != '\0')
        return true;
    *why = repl_why;
    return false;
}

/* What /readyz says: not draining, the store and KMS usable, a leader known; *why when not. */
static bool ready(kfd_server *srv, const char **why)
{
    *why = "draining";
    return !srv->draining && kfd_app_ready(srv->app, why) && kfd_app_kms_reachable(srv->app, why) &&
           kfd_app_kms_complete(srv->app, why) && leader_known(srv, why);
}

static int serve_plain(kfd_server *srv, h2o_req_t *req)
{
    bool get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    if (path_is(req, "/healthz") || path_is(req, "/readyz") || path_is(req, "/metrics")) {
        if (!get) {
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET"));
            send_text(req, 405, "text/plain", H2O_STRLIT("method not allowed\n"));
            return 0;
        }
        /* Probes without a client certificate (a load balancer, with client_auth: optional) get
         * /healthz and a bare /readyz; /metrics and readyz's reason only go to the fleet's
         * certificates. */
        const kf_identity *who = NULL;
        bool known = kfd_req_peer(srv->ssl_generations, req, &who) == 0;
        if (path_is(req, "/metrics") && !known) {
            send_text(req, 401, "text/plain", H2O_STRLIT("a client certificate is required\n"));
            return 0;
        }
        if (path_is(req, "/metrics")) {
            size_t len = 0;
            char *text = kfd_metrics_render(srv, &len);
            if (text == NULL) {
                send_text(req, 500, "text/plain", H2O_STRLIT("out of memory\n"));
                return 0;
            }
            send_text(req, 200, "text/plain; version=0.0.4", text, len);
            free(text);
        } else if (path_is(req, "/readyz")) {
            const char *why = NULL;
            if (ready(srv, &why)) {
                send_text(req, 200, "text/plain", H2O_STRLIT("ok\n"));
            } else if (!known) {
                send_text(req, 503, "text/plain", H2O_STRLIT("not ready\n"));
            } else {
                char *msg = h2o_mem_alloc_pool(&req->pool, 256);
                int n = snprintf(msg, 256, "not ready: %s\n", why);
                send_text(req, 503, "text/plain", msg, (size_t)n);
            }
        } else {
            send_text(req, 200, "text/plain", H2O_STRLIT("ok\n"));
        }
        return 0;
    }
    static const char rpc_prefix[] = "/keyfleet.v1.";
    if (req->path_normalized.len > sizeof(rpc_prefix) - 1 &&
        memcmp(req->path_normalized.base, rpc_prefix, sizeof(rpc_prefix) - 1) == 0) {
        /* An RPC this coordinator does not have: a Connect answer. */
        kfd_count_answer(srv, NULL, KF_CONNECT_UNIMPLEMENTED);
        kfd_send_connect_error(req, kf_connect_code_http_status(KF_CONNECT_UNIMPLEMENTED), KF_CONNECT_UNIMPLEMENTED,
                               "no such procedure");
        return 0;
    }
    send_text(req, 404, "text/plain", H2O_STRLIT("not found\n"));
    return 0;
}

/* Connect's request compression: only identity (no header, or "identity") is accepted. */
static bool content_encoding_identity(const h2o_req_t *req)
{
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_ENCODING, -1);
    if (i < 0)
        return true;
    const h2o_iovec_t *v = &req->headers.entries[i].value;
    return h2o_lcstris(v->base, v->len, H2O_STRLIT("identity"));
}

/* Connect's deadline: connect-timeout-ms, a positive integer of at most 10 digits. 0 and sets
 * call->deadline_ms (none without the header), or -EINVAL for a malformed value. */
static int parse_timeout(kfd_call *call)
{
    h2o_req_t *req = call->req;
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("connect-timeout-ms"), -1);
    if (i < 0)
        return 0;
    const h2o_iovec_t *v = &req->headers.entries[i].value;
    if (v->len == 0 || v->len > 10)
        return -EINVAL;
    uint64_t ms = 0;
    for (size_t k = 0; k < v->len; k++) {
        if (v->base[k] < '0' || v->base[k] > '9')
            return -EINVAL;
        ms = ms * 10 + (uint64_t)(v->base[k] - '0');
    }
    if (ms == 0)
        return -EINVAL;
    call->deadline_ms = kf_monotonic_ms() + ms;
    return 0;
}

static bool content_type_is_proto(const h2o_req_t *req)
{
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
    if (i < 0)
        return false;
    const h2o_iovec_t *v = &req->headers.entries[i].value;
    return h2o_lcstris(v->base, v->len, H2O_STRLIT("application/proto"));
}

static bool caller_allowed(const kfd_method *m, const kf_identity *peer)
{
    return peer->kind == m->caller;
}

/* Unpacks with the wiping allocator; kfd_router_on_req wipes the body itself once routed. */
static ProtobufCMessage *unpack(const kfd_method *m, h2o_req_t *req)
{
    return protobuf_c_message_unpack(m->request_desc, &kf_pb_wiping_allocator, req->entity.len,
                                     (const uint8_t *)req->entity.base);
}

/* A client certificate, or else an AppRole bearer token. Answers and returns false on failure. */
static bool authenticate(kfd_server *srv, kfd_call *call)
{
    h2o_req_t *req = call->req;
    if (kfd_req_peer(srv->ssl_generations, req, &call->peer) == 0) {
        call->auth = "mtls";
        bool revoked = false;
        if (kfd_store_cert_revoked(srv->app->store, call->peer->serial, &revoked) != 0) {
            /* Fail closed: a certificate that cannot be checked against the denylist gets nothing. */
            const char *why = "state store unavailable";
            kfd_app_ready(srv->app, &why);
            kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "coordinator cannot release keys: %s", why);
            return false;
        }
        if (!revoked)
            return true;
        /* Denylisted: refused whatever its kind, and the attempt is audited under its name. */
        srv->metrics.auth_failures++;
        kfd_audit_auth_failure(srv->app, kfd_call_actor(call), call->peer->name, "certificate is revoked");
        kfd_call_error(call, KF_CONNECT_UNAUTHENTICATED, "certificate serial %s is revoked", call->peer->serial);
        return false;
    }
    call->peer = NULL;
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    const char *why = "no client certificate and no bearer token";
    if (i >= 0) {
        const h2o_iovec_t *v = &req->headers.entries[i].value;
        char role[64] = "";
        int r = v->len > 7 && h2o_lcstris(v->base, 7, H2O_STRLIT("bearer "))
                    ? kfd_approle_token_auth(srv->app->store, v->base + 7, v->len - 7, call->source,
                                             &call->token_peer, role, call->auth_token_id, call->auth_judged)
                    : -ENOENT;
        if (r == 0) {
            call->peer = &call->token_peer;
            call->auth = "approle";
            return true;
        }
        why = r == -ETIME ? "bearer token expired"
              : r == -EACCES ? "bearer token used outside its role's bound CIDRs"
              : r == -EIO ? "state store unavailable"
                          : "unknown bearer token";
    }
    srv->metrics.auth_failures++;
    kfd_audit_auth_failure(srv->app, kfd_call_actor(call), "", why);
    kfd_call_error(call, KF_CONNECT_UNAUTHENTICATED, "%s; a client certificate from the fleet CA or a valid "
                   "AppRole token is required", why);
    return false;
}

/* Writes go to the leader: a follower answers unavailable and says where the leader is, so the
 * client goes there directly. True when it answered. */
static bool sent_to_leader(kfd_server *srv, kfd_call *call)
{
    if (!call->method->write)
        return false;
    h2o_req_t *req = call->req;
    const char *why = NULL, *not_ready = NULL;
    char leader[280];
    /* A coordinator that is not ready (failed store) lets the handler explain why. */
    if (!kfd_app_ready(srv->app, &not_ready) || kfd_repl_writable(srv->app->repl, &why, leader, sizeof(leader)))
        return false;
    if (leader[0] != '\0')
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("keyfleet-leader"), 0, NULL,
                              h2o_strdup(&req->pool, leader, SIZE_MAX).base, strlen(leader));
    kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "%s%s%s", why, leader[0] != '\0' ? "; the leader is " : "", leader);
    return true;
}

/* A request on a plain (non-TLS) connection came through a probe_listen listener, the only
 * listener without TLS: it gets /healthz and a bare /readyz, nothing else (no RPC, no metrics,
 * no reason why not ready; docs/threat-model.md, "Health probes"). */
static bool plain_connection(h2o_req_t *req)
{
    h2o_socket_t *sock = req->conn->callbacks->get_socket != NULL ? req->conn->callbacks->get_socket(req->conn) : NULL;
    return sock == NULL || sock->ssl == NULL;
}

static int serve_probe(kfd_server *srv, h2o_req_t *req)
{
    if (!path_is(req, "/healthz") && !path_is(req, "/readyz")) {
        send_text(req, 404, "text/plain", H2O_STRLIT("not found\n"));
        return 0;
    }
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET"));
        send_text(req, 405, "text/plain", H2O_STRLIT("method not allowed\n"));
        return 0;
    }
    const char *why = NULL;
    if (path_is(req, "/readyz") && !ready(srv, &why)) {
        send_text(req, 503, "text/plain", H2O_STRLIT("not ready\n"));
        return 0;
    }
    send_text(req, 200, "text/plain", H2O_STRLIT("ok\n"));
    return 0;
}

static int route(kfd_server *srv, h2o_req_t *req)
{
    if (plain_connection(req))
        return serve_probe(srv, req);
    const kfd_method *m = find_method(srv, req);
    if (m == NULL)
        return serve_plain(srv, req);

    kfd_call *call = kfd_call_new(srv, req, m);

    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("POST"));
        kfd_call_error(call, KF_CONNECT_UNIMPLEMENTED, "RPCs are called with POST (Connect GET is not supported)");
        return 0;
    }
    if (req->version < 0x200) {
        kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "keyfleet RPCs require HTTP/2 (ALPN h2)");
        return 0;
    }
    if (!content_type_is_proto(req)) {
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("accept-post"), 0, NULL,
                              H2O_STRLIT("application/proto"));
        kfd_call_error_status(call, 415, KF_CONNECT_INVALID_ARGUMENT, "Content-Type must be application/proto");
        return 0;
    }
    if (!content_encoding_identity(req)) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ACCEPT_ENCODING, NULL, H2O_STRLIT("identity"));
        kfd_call_error(call, KF_CONNECT_UNIMPLEMENTED, "request compression is not supported: send content-encoding "
                       "identity (or none)");
        return 0;
    }
    if (parse_timeout(call) != 0) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "connect-timeout-ms must be a positive integer of at most "
                       "10 digits");
        return 0;
    }
    if (req->entity.len > srv->cfg->limits.max_body_bytes) {
        kfd_call_error(call, KF_CONNECT_RESOURCE_EXHAUSTED, "request body of %zu bytes exceeds the limit of %u",
                       req->entity.len, srv->cfg->limits.max_body_bytes);
        return 0;
    }
    if (m->anonymous) {
        if (sent_to_leader(srv, call))
            return 0;
        /* Made before there is an identity: Login is how a node gets one. */
        if ((call->request = unpack(m, req)) == NULL)
            kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "request body is not a valid %s", m->request_desc->name);
        else if (!kfd_call_deadline_passed(call, "the call"))
            m->fn(call);
        return 0;
    }
    if (!authenticate(srv, call))
        return 0;
    if (!caller_allowed(m, call->peer)) {
        srv->metrics.auth_failures++;
        char reason[160];
        snprintf(reason, sizeof(reason), "%s may not call %s", kf_peer_kind_name(call->peer->kind), m->path + 1);
        kfd_audit_auth_failure(srv->app, kfd_call_actor(call), call->peer->name, reason);
        kfd_call_error(call, KF_CONNECT_PERMISSION_DENIED, "%s callers may not call this method",
                       kf_peer_kind_name(call->peer->kind));
        return 0;
    }
    kfd_node_seen_note(srv->app->seen, call->peer, call->auth, (int64_t)time(NULL));
    /* After identity: the cluster's layout is told only to callers it knows. */
    if (sent_to_leader(srv, call))
        return 0;
    call->request = unpack(m, req);
    if (call->request == NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "request body is not a valid %s",
                       m->request_desc->name);
        return 0;
    }
    if (m->fn == NULL) {
        kfd_call_error(call, KF_CONNECT_UNIMPLEMENTED, "%s is not implemented in this version", m->path + 1);
        return 0;
    }
    if (kfd_call_deadline_passed(call, "the call"))
        return 0;
    m->fn(call);
    return 0;
}

/* Every body is wiped before h2o frees it (h2o frees its request buffers before the pool, so
 * before dispose_call, unwiped), also one refused before it was decoded (a Login over HTTP/1.1,
 * a wrong Content-Type, a revoked caller): any of them may carry a secret. Handlers read only
 * the unpacked message, never the body, once routing returns. */
int kfd_router_on_req(kfd_server *srv, h2o_req_t *req)
{
    int r = route(srv, req);
    if (req->entity.len > 0) /* an empty entity may point at a literal */
        OPENSSL_cleanse(req->entity.base, req->entity.len);
    return r;
}

void kfd_router_bind(kfd_server *srv, const kfd_method *methods, size_t n)
{
    srv->methods = methods;
    srv->n_methods = n;
}
