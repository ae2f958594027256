#include "kf_tls.h"

#include "kf_tls_libctx.h"
#include "kf_tpmkey.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

static int ex_index = -1;
static pthread_once_t ex_once = PTHREAD_ONCE_INIT;

static void free_identity(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    free(ptr);
}

static void ex_init(void) { ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, free_identity); }

static const char *const PREFS_H2[] = {"h2", NULL};
static const char *const PREFS_H2_HTTP11[] = {"h2", "http/1.1", NULL};
static const char *const PREFS_RAFT[] = {KF_ALPN_RAFT, NULL};

/* arg: the server's NULL-terminated preference list. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    (void)ssl;
    const char *const *prefs = arg;
    for (size_t p = 0; prefs[p] != NULL; p++) {
        size_t plen = strlen(prefs[p]);
        for (unsigned int i = 0; i < inlen;) {
            unsigned int l = in[i];
            if (i + 1 + l > inlen)
                break;
            if (l == plen && memcmp(in + i + 1, prefs[p], l) == 0) {
                *out = in + i + 1;
                *outlen = (unsigned char)l;
                return SSL_TLSEXT_ERR_OK;
            }
            i += 1 + l;
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* OpenSSL reports a missing or unreadable file as "system lib": say which file, and why. */
static int file_readable(const char *path, const char *what, kf_err *err)
{
    if (path != NULL && access(path, R_OK) != 0)
        return kf_err_set(err, -errno, "%s %s: %s", what, path, strerror(errno));
    return 0;
}

static bool is_tpm_key(const char *path)
{
    char head[sizeof(KF_TPMKEY_PEM_BEGIN)] = {0};
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return false;
    size_t n = fread(head, 1, sizeof(head) - 1, f);
    fclose(f);
    return n == sizeof(head) - 1 && strcmp(head, KF_TPMKEY_PEM_BEGIN) == 0;
}

/* "2026-11-24 10:00:00 UTC" */
static void fmt_asn1_time(const ASN1_TIME *t, char *buf, size_t size)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1 || strftime(buf, size, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
        snprintf(buf, size, "(unreadable date)");
}

/* A client's own certificate, before any connection: expired, or not issued by the CA it
 * trusts, is said plainly here ("node.crt expired on ..."), where the coordinator could
 * only refuse the handshake with an alert that reads as a network fault. */
static int check_own_certificate(SSL_CTX *ctx, const kf_tls_opts *opts, kf_err *err)
{
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    STACK_OF(X509) *chain = NULL;
    X509_STORE_CTX *vctx = X509_STORE_CTX_new();
    if (cert == NULL || vctx == NULL || SSL_CTX_get0_chain_certs(ctx, &chain) != 1 ||
        X509_STORE_CTX_init(vctx, SSL_CTX_get_cert_store(ctx), cert, chain) != 1) {
        X509_STORE_CTX_free(vctx);
        return kf_err_openssl(err, -ENOMEM, "checking the certificate");
    }
    X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(vctx), X509_V_FLAG_X509_STRICT);
    int ok = X509_verify_cert(vctx);
    int e = X509_STORE_CTX_get_error(vctx);
    int depth = X509_STORE_CTX_get_error_depth(vctx);
    X509 *bad = X509_STORE_CTX_get_current_cert(vctx);
    char when[64];
    int r = 0;
    const char *whose = depth > 0 ? "the CA certificate of" : "";
    const char *file = depth > 0 ? opts->ca_file : opts->cert_file;
    if (ok == 1) {
        r = 0;
    } else if (e == X509_V_ERR_CERT_HAS_EXPIRED) {
        fmt_asn1_time(X509_get0_notAfter(bad != NULL ? bad : cert), when, sizeof(when));
        r = kf_err_set(err, -EKEYEXPIRED, "%s%s%s expired on %s: issue a new one (keyfleetctl cert issue)", whose,
                       depth > 0 ? " " : "", file, when);
    } else if (e == X509_V_ERR_CERT_NOT_YET_VALID) {
        /* The coordinator judges by its own clock, and a node early in boot may run behind:
         * a certificate issued minutes ago must not keep it from trying. */
        r = 0;
    } else {
        r = kf_err_set(err, -EKEYREJECTED, "%s is not a certificate of the fleet CA in %s: %s", opts->cert_file,
                       opts->ca_file, X509_verify_cert_error_string(e));
    }
    X509_STORE_CTX_free(vctx);
    return r;
}

