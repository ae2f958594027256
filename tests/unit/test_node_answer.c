/* The agent's readings of the coordinator's answers (common/kf_node_answer.c): a Release answer
 * opens under the request id it names, which must be one the coordinator would take back; PCR
 * numbers past 23 are dropped; a commit carries no key. Fuzzed by tests/fuzz/fuzz_agent_answer.c. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "kf_node_client.h"

#define NODE "node-1.example"
#define VOLUME "0b9c6a2e-1f3d-4c5b-9a8e-7d6c5b4a3f21"
#define REQ "0190f3a2b4c5d6e7f8091a2b3c4d5e6f"

typedef struct box {
    uint8_t enc[32], ct[KF_SEAL_CT_LEN];
    Keyfleet__V1__SealedKey sk;
} box;

static kf_seal_receiver *receiver(void)
{
    static const uint8_t ikm[32] = "test_node_answer fixed key pair";
    kf_seal_receiver *rx = NULL;
    assert_int_equal(kf_seal_receiver_derive(NODE, ikm, sizeof(ikm), &rx), 0);
    return rx;
}

static void seal(kf_seal_receiver *rx, const char *purpose, const char *request_id, box *b)
{
    kf_seal_session s;
    memset(&s, 0, sizeof(s));
    assert_int_equal(kf_seal_session_begin(&s, kf_seal_receiver_public_key(rx), NODE), 0);
    uint8_t aad[KF_SEAL_AAD_MAX], key[KF_SEAL_KEY_LEN];
    memset(key, 7, sizeof(key));
    size_t al = kf_seal_aad(purpose, request_id, NODE, VOLUME, aad, sizeof(aad));
    assert_true(al > 0);
    Keyfleet__V1__SealedKey init = KEYFLEET__V1__SEALED_KEY__INIT;
    b->sk = init;
    assert_int_equal(kf_seal_session_seal(&s, aad, al, key, b->enc, &b->sk.seq, b->ct), 0);
    kf_seal_session_wipe(&s);
    b->sk.kem_id = KF_HPKE_KEM_X25519_SHA256;
    b->sk.kdf_id = KF_HPKE_KDF_HKDF_SHA256;
    b->sk.aead_id = KF_SEAL_AEAD;
    b->sk.enc.data = b->enc;
    b->sk.enc.len = 32;
    b->sk.ciphertext.data = b->ct;
    b->sk.ciphertext.len = KF_SEAL_CT_LEN;
}

static void test_release_request_id(void **state)
{
    (void)state;
    kf_seal_receiver *rx = receiver();
    box b;
    seal(rx, "release", REQ, &b);
    Keyfleet__V1__ReleaseResponse resp = KEYFLEET__V1__RELEASE_RESPONSE__INIT;
    resp.status = KEYFLEET__V1__RELEASE_STATUS__RELEASE_STATUS_RELEASED;
    resp.request_id = (char *)REQ;
    resp.sealed_key = &b.sk;
    kf_released rel;
    kf_err err = {0};
    assert_int_equal(kf_node_release_answer(&resp, rx, NODE, VOLUME, "", &rel, &err), 0);
    assert_non_null(rel.key);
    assert_int_equal(rel.key->data[0], 7);
    assert_string_equal(rel.request_id, REQ);
    kf_released_clear(&rel);
    /* the same answer to a poll for another request */
    assert_int_equal(kf_node_release_answer(&resp, rx, NODE, VOLUME, "0190f3a2b4c5d6e7f8091a2b3c4d5e70", &rel, &err),
                     -EBADMSG);
    assert_null(rel.key);
    /* pending, under ids the coordinator would refuse on the poll (or that a log line would carry) */
    const char *bad[] = {"0123456789abcdef\nlevel=error event=forged", "short", "", "0123456789abcdef 0123",
                         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" /* 69 */};
    Keyfleet__V1__ReleaseResponse pend = KEYFLEET__V1__RELEASE_RESPONSE__INIT;
    pend.status = KEYFLEET__V1__RELEASE_STATUS__RELEASE_STATUS_PENDING;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        pend.request_id = (char *)bad[i];
        assert_int_equal(kf_node_release_answer(&pend, rx, NODE, VOLUME, "", &rel, &err), -EBADMSG);
        assert_false(rel.pending);
    }
    pend.request_id = (char *)REQ;
    pend.retry_after_ms = 1500;
    assert_int_equal(kf_node_release_answer(&pend, rx, NODE, VOLUME, "", &rel, &err), 0);
    assert_true(rel.pending);
    assert_int_equal(rel.retry_after_ms, 1500);
    assert_null(rel.key);
    kf_seal_receiver_free(rx);
}

static void test_enroll_and_rotate(void **state)
{
    (void)state;
    kf_seal_receiver *rx = receiver();
    box b;
    seal(rx, "enroll", REQ, &b);
    uint32_t pcrs[] = {0, 7, 24, 4000000000u, 23};
    Keyfleet__V1__EnrollResponse en = KEYFLEET__V1__ENROLL_RESPONSE__INIT;
    en.sealed_key = &b.sk;
    en.wrapped_key = (char *)"vault:kek:v1:x:y";
    en.tpm_pcrs = pcrs;
    en.n_tpm_pcrs = 5;
    kf_enrolled e;
    kf_err err = {0};
    assert_int_equal(kf_node_enroll_answer(&en, rx, NODE, VOLUME, REQ, &e, &err), 0);
    assert_int_equal(e.n_tpm_pcrs, 3);
    assert_int_equal(e.tpm_pcrs[2], 23);
    assert_string_equal(e.wrapped, "vault:kek:v1:x:y");
    kf_enrolled_clear(&e);
    /* sealed for enroll, read as a rotation: does not open */
    Keyfleet__V1__RotateKeyResponse rot = KEYFLEET__V1__ROTATE_KEY_RESPONSE__INIT;
    rot.sealed_key = &b.sk;
    rot.wrapped_key = en.wrapped_key;
    assert_int_equal(kf_node_rotate_answer(&rot, rx, false, NODE, VOLUME, REQ, &e, &err), -EBADMSG);
    assert_null(e.wrapped);
    /* a commit carries no key, only the wrapped one */
    assert_int_equal(kf_node_rotate_answer(&rot, rx, true, NODE, VOLUME, REQ, &e, &err), 0);
    assert_null(e.key);
    assert_string_equal(e.wrapped, "vault:kek:v1:x:y");
    kf_enrolled_clear(&e);
    kf_seal_receiver_free(rx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_release_request_id),
        cmocka_unit_test(test_enroll_and_rotate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
