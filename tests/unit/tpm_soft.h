/* A software TPM for the verifier's unit tests: builds the structures a real TPM marshals
 * (TPM2B_PUBLIC of an RSA EK and of ECC keys, TPMS_ATTEST of TPM2_Certify and TPM2_Quote,
 * TPMT_SIGNATURE), signed with OpenSSL keys, and an EK certificate from a test CA. Each part
 * takes the attributes to use, so a test changes one property and rebuilds everything else
 * consistently (names, qualifying data, signatures): only the check under test can then refuse. */
#ifndef KF_TPM_SOFT_H
#define KF_TPM_SOFT_H

#include <stdint.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

typedef struct wr {
    unsigned char *p;
    size_t cap, len;
} wr;

static void w8(wr *w, unsigned v)
{
    if (w->len < w->cap)
        w->p[w->len] = (unsigned char)v;
    w->len++;
}
static void w16(wr *w, unsigned v)
{
    w8(w, v >> 8);
    w8(w, v);
}
static void w32(wr *w, uint32_t v)
{
    w16(w, v >> 16);
    w16(w, v & 0xffff);
}
static void wbytes(wr *w, const unsigned char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        w8(w, b[i]);
}
static void w2b(wr *w, const unsigned char *b, size_t n)
{
    w16(w, (unsigned)n);
    wbytes(w, b, n);
}

static const uint8_t SOFT_EK_POLICY[32] = {0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc,
                                           0x8d, 0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52,
                                           0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};

#define SOFT_EK_ATTRS 0x000300b2u  /* fixedTPM fixedParent SDO adminWithPolicy restricted decrypt */
#define SOFT_AK_ATTRS 0x00050072u  /* fixedTPM fixedParent SDO userWithAuth restricted sign */
#define SOFT_KEY_ATTRS 0x00060072u /* fixedTPM fixedParent SDO userWithAuth sign decrypt (tpm2-openssl) */

/* TPM2B_PUBLIC of a P-256 key; scheme 0 means TPM_ALG_NULL, else ECDSA with SHA-256. */
static size_t soft_ecc_public(EVP_PKEY *k, uint32_t attrs, int ecdsa, unsigned char *out, size_t cap)
{
    unsigned char pt[65];
    size_t ptl = 0;
    EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt), &ptl);
    unsigned char body[256];
    wr b = {body, sizeof(body), 0};
    w16(&b, 0x0023);
    w16(&b, 0x000b);
    w32(&b, attrs);
    w16(&b, 0); /* authPolicy */
    w16(&b, 0x0010); /* symmetric NULL */
    if (ecdsa) {
        w16(&b, 0x0018);
        w16(&b, 0x000b);
    } else {
        w16(&b, 0x0010);
    }
    w16(&b, 0x0003);
    w16(&b, 0x0010); /* kdf */
    w2b(&b, pt + 1, 32);
    w2b(&b, pt + 33, 32);
    wr o = {out, cap, 0};
    w2b(&o, body, b.len);
    return o.len;
}

static size_t soft_rsa_ek_public(EVP_PKEY *k, uint32_t attrs, unsigned key_bits, const uint8_t *policy,
                                 unsigned sym_bits, unsigned char *out, size_t cap)
{
    BIGNUM *n = NULL;
    EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_N, &n);
    unsigned char nb[256];
    BN_bn2binpad(n, nb, 256);
    BN_free(n);
    unsigned char body[512];
    wr b = {body, sizeof(body), 0};
    w16(&b, 0x0001);
    w16(&b, 0x000b);
    w32(&b, attrs);
    w2b(&b, policy, 32);
    w16(&b, 0x0006);
    w16(&b, sym_bits);
    w16(&b, 0x0043);
    w16(&b, 0x0010); /* scheme */
    w16(&b, key_bits);
    w32(&b, 0);
    w2b(&b, nb, 256);
    wr o = {out, cap, 0};
    w2b(&o, body, b.len);
    return o.len;
}

/* The name of a TPM2B_PUBLIC: 0x000b || SHA-256 of its TPMT_PUBLIC. */
static void soft_name(const unsigned char *pub, size_t len, unsigned char name[34])
{
    name[0] = 0x00;
    name[1] = 0x0b;
    SHA256(pub + 2, len - 2, name + 2);
}

