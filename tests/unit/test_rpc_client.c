/* The coordinator client's list of servers (common/kf_rpc_client.c): addresses a leader hint or a
 * preference adds beyond the configured ones are bounded (review rev40 F7), and a full list still
 * finds the addresses it holds. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "kf_rpc_client.h"

#include "kf_test_tmpdir.h"

/* A self-signed CA certificate, the one file a client without a certificate of its own needs. */
static void write_ca(const char *path)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    assert_non_null(k);
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)"test CA", -1, -1,
                               0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_set_pubkey(x, k);
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(k);
}

static void test_hinted_servers_bounded(void **state)
{
    (void)state;
    char ca[128];
    snprintf(ca, sizeof(ca), "%s/ca.crt", tmpdir);
    write_ca(ca);
    const char *servers[] = {"127.0.0.1:7001", "127.0.0.1:7002"};
    kf_rpc_opts o = {.servers = servers, .n_servers = 2, .ca_file = ca};
    kf_rpc_client *c = NULL;
    kf_err err = {0};
    assert_int_equal(kf_rpc_client_new(&o, &c, &err), 0);
    char addr[32];
    for (int i = 0; i < KF_RPC_MAX_HINTED; i++) {
        snprintf(addr, sizeof(addr), "127.0.1.%d:7000", i + 1);
        assert_int_equal(kf_rpc_client_prefer(c, addr), 0);
        assert_string_equal(kf_rpc_client_current(c), addr);
    }
    /* Full: a new address is refused and the current server stays. */
    for (int i = 0; i < 3 * KF_RPC_MAX_HINTED; i++) {
        snprintf(addr, sizeof(addr), "127.0.2.%d:7000", i + 1);
        assert_int_equal(kf_rpc_client_prefer(c, addr), -ENOSPC);
    }
    snprintf(addr, sizeof(addr), "127.0.1.%d:7000", KF_RPC_MAX_HINTED);
    assert_string_equal(kf_rpc_client_current(c), addr);
    /* What it holds is still found: a configured server and an added one. */
    assert_int_equal(kf_rpc_client_prefer(c, "127.0.0.1:7002"), 0);
    assert_string_equal(kf_rpc_client_current(c), "127.0.0.1:7002");
    assert_int_equal(kf_rpc_client_prefer(c, "127.0.1.1:7000"), 0);
    assert_string_equal(kf_rpc_client_current(c), "127.0.1.1:7000");
    kf_rpc_client_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hinted_servers_bounded),
    };
    return cmocka_run_group_tests_name("rpc_client", tests, tmpdir_setup, tmpdir_teardown);
}
