/* Sealing sessions (common/kf_seal.c) and the locked slab behind the coordinator's contexts
 * (common/kf_secslab.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "kf_seal.h"
#include "kf_secslab.h"

static void fill_key(uint8_t key[32], uint8_t v) { memset(key, v, 32); }

typedef struct sealed {
    uint8_t enc[32], ct[KF_SEAL_CT_LEN];
    uint64_t seq;
} sealed;

static void seal_one(kf_seal_session *s, const char *request, const char *node, const char *volume, uint8_t v,
                     sealed *out)
{
    uint8_t aad[KF_SEAL_AAD_MAX], key[32];
    size_t al = kf_seal_aad("release", request, node, volume, aad, sizeof(aad));
    assert_true(al > 0);
    fill_key(key, v);
    assert_int_equal(kf_seal_session_seal(s, aad, al, key, out->enc, &out->seq, out->ct), 0);
}

static int open_one(kf_seal_receiver *rx, const char *request, const char *node, const char *volume,
                    const sealed *in, uint8_t key[32])
{
    uint8_t aad[KF_SEAL_AAD_MAX];
    size_t al = kf_seal_aad("release", request, node, volume, aad, sizeof(aad));
    assert_true(al > 0);
    return kf_seal_receiver_open(rx, in->enc, 32, in->seq, aad, al, in->ct, sizeof(in->ct), key);
}

/* Three keys under one context: one enc, sequence numbers 0, 1, 2, opened in any order. */
static void test_one_context_many_keys(void **state)
{
    (void)state;
    kf_seal_receiver *rx;
    assert_int_equal(kf_seal_receiver_new("node-a", &rx), 0);
    kf_seal_session s = {0};
    assert_false(kf_seal_session_matches(&s, kf_seal_receiver_public_key(rx), "node-a"));
    assert_int_equal(kf_seal_session_begin(&s, kf_seal_receiver_public_key(rx), "node-a"), 0);
    assert_true(kf_seal_session_matches(&s, kf_seal_receiver_public_key(rx), "node-a"));
    assert_false(kf_seal_session_matches(&s, kf_seal_receiver_public_key(rx), "node-b"));

    sealed b[3];
    seal_one(&s, "req-0000000000000", "node-a", "vol-0", 0x10, &b[0]);
    seal_one(&s, "req-1111111111111", "node-a", "vol-1", 0x11, &b[1]);
    seal_one(&s, "req-2222222222222", "node-a", "vol-2", 0x12, &b[2]);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(b[i].seq, (uint64_t)i);
        assert_memory_equal(b[i].enc, b[0].enc, 32);
    }
    int order[] = {2, 0, 1};
    for (int k = 0; k < 3; k++) {
        int i = order[k];
        char req[32], vol[16];
        snprintf(req, sizeof(req), "req-%d%d%d%d%d%d%d%d%d%d%d%d%d", i, i, i, i, i, i, i, i, i, i, i, i, i);
        snprintf(vol, sizeof(vol), "vol-%d", i);
        uint8_t key[32], want[32];
        fill_key(want, (uint8_t)(0x10 + i));
        assert_int_equal(open_one(rx, req, "node-a", vol, &b[i], key), 0);
        assert_memory_equal(key, want, 32);
    }
    kf_seal_session_wipe(&s);
    kf_seal_receiver_free(rx);
}

/* The AAD binds request, node and volume; the info binds the node; seq and enc are checked. */
static void test_binding_and_tampering(void **state)
{
    (void)state;
    kf_seal_receiver *rx, *other_node;
    assert_int_equal(kf_seal_receiver_new("node-a", &rx), 0);
    assert_int_equal(kf_seal_receiver_new("node-b", &other_node), 0);
    kf_seal_session s = {0};
    assert_int_equal(kf_seal_session_begin(&s, kf_seal_receiver_public_key(rx), "node-a"), 0);
    sealed b, c;
    seal_one(&s, "req-aaaaaaaaaaaaaaaa", "node-a", "vol-1", 0x42, &b);
    seal_one(&s, "req-bbbbbbbbbbbbbbbb", "node-a", "vol-1", 0x43, &c);
    uint8_t key[32];
    assert_int_equal(open_one(rx, "req-aaaaaaaaaaaaaaaa", "node-a", "vol-2", &b, key), -EBADMSG);
    assert_int_equal(open_one(rx, "req-cccccccccccccccc", "node-a", "vol-1", &b, key), -EBADMSG);
    assert_int_equal(open_one(rx, "req-aaaaaaaaaaaaaaaa", "node-b", "vol-1", &b, key), -EBADMSG);
    /* Another node's key pair, even with node-a's AAD, derives another context. */
    assert_int_equal(open_one(other_node, "req-aaaaaaaaaaaaaaaa", "node-a", "vol-1", &b, key), -EBADMSG);
    /* A key sealed with seq 1 does not open as seq 0, and the other way round. */
    sealed swapped = c;
    swapped.seq = 0;
    assert_int_equal(open_one(rx, "req-bbbbbbbbbbbbbbbb", "node-a", "vol-1", &swapped, key), -EBADMSG);
    for (size_t i = 0; i < sizeof(b.ct); i += 5) {
        b.ct[i] ^= 0x01;
        assert_int_equal(open_one(rx, "req-aaaaaaaaaaaaaaaa", "node-a", "vol-1", &b, key), -EBADMSG);
        b.ct[i] ^= 0x01;
    }
    b.enc[7] ^= 0x40;
    assert_int_equal(open_one(rx, "req-aaaaaaaaaaaaaaaa", "node-a", "vol-1", &b, key), -EBADMSG);
    b.enc[7] ^= 0x40;
    assert_int_equal(open_one(rx, "req-aaaaaaaaaaaaaaaa", "node-a", "vol-1", &b, key), 0);
    assert_int_equal(key[0], 0x42);
    uint8_t aad[8] = {0};
    assert_int_equal(kf_seal_receiver_open(rx, b.enc, 31, b.seq, aad, 8, b.ct, sizeof(b.ct), key), -EBADMSG);
    assert_int_equal(kf_seal_receiver_open(rx, b.enc, 32, b.seq, aad, 8, b.ct, sizeof(b.ct) - 1, key), -EBADMSG);
    assert_int_equal(kf_seal_receiver_open(rx, b.enc, 32, KF_SEAL_MAX_SEQ, aad, 8, b.ct, sizeof(b.ct), key), -EBADMSG);
    kf_seal_session_wipe(&s);
    kf_seal_receiver_free(rx);
    kf_seal_receiver_free(other_node);
}

