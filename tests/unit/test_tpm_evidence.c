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

/* ---- quotes (part 3) ---- */

typedef struct quote {
    unsigned char ak_pub[256], quoted[512], sig[128], values[24 * 32];
    size_t ak_len, quoted_len, sig_len, values_len;
    char ak_hex[65];
} quote;

/* A quote over mask with PCR i = i+1 repeated (PCR 4 = bump), qualifying data q, AK signer
 * (its public area: ak_named), in the SHA-256 bank unless bank says otherwise. */
static void make_quote(quote *o, uint32_t mask, unsigned char bump, const unsigned char q[32], EVP_PKEY *signer,
                       EVP_PKEY *ak_named, unsigned bank)
{
    memset(o, 0, sizeof(*o));
    o->ak_len = soft_ecc_public(ak_named, SOFT_AK_ATTRS, 1, o->ak_pub, sizeof(o->ak_pub));
    unsigned char d[32];
    SHA256(o->ak_pub, o->ak_len, d);
    for (int i = 0; i < 32; i++)
        snprintf(o->ak_hex + 2 * i, 3, "%02x", d[i]);
    for (unsigned i = 0; i < 24; i++)
        if (mask & (1u << i)) {
            memset(o->values + o->values_len, (int)(i + 1 + (i == 4 ? bump : 0)), 32);
            o->values_len += 32;
        }
    unsigned char name[34], digest[32];
    soft_name(o->ak_pub, o->ak_len, name);
    SHA256(o->values, o->values_len, digest);
    wr w = {o->quoted, sizeof(o->quoted), 0};
    soft_attest_head(&w, 0x8018, name, q, 32, 1);
    w32(&w, 1);
    w16(&w, bank);
    w8(&w, 3);
    w8(&w, mask & 0xff);
    w8(&w, (mask >> 8) & 0xff);
    w8(&w, (mask >> 16) & 0xff);
    w2b(&w, digest, 32);
    o->quoted_len = w.len;
    o->sig_len = soft_sign(signer, o->quoted, o->quoted_len, o->sig, sizeof(o->sig));
}

static int check_quote(const quote *o, const char *ak_hex, const unsigned char q[32], kf_tpm_pcrs *ret, char *msg,
                       size_t cap)
{
    kf_err err = {0};
    int r = kf_tpm_quote_verify(o->ak_pub, o->ak_len, ak_hex, o->quoted, o->quoted_len, o->sig, o->sig_len,
                                o->values, o->values_len, q, ret, NULL, &err);
    snprintf(msg, cap, "%s", err.msg);
    return r;
}

