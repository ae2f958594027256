/* The verified identity behind an h2o request (peer.c: the one place that reads h2o internals). */
#ifndef KFD_PEER_H
#define KFD_PEER_H

#include <h2o.h>
#include <openssl/ssl.h>

#include "kf_identity.h"

/* Every SSL_CTX the server ever served, newest first (server.c keeps the list). */
typedef struct kfd_ssl_generation {
    SSL_CTX *ctx;
    struct kfd_ssl_generation *next;
} kfd_ssl_generation;

/* The request's TLS connection, or NULL (plain HTTP, or not a socket made from one of ours). */
SSL *kfd_req_ssl(const kfd_ssl_generation *ours, h2o_req_t *req);
/* The verified peer identity of the request's connection. */
int kfd_req_peer(const kfd_ssl_generation *ours, h2o_req_t *req, const kf_identity **ret);

#endif
