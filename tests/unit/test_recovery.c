/* Recovery key text (common/kf_recovery.c, docs/recovery.md): round trips, the canonical form,
 * forgiving input, and the checks: every single mistyped symbol is caught in its own group, a
 * group typed in another's place is caught, as is any neighbour swap within a group except of
 * symbols 16 apart, which the whole-key check then catches 15 times in 16. */
#include <errno.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/rand.h>

#include "kf_recovery.h"

static const char ALPHABET[] = "0123456789abcdefghjkmnpqrstvwxyz";
/* Key bytes 0, 1, ..., 31, encoded by an independent reading of docs/recovery.md (Python). */
#define KF_RECOVERY_VECTOR "000gg-40r4z-0m30s-e2098-185gy-r38ee-1w81e-24gkm-2gahk-c5rrt-34d1x-p70x3-3rfh1"

static int value(char c) { return (int)(strchr(ALPHABET, c) - ALPHABET); }

static void test_round_trip(void **state)
{
    (void)state;
    for (int i = 0; i < 2000; i++) {
        uint8_t key[32], back[32];
        char text[KF_RECOVERY_TEXT_LEN + 1];
        if (i == 0)
            memset(key, 0, sizeof(key));
        else if (i == 1)
            memset(key, 0xff, sizeof(key));
        else
            assert_int_equal(RAND_bytes(key, sizeof(key)), 1);
        kf_recovery_encode(key, text);
        assert_int_equal(strlen(text), KF_RECOVERY_TEXT_LEN);
        for (int g = 0; g < KF_RECOVERY_GROUPS; g++) {
            for (int j = 0; j < 5; j++)
                assert_non_null(strchr(ALPHABET, text[g * 6 + j]));
            if (g < KF_RECOVERY_GROUPS - 1)
                assert_int_equal(text[g * 6 + 5], '-');
        }
        kf_err err = {0};
        assert_int_equal(kf_recovery_decode(text, back, &err), 0);
        assert_memory_equal(key, back, sizeof(key));
    }
}

/* A known key's text, so the format cannot drift unnoticed (keys escrowed before a change must
 * still read). */
static void test_vector(void **state)
{
    (void)state;
    uint8_t key[32];
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)i;
    char text[KF_RECOVERY_TEXT_LEN + 1];
    kf_recovery_encode(key, text);
    assert_string_equal(text, KF_RECOVERY_VECTOR);
}

