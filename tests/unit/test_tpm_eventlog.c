/* TCG event log replay (common/kf_tpm_eventlog.c). The log is built here byte by byte in the
 * crypto-agile format firmware writes (a Spec ID Event03 header listing the SHA-1 and SHA-256
 * banks, a StartupLocality event, then TCG_PCR_EVENT2 records with both digests), and the
 * expected PCR values were computed apart (Python hashlib: PCR = SHA-256(PCR || digest), PCR 0
 * starting at locality 3), not with the code under test. Every truncation and every single-byte
 * change of the log is replayed too: an error or other values, never a crash or a read past it. */
#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "kf_tpm_eventlog.h"

#define PCR0 "d3404d4d616e97ba02cdcc905e67a51ba060d1d63f2aa37f595fa64e97d4f976"
#define PCR4 "bcc99d8a9537dc3d34c69593bb04e8b98806761d994c4cc365d69ac7abaece9f"
#define PCR7 "8ad7d7a2492c8b317b71a6c08976224f24c2bf2cfd55a10a59c1aa3568eac049"

typedef struct buf {
    unsigned char b[4096];
    size_t n;
} buf;

static void put(buf *o, const void *p, size_t n)
{
    assert_true(o->n + n <= sizeof(o->b));
    memcpy(o->b + o->n, p, n);
    o->n += n;
}
static void u32(buf *o, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    put(o, b, 4);
}
static void u16(buf *o, uint16_t v)
{
    unsigned char b[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    put(o, b, 2);
}

static void header(buf *o, int sha256)
{
    u32(o, 0);
    u32(o, 3); /* EV_NO_ACTION */
    unsigned char zero[20] = {0};
    put(o, zero, 20);
    buf ev = {.n = 0};
    put(&ev, "Spec ID Event03", 16);
    u32(&ev, 0);                                   /* platformClass */
    unsigned char v[4] = {0, 2, 0, 2}; /* minor, major, errata, uintnSize */
    put(&ev, v, 4);
    u32(&ev, sha256 ? 2 : 1);
    u16(&ev, 0x0004), u16(&ev, 20); /* SHA-1 */
    if (sha256)
        u16(&ev, 0x000b), u16(&ev, 32);
    unsigned char vendor = 0;
    put(&ev, &vendor, 1);
    u32(o, (uint32_t)ev.n);
    put(o, ev.b, ev.n);
}

/* An event measuring text: its digests are those of text (SHA-1 and SHA-256). */
static void event(buf *o, uint32_t pcr, uint32_t type, const char *text, size_t len)
{
    unsigned char d1[20], d256[32];
    EVP_Digest(text, len, d1, NULL, EVP_sha1(), NULL);
    EVP_Digest(text, len, d256, NULL, EVP_sha256(), NULL);
    u32(o, pcr);
    u32(o, type);
    u32(o, 2);
    u16(o, 0x0004);
    put(o, d1, 20);
    u16(o, 0x000b);
    put(o, d256, 32);
    u32(o, (uint32_t)len);
    put(o, text, len);
}

static void real_log(buf *o)
{
    o->n = 0;
    header(o, 1);
    /* StartupLocality (EV_NO_ACTION, not extended): PCR 0 starts at locality 3. */
    u32(o, 0), u32(o, 3), u32(o, 2), u16(o, 0x0004);
    unsigned char z[32] = {0};
    put(o, z, 20);
    u16(o, 0x000b);
    put(o, z, 32);
    u32(o, 17);
    put(o, "StartupLocality\0\3", 17);
    event(o, 0, 0x00000008, "crtm version", 12);     /* EV_S_CRTM_VERSION */
    event(o, 7, 0x80000001, "SecureBoot=1", 12);     /* EV_EFI_VARIABLE_DRIVER_CONFIG */
    event(o, 0, 0x00000004, "\0\0\0\0", 4);          /* EV_SEPARATOR */
    event(o, 7, 0x00000004, "\0\0\0\0", 4);
    event(o, 4, 0x80000003, "shimx64.efi", 11);      /* EV_EFI_BOOT_SERVICES_APPLICATION */
    event(o, 4, 0x80000003, "grubx64.efi", 11);
}

static void hex(const char *h, unsigned char out[32])
{
    for (int i = 0; i < 32; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (unsigned char)v;
    }
}

static void test_replay(void **state)
{
    (void)state;
    buf log;
    real_log(&log);
    kf_tpm_pcrs got;
    size_t n;
    kf_err err = {0};
    assert_int_equal(kf_tpm_eventlog_replay(log.b, log.n, &got, &n, &err), 0);
    assert_int_equal(n, 7);
    assert_int_equal(got.mask, (1u << 0) | (1u << 4) | (1u << 7));
    kf_tpm_pcrs quoted = {.mask = (1u << 0) | (1u << 2) | (1u << 4) | (1u << 7)};
    hex(PCR0, quoted.values[0]);
    hex(PCR4, quoted.values[4]);
    hex(PCR7, quoted.values[7]);
    /* PCR 2 quoted, never extended in the log: zeros on both sides. */
    assert_int_equal(kf_tpm_eventlog_mismatch(&got, &quoted), 0);
    quoted.values[4][5] ^= 1;
    assert_int_equal(kf_tpm_eventlog_mismatch(&got, &quoted), 1u << 4);
    quoted.values[4][5] ^= 1;
    quoted.values[2][0] = 1;
    assert_int_equal(kf_tpm_eventlog_mismatch(&got, &quoted), 1u << 2);
}

/* A log whose events were reordered or edited replays to other values. */
static void test_edited(void **state)
{
    (void)state;
    buf log;
    real_log(&log);
    unsigned char *shim = memmem(log.b, log.n, "shimx64", 7);
    assert_non_null(shim);
    /* the event data alone changes nothing (the digest is what is extended) */
    shim[0] = 'S';
    kf_tpm_pcrs got, quoted = {.mask = 1u << 4};
    hex(PCR4, quoted.values[4]);
    assert_int_equal(kf_tpm_eventlog_replay(log.b, log.n, &got, NULL, NULL), 0);
    assert_int_equal(kf_tpm_eventlog_mismatch(&got, &quoted), 0);
    /* a digest changed: PCR 4 no longer replays to the quoted value */
    log.b[shim - log.b - 4 - 32] ^= 0x80;
    assert_int_equal(kf_tpm_eventlog_replay(log.b, log.n, &got, NULL, NULL), 0);
    assert_int_equal(kf_tpm_eventlog_mismatch(&got, &quoted), 1u << 4);
}

static void test_refused(void **state)
{
    (void)state;
    buf log;
    kf_tpm_pcrs got;
    kf_err err = {0};
    log.n = 0;
    header(&log, 0); /* SHA-1 only */
    assert_int_equal(kf_tpm_eventlog_replay(log.b, log.n, &got, NULL, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "no SHA-256 bank"));
    log.n = 0;
    event(&log, 0, 8, "x", 1); /* no header */
    assert_int_equal(kf_tpm_eventlog_replay(log.b, log.n, &got, NULL, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "Spec ID"));
    real_log(&log);
    event(&log, 24, 8, "x", 1);
    assert_int_equal(kf_tpm_eventlog_replay(log.b, log.n, &got, NULL, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "PCR 24"));
    assert_int_equal(got.mask, 0); /* nothing partial */
    assert_int_equal(kf_tpm_eventlog_replay(NULL, 0, &got, NULL, &err), -EINVAL);
}

/* Every truncation fails (each cut ends inside an event or the header); every single-byte
 * change either fails or replays, and nothing reads outside the buffer (ASan build). */
static void test_truncated_and_flipped(void **state)
{
    (void)state;
    buf log;
    real_log(&log);
    kf_tpm_pcrs got;
    size_t n_ends = 0;
    /* the offsets where an event ends are valid cuts */
    for (size_t cut = 1; cut < log.n; cut++) {
        unsigned char *copy = malloc(cut);
        memcpy(copy, log.b, cut);
        int r = kf_tpm_eventlog_replay(copy, cut, &got, NULL, NULL);
        free(copy);
        if (r == 0) {
            n_ends++;
        } else {
            assert_int_equal(r, -EINVAL);
        }
    }
    assert_int_equal(n_ends, 7); /* after the header and after each of the first 6 of 7 events */
    for (size_t i = 0; i < log.n; i++) {
        unsigned char *copy = malloc(log.n);
        memcpy(copy, log.b, log.n);
        copy[i] ^= 0xff;
        int r = kf_tpm_eventlog_replay(copy, log.n, &got, NULL, NULL);
        free(copy);
        assert_true(r == 0 || r == -EINVAL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay),
        cmocka_unit_test(test_edited),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_truncated_and_flipped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