/* TPMS_ATTEST header: magic, type, qualifiedSigner, extraData, clockInfo, firmwareVersion. */
static void soft_attest_head(wr *w, unsigned type, const unsigned char signer[34], const unsigned char *extra,
                             size_t extra_len, uint32_t reset_count)
{
    w32(w, 0xff544347u);
    w16(w, type);
    w2b(w, signer, 34);
    w2b(w, extra, extra_len);
    w32(w, 0); /* clock, 64 bits */
    w32(w, 12345);
    w32(w, reset_count);
    w32(w, 0); /* restartCount */
    w8(w, 1); /* safe */
    w32(w, 0x20191023u);
    w32(w, 0);
}

/* TPMT_SIGNATURE, ECDSA-SHA256, over data by key. */
static size_t soft_sign(EVP_PKEY *key, const unsigned char *data, size_t len, unsigned char *out, size_t cap)
{
    unsigned char der[80];
    size_t der_len = sizeof(der);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_DigestSignInit(m, NULL, EVP_sha256(), NULL, key);
    EVP_DigestSign(m, der, &der_len, data, len);
    EVP_MD_CTX_free(m);
    const unsigned char *q = der;
    ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &q, (long)der_len);
    unsigned char rb[32], sb[32];
    BN_bn2binpad(ECDSA_SIG_get0_r(s), rb, 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(s), sb, 32);
    ECDSA_SIG_free(s);
    wr o = {out, cap, 0};
    w16(&o, 0x0018);
    w16(&o, 0x000b);
    w2b(&o, rb, 32);
    w2b(&o, sb, 32);
    return o.len;
}

static void soft_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (e != NULL)
        X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
}

/* An EK certificate for ek by ca (ca_key), with the TCG profile; each flag breaks one part. */
enum { EKC_OK = 0, EKC_NO_KEYENC = 1, EKC_CA = 2, EKC_OTHER_EKU = 4, EKC_NO_TPM_SAN = 8 };
static X509 *soft_cert(EVP_PKEY *key, X509 *ca, EVP_PKEY *ca_key, const char *cn, int ek_flags, int is_ca)
{
    X509 *x = X509_new();
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_NAME *name = X509_NAME_new();
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, name);
    X509_NAME_free(name);
    X509_set_issuer_name(x, X509_get_subject_name(ca != NULL ? ca : x));
    X509_set_pubkey(x, key);
    X509 *issuer = ca != NULL ? ca : x;
    if (is_ca) {
        soft_ext(x, issuer, NID_basic_constraints, "critical,CA:TRUE");
        soft_ext(x, issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
        soft_ext(x, issuer, NID_subject_key_identifier, "hash");
    } else {
        soft_ext(x, issuer, NID_basic_constraints, (ek_flags & EKC_CA) ? "critical,CA:TRUE" : "critical,CA:FALSE");
        soft_ext(x, issuer, NID_key_usage,
                 (ek_flags & EKC_NO_KEYENC) ? "critical,digitalSignature" : "critical,keyEncipherment");
        soft_ext(x, issuer, NID_ext_key_usage, (ek_flags & EKC_OTHER_EKU) ? "serverAuth" : "2.23.133.8.1");
        soft_ext(x, issuer, NID_authority_key_identifier, "keyid:always");
        GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
        GENERAL_NAME *g = GENERAL_NAME_new();
        X509_NAME *dn = X509_NAME_new();
        X509_NAME_add_entry_by_txt(dn, (ek_flags & EKC_NO_TPM_SAN) ? "O" : "2.23.133.2.1", MBSTRING_ASC,
                                   (const unsigned char *)"id:00001014", -1, -1, 0);
        X509_NAME_add_entry_by_txt(dn, "2.23.133.2.2", MBSTRING_ASC, (const unsigned char *)"soft", -1, -1, 0);
        GENERAL_NAME_set0_value(g, GEN_DIRNAME, dn);
        sk_GENERAL_NAME_push(gens, g);
        X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 1, 0);
        GENERAL_NAMES_free(gens);
    }
    X509_sign(x, ca_key, EVP_sha256());
    return x;
}

#endif
