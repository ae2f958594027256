/* The TLS servers' library context (kf_tls_libctx.h): it offers only the key types a handshake
 * here meets, and with them a certificate parses, verifies and completes an mTLS handshake. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "ca.h"
#include "kf_tls.h"
#include "kf_tls_libctx.h"

#include "kf_test_tmpdir.h"

static char ca_cert[256], ca_key[256], node_cert[256], node_key[256], coord_cert[256], coord_key[256];

static int setup(void **state)
{
    if (tmpdir_setup(state) != 0)
        return -1;
    snprintf(ca_cert, sizeof(ca_cert), "%s/ca.crt", tmpdir);
    snprintf(ca_key, sizeof(ca_key), "%s/ca.key", tmpdir);
    snprintf(node_cert, sizeof(node_cert), "%s/node.crt", tmpdir);
    snprintf(node_key, sizeof(node_key), "%s/node.key", tmpdir);
    snprintf(coord_cert, sizeof(coord_cert), "%s/c1.crt", tmpdir);
    snprintf(coord_key, sizeof(coord_key), "%s/c1.key", tmpdir);
    kfctl_cert_opts node = {.kind = KF_PEER_NODE, .name = "web-01", .days = 2};
    kfctl_cert_opts coord = {.kind = KF_PEER_COORDINATOR, .name = "c1", .days = 2};
    return kfctl_ca_create(ca_cert, ca_key, "test CA", NULL) == 0 &&
                   kfctl_cert_issue(ca_cert, ca_key, &node, node_cert, node_key, false, NULL) == 0 &&
                   kfctl_cert_issue(ca_cert, ca_key, &coord, coord_cert, coord_key, false, NULL) == 0
               ? 0
               : -1;
}

static X509 *read_cert(OSSL_LIB_CTX *libctx, const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    X509 *x = X509_new_ex(libctx, NULL);
    assert_non_null(x);
    assert_non_null(PEM_read_X509(f, &x, NULL, NULL));
    fclose(f);
    return x;
}

static void test_offers_only_tls_key_types(void **state)
{
    (void)state;
    OSSL_LIB_CTX *libctx = kf_tls_server_libctx();
    assert_non_null(libctx);
    assert_ptr_equal(kf_tls_server_libctx(), libctx); /* made once */
    static const char *const offered[] = {"EC", "RSA", "X25519"};
    static const char *const withheld[] = {"DSA", "DH", "ED25519", "ED448", "X448", "SM2", "RSA-PSS"};
    for (size_t i = 0; i < sizeof(offered) / sizeof(offered[0]); i++) {
        EVP_KEYMGMT *k = EVP_KEYMGMT_fetch(libctx, offered[i], NULL);
        assert_non_null(k);
        EVP_KEYMGMT_free(k);
    }
    for (size_t i = 0; i < sizeof(withheld) / sizeof(withheld[0]); i++) {
        EVP_KEYMGMT *k = EVP_KEYMGMT_fetch(libctx, withheld[i], NULL);
        if (k != NULL)
            fail_msg("%s is offered", withheld[i]);
    }
    /* Everything else is the default provider's: a digest, a cipher, a KDF, randomness. */
    EVP_MD *md = EVP_MD_fetch(libctx, "SHA256", NULL);
    EVP_CIPHER *c = EVP_CIPHER_fetch(libctx, "AES-128-GCM", NULL);
    EVP_KDF *kdf = EVP_KDF_fetch(libctx, "TLS13-KDF", NULL);
    assert_non_null(md);
    assert_non_null(c);
    assert_non_null(kdf);
    EVP_MD_free(md);
    EVP_CIPHER_free(c);
    EVP_KDF_free(kdf);
    unsigned char r1[16] = {0}, r2[16] = {0};
    assert_int_equal(RAND_bytes_ex(libctx, r1, sizeof(r1), 0), 1);
    assert_int_equal(RAND_bytes_ex(libctx, r2, sizeof(r2), 0), 1);
    assert_memory_not_equal(r1, r2, sizeof(r1));
}

