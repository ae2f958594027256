/* A call's lifetime and its answer: set up in the request's pool, answered once (counted in
 * metrics, errors logged), ops unbound and the unpacked request wiped when the pool goes. */
#include "front/call.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "front/server.h"
#include "kf_log.h"
#include "kf_pb_alloc.h"
#include "kf_time.h"

#define UNKNOWN_ROUTE_ROW KFD_METRICS_MAX_METHODS

void kfd_count_answer(kfd_server *srv, const kfd_method *m, kf_connect_code code)
{
    size_t row = m != NULL ? (size_t)(m - srv->methods) : UNKNOWN_ROUTE_ROW;
    if (row > UNKNOWN_ROUTE_ROW)
        row = UNKNOWN_ROUTE_ROW;
    srv->metrics.requests[row][code]++;
}

void kfd_send_connect_error(h2o_req_t *req, int status, kf_connect_code code, const char *message)
{
    char *json = kf_connect_error_json(code, message);
    static const char fallback[] = "{\"code\":\"internal\",\"message\":\"out of memory\"}";
    req->res.status = status;
    req->res.reason = "Error";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_send_inline(req, json != NULL ? json : fallback, json != NULL ? strlen(json) : sizeof(fallback) - 1);
    free(json);
}

void kfd_call_error_status(kfd_call *call, int status, kf_connect_code code, const char *message)
{
    if (call->answered)
        return;
    call->answered = true;
    kfd_count_answer(call->srv, call->method, code);
    kf_log(code == KF_CONNECT_INTERNAL || code == KF_CONNECT_UNAVAILABLE ? KF_LOG_WARN : KF_LOG_INFO, "rpc_error",
           "method=%s code=%s peer=%s source=%s message=%s",
           call->method != NULL ? call->method->path + 1 : "-",
           kf_connect_code_name(code), call->peer != NULL ? call->peer->name : "-", call->source,
           kf_log_q(message));
    kfd_send_connect_error(call->req, status, code, message);
}

void kfd_call_error(kfd_call *call, kf_connect_code code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    kfd_call_error_status(call, kf_connect_code_http_status(code), code, msg);
}

bool kfd_call_deadline_expired(const kfd_call *call)
{
    return call != NULL && call->deadline_ms != 0 && kf_monotonic_ms() >= call->deadline_ms;
}

bool kfd_call_deadline_passed(kfd_call *call, const char *not_started)
{
    if (!kfd_call_deadline_expired(call))
        return false;
    kfd_call_error(call, KF_CONNECT_DEADLINE_EXCEEDED, "the request's deadline (connect-timeout-ms) passed; %s was not started",
                   not_started);
    return true;
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
    kfd_count_answer(call->srv, call->method, KF_CONNECT_OK);
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
    op->app = kfd_call_app(call);
    if (call->peer != NULL)
        op->peer = *call->peer;
    op->auth = call->auth;
    memcpy(op->source, call->source, sizeof(op->source));
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

kfd_call *kfd_call_new(kfd_server *srv, h2o_req_t *req, const kfd_method *m)
{
    kfd_call *call = h2o_mem_alloc_shared(&req->pool, sizeof(*call), dispose_call);
    memset(call, 0, sizeof(*call));
    call->req = req;
    call->srv = srv;
    call->method = m;
    client_address(req, call->source, sizeof(call->source));
    return call;
}

struct kfd_app *kfd_call_app(const kfd_call *call) { return call->srv->app; }
