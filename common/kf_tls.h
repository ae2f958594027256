/* TLS: one way to build an SSL_CTX for keyfleet's servers and clients (TLS 1.3 only, ALPN h2,
 * verified against the fleet CA), and one way to read a connection's verified identity. */
#ifndef KF_TLS_H
#define KF_TLS_H

#include <stdbool.h>

#include <openssl/ssl.h>

#include "kf_err.h"
#include "kf_identity.h"

typedef enum { KF_TLS_SERVER, KF_TLS_CLIENT } kf_tls_role;

typedef enum {
    KF_TLS_PEER_REQUIRED, /* server: a client certificate from the CA is required */
    KF_TLS_PEER_OPTIONAL, /* server: verified when offered (AppRole tokens otherwise) */
} kf_tls_peer_mode;

typedef struct kf_tls_opts {
    kf_tls_role role;
    const char *cert_file; /* PEM chain; may be NULL for a client without a certificate */
    const char *key_file;
    /* Instead of key_file: a TSS2 PRIVATE KEY file, used through the tpm2 provider with this
     * TCTI (kf_tpmkey.h). Client only. */
    const char *tpm_key_file;
    const char *tpm_tcti;
    const char *ca_file; /* trust anchor for the peer */
    kf_tls_peer_mode peer_mode;
    /* Server only: also accept ALPN http/1.1, so an HTTP/1.1 client gets a clear HTTP error
     * instead of a handshake failure. Clients always offer h2 only. */
    bool server_accept_http11;
    /* Speak KF_ALPN_RAFT instead of h2, so that the Raft port and the RPC port can never be
     * mistaken for each other. */
    bool alpn_raft;
    /* Server only: build the context in OpenSSL's default library context instead of
     * kf_tls_server_libctx(). Only for the TLS floor's stock reference (bench/tls_floor.c). */
    bool default_libctx;
} kf_tls_opts;

#define KF_ALPN_RAFT "keyfleet-raft/1"

int kf_tls_ctx_new(const kf_tls_opts *opts, SSL_CTX **ret, kf_err *err);

/* The verified identity of the peer, parsed once per connection and cached on the SSL.
 * Returns 0 with *ret set, -ENOENT when no certificate was presented, -EACCES when it
 * failed verification or names no keyfleet identity. */
int kf_tls_peer_identity(SSL *ssl, const kf_identity **ret);

#endif
