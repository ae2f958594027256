/* The Connect unary router: POST /keyfleet.v1.SERVICE/METHOD with an application/proto body,
 * plus GET /healthz, /readyz and /metrics. Checks run in a fixed order, each with its own answer:
 * route (404), method (405), HTTP/2 (505), content type (415), size (429), identity (401/403),
 * body (400), then the handler (or 501 while it is not implemented). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "core/app.h"
#include "kf_log.h"
#include "kf_pb_alloc.h"
#include "cluster/replication.h"
#include "rpc/rpc.h"
#include "front/server.h"

#define UNKNOWN_ROUTE_ROW KFD_METRICS_MAX_METHODS

static size_t method_index(const kfd_call *call)
{
    return call->method != NULL ? (size_t)(call->method - kfd_methods) : UNKNOWN_ROUTE_ROW;
}

static void count(kfd_server *srv, size_t row, kf_connect_code code)
{
    if (row > UNKNOWN_ROUTE_ROW)
        row = UNKNOWN_ROUTE_ROW;
    srv->metrics.requests[row][code]++;
}

static void send_connect_error(h2o_req_t *req, int status, kf_connect_code code, const char *message)
{
    char *json = kf_connect_error_json(code, message);
    static const char fallback[] = "{\"code\":\"internal\",\"message\":\"out of memory\"}";
    req->res.status = status;
    req->res.reason = "Error";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_send_inline(req, json != NULL ? json : fallback, json != NULL ? strlen(json) : sizeof(fallback) - 1);
    free(json);
}

static void reply_error(kfd_call *call, int status, kf_connect_code code, const char *message)
{
    if (call->answered)
        return;
    call->answered = true;
    count(call->srv, method_index(call), code);
    kf_log(code == KF_CONNECT_INTERNAL || code == KF_CONNECT_UNAVAILABLE ? KF_LOG_WARN : KF_LOG_INFO, "rpc_error",
           "method=%s code=%s peer=%s source=%s message=%s",
           call->method != NULL ? call->method->path + 1 : "-",
           kf_connect_code_name(code), call->peer != NULL ? call->peer->name : "-", call->source,
           kf_log_q(message));
    send_connect_error(call->req, status, code, message);
}

void kfd_call_error(kfd_call *call, kf_connect_code code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    reply_error(call, kf_connect_code_http_status(code), code, msg);
}

/* A reply body in its own block of the request's pool, wiped when the pool is released: Login
 * answers carry a token and CreateSecretId a secret id. h2o_send_inline would copy it into the
 * pool's chunks, which are recycled unwiped. */
typedef struct reply_body {
    size_t len;
    uint8_t bytes[];
} reply_body;

static void dispose_reply_body(void *p)
{
    reply_body *b = p;
    OPENSSL_cleanse(b->bytes, b->len);
}

void kfd_call_reply(kfd_call *call, const ProtobufCMessage *resp)
{
    static h2o_generator_t generator = {NULL, NULL};
    if (call->answered)
        return;
    h2o_req_t *req = call->req;
    size_t len = protobuf_c_message_get_packed_size(resp);
    reply_body *body = h2o_mem_alloc_shared(&req->pool, sizeof(*body) + len, dispose_reply_body);
    body->len = protobuf_c_message_pack(resp, body->bytes);
    call->answered = true;
    count(call->srv, method_index(call), KF_CONNECT_OK);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/proto"));
    h2o_start_response(req, &generator);
    h2o_iovec_t buf = h2o_iovec_init(body->bytes, body->len);
    h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}

static void dispose_call(void *p)
{
    kfd_call *call = p;
    if (call->op != NULL)
        call->op->call = NULL;
    call->op = NULL;
    if (call->request != NULL)
        protobuf_c_message_free_unpacked(call->request, &kf_pb_wiping_allocator); /* wipes a secret id */
    call->request = NULL;
}

void *kfd_op_new(kfd_call *call, size_t size)
{
    kfd_op *op = calloc(1, size);
    if (op == NULL)
        return NULL;
    op->call = call;
    call->op = op;
    return op;
}

void kfd_op_free(void *p)
{
    kfd_op *op = p;
    if (op == NULL)
        return;
    if (op->call != NULL && op->call->op == op)
        op->call->op = NULL;
    free(op);
}

static bool path_is(const h2o_req_t *req, const char *path)
{
    return h2o_memis(req->path_normalized.base, req->path_normalized.len, path, strlen(path));
}

