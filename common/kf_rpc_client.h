/* A blocking Connect unary client on nghttp2 and OpenSSL: HTTP/2, TLS 1.3, client certificate, one
 * long-lived connection, servers tried in order on transport errors. The client certificate is
 * optional when the caller authenticates with an AppRole bearer token. Used by keyfleetctl
 * and keyfleet-agent. */
#ifndef KF_RPC_CLIENT_H
#define KF_RPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "kf_connect.h"
#include "kf_err.h"
#include "kf_identity.h"

typedef struct kf_rpc_client kf_rpc_client;

typedef struct kf_rpc_opts {
    const char *const *servers; /* "host:port" */
    size_t n_servers;
    const char *cert_file;
    const char *key_file;
    const char *tpm_key_file; /* instead of key_file: a TPM-resident key (kf_tpmkey.h) */
    const char *tpm_tcti;
    const char *ca_file;
    long timeout_ms; /* per call; 0 means 10 s */
} kf_rpc_opts;

typedef struct kf_rpc_status {
    kf_connect_code code; /* KF_CONNECT_OK on success */
    int http_status;
    char message[512];
    char server[128]; /* the server that answered */
    int http_version;  /* 2 for HTTP/2 */
} kf_rpc_status;

int kf_rpc_client_new(const kf_rpc_opts *opts, kf_rpc_client **ret, kf_err *err);
void kf_rpc_client_free(kf_rpc_client *c);

/* Calls POST /METHOD (e.g. "keyfleet.v1.AdminService/ClusterStatus").
 * Returns 0 when a server answered (st->code tells whether the call succeeded; on OK *ret_resp
 * holds the unpacked response, freed with protobuf_c_message_free_unpacked), or a negative errno
 * with err set when no server could be reached or the answer was malformed. */
int kf_rpc_call(kf_rpc_client *c, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **ret_resp, kf_rpc_status *st,
                kf_err *err);

/* Sends "Authorization: Bearer TOKEN" on every later call (an AppRole token); NULL stops it.
 * The token is kept in secure memory. Returns 0 or -ENOMEM. */
int kf_rpc_client_set_bearer(kf_rpc_client *c, const char *token);

/* Opens the connection to the server tried first now, TLS handshake included, so that the next
 * call does not wait for it (the agent does this on a helper thread while it reads its volumes'
 * headers). On failure the next call starts with the following server. Returns 0 or -errno. */
int kf_rpc_client_connect(kf_rpc_client *c, kf_err *err);

/* The identity named by the client certificate, parsed once with the TLS context. Returns 0,
 * -ENOENT when the client has no certificate, or -EACCES when it names no keyfleet identity. */
int kf_rpc_client_identity(const kf_rpc_client *c, kf_identity *ret, kf_err *err);

/* For a request bound to this TLS connection (a TPM quote, docs/attestation.md): connects if
 * needed, writes the connection's exporter value (RFC 8446 7.5; label, no context) into out,
 * and pins the next kf_rpc_call to this connection: if it is lost, or the server is a follower,
 * that call fails or answers without trying another connection (the binding would not hold
 * there), and the caller builds the request again. 0 or -errno. */
int kf_rpc_client_export(kf_rpc_client *c, const char *label, unsigned char *out, size_t len, kf_err *err);

/* After the handshake: lets go of a TPM-resident client key (kf_tpmkey_detach) and unloads the
 * tpm2 provider, closing its TPM connection, while the TLS connection stays open for the next
 * calls. A client whose key was released cannot open another connection (-ENOKEY): see
 * kf_rpc_client_usable. */
void kf_rpc_client_release_tpm(kf_rpc_client *c);
/* false when the client released its TPM key and has no open connection: make a new one. */
bool kf_rpc_client_usable(const kf_rpc_client *c);
/* Addresses a client adds beyond its configured ones, by leader hints or kf_rpc_client_prefer,
 * over its life (review rev40 F7). */
#define KF_RPC_MAX_HINTED 16
/* The server the next call tries first (the last that answered, or the leader a follower named),
 * and making a server (added when new) the first to try: so a new client goes where the old one
 * would have. 0, -ENOMEM, or -ENOSPC: KF_RPC_MAX_HINTED addresses were added already, and a new
 * one is not. */
const char *kf_rpc_client_current(const kf_rpc_client *c);
int kf_rpc_client_prefer(kf_rpc_client *c, const char *server);

/* GET path (e.g. "/readyz"); the body is returned NUL-terminated (malloc'ed). */
int kf_rpc_get(kf_rpc_client *c, const char *path, long *ret_status, char **ret_body, kf_err *err);

#endif