/* More senders than the receiver keeps contexts for: the oldest is set up again when needed. */
static void test_receiver_many_senders(void **state)
{
    (void)state;
    kf_seal_receiver *rx;
    assert_int_equal(kf_seal_receiver_new("node-a", &rx), 0);
    enum { SENDERS = 7 };
    kf_seal_session s[SENDERS];
    sealed b[SENDERS];
    memset(s, 0, sizeof(s));
    for (int i = 0; i < SENDERS; i++) {
        assert_int_equal(kf_seal_session_begin(&s[i], kf_seal_receiver_public_key(rx), "node-a"), 0);
        seal_one(&s[i], "req-0123456789abcdef", "node-a", "vol", (uint8_t)i, &b[i]);
    }
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < SENDERS; i++) {
            uint8_t key[32];
            assert_int_equal(open_one(rx, "req-0123456789abcdef", "node-a", "vol", &b[i], key), 0);
            assert_int_equal(key[31], i);
        }
    for (int i = 0; i < SENDERS; i++)
        kf_seal_session_wipe(&s[i]);
    kf_seal_receiver_free(rx);
}

static void test_refusals(void **state)
{
    (void)state;
    uint8_t pk[32] = {0}, buf[16];
    kf_seal_session s = {0};
    /* The all-zero point is refused (RFC 9180 7.1.4), and nothing is left half made. */
    assert_int_not_equal(kf_seal_session_begin(&s, pk, "node-a"), 0);
    assert_false(s.ready);
    uint8_t key[32] = {0}, enc[32], ct[KF_SEAL_CT_LEN];
    uint64_t seq;
    assert_int_equal(kf_seal_session_seal(&s, NULL, 0, key, enc, &seq, ct), -EINVAL);
    char long_name[KF_NAME_MAX + 8];
    memset(long_name, 'n', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    kf_seal_receiver *rx;
    assert_int_equal(kf_seal_receiver_new("node-a", &rx), 0);
    assert_int_not_equal(kf_seal_session_begin(&s, kf_seal_receiver_public_key(rx), long_name), 0);
    kf_seal_receiver_free(rx);
    assert_int_equal(kf_seal_aad("release", "r", "n", "v", buf, sizeof(buf)), 0);
    assert_int_equal(kf_seal_info("a-node-name-too-long-for-16", buf, sizeof(buf)), 0);
}

static void test_slab(void **state)
{
    (void)state;
    kf_secslab *slab = kf_secslab_new(200, 700); /* 208-byte objects: 315 per 64 KiB chunk, 3 chunks */
    assert_non_null(slab);
    void *p[700];
    for (int i = 0; i < 700; i++) {
        p[i] = kf_secslab_alloc(slab);
        assert_non_null(p[i]);
        for (int j = 0; j < 208; j++)
            assert_int_equal(((uint8_t *)p[i])[j], 0);
        memset(p[i], 0xa5, 200);
    }
    assert_int_equal(kf_secslab_live(slab), 700);
    assert_null(kf_secslab_alloc(slab)); /* bounded: callers fall back */
    for (int i = 0; i < 700; i++) /* no overlap between objects */
        for (int j = i + 1; j < i + 3 && j < 700; j++)
            assert_true((uint8_t *)p[j] >= (uint8_t *)p[i] + 208 || (uint8_t *)p[i] >= (uint8_t *)p[j] + 208);
    kf_secslab_free(slab, p[10]);
    kf_secslab_free(slab, p[500]);
    kf_secslab_free(slab, NULL);
    assert_int_equal(kf_secslab_live(slab), 698);
    void *again = kf_secslab_alloc(slab);
    assert_true(again == p[500] || again == p[10]);
    for (int j = 0; j < 208; j++) /* wiped when given back */
        assert_int_equal(((uint8_t *)again)[j], 0);
    assert_non_null(kf_secslab_alloc(slab));
    assert_null(kf_secslab_alloc(slab));
    kf_secslab_destroy(slab);
    assert_null(kf_secslab_new(0, 10));
    assert_null(kf_secslab_new(10, 0));
    assert_null(kf_secslab_new(1 << 20, 10));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_context_many_keys), cmocka_unit_test(test_binding_and_tampering),
        cmocka_unit_test(test_receiver_many_senders), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_slab),
    };
    return cmocka_run_group_tests_name("seal", tests, NULL, NULL);
}
