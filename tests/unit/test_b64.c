/* common/kf_b64.c: round trips of every length across the decoder's chunk boundaries (it decodes
 * 2048 characters at a time) up to the limit, in both alphabets, against OpenSSL's encoder; the
 * limit itself (KF_B64_DECODE_MAX); and the strictness that stays (bad characters, padding in
 * the middle, impossible lengths, a short output buffer). An EK certificate chain or a TPM blob
 * of several KiB decodes; before the review of #16 (F5) anything over 2048 characters failed. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/rand.h>

#include "kf_b64.h"

static void round_trip(size_t n, bool url)
{
    uint8_t *in = malloc(n + 1), *back = malloc(n + 1);
    size_t cap = kf_b64_encoded_len(n, false) + 1;
    char *enc = malloc(cap);
    assert_non_null(in);
    assert_non_null(back);
    assert_non_null(enc);
    assert_int_equal(RAND_bytes(in, (int)n + 1), 1);
    int len = kf_b64_encode(in, n, url, enc, cap);
    assert_int_equal(len, (int)kf_b64_encoded_len(n, url));
    assert_int_equal(kf_b64_decode(enc, (size_t)len, url, back, n), (int)n);
    assert_memory_equal(in, back, n);
    if (n > 0)
        assert_int_equal(kf_b64_decode(enc, (size_t)len, url, back, n - 1), -ENOSPC);
    free(in);
    free(back);
    free(enc);
}

static void test_lengths_across_chunks(void **state)
{
    (void)state;
    for (size_t n = 0; n < 40; n++) {
        round_trip(n, false);
        round_trip(n, true);
    }
    /* Around the chunk (2048 characters = 1536 bytes) and its multiples. */
    for (size_t base = 1536; base <= 4 * 1536; base += 1536)
        for (size_t n = base - 4; n <= base + 4; n++) {
            round_trip(n, false);
            round_trip(n, true);
        }
}

static void test_large_blobs(void **state)
{
    (void)state;
    round_trip(5000, false); /* an EK certificate with its chain */
    round_trip(12000, true);
    size_t max_bytes = KF_B64_DECODE_MAX / 4 * 3;
    round_trip(max_bytes, false); /* exactly the limit */
}

static void test_limit(void **state)
{
    (void)state;
    size_t n = KF_B64_DECODE_MAX + 4;
    char *enc = malloc(n);
    uint8_t *out = malloc(n);
    assert_non_null(enc);
    assert_non_null(out);
    memset(enc, 'A', n);
    assert_int_equal(kf_b64_decode(enc, n, false, out, n), -EINVAL);
    assert_int_equal(kf_b64_decode(enc, KF_B64_DECODE_MAX, false, out, n), KF_B64_DECODE_MAX / 4 * 3);
    free(enc);
    free(out);
}

static void test_strict(void **state)
{
    (void)state;
    uint8_t out[4096];
    assert_int_equal(kf_b64_decode("QUJD", 4, false, out, sizeof(out)), 3);
    assert_int_equal(kf_b64_decode("QUI=", 4, false, out, sizeof(out)), 2);
    assert_int_equal(kf_b64_decode("QU==", 4, false, out, sizeof(out)), 1);
    assert_int_equal(kf_b64_decode("QUJ", 3, false, out, sizeof(out)), -EINVAL);
    assert_int_equal(kf_b64_decode("Q===", 4, false, out, sizeof(out)), -EINVAL);
    assert_int_equal(kf_b64_decode("Q=JD", 4, false, out, sizeof(out)), -EINVAL);
    assert_int_equal(kf_b64_decode("QU I", 4, false, out, sizeof(out)), -EINVAL);
    assert_int_equal(kf_b64_decode("QUJD", 4, true, out, sizeof(out)), 3);
    assert_int_equal(kf_b64_decode("Q", 1, true, out, sizeof(out)), -EINVAL);
    assert_int_equal(kf_b64_decode("QU+D", 4, true, out, sizeof(out)), -EINVAL);
    /* A bad character far past the first chunk is still found. */
    char big[6000];
    memset(big, 'A', sizeof(big));
    big[5000] = '*';
    assert_int_equal(kf_b64_decode(big, sizeof(big), false, out, sizeof(out)), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lengths_across_chunks),
        cmocka_unit_test(test_large_blobs),
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_strict),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
