/* The verified identity behind an h2o request.
 *
 * h2o 2.2.5 has no public accessor for a connection's SSL*. Its private per-socket TLS state
 * begins with {SSL_CTX *, SSL *}. This is the one place that relies on that: it checks the first
 * field against the SSL_CTXs this server created before it reads the second, then checks that
 * the SSL's BIO belongs to this very socket. If either check fails, the request is treated as
 * unauthenticated, never as someone else. */
#include "front/peer.h"

#include <errno.h>

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include "kf_log.h"
#include "kf_tls.h"

struct h2o_ssl_prefix {
    SSL_CTX *ssl_ctx;
    SSL *ossl;
};

static bool owned(const kfd_ssl_generation *ours, const SSL_CTX *ctx)
{
    for (const kfd_ssl_generation *g = ours; g != NULL; g = g->next)
        if (g->ctx == ctx)
            return true;
    return false;
}

SSL *kfd_req_ssl(const kfd_ssl_generation *ours, h2o_req_t *req)
{
    if (req->conn->callbacks->get_socket == NULL)
        return NULL;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    if (sock == NULL || sock->ssl == NULL)
        return NULL;
    const struct h2o_ssl_prefix *p = (const struct h2o_ssl_prefix *)sock->ssl;
    if (!owned(ours, p->ssl_ctx) || p->ossl == NULL)
        goto layout;
    SSL *ssl = p->ossl;
    BIO *rbio = SSL_get_rbio(ssl);
    if (SSL_get_SSL_CTX(ssl) != p->ssl_ctx || rbio == NULL || BIO_get_data(rbio) != sock)
        goto layout;
    return ssl;
layout : {
    static bool warned;
    if (!warned) {
        warned = true;
        kf_log_error("tls_layout_mismatch", "hint=\"h2o's socket layout is not the expected 2.2.x one\"");
    }
    return NULL;
}
}

int kfd_req_peer(const kfd_ssl_generation *ours, h2o_req_t *req, const kf_identity **ret)
{
    SSL *ssl = kfd_req_ssl(ours, req);
    if (ssl == NULL)
        return -ENOENT;
    return kf_tls_peer_identity(ssl, ret);
}
