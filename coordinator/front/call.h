/* One RPC in progress, the work that outlives its handler, and the answer. A call lives in the
 * request's pool; handlers answer through kfd_call_reply or kfd_call_error exactly once,
 * possibly later from a callback. */
#ifndef KFD_CALL_H
#define KFD_CALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <h2o.h>
#include <protobuf-c/protobuf-c.h>

#include "core/audit.h"
#include "kf_connect.h"
#include "kf_identity.h"

struct kfd_server;
struct kfd_app;

typedef struct kfd_call {
    h2o_req_t *req;
    struct kfd_server *srv;
    const struct kfd_method *method;
    const kf_identity *peer;
    kf_identity token_peer; /* peer points here for AppRole bearer-token callers */
    const char *auth;       /* how peer was authenticated: "mtls" or "approle" */
    /* approle: the token's id and the digest of the rows it was judged by (store_judged.h) */
    char auth_token_id[24];
    uint8_t auth_judged[32];
    ProtobufCMessage *request;
    char source[64]; /* client IP address */
    bool answered;
    uint64_t deadline_ms; /* kf_monotonic_ms() by which the client wants its answer (connect-timeout-ms); 0: none */
    struct kfd_op *op;    /* work outliving the handler, told when the request goes away */
} kfd_call;

/* State of work that outlives the handler (a commit, a KMS call). Embed it first in the op's
 * struct. When the client goes away first, op->call becomes NULL: do the work, skip the answer. */
typedef struct kfd_op {
    kfd_call *call;
    /* Copies made when the op is created, for the records written after the client went away
     * (a key the KMS unwrapped for nobody is still audited, under its caller's name). */
    struct kfd_app *app;
    kf_identity peer; /* name[0] == '\0': no verified caller yet */
    const char *auth;
    char source[64];
} kfd_op;

typedef void (*kfd_method_fn)(kfd_call *call);

typedef struct kfd_method {
    const char *path; /* "/keyfleet.v1.NodeService/Release" */
    const ProtobufCMessageDescriptor *request_desc;
    kf_peer_kind caller; /* who may call it */
    kfd_method_fn fn;    /* NULL: not implemented yet (answers unimplemented) */
    bool write;          /* changes state: served by the Raft leader only */
    bool anonymous;      /* callable without an identity (Login: it is how a node gets one) */
} kfd_method;

/* Sets up the call for req (in its pool) and frees what it holds when the pool is released. */
kfd_call *kfd_call_new(struct kfd_server *srv, h2o_req_t *req, const kfd_method *m);

/* Allocates a zeroed op of size bytes bound to call. */
void *kfd_op_new(kfd_call *call, size_t size);
/* Unbinds and frees op. */
void kfd_op_free(void *op);

void kfd_call_reply(kfd_call *call, const ProtobufCMessage *resp);
void kfd_call_error(kfd_call *call, kf_connect_code code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Answers with an HTTP status of the router's choosing (405, 415, 505) and a Connect error. */
void kfd_call_error_status(kfd_call *call, int status, kf_connect_code code, const char *message);
/* A Connect error outside any call (404 for an unknown route). */
void kfd_send_connect_error(h2o_req_t *req, int status, kf_connect_code code, const char *message);

/* The client's deadline (Connect's connect-timeout-ms) has passed. Work done for the client (a
 * KMS call, an approval wait, a commit) is not started after it: kfd_call_deadline_passed
 * answers deadline_exceeded (naming what was not started) and returns true. Records that are
 * not the client's work, such as the audit record of a refusal, are written regardless. */
bool kfd_call_deadline_passed(kfd_call *call, const char *not_started);
/* The same test, answering nothing: for a caller that must record why before it answers. */
bool kfd_call_deadline_expired(const kfd_call *call);

/* Counts an answer in the metrics under its method (NULL: an unknown route). */
void kfd_count_answer(struct kfd_server *srv, const kfd_method *m, kf_connect_code code);

/* The application state the call's server serves (store, KMS, policy). */
struct kfd_app *kfd_call_app(const kfd_call *call);

/* The caller as audit records name it; call NULL (the client went away) is keyfleetd itself. */
static inline kfd_actor kfd_call_actor(const kfd_call *call)
{
    if (call == NULL)
        return (kfd_actor){0};
    return (kfd_actor){.peer = call->peer, .auth = call->auth, .source = call->source};
}

/* The caller as the op's copies name it (valid for the op's life, also once op->call is NULL). */
static inline kfd_actor kfd_op_actor(const kfd_op *op)
{
    return (kfd_actor){.peer = op->peer.name[0] != '\0' ? &op->peer : NULL, .auth = op->auth, .source = op->source};
}

#endif
