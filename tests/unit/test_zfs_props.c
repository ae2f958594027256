/* The ZFS probe's parser (agent/zfs_props.c) on a tpm_and_network rotation's properties: the
 * new key's TPM part (org.keyfleet:tpm-next) is read only beside wrapped-next and a TPM part,
 * and only in a TPM part's syntax; anything else in it is refused (bad input changes nothing). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "zfs_props.h"

#define HEAD                                                                                                           \
    "guid\t1234567890123456789\nkeystatus\tavailable\nencryptionroot\ttank/secret\n"                                    \
    "org.keyfleet:volume-id\t1234567890123456789\n"                                                                    \
    "org.keyfleet:wrapped-key\tkf:local:v1:c2VjcmV0LW5vbmNlLWNpcGhlcnRleHQtdGFn:0011223344556677\n"
#define PART "org.keyfleet:tpm-sealed\tkftpmnet1:AAECAwQFBgc=\n"
#define COPY "org.keyfleet:tpm-sealed\tkftpm1:AAECAwQFBgc=\n"
#define NEXT "org.keyfleet:wrapped-next\tkf:local:v1:bmV4dC1ub25jZS1jaXBoZXJ0ZXh0LXRhZw==:8899aabbccddeeff\n"
#define TPM_NEXT "org.keyfleet:tpm-next\tkftpmnet1:CAkKCwwNDg8=\n"

static int parse(const char *text, kfa_volume *v)
{
    char *copy = strdup(text);
    assert_non_null(copy);
    memset(v, 0, sizeof(*v));
    snprintf(v->path, sizeof(v->path), "tank/secret");
    kf_err err = {0};
    int r = kfa_zfs_parse_probe(v, copy, &err);
    free(copy);
    return r;
}

static void clear(kfa_volume *v)
{
    free(v->wrapped);
    free(v->tpm_blob);
    free(v->tpm_part);
    free(v->wrapped_next);
    free(v->tpm_part_next);
}

static void staged_part_read_beside_wrapped_next(void **state)
{
    (void)state;
    kfa_volume v;
    assert_int_equal(parse(HEAD PART NEXT TPM_NEXT, &v), 0);
    assert_non_null(v.tpm_part);
    assert_non_null(v.wrapped_next);
    assert_string_equal(v.tpm_part_next, "kftpmnet1:CAkKCwwNDg8=");
    clear(&v);
}

static void staged_part_alone_ignored(void **state)
{
    (void)state;
    kfa_volume v;
    /* left behind by a run cut off between removing wrapped-next and tpm-next */
    assert_int_equal(parse(HEAD PART TPM_NEXT, &v), 0);
    assert_non_null(v.tpm_part);
    assert_null(v.tpm_part_next);
    clear(&v);
    /* beside a whole TPM copy (no TPM part): never taken for a part */
    assert_int_equal(parse(HEAD COPY NEXT TPM_NEXT, &v), 0);
    assert_null(v.tpm_part);
    assert_null(v.tpm_part_next);
    clear(&v);
}

static void staged_part_syntax_checked(void **state)
{
    (void)state;
    kfa_volume v;
    assert_int_equal(parse(HEAD PART NEXT "org.keyfleet:tpm-next\tkftpm1:CAkKCwwNDg8=\n", &v), -EBADMSG);
    assert_null(v.tpm_part_next);
    clear(&v);
    assert_int_equal(parse(HEAD PART NEXT "org.keyfleet:tpm-next\tkftpmnet1:not base64!\n", &v), -EBADMSG);
    clear(&v);
    assert_int_equal(parse(HEAD PART NEXT TPM_NEXT TPM_NEXT, &v), -EIO); /* named twice */
    clear(&v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(staged_part_read_beside_wrapped_next),
        cmocka_unit_test(staged_part_alone_ignored),
        cmocka_unit_test(staged_part_syntax_checked),
    };
    return cmocka_run_group_tests_name("zfs_props", tests, NULL, NULL);
}
