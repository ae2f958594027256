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

/* Where a server's peer keys come from: the servers' own context, or, under a configuration that
 * is not OpenSSL's default (the second run, unit.test_tls_libctx_config), the default one. */
static const char *want_provider = KF_TLS_PROVIDER_NAME;

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
    static const char *const offered[] = {"EC", "RSA", "RSA-PSS", "ED25519", "ED448", "X25519", "X448"};
    static const char *const withheld[] = {"DSA", "DH", "DHX", "SM2", "HMAC", "HKDF", "TLS1-PRF"};
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
    /* A certificate of a key type the context withholds (a DH key, signed by any key: only the
     * parse matters here) parses, but has no usable key. */
    EVP_PKEY_CTX *gc = EVP_PKEY_CTX_new_from_name(NULL, "DH", NULL);
    EVP_PKEY *dh = NULL, *signer = EVP_EC_gen("P-256");
    assert_non_null(gc);
    assert_int_equal(EVP_PKEY_keygen_init(gc), 1);
    assert_int_equal(EVP_PKEY_CTX_set_group_name(gc, "ffdhe2048"), 1);
    assert_int_equal(EVP_PKEY_keygen(gc, &dh), 1);
    EVP_PKEY_CTX_free(gc);
    assert_non_null(signer);
    X509 *self = X509_new();
    assert_non_null(self);
    X509_set_version(self, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(self), 1);
    X509_gmtime_adj(X509_getm_notBefore(self), 0);
    X509_gmtime_adj(X509_getm_notAfter(self), 3600);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(self), "CN", MBSTRING_ASC, (const unsigned char *)"dh", -1, -1, 0);
    X509_set_issuer_name(self, X509_get_subject_name(self));
    assert_int_equal(X509_set_pubkey(self, dh), 1);
    assert_true(X509_sign(self, signer, EVP_sha256()) > 0);
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
    EVP_PKEY_free(dh);
    EVP_PKEY_free(signer);
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

/* A certificate of the test CA for a key made here (keyfleetctl makes P-256 keys only). */
static void issue_for(EVP_PKEY *key, kf_peer_kind kind, const char *name, const char *cert, const char *key_file)
{
    kfctl_cert_opts o = {.kind = kind, .name = name, .days = 2, .public_key = key};
    assert_int_equal(kfctl_cert_issue(ca_cert, ca_key, &o, cert, NULL, false, NULL), 0);
    FILE *f = fopen(key_file, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

/* A server context from kf_tls_ctx_new and a client's, one handshake over a BIO pair; the
 * server's view of the client: its identity, and where its key was parsed. */
static void handshake_as(const char *s_cert, const char *s_key, const char *c_cert, const char *c_key,
                         const char *want_node, const char *want_key_type)
{
    kf_tls_opts so = {.role = KF_TLS_SERVER, .cert_file = s_cert, .key_file = s_key, .ca_file = ca_cert,
                      .peer_mode = KF_TLS_PEER_REQUIRED};
    kf_tls_opts co = {.role = KF_TLS_CLIENT, .cert_file = c_cert, .key_file = c_key, .ca_file = ca_cert};
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
    assert_string_equal(id->name, want_node);
    /* The client's key was parsed in the servers' own context. */
    X509 *peer = SSL_get0_peer_certificate(server);
    assert_non_null(peer);
    EVP_PKEY *key = X509_get0_pubkey(peer);
    assert_non_null(key);
    assert_true(EVP_PKEY_is_a(key, want_key_type));
    assert_non_null(EVP_PKEY_get0_provider(key));
    assert_string_equal(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key)), want_provider);
    SSL_free(server);
    SSL_free(client);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

static void test_mtls_handshake(void **state)
{
    (void)state;
    handshake_as(coord_cert, coord_key, node_cert, node_key, "web-01", "EC");
}

/* An operator's own CA may issue other key types (review rev43, F1 and F3): an RSA client (its
 * TLS 1.3 signature is RSA-PSS), and a coordinator whose key is Ed25519. */
static void test_other_key_types(void **state)
{
    (void)state;
    char cert[300], key[300], scert[300], skey[300];
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    assert_non_null(rsa);
    snprintf(cert, sizeof(cert), "%s/rsa-node.crt", tmpdir);
    snprintf(key, sizeof(key), "%s/rsa-node.key", tmpdir);
    issue_for(rsa, KF_PEER_NODE, "rsa-node", cert, key);
    handshake_as(coord_cert, coord_key, cert, key, "rsa-node", "RSA");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    snprintf(scert, sizeof(scert), "%s/ed-c2.crt", tmpdir);
    snprintf(skey, sizeof(skey), "%s/ed-c2.key", tmpdir);
    issue_for(ed, KF_PEER_COORDINATOR, "c2", scert, skey);
    handshake_as(scert, skey, node_cert, node_key, "web-01", "EC");
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ed);
}

/* Run with OPENSSL_CONF naming a configuration that loads the base provider as well: the servers
 * keep the default context, and still handshake (review rev43, F2: a private context would not
 * follow openssl.cnf, FIPS included). */
static void test_other_configuration(void **state)
{
    (void)state;
    assert_null(kf_tls_server_libctx());
    want_provider = "default";
    handshake_as(coord_cert, coord_key, node_cert, node_key, "web-01", "EC");
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--configured") == 0) {
        const struct CMUnitTest configured[] = {cmocka_unit_test(test_other_configuration)};
        return cmocka_run_group_tests_name("tls_libctx_config", configured, setup, tmpdir_teardown);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offers_only_tls_key_types),
        cmocka_unit_test(test_certificate_parses_and_verifies),
        cmocka_unit_test(test_mtls_handshake),
        cmocka_unit_test(test_other_key_types),
    };
    return cmocka_run_group_tests_name("tls_libctx", tests, setup, tmpdir_teardown);
}