static void test_forgiving_input(void **state)
{
    (void)state;
    uint8_t key[32], back[32];
    assert_int_equal(RAND_bytes(key, sizeof(key)), 1);
    char text[KF_RECOVERY_TEXT_LEN + 1], typed[2 * KF_RECOVERY_TEXT_LEN];
    kf_recovery_encode(key, text);
    /* upper case, spaces for dashes, 0 typed as O and 1 as I or l */
    size_t n = 0;
    for (const char *p = text; *p; p++) {
        char c = *p;
        if (c == '-')
            c = ' ';
        else if (c == '0')
            c = 'O';
        else if (c == '1')
            c = (n % 2) ? 'I' : 'l';
        else if (c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        typed[n++] = c;
    }
    typed[n] = '\0';
    kf_err err = {0};
    assert_int_equal(kf_recovery_decode(typed, back, &err), 0);
    assert_memory_equal(key, back, sizeof(key));
    /* no separators at all */
    n = 0;
    for (const char *p = text; *p; p++)
        if (*p != '-')
            typed[n++] = *p;
    typed[n] = '\0';
    assert_int_equal(kf_recovery_decode(typed, back, &err), 0);
    assert_memory_equal(key, back, sizeof(key));
}

static void test_refusals(void **state)
{
    (void)state;
    uint8_t key[32], back[32];
    char text[KF_RECOVERY_TEXT_LEN + 1], bad[KF_RECOVERY_TEXT_LEN + 8];
    memset(key, 0x5a, sizeof(key));
    kf_recovery_encode(key, text);
    kf_err err = {0};
    snprintf(bad, sizeof(bad), "%s", text);
    bad[3] = 'u';
    assert_int_equal(kf_recovery_decode(bad, back, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "symbol 4 is not one of"));
    for (int i = 0; i < 32; i++)
        assert_int_equal(back[i], 0); /* wiped on failure */
    snprintf(bad, sizeof(bad), "%.*s", KF_RECOVERY_TEXT_LEN - 1, text);
    assert_int_equal(kf_recovery_decode(bad, back, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "64 symbols; a recovery key has 65"));
    snprintf(bad, sizeof(bad), "%sx", text);
    assert_int_equal(kf_recovery_decode(bad, back, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "more than 65 symbols"));
    assert_int_equal(kf_recovery_decode("", back, &err), -EINVAL);
}

/* Every single symbol mistyped, at every place, as every other symbol: caught, in its group. */
static void test_every_single_error(void **state)
{
    (void)state;
    uint8_t key[32], back[32];
    assert_int_equal(RAND_bytes(key, sizeof(key)), 1);
    char text[KF_RECOVERY_TEXT_LEN + 1], bad[KF_RECOVERY_TEXT_LEN + 1], want[32];
    kf_recovery_encode(key, text);
    for (int pos = 0; pos < KF_RECOVERY_TEXT_LEN; pos++) {
        if (text[pos] == '-')
            continue;
        snprintf(want, sizeof(want), "group %d of 13 does not check", pos / 6 + 1);
        for (int s = 0; s < 32; s++) {
            if (ALPHABET[s] == text[pos])
                continue;
            memcpy(bad, text, sizeof(bad));
            bad[pos] = ALPHABET[s];
            kf_err err = {0};
            assert_int_equal(kf_recovery_decode(bad, back, &err), -EINVAL);
            assert_non_null(strstr(err.msg, want));
        }
    }
}

/* Two groups swapped: caught (the check covers the group's place). */
static void test_groups_swapped(void **state)
{
    (void)state;
    uint8_t key[32], back[32];
    assert_int_equal(RAND_bytes(key, sizeof(key)), 1);
    char text[KF_RECOVERY_TEXT_LEN + 1], bad[KF_RECOVERY_TEXT_LEN + 1];
    kf_recovery_encode(key, text);
    for (int a = 0; a < KF_RECOVERY_GROUPS; a++)
        for (int b = a + 1; b < KF_RECOVERY_GROUPS; b++) {
            if (memcmp(text + a * 6, text + b * 6, 5) == 0)
                continue;
            memcpy(bad, text, sizeof(bad));
            memcpy(bad + a * 6, text + b * 6, 5);
            memcpy(bad + b * 6, text + a * 6, 5);
            kf_err err = {0};
            assert_int_equal(kf_recovery_decode(bad, back, &err), -EINVAL);
        }
}

/* Neighbours swapped within a group: caught unless their values differ by 16; over many keys,
 * the whole-key check catches most of those too. */
static void test_neighbours_swapped(void **state)
{
    (void)state;
    int missed = 0, caught_whole = 0, of16 = 0;
    for (int k = 0; k < 300; k++) {
        uint8_t key[32], back[32];
        assert_int_equal(RAND_bytes(key, sizeof(key)), 1);
        char text[KF_RECOVERY_TEXT_LEN + 1], bad[KF_RECOVERY_TEXT_LEN + 1];
        kf_recovery_encode(key, text);
        for (int pos = 0; pos + 1 < KF_RECOVERY_TEXT_LEN; pos++) {
            if (text[pos] == '-' || text[pos + 1] == '-' || text[pos] == text[pos + 1])
                continue;
            memcpy(bad, text, sizeof(bad));
            bad[pos] = text[pos + 1];
            bad[pos + 1] = text[pos];
            kf_err err = {0};
            int r = kf_recovery_decode(bad, back, &err);
            int d = value(text[pos]) - value(text[pos + 1]);
            bool data_pair = pos % 6 < 3; /* two data symbols; with the check symbol, any swap fails or is 16 apart */
            if ((d == 16 || d == -16) && data_pair) {
                of16++;
                if (r != 0 && strstr(err.msg, "as a whole") != NULL)
                    caught_whole++;
                else if (r == 0)
                    missed++;
            } else if (data_pair) {
                assert_int_equal(r, -EINVAL);
                assert_non_null(strstr(err.msg, "does not check"));
            }
        }
    }
    assert_true(of16 > 100);
    assert_true(caught_whole >= of16 * 3 / 4); /* 15 in 16 expected */
    assert_int_equal(missed + caught_whole, of16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),        cmocka_unit_test(test_vector),
        cmocka_unit_test(test_forgiving_input),   cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_every_single_error), cmocka_unit_test(test_groups_swapped),
        cmocka_unit_test(test_neighbours_swapped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