static void quote_checks(void **state)
{
    (void)state;
    unsigned char exporter[32], other_exporter[32], eph[32], q[32], q_replay[32], q_other_req[32];
    memset(exporter, 0x11, 32);
    memset(other_exporter, 0x22, 32);
    memset(eph, 0x33, 32);
    kf_tpm_quote_qualifying(exporter, "Release", "vol-1", eph, 32, "", q);
    kf_tpm_quote_qualifying(other_exporter, "Release", "vol-1", eph, 32, "", q_replay);
    kf_tpm_quote_qualifying(exporter, "Release", "vol-2", eph, 32, "", q_other_req);
    assert_memory_not_equal(q, q_replay, 32);
    assert_memory_not_equal(q, q_other_req, 32);
    quote o;
    kf_tpm_pcrs got;
    char msg[512];
    make_quote(&o, KF_TPM_DEFAULT_PCRS, 0, q, F.ak, F.ak, 0x000b);
    assert_int_equal(check_quote(&o, o.ak_hex, q, &got, msg, sizeof(msg)), 0);
    assert_int_equal(got.mask, KF_TPM_DEFAULT_PCRS);
    assert_int_equal(got.values[7][0], 8);

    /* Replayed on another connection (another exporter), or on another request. */
    assert_int_equal(check_quote(&o, o.ak_hex, q_replay, &got, msg, sizeof(msg)), -EACCES);
    assert_non_null(strstr(msg, "not for this request and connection"));
    assert_int_equal(check_quote(&o, o.ak_hex, q_other_req, &got, msg, sizeof(msg)), -EACCES);

    /* Another TPM's AK: its own public area does not match the certificate's AK digest. */
    quote other;
    make_quote(&other, KF_TPM_DEFAULT_PCRS, 0, q, F.key, F.key, 0x000b);
    assert_int_equal(check_quote(&other, o.ak_hex, q, &got, msg, sizeof(msg)), -EACCES);
    assert_non_null(strstr(msg, "signed by another AK"));
    /* ... or the registered AK's public area with another key's signature. */
    make_quote(&other, KF_TPM_DEFAULT_PCRS, 0, q, F.key, F.ak, 0x000b);
    assert_int_equal(check_quote(&other, o.ak_hex, q, &got, msg, sizeof(msg)), -EACCES);
    assert_non_null(strstr(msg, "signature does not verify"));

    /* PCR values that are not the quoted ones. */
    quote bad = o;
    bad.values[4 * 32 / 4] ^= 1;
    bad.values[64] ^= 1;
    assert_int_equal(check_quote(&bad, o.ak_hex, q, &got, msg, sizeof(msg)), -EACCES);
    assert_non_null(strstr(msg, "do not match the quoted digest"));
    bad = o;
    bad.values_len -= 32;
    assert_int_equal(check_quote(&bad, o.ak_hex, q, &got, msg, sizeof(msg)), -EINVAL);

    /* The SHA-1 bank is not accepted. */
    make_quote(&other, KF_TPM_DEFAULT_PCRS, 0, q, F.ak, F.ak, 0x0004);
    assert_int_equal(check_quote(&other, o.ak_hex, q, &got, msg, sizeof(msg)), -EINVAL);

    /* A certificate without an AK digest. */
    assert_int_equal(check_quote(&o, "", q, &got, msg, sizeof(msg)), -EACCES);
}

static void quote_garbage(void **state)
{
    (void)state;
    unsigned char q[32] = {1};
    quote o;
    make_quote(&o, KF_TPM_DEFAULT_PCRS, 0, q, F.ak, F.ak, 0x000b);
    kf_tpm_pcrs got;
    char msg[512];
    /* Every truncation and every single-bit flip of the attestation, the signature and the AK's
     * public area is refused (and never crashes, under ASan). */
    for (size_t n = 0; n < o.quoted_len; n++) {
        quote t = o;
        t.quoted_len = n;
        assert_int_not_equal(check_quote(&t, o.ak_hex, q, &got, msg, sizeof(msg)), 0);
    }
    for (size_t i = 0; i < o.quoted_len * 8; i++) {
        quote t = o;
        t.quoted[i / 8] ^= (unsigned char)(1u << (i % 8));
        assert_int_not_equal(check_quote(&t, o.ak_hex, q, &got, msg, sizeof(msg)), 0);
    }
    for (size_t i = 0; i < o.sig_len * 8; i++) {
        quote t = o;
        t.sig[i / 8] ^= (unsigned char)(1u << (i % 8));
        assert_int_not_equal(check_quote(&t, o.ak_hex, q, &got, msg, sizeof(msg)), 0);
    }
    for (size_t n = 0; n < o.sig_len; n++) {
        quote t = o;
        t.sig_len = n;
        assert_int_not_equal(check_quote(&t, o.ak_hex, q, &got, msg, sizeof(msg)), 0);
    }
    for (size_t i = 0; i < o.ak_len * 8; i++) {
        quote t = o;
        t.ak_pub[i / 8] ^= (unsigned char)(1u << (i % 8));
        assert_int_not_equal(check_quote(&t, o.ak_hex, q, &got, msg, sizeof(msg)), 0);
    }
}