static void test_certificate_parses_and_verifies(void **state)
{
    (void)state;
    OSSL_LIB_CTX *libctx = kf_tls_server_libctx();
    X509 *ca = read_cert(libctx, ca_cert), *node = read_cert(libctx, node_cert);
    EVP_PKEY *key = X509_get0_pubkey(node);
    assert_non_null(key);
    assert_true(EVP_PKEY_is_a(key, "EC"));
    assert_string_equal(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key)), KF_TLS_PROVIDER_NAME);
    assert_int_equal(X509_verify(node, X509_get0_pubkey(ca)), 1);
    /* A certificate of a key type the context withholds parses, but has no usable key. */
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    X509 *self = X509_new();
    assert_non_null(self);
    X509_set_version(self, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(self), 1);
    X509_gmtime_adj(X509_getm_notBefore(self), 0);
    X509_gmtime_adj(X509_getm_notAfter(self), 3600);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(self), "CN", MBSTRING_ASC, (const unsigned char *)"ed", -1, -1, 0);
    X509_set_issuer_name(self, X509_get_subject_name(self));
    assert_int_equal(X509_set_pubkey(self, ed), 1);
    assert_true(X509_sign(self, ed, NULL) > 0);
    unsigned char *der = NULL;
    int len = i2d_X509(self, &der);
    assert_true(len > 0);
    const unsigned char *p = der;
    X509 *parsed = X509_new_ex(libctx, NULL);
    assert_non_null(d2i_X509(&parsed, &p, len));
    ERR_set_mark();
    assert_null(X509_get0_pubkey(parsed));
    ERR_pop_to_mark();
    X509_free(parsed);
    OPENSSL_free(der);
    X509_free(self);
    EVP_PKEY_free(ed);
    X509_free(node);
    X509_free(ca);
}

/* Drives both ends of a handshake over a BIO pair, each step bounded. */
static int handshake(SSL *server, SSL *client)
{
    int s = 0, c = 0;
    for (int i = 0; i < 100 && (s != 1 || c != 1); i++) {
        if (c != 1)
            c = SSL_do_handshake(client);
        if (s != 1)
            s = SSL_do_handshake(server);
    }
    return s == 1 && c == 1 ? 0 : -EPROTO;
}

static void test_mtls_handshake(void **state)
{
    (void)state;
    kf_tls_opts so = {.role = KF_TLS_SERVER, .cert_file = coord_cert, .key_file = coord_key, .ca_file = ca_cert,
                      .peer_mode = KF_TLS_PEER_REQUIRED};
    kf_tls_opts co = {.role = KF_TLS_CLIENT, .cert_file = node_cert, .key_file = node_key, .ca_file = ca_cert};
    SSL_CTX *sctx = NULL, *cctx = NULL;
    kf_err err = {0};
    assert_int_equal(kf_tls_ctx_new(&so, &sctx, &err), 0);
    assert_int_equal(kf_tls_ctx_new(&co, &cctx, &err), 0);
    SSL *server = SSL_new(sctx), *client = SSL_new(cctx);
    BIO *sb = NULL, *cb = NULL;
    assert_int_equal(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
    SSL_set_bio(server, sb, sb);
    SSL_set_bio(client, cb, cb);
    SSL_set_accept_state(server);
    SSL_set_connect_state(client);
    assert_int_equal(handshake(server, client), 0);
    assert_int_equal(SSL_version(server), TLS1_3_VERSION);
    const kf_identity *id = NULL;
    assert_int_equal(kf_tls_peer_identity(server, &id), 0);
    assert_int_equal(id->kind, KF_PEER_NODE);
    assert_string_equal(id->name, "web-01");
    /* The client's key was parsed in the servers' own context. */
    X509 *peer = SSL_get0_peer_certificate(server);
    assert_non_null(peer);
    EVP_PKEY *key = X509_get0_pubkey(peer);
    assert_non_null(key);
    assert_non_null(EVP_PKEY_get0_provider(key));
    assert_string_equal(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key)), KF_TLS_PROVIDER_NAME);
    SSL_free(server);
    SSL_free(client);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offers_only_tls_key_types),
        cmocka_unit_test(test_certificate_parses_and_verifies),
        cmocka_unit_test(test_mtls_handshake),
    };
    return cmocka_run_group_tests_name("tls_libctx", tests, setup, tmpdir_teardown);
}
