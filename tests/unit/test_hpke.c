/* HPKE against RFC 9180 A.1.1 (AES-128-GCM) and A.2.1 (ChaCha20-Poly1305): every listed key
 * schedule value, encryption and export; then tampering with ct, enc, info and aad. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kf_hpke.h"

#define MAXV 256

typedef struct kv {
    char key[32];
    uint8_t val[MAXV];
    size_t len;
} kv;

typedef struct section {
    char name[64];
    kv kvs[20];
    size_t n;
} section;

static section sections[64];
static size_t n_sections;

static int unhex(const char *s, uint8_t *out, size_t *len)
{
    size_t n = strlen(s);
    if (n % 2 != 0 || n / 2 > MAXV)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return 0;
}

static void load_vectors(void)
{
    FILE *f = fopen(KF_TEST_VECTORS "/hpke-rfc9180.txt", "r");
    assert_non_null(f);
    char line[1024];
    section *cur = NULL;
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0')
            continue;
        if (line[0] == '[') {
            assert_true(n_sections < 64);
            cur = &sections[n_sections++];
            snprintf(cur->name, sizeof(cur->name), "%.*s", (int)(strchr(line, ']') - line - 1), line + 1);
            continue;
        }
        char *eq = strstr(line, " = ");
        assert_non_null(eq);
        assert_non_null(cur);
        *eq = '\0';
        kv *k = &cur->kvs[cur->n++];
        snprintf(k->key, sizeof(k->key), "%.31s", line);
        const char *v = eq + 3;
        if (strcmp(k->key, "sequence_number") == 0 || strcmp(k->key, "L") == 0) {
            unsigned long long x = strtoull(v, NULL, 10);
            memcpy(k->val, &x, sizeof(x));
            k->len = sizeof(x);
        } else {
            assert_int_equal(unhex(v, k->val, &k->len), 0);
        }
    }
    fclose(f);
}

static const kv *get(const section *s, const char *key)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->kvs[i].key, key) == 0)
            return &s->kvs[i];
    fail_msg("missing %s in [%s]", key, s->name);
    return NULL;
}

static uint64_t get_u64(const section *s, const char *key)
{
    uint64_t x;
    memcpy(&x, get(s, key)->val, sizeof(x));
    return x;
}

static void assert_kv(const section *s, const char *key, const uint8_t *actual, size_t len)
{
    const kv *k = get(s, key);
    assert_int_equal(k->len, len);
    assert_memory_equal(k->val, actual, len);
}

/* The section named "BASE KIND N", or NULL when there is none. */
static const section *numbered_section(const char *base, const char *kind, int n)
{
    char name[64];
    snprintf(name, sizeof(name), "%s %s %d", base, kind, n);
    for (size_t k = 0; k < n_sections; k++)
        if (strcmp(sections[k].name, name) == 0)
            return &sections[k];
    return NULL;
}

static const section *find_section(const char *name)
{
    for (size_t i = 0; i < n_sections; i++)
        if (strcmp(sections[i].name, name) == 0)
            return &sections[i];
    fail_msg("no section [%s]", name);
    return NULL;
}

static void run_suite(const char *base, uint16_t aead_id)
{
    if (n_sections == 0)
        load_vectors();
    const section *s = find_section(base);
    const kv *ikm_e = get(s, "ikmE"), *ikm_r = get(s, "ikmR"), *info = get(s, "info");
    uint8_t sk_e[32], pk_e[32], sk_r[32], pk_r[32];
    assert_int_equal(kf_hpke_derive_keypair(ikm_e->val, ikm_e->len, sk_e, pk_e), 0);
    assert_kv(s, "skEm", sk_e, 32);
    assert_kv(s, "pkEm", pk_e, 32);
    assert_int_equal(kf_hpke_derive_keypair(ikm_r->val, ikm_r->len, sk_r, pk_r), 0);
    assert_kv(s, "skRm", sk_r, 32);
    assert_kv(s, "pkRm", pk_r, 32);

    uint8_t ss[32], enc[32];
    assert_int_equal(kf_hpke_encap_deterministic(pk_r, ikm_e->val, ikm_e->len, ss, enc), 0);
    assert_kv(s, "shared_secret", ss, 32);
    assert_kv(s, "enc", enc, 32);

    kf_hpke_ctx sender, receiver;
    assert_int_equal(kf_hpke_setup_base_s(aead_id, pk_r, info->val, info->len, ikm_e->val, ikm_e->len, enc, &sender), 0);
    assert_int_equal(kf_hpke_setup_base_r(aead_id, enc, sk_r, info->val, info->len, &receiver), 0);
    assert_kv(s, "key", sender.key, sender.nk);
    assert_kv(s, "base_nonce", sender.base_nonce, KF_HPKE_NN);
    assert_kv(s, "exporter_secret", sender.exporter_secret, KF_HPKE_NH);
    assert_memory_equal(sender.key, receiver.key, sender.nk);

    size_t checked = 0;
    for (int i = 1; i < 20; i++) {
        const section *e = numbered_section(base, "encryption", i);
        if (e == NULL)
            break;
        const kv *pt = get(e, "pt"), *aad = get(e, "aad"), *ct = get(e, "ct");
        sender.seq = receiver.seq = get_u64(e, "sequence_number");
        uint8_t out[MAXV], back[MAXV];
        assert_int_equal(kf_hpke_seal(&sender, aad->val, aad->len, pt->val, pt->len, out), 0);
        assert_int_equal(ct->len, pt->len + KF_HPKE_NTAG);
        assert_memory_equal(out, ct->val, ct->len);
        assert_int_equal(kf_hpke_open(&receiver, aad->val, aad->len, ct->val, ct->len, back), 0);
        assert_memory_equal(back, pt->val, pt->len);
        checked++;
    }
    assert_int_equal(checked, 6);

    checked = 0;
    for (int i = 1; i < 20; i++) {
        const section *e = numbered_section(base, "export", i);
        if (e == NULL)
            break;
        const kv *ctx = get(e, "exporter_context");
        uint64_t L = get_u64(e, "L");
        uint8_t out[MAXV];
        assert_int_equal(kf_hpke_export(&sender, ctx->val, ctx->len, out, L), 0);
        assert_kv(e, "exported_value", out, L);
        assert_int_equal(kf_hpke_export(&receiver, ctx->val, ctx->len, out, L), 0);
        assert_kv(e, "exported_value", out, L);
        checked++;
    }
    assert_int_equal(checked, 3);
}

