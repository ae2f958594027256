/* TSS2 PRIVATE KEY parsing (kf_tpmkey_parse): a real blob from tpm2-openssl, and garbage,
 * truncations and every single-byte corruption of it, which must be refused or parsed, never
 * crash (run under ASan in the sanitizer build). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "kf_tpmkey.h"

/* Made by `openssl genpkey -provider tpm2 -algorithm EC -pkeyopt group:P-256` against swtpm. */
#define KEY_PEM \
    "-----BEGIN TSS2 PRIVATE KEY-----\n" \
    "MIHwBgZngQUKAQOgAwEBAQIEQAAAAQRYAFYAIwALAAYAcgAAABAAEAADABAAIAHI\n" \
    "u+MEcrxkpcJ7jBcJ/hlBXx4qv4KRfwbhHbQuvgnKACAXxBZ6As5rB7ts3s6H5KSR\n" \
    "NBDwUQUO155cvg+HH6JWmgSBgAB+ACAFf9N2OuiwAwtsLaF8pQJM+arO59QO7n+3\n" \
    "EVFWb7g7UgAQeAW4Eem4gHJN4VnrR3cAOtGi/LmyT6Yqwf9JnMBrfp2MtS+446cc\n" \
    "1ArckCEn4o+L2TZaA9rH7mexRC20v5xaEo6kR35d7eoGx6SNcaCbmnoY/OaU5b+y\n" \
    "Iayz\n" \
    "-----END TSS2 PRIVATE KEY-----\n"
static const char KEY[] = KEY_PEM;

static void parses_real_key(void **state)
{
    (void)state;
    kf_tpmkey_info info;
    kf_err err = {0};
    assert_int_equal(kf_tpmkey_parse(KEY, strlen(KEY), &info, &err), 0);
    assert_int_equal(info.parent, 0x40000001);
    assert_int_equal(info.type, 0x0023);
    assert_int_equal(info.curve, 0x0003);
    assert_int_equal(info.attributes, 0x00060072);
    assert_int_equal(info.pub_len, 88);
}

static void refuses_garbage(void **state)
{
    (void)state;
    kf_tpmkey_info info;
    kf_err err = {0};
    assert_int_equal(kf_tpmkey_parse("", 0, &info, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "not a TPM key"));
    const char *other = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    assert_int_equal(kf_tpmkey_parse(other, strlen(other), &info, &err), -EINVAL);
    const char *empty = "-----BEGIN TSS2 PRIVATE KEY-----\nMAA=\n-----END TSS2 PRIVATE KEY-----\n";
    assert_int_equal(kf_tpmkey_parse(empty, strlen(empty), &info, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "malformed"));
}

/* Re-encodes der as a TSS2 PEM and parses it. */
static int parse_der(const unsigned char *der, long len, kf_tpmkey_info *info, kf_err *err)
{
    BIO *b = BIO_new(BIO_s_mem());
    assert_non_null(b);
    assert_true(PEM_write_bio(b, "TSS2 PRIVATE KEY", "", der, len) > 0);
    char *pem;
    long n = BIO_get_mem_data(b, &pem);
    int r = kf_tpmkey_parse(pem, (size_t)n, info, err);
    BIO_free(b);
    return r;
}

static void survives_every_corruption(void **state)
{
    (void)state;
    BIO *b = BIO_new_mem_buf(KEY, -1);
    char *name = NULL, *header = NULL;
    unsigned char *der = NULL;
    long len = 0;
    assert_int_equal(PEM_read_bio(b, &name, &header, &der, &len), 1);
    kf_tpmkey_info info;
    kf_err err = {0};
    assert_int_equal(parse_der(der, len, &info, &err), 0);
    for (long cut = 1; cut < len; cut++)
        assert_int_equal(parse_der(der, cut, &info, &err), -EINVAL);
    int ok = 0;
    for (long i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            der[i] ^= (unsigned char)(1u << bit);
            ok += parse_der(der, len, &info, &err) == 0;
            der[i] ^= (unsigned char)(1u << bit);
        }
    }
    /* Flips inside the key material or the attributes still parse; structural ones do not. */
    assert_true(ok > 0 && ok < len * 8);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(der);
    BIO_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_real_key),
        cmocka_unit_test(refuses_garbage),
        cmocka_unit_test(survives_every_corruption),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