static void pcr_diff_and_text(void **state)
{
    (void)state;
    unsigned char q[32] = {0};
    quote a, b;
    make_quote(&a, KF_TPM_DEFAULT_PCRS, 0, q, F.ak, F.ak, 0x000b);
    make_quote(&b, KF_TPM_DEFAULT_PCRS, 9, q, F.ak, F.ak, 0x000b);
    kf_tpm_pcrs pa, pb, back;
    char msg[512];
    assert_int_equal(check_quote(&a, a.ak_hex, q, &pa, msg, sizeof(msg)), 0);
    assert_int_equal(check_quote(&b, b.ak_hex, q, &pb, msg, sizeof(msg)), 0);
    assert_int_equal(kf_tpm_pcrs_diff(&pa, &pa), 0);
    assert_int_equal(kf_tpm_pcrs_diff(&pa, &pb), 1u << 4);
    kf_tpm_pcrs fewer = pa;
    fewer.mask &= ~(1u << 7);
    assert_int_equal(kf_tpm_pcrs_diff(&pa, &fewer), 1u << 7);
    char text[KF_TPM_PCRS_TEXT_MAX], list[64];
    kf_tpm_pcrs_format(&pb, text);
    assert_int_equal(kf_tpm_pcrs_parse(text, &back, NULL), 0);
    assert_int_equal(kf_tpm_pcrs_diff(&pb, &back), 0);
    assert_int_equal(kf_tpm_pcrs_parse("", &back, NULL), -EINVAL);
    assert_int_equal(kf_tpm_pcrs_parse("4=00", &back, NULL), -EINVAL);
    assert_int_equal(kf_tpm_pcrs_parse("24=0000000000000000000000000000000000000000000000000000000000000000", &back, NULL),
                     -EINVAL);
    kf_tpm_pcr_list(KF_TPM_DEFAULT_PCRS, list, sizeof(list));
    assert_string_equal(list, "0,2,4,7");
}

/* The PCR set the coordinator requires (issue #16's review, A): checked on a verified quote. */
static void pcr_set_required(void **state)
{
    (void)state;
    unsigned char q[32] = {7};
    quote o;
    kf_tpm_pcrs got;
    char msg[512];
    kf_err err = {0};
    make_quote(&o, KF_TPM_DEFAULT_PCRS, 0, q, F.ak, F.ak, 0x000b);
    assert_int_equal(check_quote(&o, o.ak_hex, q, &got, msg, sizeof(msg)), 0);
    assert_int_equal(kf_tpm_pcrs_require(&got, KF_TPM_DEFAULT_PCRS, &err), 0);
    /* More than required is fine; fewer is not, naming what is missing. */
    assert_int_equal(kf_tpm_pcrs_require(&got, (1u << 0) | (1u << 7), &err), 0);
    assert_int_equal(kf_tpm_pcrs_require(&got, KF_TPM_DEFAULT_PCRS | (1u << 8) | (1u << 9), &err), -EACCES);
    assert_non_null(strstr(err.msg, "does not cover PCR 8,9"));
    /* The agent chose 0, 2, 4 only. */
    make_quote(&o, (1u << 0) | (1u << 2) | (1u << 4), 0, q, F.ak, F.ak, 0x000b);
    assert_int_equal(check_quote(&o, o.ak_hex, q, &got, msg, sizeof(msg)), 0);
    assert_int_equal(kf_tpm_pcrs_require(&got, KF_TPM_DEFAULT_PCRS, &err), -EACCES);
    assert_non_null(strstr(err.msg, "does not cover PCR 7"));
    /* Resettable PCRs, alone or beside the required ones. */
    for (unsigned pcr = 16; pcr < 24; pcr++) {
        make_quote(&o, KF_TPM_DEFAULT_PCRS | (1u << pcr), 0, q, F.ak, F.ak, 0x000b);
        assert_int_equal(check_quote(&o, o.ak_hex, q, &got, msg, sizeof(msg)), 0);
        assert_int_equal(kf_tpm_pcrs_require(&got, KF_TPM_DEFAULT_PCRS, &err), -EACCES);
        assert_non_null(strstr(err.msg, "software can reset"));
    }
    /* Never extended: a required PCR all zeros or all ones; a quote over real values of the
     * others still names it. */
    for (int fill = 0; fill < 2; fill++) {
        make_quote(&o, KF_TPM_DEFAULT_PCRS, 0, q, F.ak, F.ak, 0x000b);
        memset(o.values + 2 * 32, fill ? 0xff : 0x00, 32); /* PCR 4, the third */
        unsigned char digest[32];
        SHA256(o.values, o.values_len, digest);
        memcpy(o.quoted + o.quoted_len - 32, digest, 32);
        o.sig_len = soft_sign(F.ak, o.quoted, o.quoted_len, o.sig, sizeof(o.sig));
        assert_int_equal(check_quote(&o, o.ak_hex, q, &got, msg, sizeof(msg)), 0);
        assert_int_equal(kf_tpm_pcrs_require(&got, KF_TPM_DEFAULT_PCRS, &err), -EACCES);
        assert_non_null(strstr(err.msg, "PCR 4 was never extended"));
        /* ... but only the required set counts. */
        assert_int_equal(kf_tpm_pcrs_require(&got, (1u << 0) | (1u << 7), &err), 0);
    }
}