static void test_vectors_aes128gcm(void **state)
{
    (void)state;
    run_suite("A.1.1", KF_HPKE_AEAD_AES128GCM);
}

static void test_vectors_chacha20poly1305(void **state)
{
    (void)state;
    run_suite("A.2.1", KF_HPKE_AEAD_CHACHA20POLY1305);
}

/* Seals a 32-byte key with AES-256-GCM as keyfleet does, then changes one input at a time. */
static void test_tamper_rejected(void **state)
{
    (void)state;
    uint8_t sk[32], pk[32], enc[32], key[32], ct[48], pt[32];
    const uint8_t info[] = "keyfleet release v1|req|node|vol", aad[] = "aad";
    memset(key, 0x5a, sizeof(key));
    assert_int_equal(kf_hpke_generate_keypair(sk, pk), 0);
    kf_hpke_ctx s, r;
    assert_int_equal(kf_hpke_setup_base_s(KF_HPKE_AEAD_AES256GCM, pk, info, sizeof(info), NULL, 0, enc, &s), 0);
    assert_int_equal(kf_hpke_seal(&s, aad, sizeof(aad), key, sizeof(key), ct), 0);

    assert_int_equal(kf_hpke_setup_base_r(KF_HPKE_AEAD_AES256GCM, enc, sk, info, sizeof(info), &r), 0);
    assert_int_equal(kf_hpke_open(&r, aad, sizeof(aad), ct, sizeof(ct), pt), 0);
    assert_memory_equal(pt, key, 32);

    for (size_t i = 0; i < sizeof(ct); i += 7) { /* any flipped ciphertext or tag bit */
        ct[i] ^= 1;
        assert_int_equal(kf_hpke_setup_base_r(KF_HPKE_AEAD_AES256GCM, enc, sk, info, sizeof(info), &r), 0);
        assert_int_equal(kf_hpke_open(&r, aad, sizeof(aad), ct, sizeof(ct), pt), -EBADMSG);
        ct[i] ^= 1;
    }
    uint8_t bad_aad[] = "aaD";
    assert_int_equal(kf_hpke_setup_base_r(KF_HPKE_AEAD_AES256GCM, enc, sk, info, sizeof(info), &r), 0);
    assert_int_equal(kf_hpke_open(&r, bad_aad, sizeof(bad_aad), ct, sizeof(ct), pt), -EBADMSG);

    uint8_t bad_info[sizeof(info)];
    memcpy(bad_info, info, sizeof(info));
    bad_info[20] ^= 0x20;
    assert_int_equal(kf_hpke_setup_base_r(KF_HPKE_AEAD_AES256GCM, enc, sk, bad_info, sizeof(bad_info), &r), 0);
    assert_int_equal(kf_hpke_open(&r, aad, sizeof(aad), ct, sizeof(ct), pt), -EBADMSG);

    uint8_t bad_enc[32];
    memcpy(bad_enc, enc, 32);
    bad_enc[3] ^= 0x80;
    if (kf_hpke_setup_base_r(KF_HPKE_AEAD_AES256GCM, bad_enc, sk, info, sizeof(info), &r) == 0)
        assert_int_equal(kf_hpke_open(&r, aad, sizeof(aad), ct, sizeof(ct), pt), -EBADMSG);

    /* Truncated ciphertext. */
    assert_int_equal(kf_hpke_setup_base_r(KF_HPKE_AEAD_AES256GCM, enc, sk, info, sizeof(info), &r), 0);
    assert_int_equal(kf_hpke_open(&r, aad, sizeof(aad), ct, 10, pt), -EBADMSG);
    kf_hpke_ctx_wipe(&s);
    kf_hpke_ctx_wipe(&r);
}

static void test_low_order_point_rejected(void **state)
{
    (void)state;
    uint8_t sk[32], pk[32], enc[32] = {0}; /* the all-zero point gives an all-zero DH result */
    kf_hpke_ctx r;
    assert_int_equal(kf_hpke_generate_keypair(sk, pk), 0);
    assert_int_not_equal(kf_hpke_setup_base_r(KF_HPKE_AEAD_AES256GCM, enc, sk, NULL, 0, &r), 0);
    assert_int_not_equal(kf_hpke_setup_base_r(0x7777, pk, sk, NULL, 0, &r), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_aes128gcm),
        cmocka_unit_test(test_vectors_chacha20poly1305),
        cmocka_unit_test(test_tamper_rejected),
        cmocka_unit_test(test_low_order_point_rejected),
    };
    return cmocka_run_group_tests_name("hpke", tests, NULL, NULL);
}
