/* The CA's checks of TPM evidence (common/kf_tpm_evidence.c), against evidence built in software
 * (tests/unit/tpm_soft.h) so that one property at a time can be wrong while everything else stays
 * consistent: every AK and node-key attribute the CA requires or forbids, the EK template, and
 * the EK certificate's profile and chain (review of #16, F2 and F3). A real TPM's evidence is
 * checked end to end by tests/integration/agent_tpm_attest.sh. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kf_tpm_evidence.h"
#include "tpm_soft.h"

typedef struct fx {
    EVP_PKEY *ek, *ak, *key, *ca_key, *other_ca_key;
    X509 *ca, *other_ca;
} fx;
static fx F;

typedef struct build_opts {
    uint32_t ek_attrs, ak_attrs, key_attrs;
    int ak_ecdsa, key_ecdsa;
    unsigned ek_bits, ek_sym_bits;
    const uint8_t *ek_policy;
    int ek_cert_flags; /* -1: no EK certificate */
} build_opts;

static build_opts good(void)
{
    return (build_opts){.ek_attrs = SOFT_EK_ATTRS,
                        .ak_attrs = SOFT_AK_ATTRS,
                        .key_attrs = SOFT_KEY_ATTRS,
                        .ak_ecdsa = 1,
                        .key_ecdsa = 0,
                        .ek_bits = 2048,
                        .ek_sym_bits = 128,
                        .ek_policy = SOFT_EK_POLICY,
                        .ek_cert_flags = EKC_OK};
}

static void build(const build_opts *o, kf_tpm_evidence *ev)
{
    memset(ev, 0, sizeof(*ev));
    ev->ek_pub_len = soft_rsa_ek_public(F.ek, o->ek_attrs, o->ek_bits, o->ek_policy, o->ek_sym_bits, ev->ek_pub,
                                        sizeof(ev->ek_pub));
    ev->ak_pub_len = soft_ecc_public(F.ak, o->ak_attrs, o->ak_ecdsa, ev->ak_pub, sizeof(ev->ak_pub));
    ev->key_pub_len = soft_ecc_public(F.key, o->key_attrs, o->key_ecdsa, ev->key_pub, sizeof(ev->key_pub));
    unsigned char ak_name[34], key_name[34], q[32];
    soft_name(ev->ak_pub, ev->ak_pub_len, ak_name);
    soft_name(ev->key_pub, ev->key_pub_len, key_name);
    kf_tpm_certify_qualifying(ev->key_pub, ev->key_pub_len, q);
    wr a = {ev->attest, sizeof(ev->attest), 0};
    soft_attest_head(&a, 0x8017, ak_name, q, sizeof(q), 1);
    w2b(&a, key_name, 34);
    w2b(&a, key_name, 34); /* qualifiedName: not checked */
    ev->attest_len = a.len;
    ev->sig_len = soft_sign(F.ak, ev->attest, ev->attest_len, ev->sig, sizeof(ev->sig));
    if (o->ek_cert_flags >= 0) {
        X509 *x = soft_cert(F.ek, F.ca, F.ca_key, "", o->ek_cert_flags, 0);
        unsigned char *der = NULL;
        int n = i2d_X509(x, &der);
        assert_true(n > 0);
        ev->ek_cert = malloc((size_t)n);
        memcpy(ev->ek_cert, der, (size_t)n);
        ev->ek_cert_len = (size_t)n;
        OPENSSL_free(der);
        X509_free(x);
    }
}

static X509_STORE *store_of(X509 *ca)
{
    X509_STORE *s = X509_STORE_new();
    X509_STORE_add_cert(s, ca);
    return s;
}

/* Runs the verifier; returns its result, and its message in msg. */
static int verify(const build_opts *o, X509 *ca, char *msg, size_t cap, bool *ret_verified)
{
    kf_tpm_evidence ev;
    build(o, &ev);
    X509_STORE *s = ca != NULL ? store_of(ca) : NULL;
    kf_tpm_verified v = {0};
    kf_err err = {0};
    int r = kf_tpm_evidence_verify(&ev, s, &v, &err);
    snprintf(msg, cap, "%s", err.msg);
    if (ret_verified != NULL)
        *ret_verified = r == 0 && v.ek_cert_verified;
    kf_tpm_verified_clear(&v);
    kf_tpm_evidence_clear(&ev);
    X509_STORE_free(s);
    return r;
}

static int setup(void **state)
{
    (void)state;
    F.ek = EVP_RSA_gen(2048);
    F.ak = EVP_EC_gen("P-256");
    F.key = EVP_EC_gen("P-256");
    F.ca_key = EVP_EC_gen("P-256");
    F.other_ca_key = EVP_EC_gen("P-256");
    F.ca = soft_cert(F.ca_key, NULL, F.ca_key, "EK CA", 0, 1);
    F.other_ca = soft_cert(F.other_ca_key, NULL, F.other_ca_key, "other CA", 0, 1);
    return F.ek && F.ak && F.key && F.ca && F.other_ca ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(F.ek);
    EVP_PKEY_free(F.ak);
    EVP_PKEY_free(F.key);
    EVP_PKEY_free(F.ca_key);
    EVP_PKEY_free(F.other_ca_key);
    X509_free(F.ca);
    X509_free(F.other_ca);
    return 0;
}

static void good_evidence_verifies(void **state)
{
    (void)state;
    build_opts o = good();
    char msg[512];
    bool verified = false;
    assert_int_equal(verify(&o, F.ca, msg, sizeof(msg), &verified), 0);
    assert_true(verified);
    assert_int_equal(verify(&o, NULL, msg, sizeof(msg), &verified), 0);
    assert_false(verified); /* no EK CAs: the certificate is not vouched for */
}