/* The PCR text (store, golden_pcrs, operators) is parsed strictly (review, E). */
static void pcr_text_strict(void **state)
{
    (void)state;
    static const char H[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    char ok[256], t[256];
    kf_tpm_pcrs p;
    kf_err err = {0};
    snprintf(ok, sizeof(ok), "0=%s 7=%s 15=%s", H, H, H);
    assert_int_equal(kf_tpm_pcrs_parse(ok, &p, &err), 0);
    assert_int_equal(p.mask, (1u << 0) | (1u << 7) | (1u << 15));
    assert_int_equal(p.values[15][1], 0x23);
    snprintf(t, sizeof(t), "4=%.62sAB", H); /* upper case is hex too */
    assert_int_equal(kf_tpm_pcrs_parse(t, &p, &err), 0);
    assert_int_equal(p.values[4][31], 0xab);
    struct {
        const char *before;
        int digits;
        const char *after, *needle;
    } bad[] = {
        {"4=", 63, "", "exactly 64 hex digits"}, /* one digit short */
        {"4=", 64, "a", "exactly 64 hex digits"}, /* one long */
        {"4=", 62, "g0", "exactly 64 hex digits"}, /* not hex in the last pair */
        {"4=", 63, " ", "exactly 64 hex digits"},
        {"4=0x", 62, "", "exactly 64 hex digits"},
        {"4=", 31, " 0123456789abcdef0123456789abcdef", "exactly 64 hex digits"},
        {"4=+", 63, "", "exactly 64 hex digits"},
        {"04=", 64, "", "expected a PCR number"},
        {"+4=", 64, "", "expected a PCR number"},
        {" 4=", 64, "", "expected a PCR number"},
        {"-1=", 64, "", "expected a PCR number"},
        {"4 =", 64, "", "expected a PCR number"},
        {"24=", 64, "", "numbered 0..23"},
        {"99=", 64, "", "numbered 0..23"},
        {"123=", 64, "", "expected a PCR number"},
        {"4=", 64, " ", "exactly one space"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(t, sizeof(t), "%s%.*s%s", bad[i].before, bad[i].digits, H, bad[i].after);
        memset(&err, 0, sizeof(err));
        assert_int_equal(kf_tpm_pcrs_parse(t, &p, &err), -EINVAL);
        if (strstr(err.msg, bad[i].needle) == NULL)
            fail_msg("'%s': %s (wanted %s)", t, err.msg, bad[i].needle);
    }
    snprintf(t, sizeof(t), "4=%s  7=%s", H, H);
    assert_int_equal(kf_tpm_pcrs_parse(t, &p, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "exactly one space"));
    snprintf(t, sizeof(t), "4=%s 4=%s", H, H);
    assert_int_equal(kf_tpm_pcrs_parse(t, &p, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "given twice"));
    assert_int_equal(kf_tpm_pcrs_parse("", &p, &err), -EINVAL);
    assert_int_equal(kf_tpm_pcrs_parse("4=", &p, NULL), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(good_evidence_verifies), cmocka_unit_test(ak_attributes),
        cmocka_unit_test(key_attributes),         cmocka_unit_test(ek_template),
        cmocka_unit_test(ek_cert_profile),        cmocka_unit_test(ek_cert_chain),
        cmocka_unit_test(certify_signature),      cmocka_unit_test(quote_checks),
        cmocka_unit_test(quote_garbage),          cmocka_unit_test(pcr_diff_and_text),
        cmocka_unit_test(pcr_set_required),       cmocka_unit_test(pcr_text_strict),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