static const kfd_method *find_method(const h2o_req_t *req)
{
    for (size_t i = 0; i < kfd_methods_count; i++)
        if (path_is(req, kfd_methods[i].path))
            return &kfd_methods[i];
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

static int serve_plain(kfd_server *srv, h2o_req_t *req)
{
    bool get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    if (path_is(req, "/healthz") || path_is(req, "/readyz") || path_is(req, "/metrics")) {
        if (!get) {
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET"));
            send_text(req, 405, "text/plain", H2O_STRLIT("method not allowed\n"));
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
            const char *why = "draining";
            if (!srv->draining && kfd_app_ready(srv->app, &why) && kfd_app_kms_reachable(srv->app, &why) &&
                kfd_app_kms_complete(srv->app, &why) && leader_known(srv, &why)) {
                send_text(req, 200, "text/plain", H2O_STRLIT("ok\n"));
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
    count(srv, UNKNOWN_ROUTE_ROW, KF_CONNECT_UNIMPLEMENTED);
    send_connect_error(req, 404, KF_CONNECT_UNIMPLEMENTED, "no such route");
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

static void client_address(h2o_req_t *req, char *buf, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    snprintf(buf, size, "-");
    if (len > 0 && ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, buf, size);
    else if (len > 0 && ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, buf, size);
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
    if (kfd_req_peer(srv, req, &call->peer) == 0) {
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
        kfd_audit_auth_failure(srv->app, call, call->peer->name, "certificate is revoked");
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
                    ? kfd_approle_token_auth(srv, v->base + 7, v->len - 7, call->source, &call->token_peer, role)
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
    kfd_audit_auth_failure(srv->app, call, "", why);
    kfd_call_error(call, KF_CONNECT_UNAUTHENTICATED, "%s; a client certificate from the fleet CA or a valid "
                   "AppRole token is required", why);
    return false;
}

static int route(kfd_server *srv, h2o_req_t *req)
{
    const kfd_method *m = find_method(req);
    if (m == NULL)
        return serve_plain(srv, req);

    kfd_call *call = h2o_mem_alloc_shared(&req->pool, sizeof(*call), dispose_call);
    memset(call, 0, sizeof(*call));
    call->req = req;
    call->srv = srv;
    call->method = m;
    client_address(req, call->source, sizeof(call->source));

    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("POST"));
        reply_error(call, 405, KF_CONNECT_UNIMPLEMENTED, "RPCs are called with POST");
        return 0;
    }
    if (req->version < 0x200) {
        reply_error(call, 505, KF_CONNECT_FAILED_PRECONDITION, "keyfleet RPCs require HTTP/2 (ALPN h2)");
        return 0;
    }
    if (!content_type_is_proto(req)) {
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("accept-post"), 0, NULL,
                              H2O_STRLIT("application/proto"));
        reply_error(call, 415, KF_CONNECT_INVALID_ARGUMENT, "Content-Type must be application/proto");
        return 0;
    }
    if (req->entity.len > srv->cfg->limits.max_body_bytes) {
        kfd_call_error(call, KF_CONNECT_RESOURCE_EXHAUSTED, "request body of %zu bytes exceeds the limit of %u",
                       req->entity.len, srv->cfg->limits.max_body_bytes);
        return 0;
    }
    if (m->write) {
        /* Writes go to the leader; say where it is so clients go there directly. */
        const char *why = NULL, *not_ready = NULL;
        char leader[280];
        /* A coordinator that is not ready (failed store) lets the handler explain why. */
        if (kfd_app_ready(srv->app, &not_ready) && !kfd_repl_writable(srv->app->repl, &why, leader, sizeof(leader))) {
            if (leader[0] != '\0')
                h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("keyfleet-leader"), 0, NULL,
                                      h2o_strdup(&req->pool, leader, SIZE_MAX).base, strlen(leader));
            kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "%s%s%s", why, leader[0] != '\0' ? "; the leader is " : "",
                           leader);
            return 0;
        }
    }
    if (m->fn == kfd_rpc_login) {
        /* The one call made before there is an identity: it is how a node gets one. */
        if ((call->request = unpack(m, req)) == NULL)
            kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "request body is not a valid %s", m->request_desc->name);
        else
            m->fn(call);
        return 0;
    }
    if (!authenticate(srv, call))
        return 0;
    if (!caller_allowed(m, call->peer)) {
        srv->metrics.auth_failures++;
        char reason[160];
        snprintf(reason, sizeof(reason), "%s may not call %s", kf_peer_kind_name(call->peer->kind), m->path + 1);
        kfd_audit_auth_failure(srv->app, call, call->peer->name, reason);
        kfd_call_error(call, KF_CONNECT_PERMISSION_DENIED, "%s callers may not call this method",
                       kf_peer_kind_name(call->peer->kind));
        return 0;
    }
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