#define A_FIXEDTPM 0x00000002u
#define A_FIXEDPARENT 0x00000010u
#define A_SDO 0x00000020u
#define A_ADMINWITHPOLICY 0x00000080u
#define A_RESTRICTED 0x00010000u
#define A_DECRYPT 0x00020000u
#define A_SIGN 0x00040000u

static void expect_refused(const build_opts *o, const char *what, const char *needle)
{
    char msg[512];
    int r = verify(o, F.ca, msg, sizeof(msg), NULL);
    if (r == 0 || strstr(msg, needle) == NULL)
        fail_msg("%s: expected a refusal naming '%s', got %d '%s'", what, needle, r, msg);
}

static void ak_attributes(void **state)
{
    (void)state;
    static const struct {
        uint32_t clear, set;
        const char *what;
    } cases[] = {
        {A_FIXEDTPM, 0, "AK without fixedTPM (duplicable to another TPM)"},
        {A_FIXEDPARENT, 0, "AK without fixedParent"},
        {A_SDO, 0, "AK without sensitiveDataOrigin (imported)"},
        {A_RESTRICTED, 0, "AK not restricted (would sign forged attestations)"},
        {A_SIGN, 0, "AK not a signing key"},
        {0, A_DECRYPT, "AK that also decrypts"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        build_opts o = good();
        o.ak_attrs = (o.ak_attrs & ~cases[i].clear) | cases[i].set;
        expect_refused(&o, cases[i].what, "the AK is not a restricted ECDSA-SHA256 signing key");
    }
    build_opts o = good();
    o.ak_ecdsa = 0;
    expect_refused(&o, "AK without the ECDSA-SHA256 scheme", "the AK is not a restricted ECDSA-SHA256 signing key");
}

static void key_attributes(void **state)
{
    (void)state;
    static const struct {
        uint32_t clear, set;
        const char *what;
    } cases[] = {
        {A_FIXEDTPM, 0, "node key without fixedTPM"},
        {A_FIXEDPARENT, 0, "node key without fixedParent"},
        {A_SDO, 0, "node key without sensitiveDataOrigin (imported: a copy exists outside)"},
        {A_SIGN, 0, "node key not a signing key"},
        {0, A_RESTRICTED, "restricted node key"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        build_opts o = good();
        o.key_attrs = (o.key_attrs & ~cases[i].clear) | cases[i].set;
        expect_refused(&o, cases[i].what, "the node key is not a signing key made in and fixed to the TPM");
    }
}

static void ek_template(void **state)
{
    (void)state;
    static const uint32_t clear[] = {A_FIXEDTPM, A_FIXEDPARENT, A_SDO, A_ADMINWITHPOLICY, A_RESTRICTED, A_DECRYPT};
    for (size_t i = 0; i < sizeof(clear) / sizeof(clear[0]); i++) {
        build_opts o = good();
        o.ek_attrs &= ~clear[i];
        expect_refused(&o, "EK attribute missing", "the EK is not a TCG default RSA 2048 endorsement key");
    }
    build_opts o = good();
    o.ek_attrs |= A_SIGN;
    expect_refused(&o, "EK that signs", "the EK is not a TCG default");
    o = good();
    uint8_t policy[32];
    memcpy(policy, SOFT_EK_POLICY, 32);
    policy[31] ^= 1;
    o.ek_policy = policy;
    expect_refused(&o, "EK with another policy", "the EK is not a TCG default");
    o = good();
    o.ek_sym_bits = 256;
    expect_refused(&o, "EK with another symmetric scheme", "the EK is not a TCG default");
}

static void ek_cert_profile(void **state)
{
    (void)state;
    static const struct {
        int flags;
        const char *needle;
    } cases[] = {
        {EKC_NO_KEYENC, "key usage lacks keyEncipherment"},
        {EKC_CA, "it is a CA certificate"},
        {EKC_OTHER_EKU, "extended key usage is not tcg-kp-EKCertificate"},
        {EKC_NO_TPM_SAN, "does not name a TPM manufacturer"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        build_opts o = good();
        o.ek_cert_flags = cases[i].flags;
        expect_refused(&o, cases[i].needle, cases[i].needle);
    }
}

static void ek_cert_chain(void **state)
{
    (void)state;
    build_opts o = good();
    char msg[512];
    assert_int_not_equal(verify(&o, F.other_ca, msg, sizeof(msg), NULL), 0);
    assert_non_null(strstr(msg, "does not chain to a configured EK CA"));
    o.ek_cert_flags = -1;
    assert_int_not_equal(verify(&o, F.ca, msg, sizeof(msg), NULL), 0);
    assert_non_null(strstr(msg, "has no EK certificate, and EK CAs are configured"));
}

static void certify_signature(void **state)
{
    (void)state;
    build_opts o = good();
    kf_tpm_evidence ev;
    build(&o, &ev);
    ev.sig[ev.sig_len - 1] ^= 1;
    X509_STORE *s = store_of(F.ca);
    kf_tpm_verified v = {0};
    kf_err err = {0};
    assert_int_not_equal(kf_tpm_evidence_verify(&ev, s, &v, &err), 0);
    assert_non_null(strstr(err.msg, "signature does not verify with the AK"));
    kf_tpm_evidence_clear(&ev);
    X509_STORE_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(good_evidence_verifies), cmocka_unit_test(ak_attributes),
        cmocka_unit_test(key_attributes),         cmocka_unit_test(ek_template),
        cmocka_unit_test(ek_cert_profile),        cmocka_unit_test(ek_cert_chain),
        cmocka_unit_test(certify_signature),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