int kf_tls_ctx_new(const kf_tls_opts *opts, SSL_CTX **ret, kf_err *err)
{
    int fr = file_readable(opts->cert_file, "certificate", err);
    if (fr == 0)
        fr = file_readable(opts->key_file, "private key", err);
    if (fr == 0)
        fr = file_readable(opts->tpm_key_file, "TPM key", err);
    if (fr == 0)
        fr = file_readable(opts->ca_file, "CA file", err);
    if (fr != 0)
        return -EINVAL;
    const bool server = opts->role == KF_TLS_SERVER;
    /* Servers parse every peer's certificate: kf_tls_libctx.h says why they have a context of
     * their own. Clients keep the default one, where a TPM key's provider lives. */
    SSL_CTX *ctx = server && !opts->default_libctx ? SSL_CTX_new_ex(kf_tls_server_libctx(), NULL, TLS_server_method())
                   : server                     ? SSL_CTX_new(TLS_server_method())
                                                : SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return kf_err_openssl(err, -ENOMEM, "SSL_CTX_new");
    int r = -EINVAL;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
        r = kf_err_openssl(err, -EINVAL, "restricting to TLS 1.3");
        goto fail;
    }
    if (opts->cert_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx, opts->cert_file) != 1) {
            r = kf_err_openssl(err, -EINVAL, opts->cert_file);
            goto fail;
        }
        if (opts->tpm_key_file != NULL) {
            EVP_PKEY *pk = NULL;
            if (server || opts->key_file != NULL || opts->tpm_tcti == NULL) {
                r = kf_err_set(err, -EINVAL, "a TPM key needs a client, a TCTI and no key file");
                goto fail;
            }
            if ((r = kf_tpmkey_load(opts->tpm_key_file, opts->tpm_tcti, &pk, err)) != 0)
                goto fail;
            int ok = SSL_CTX_use_PrivateKey(ctx, pk);
            EVP_PKEY_free(pk);
            if (ok != 1) {
                r = kf_err_openssl(err, -EINVAL, opts->tpm_key_file);
                goto fail;
            }
        } else if (opts->key_file == NULL ||
                   SSL_CTX_use_PrivateKey_file(ctx, opts->key_file, SSL_FILETYPE_PEM) != 1) {
            r = kf_err_openssl(err, -EINVAL, opts->key_file != NULL ? opts->key_file : "private key");
            if (opts->key_file != NULL && is_tpm_key(opts->key_file))
                kf_err_set(err, r, "%s is a TPM key (TSS2 PRIVATE KEY): name it as the identity's tpm_key",
                           opts->key_file);
            goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            r = kf_err_openssl(err, -EINVAL, "certificate and private key do not match");
            goto fail;
        }
    } else if (server) {
        r = kf_err_set(err, -EINVAL, "a server needs a certificate");
        goto fail;
    }
    if (opts->ca_file == NULL || SSL_CTX_load_verify_locations(ctx, opts->ca_file, NULL) != 1) {
        r = kf_err_openssl(err, -EINVAL, opts->ca_file != NULL ? opts->ca_file : "CA file");
        goto fail;
    }
    X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), X509_V_FLAG_X509_STRICT);
    /* Send only the certificate file's own chain, never one built from the trust store: every
     * peer holds the fleet CA already, and each certificate sent costs the receiver a parse
     * (about 1.5 M instructions in OpenSSL 3.0, a sixth of a coordinator's handshake; issue #29).
     * A certificate file that carries intermediates still sends them. */
    SSL_CTX_set_mode(ctx, SSL_MODE_NO_AUTO_CHAIN);
    if (!server && !opts->alpn_raft && opts->cert_file != NULL && (r = check_own_certificate(ctx, opts, err)) != 0)
        goto fail;
    if (server) {
        int mode = SSL_VERIFY_PEER;
        if (opts->peer_mode == KF_TLS_PEER_REQUIRED)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(ctx, mode, NULL);
        /* Required with SSL_VERIFY_PEER, or clients offering a ticket are aborted. */
        static const unsigned char sid_ctx[] = "keyfleet";
        SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
        /* No tickets: a resumed session skips certificate verification, and every
         * connection should be judged on the certificate it shows now. */
        SSL_CTX_set_num_tickets(ctx, 0);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE);
        const char *const *prefs = opts->alpn_raft               ? PREFS_RAFT
                                   : opts->server_accept_http11 ? PREFS_H2_HTTP11
                                                                : PREFS_H2;
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, (void *)prefs);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        unsigned char wire[64];
        const char *proto = opts->alpn_raft ? KF_ALPN_RAFT : "h2";
        size_t plen = strlen(proto);
        wire[0] = (unsigned char)plen;
        memcpy(wire + 1, proto, plen);
        if (SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)(plen + 1)) != 0) {
            r = kf_err_openssl(err, -EINVAL, "setting ALPN");
            goto fail;
        }
    }
    *ret = ctx;
    return 0;
fail:
    SSL_CTX_free(ctx);
    return r;
}

int kf_tls_peer_identity(SSL *ssl, const kf_identity **ret)
{
    pthread_once(&ex_once, ex_init);
    kf_identity *cached = SSL_get_ex_data(ssl, ex_index);
    if (cached != NULL) {
        if (cached->kind == KF_PEER_NONE)
            return -EACCES;
        *ret = cached;
        return 0;
    }
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (cert == NULL)
        return -ENOENT;
    kf_identity *id = calloc(1, sizeof(*id));
    if (id == NULL)
        return -ENOMEM;
    /* A KIND_NONE entry caches the refusal too, so a bad certificate is parsed once. */
    if (SSL_get_verify_result(ssl) != X509_V_OK || kf_identity_from_cert(cert, id, NULL) != 0)
        id->kind = KF_PEER_NONE;
    if (SSL_set_ex_data(ssl, ex_index, id) != 1) {
        free(id);
        return -ENOMEM;
    }
    if (id->kind == KF_PEER_NONE)
        return -EACCES;
    *ret = id;
    return 0;
}
