#include "kf_tpm_evidence.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "kf_b64.h"
#include "kf_hmac.h"

/* TPM 2.0 Part 2 constants used here. */
#define ALG_RSA 0x0001
#define ALG_SHA256 0x000b
#define ALG_NULL 0x0010
#define ALG_ECDSA 0x0018
#define ALG_ECC 0x0023
#define ALG_AES 0x0006
#define ALG_CFB 0x0043
#define ECC_P256 0x0003
#define A_FIXEDTPM 0x00000002u
#define A_FIXEDPARENT 0x00000010u
#define A_SDO 0x00000020u
#define A_USERWITHAUTH 0x00000040u
#define A_ADMINWITHPOLICY 0x00000080u
#define A_RESTRICTED 0x00010000u
#define A_DECRYPT 0x00020000u
#define A_SIGN 0x00040000u
#define GENERATED_VALUE 0xff544347u
#define ST_ATTEST_CERTIFY 0x8017
#define ST_ATTEST_QUOTE 0x8018

static const uint8_t EK_POLICY[32] = {0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc,
                                      0x8d, 0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52,
                                      0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};

/* ---- a bounds-checked reader ---- */

typedef struct rd {
    const unsigned char *p;
    size_t len, off;
    bool bad;
} rd;

static uint16_t u16(rd *r)
{
    if (r->bad || r->len - r->off < 2) {
        r->bad = true;
        return 0;
    }
    uint16_t v = (uint16_t)(r->p[r->off] << 8 | r->p[r->off + 1]);
    r->off += 2;
    return v;
}

static uint32_t u32(rd *r)
{
    uint32_t hi = u16(r);
    return hi << 16 | u16(r);
}

/* A TPM2B: returns its bytes (NULL when it does not fit) and sets *n. */
static const unsigned char *b2(rd *r, size_t *n)
{
    size_t sz = u16(r);
    if (r->bad || r->len - r->off < sz) {
        r->bad = true;
        *n = 0;
        return NULL;
    }
    const unsigned char *v = r->p + r->off;
    r->off += sz;
    *n = sz;
    return v;
}

static void skip(rd *r, size_t n)
{
    if (r->bad || r->len - r->off < n)
        r->bad = true;
    else
        r->off += n;
}

/* ---- public areas ---- */

typedef struct tpm_public {
    uint16_t type, name_alg, scheme, scheme_hash, sym, sym_bits, sym_mode, curve;
    uint32_t attrs, exponent;
    const unsigned char *policy, *x, *y, *n;
    size_t policy_len, x_len, y_len, n_len, key_bits;
    unsigned char name[34];
} tpm_public;

/* Parses a TPM2B_PUBLIC of an RSA or ECC key; computes its name. */
static int parse_public(const unsigned char *p, size_t len, const char *what, tpm_public *t, kf_err *err)
{
    memset(t, 0, sizeof(*t));
    rd r = {.p = p, .len = len};
    size_t inner = u16(&r);
    if (r.bad || inner != len - 2)
        return kf_err_set(err, -EINVAL, "%s: public area size does not match", what);
    t->type = u16(&r);
    t->name_alg = u16(&r);
    t->attrs = u32(&r);
    t->policy = b2(&r, &t->policy_len);
    t->sym = u16(&r);
    if (t->sym != ALG_NULL) {
        t->sym_bits = u16(&r);
        t->sym_mode = u16(&r);
    }
    t->scheme = u16(&r);
    if (t->scheme != ALG_NULL)
        t->scheme_hash = u16(&r);
    if (t->type == ALG_RSA) {
        t->key_bits = u16(&r);
        t->exponent = u32(&r);
        t->n = b2(&r, &t->n_len);
    } else if (t->type == ALG_ECC) {
        t->curve = u16(&r);
        if (u16(&r) != ALG_NULL) /* kdf */
            skip(&r, 2);
        t->x = b2(&r, &t->x_len);
        t->y = b2(&r, &t->y_len);
    } else {
        return kf_err_set(err, -EINVAL, "%s: neither an RSA nor an ECC key", what);
    }
    if (r.bad || r.off != len)
        return kf_err_set(err, -EINVAL, "%s: malformed public area", what);
    if (t->name_alg != ALG_SHA256)
        return kf_err_set(err, -EINVAL, "%s: name algorithm is not SHA-256", what);
    t->name[0] = 0x00;
    t->name[1] = 0x0b;
    SHA256(p + 2, len - 2, t->name + 2);
    return 0;
}

static EVP_PKEY *ec_key(const tpm_public *t)
{
    if (t->type != ALG_ECC || t->curve != ECC_P256 || t->x_len == 0 || t->x_len > 32 || t->y_len == 0 ||
        t->y_len > 32)
        return NULL;
    unsigned char pt[65] = {0x04};
    memcpy(pt + 1 + 32 - t->x_len, t->x, t->x_len);
    memcpy(pt + 33 + 32 - t->y_len, t->y, t->y_len);
    OSSL_PARAM params[] = {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"P-256", 0),
                           OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt)), OSSL_PARAM_END};
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *k = NULL;
    if (c == NULL || EVP_PKEY_fromdata_init(c) != 1 || EVP_PKEY_fromdata(c, &k, EVP_PKEY_PUBLIC_KEY, params) != 1)
        k = NULL;
    EVP_PKEY_CTX_free(c);
    ERR_clear_error();
    return k;
}

static EVP_PKEY *rsa_key(const tpm_public *t)
{
    if (t->type != ALG_RSA || t->n_len == 0 || t->n_len > 512)
        return NULL;
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    BIGNUM *n = BN_bin2bn(t->n, (int)t->n_len, NULL), *e = BN_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *c = NULL;
    EVP_PKEY *k = NULL;
    if (b != NULL && n != NULL && e != NULL && BN_set_word(e, t->exponent ? t->exponent : 65537) &&
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_N, n) && OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_E, e) &&
        (params = OSSL_PARAM_BLD_to_param(b)) != NULL && (c = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) != NULL &&
        EVP_PKEY_fromdata_init(c) == 1 && EVP_PKEY_fromdata(c, &k, EVP_PKEY_PUBLIC_KEY, params) == 1) {
    }
    EVP_PKEY_CTX_free(c);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(b);
    BN_free(n);
    BN_free(e);
    ERR_clear_error();
    return k;
}

/* ---- the evidence file ---- */

void kf_tpm_evidence_clear(kf_tpm_evidence *ev)
{
    free(ev->ek_cert);
    memset(ev, 0, sizeof(*ev));
}

void kf_tpm_certify_qualifying(const unsigned char *key_pub, size_t len, unsigned char out[32])
{
    static const char tag[] = "keyfleet certify v1";
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    unsigned int n = 32;
    if (m == NULL || EVP_DigestInit_ex(m, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(m, tag, sizeof(tag)) != 1 ||
        EVP_DigestUpdate(m, key_pub, len) != 1 || EVP_DigestFinal_ex(m, out, &n) != 1)
        memset(out, 0, 32);
    EVP_MD_CTX_free(m);
}

#define FIELDS(X)                                                                                                      \
    X(ek_public, ek_pub, sizeof(ev->ek_pub))                                                                           \
    X(ak_public, ak_pub, sizeof(ev->ak_pub))                                                                           \
    X(key_public, key_pub, sizeof(ev->key_pub))                                                                        \
    X(certify_info, attest, sizeof(ev->attest))                                                                        \
    X(certify_signature, sig, sizeof(ev->sig))

static int put_line(FILE *f, const char *name, const unsigned char *v, size_t n)
{
    size_t cap = kf_b64_encoded_len(n, false) + 1;
    char *b = malloc(cap);
    int ok = b != NULL && kf_b64_encode(v, n, false, b, cap) >= 0 && fprintf(f, "%s %s\n", name, b) > 0;
    free(b);
    return ok ? 0 : -EIO;
}

int kf_tpm_evidence_write(const kf_tpm_evidence *ev, const char *path, kf_err *err)
{
    FILE *f = fopen(path, "wx");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: %s", path, errno == EEXIST ? "already exists" : strerror(errno));
    int r = fprintf(f, "kf-tpm-evidence 1\n") > 0 ? 0 : -EIO;
#define W(name, field, cap)                                                                                            \
    if (r == 0)                                                                                                        \
        r = put_line(f, #name, ev->field, ev->field##_len);
    FIELDS(W)
#undef W
    if (r == 0 && ev->ek_cert != NULL)
        r = put_line(f, "ek_certificate", ev->ek_cert, ev->ek_cert_len);
    if (fclose(f) != 0 || r != 0) {
        remove(path);
        return kf_err_set(err, -EIO, "%s: write failed", path);
    }
    return 0;
}

static int get_field(const char *b64, size_t len, unsigned char *out, size_t cap, size_t *ret_len)
{
    int n = kf_b64_decode(b64, len, false, out, cap);
    if (n <= 0)
        return -EINVAL;
    *ret_len = (size_t)n;
    return 0;
}

int kf_tpm_evidence_read(const char *path, kf_tpm_evidence *ev, kf_err *err)
{
    memset(ev, 0, sizeof(*ev));
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
    char line[8192];
    int r = 0, lineno = 0;
    bool header = false;
    while (r == 0 && fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        size_t len = strlen(line);
        if (len == 0 || line[len - 1] != '\n') {
            r = -EINVAL;
            break;
        }
        line[--len] = '\0';
        if (!header) {
            header = strcmp(line, "kf-tpm-evidence 1") == 0;
            r = header ? 0 : -EINVAL;
            continue;
        }
        char *sp = strchr(line, ' ');
        if (sp == NULL) {
            r = -EINVAL;
            break;
        }
        *sp = '\0';
        const char *v = sp + 1;
        size_t vl = strlen(v);
        r = -EINVAL;
#define G(name, field, cap)                                                                                            \
    if (strcmp(line, #name) == 0 && ev->field##_len == 0)                                                              \
        r = get_field(v, vl, ev->field, cap, &ev->field##_len);
        FIELDS(G)
#undef G
        if (strcmp(line, "ek_certificate") == 0 && ev->ek_cert == NULL && vl <= 8192) {
            ev->ek_cert = malloc(vl);
            r = ev->ek_cert != NULL ? get_field(v, vl, ev->ek_cert, vl, &ev->ek_cert_len) : -ENOMEM;
        }
    }
    fclose(f);
    if (r == 0 && (!header || ev->ek_pub_len == 0 || ev->ak_pub_len == 0 || ev->key_pub_len == 0 ||
                   ev->attest_len == 0 || ev->sig_len == 0))
        r = -EINVAL;
    if (r != 0) {
        kf_tpm_evidence_clear(ev);
        return kf_err_set(err, -EINVAL, "%s: not TPM evidence from keyfleet-agent identity create (line %d)", path,
                          lineno);
    }
    return 0;
}

/* ---- verification ---- */

void kf_tpm_verified_clear(kf_tpm_verified *v)
{
    EVP_PKEY_free(v->key);
    EVP_PKEY_free(v->ek);
    memset(v, 0, sizeof(*v));
}

/* The TCG EK Credential Profile (for TPM family 2.0, section 3.2) for an RSA EK's certificate:
 * X.509 v3; key usage keyEncipherment (an RSA EK decrypts, it never signs); not a CA; the
 * subject alternative name a directoryName with the TPM manufacturer attribute (2.23.133.2.1,
 * with model and version beside it); the extended key usage, where present (the profile says
 * SHOULD), tcg-kp-EKCertificate (2.23.133.8.1). A certificate a manufacturer CA issued for
 * anything else (a web server, a sub-CA, a platform certificate) is not an EK certificate,
 * whatever key it names. Returns NULL, or what is wrong. */
static const char *ek_cert_profile(X509 *x)
{
    if (X509_get_version(x) != X509_VERSION_3)
        return "not an X.509 v3 certificate";
    uint32_t ku = X509_get_key_usage(x);
    if (ku == UINT32_MAX || !(ku & KU_KEY_ENCIPHERMENT))
        return "its key usage lacks keyEncipherment";
    if ((X509_get_extension_flags(x) & EXFLAG_CA) || X509_check_ca(x) != 0 || (ku & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)))
        return "it is a CA certificate";
    const char *bad = NULL;
    EXTENDED_KEY_USAGE *eku = X509_get_ext_d2i(x, NID_ext_key_usage, NULL, NULL);
    ASN1_OBJECT *ek_purpose = OBJ_txt2obj("2.23.133.8.1", 1), *manufacturer = OBJ_txt2obj("2.23.133.2.1", 1);
    if (eku != NULL) {
        bool found = false;
        for (int i = 0; i < sk_ASN1_OBJECT_num(eku); i++)
            found = found || OBJ_cmp(sk_ASN1_OBJECT_value(eku, i), ek_purpose) == 0;
        if (!found)
            bad = "its extended key usage is not tcg-kp-EKCertificate (2.23.133.8.1)";
    } else if (X509_get_ext_by_NID(x, NID_ext_key_usage, -1) >= 0) {
        bad = "its extended key usage does not parse";
    }
    GENERAL_NAMES *san = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    bool tpm_named = false;
    for (int i = 0; san != NULL && i < sk_GENERAL_NAME_num(san); i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(san, i);
        tpm_named = tpm_named || (g->type == GEN_DIRNAME && X509_NAME_get_index_by_OBJ(g->d.dirn, manufacturer, -1) >= 0);
    }
    if (bad == NULL && !tpm_named)
        bad = "its subject alternative name does not name a TPM manufacturer (2.23.133.2.1)";
    EXTENDED_KEY_USAGE_free(eku);
    GENERAL_NAMES_free(san);
    ASN1_OBJECT_free(ek_purpose);
    ASN1_OBJECT_free(manufacturer);
    return bad;
}

static int verify_ek_cert(const kf_tpm_evidence *ev, EVP_PKEY *ek, X509_STORE *cas, bool *ret_verified, kf_err *err)
{
    *ret_verified = false;
    if (ev->ek_cert == NULL)
        return cas != NULL ? kf_err_set(err, -EACCES, "the TPM has no EK certificate, and EK CAs are configured") : 0;
    const unsigned char *q = ev->ek_cert;
    X509 *x = d2i_X509(NULL, &q, (long)ev->ek_cert_len);
    int r = 0;
    if (x == NULL) {
        r = kf_err_set(err, -EINVAL, "the EK certificate does not parse");
        goto out;
    }
    EVP_PKEY *cert_key = X509_get0_pubkey(x);
    if (cert_key == NULL || EVP_PKEY_eq(cert_key, ek) != 1) {
        r = kf_err_set(err, -EACCES, "the EK certificate is for another key than this TPM's EK");
        goto out;
    }
    const char *not_ek = cas != NULL ? ek_cert_profile(x) : NULL;
    if (not_ek != NULL) {
        r = kf_err_set(err, -EACCES, "the EK certificate is not an EK certificate (TCG EK Credential Profile): %s",
                       not_ek);
        goto out;
    }
    if (cas != NULL) {
        X509_STORE_CTX *c = X509_STORE_CTX_new();
        /* The profile is checked above (ek_cert_profile); here the chain and its signatures.
         * Manufacturers mark extensions critical that OpenSSL does not interpret (the TCG
         * subject directory attributes, some certificate policies): those are not refused. */
        int ok = c != NULL && X509_STORE_CTX_init(c, cas, x, NULL) == 1 &&
                 (X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(c), X509_V_FLAG_IGNORE_CRITICAL), 1) &&
                 X509_verify_cert(c) == 1;
        int e = c != NULL ? X509_STORE_CTX_get_error(c) : 0;
        X509_STORE_CTX_free(c);
        if (!ok) {
            r = kf_err_set(err, -EACCES, "the EK certificate does not chain to a configured EK CA: %s",
                           X509_verify_cert_error_string(e));
            goto out;
        }
        *ret_verified = true;
    }
out:
    X509_free(x);
    ERR_clear_error();
    return r;
}

/* TPMS_ATTEST of a TPM2_Certify (Part 2, 10.12.12): checks the type and qualifying data and
 * returns the certified object's name. */
static int parse_certify(const unsigned char *p, size_t len, const unsigned char *q, size_t q_len,
                         const unsigned char **ret_name, size_t *ret_name_len, kf_err *err)
{
    rd r = {.p = p, .len = len};
    uint32_t magic = u32(&r);
    uint16_t type = u16(&r);
    size_t n, extra_len;
    b2(&r, &n); /* qualifiedSigner */
    const unsigned char *extra = b2(&r, &extra_len);
    skip(&r, 17 + 8); /* clockInfo, firmwareVersion */
    const unsigned char *name = b2(&r, ret_name_len);
    b2(&r, &n); /* qualifiedName */
    if (r.bad || r.off != len)
        return kf_err_set(err, -EINVAL, "malformed TPM2_Certify attestation");
    if (magic != GENERATED_VALUE || type != ST_ATTEST_CERTIFY)
        return kf_err_set(err, -EINVAL, "the attestation is not a TPM-made TPM2_Certify");
    if (extra_len != q_len || CRYPTO_memcmp(extra, q, q_len) != 0)
        return kf_err_set(err, -EACCES, "the attestation's qualifying data is not for this key");
    *ret_name = name;
    return 0;
}

/* TPMT_SIGNATURE (ECDSA, SHA-256) over SHA-256(data), by key. */
static int verify_sig(EVP_PKEY *key, const unsigned char *data, size_t len, const unsigned char *sig, size_t sig_len,
                      kf_err *err)
{
    rd r = {.p = sig, .len = sig_len};
    uint16_t alg = u16(&r), hash = u16(&r);
    size_t rl, sl;
    const unsigned char *rb = b2(&r, &rl), *sb = b2(&r, &sl);
    if (r.bad || r.off != sig_len || alg != ALG_ECDSA || hash != ALG_SHA256 || rl == 0 || rl > 32 || sl == 0 ||
        sl > 32)
        return kf_err_set(err, -EINVAL, "malformed signature (an ECDSA-SHA256 TPMT_SIGNATURE is expected)");
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *br = BN_bin2bn(rb, (int)rl, NULL), *bs = BN_bin2bn(sb, (int)sl, NULL);
    unsigned char *der = NULL;
    int der_len = -1;
    if (s != NULL && br != NULL && bs != NULL && ECDSA_SIG_set0(s, br, bs) == 1) {
        br = bs = NULL;
        der_len = i2d_ECDSA_SIG(s, &der);
    }
    BN_free(br);
    BN_free(bs);
    ECDSA_SIG_free(s);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    int ok = der_len > 0 && m != NULL && EVP_DigestVerifyInit(m, NULL, EVP_sha256(), NULL, key) == 1 &&
             EVP_DigestVerify(m, der, (size_t)der_len, data, len) == 1;
    EVP_MD_CTX_free(m);
    OPENSSL_free(der);
    ERR_clear_error();
    return ok ? 0 : kf_err_set(err, -EACCES, "the attestation's signature does not verify with the AK");
}

/* An attestation key: restricted (it signs only what the TPM made, so a TPMS_ATTEST it signs
 * is the TPM's word), a signer and never a decrypter, made in the TPM and fixed to it, with the
 * ECDSA-SHA256 scheme. The certify (CA) and the quotes (coordinator) both rest on this. */
static bool ak_ok(const tpm_public *ak)
{
    const uint32_t need = A_FIXEDTPM | A_FIXEDPARENT | A_SDO | A_RESTRICTED | A_SIGN;
    bool attrs = (ak->attrs & need) == need;
    bool no_decrypt = !(ak->attrs & A_DECRYPT);
    return attrs && no_decrypt && ak->scheme == ALG_ECDSA && ak->scheme_hash == ALG_SHA256;
}

int kf_tpm_evidence_verify(const kf_tpm_evidence *ev, X509_STORE *ek_cas, kf_tpm_verified *ret, kf_err *err)
{
    tpm_public ek, ak, key;
    kf_tpm_verified v = {0};
    int r;
    if ((r = parse_public(ev->ek_pub, ev->ek_pub_len, "EK", &ek, err)) != 0 ||
        (r = parse_public(ev->ak_pub, ev->ak_pub_len, "AK", &ak, err)) != 0 ||
        (r = parse_public(ev->key_pub, ev->key_pub_len, "node key", &key, err)) != 0)
        return r;
    const uint32_t ek_need = A_FIXEDTPM | A_FIXEDPARENT | A_SDO | A_ADMINWITHPOLICY | A_RESTRICTED | A_DECRYPT;
    if (ek.type != ALG_RSA || ek.key_bits != 2048 || (ek.attrs & ek_need) != ek_need || (ek.attrs & A_SIGN) ||
        ek.sym != ALG_AES || ek.sym_bits != 128 || ek.sym_mode != ALG_CFB || ek.policy_len != 32 ||
        memcmp(ek.policy, EK_POLICY, 32) != 0)
        return kf_err_set(err, -EACCES, "the EK is not a TCG default RSA 2048 endorsement key");
    if (!ak_ok(&ak))
        return kf_err_set(err, -EACCES,
                          "the AK is not a restricted ECDSA-SHA256 signing key made in and fixed to the TPM");
    const uint32_t key_need = A_FIXEDTPM | A_FIXEDPARENT | A_SDO | A_SIGN;
    if ((key.attrs & key_need) != key_need || (key.attrs & A_RESTRICTED))
        return kf_err_set(err, -EACCES, "the node key is not a signing key made in and fixed to the TPM");
    EVP_PKEY *ak_key = ec_key(&ak);
    v.key = ec_key(&key);
    v.ek = rsa_key(&ek);
    if (ak_key == NULL || v.key == NULL || v.ek == NULL) {
        EVP_PKEY_free(ak_key);
        kf_tpm_verified_clear(&v);
        return kf_err_set(err, -EINVAL, "the EK, AK or node key is not a usable RSA 2048 / P-256 public key");
    }
    unsigned char q[32];
    kf_tpm_certify_qualifying(ev->key_pub, ev->key_pub_len, q);
    const unsigned char *certified = NULL;
    size_t certified_len = 0;
    r = parse_certify(ev->attest, ev->attest_len, q, sizeof(q), &certified, &certified_len, err);
    if (r == 0 && (certified_len != sizeof(key.name) || CRYPTO_memcmp(certified, key.name, sizeof(key.name)) != 0))
        r = kf_err_set(err, -EACCES, "the attestation certifies another key than the node key");
    if (r == 0)
        r = verify_sig(ak_key, ev->attest, ev->attest_len, ev->sig, ev->sig_len, err);
    if (r == 0)
        r = verify_ek_cert(ev, v.ek, ek_cas, &v.ek_cert_verified, err);
    EVP_PKEY_free(ak_key);
    if (r != 0) {
        kf_tpm_verified_clear(&v);
        return r;
    }
    memcpy(v.ak_name, ak.name, sizeof(v.ak_name));
    SHA256(ev->ak_pub, ev->ak_pub_len, v.ak_digest);
    SHA256(ev->ek_pub, ev->ek_pub_len, v.ek_digest);
    *ret = v;
    return 0;
}

/* ---- TPM2_MakeCredential in software (Part 1, 24; Part 3, 12.6) ---- */

/* KDFa (Part 1, 11.4.10.2) with SHA-256: counter-mode HMAC over
 * counter || label || 0x00 || contextU || contextV || bits. */
static int kdfa(const unsigned char *key, size_t key_len, const char *label, const unsigned char *u, size_t u_len,
                unsigned char *out, size_t out_len)
{
    unsigned char bits[4] = {(unsigned char)(out_len * 8 >> 24), (unsigned char)(out_len * 8 >> 16),
                             (unsigned char)(out_len * 8 >> 8), (unsigned char)(out_len * 8)};
    int r = 0;
    for (uint32_t i = 1, done = 0; r == 0 && done < out_len; i++) {
        unsigned char ctr[4] = {(unsigned char)(i >> 24), (unsigned char)(i >> 16), (unsigned char)(i >> 8),
                                (unsigned char)i};
        unsigned char block[32];
        const kf_span msg[4] = {{ctr, 4}, {label, strlen(label) + 1}, {u, u_len}, {bits, 4}};
        r = kf_hmac_sha256(key, key_len, msg, 4, block) == 0 ? 0 : -EIO;
        size_t take = out_len - done < 32 ? out_len - done : 32;
        if (r == 0)
            memcpy(out + done, block, take);
        done += (uint32_t)take;
        OPENSSL_cleanse(block, sizeof(block));
    }
    return r;
}

int kf_tpm_make_credential(EVP_PKEY *ek, const unsigned char *name, size_t name_len, const unsigned char *secret,
                           size_t secret_len, unsigned char *id, size_t *id_len, unsigned char *es, size_t *es_len,
                           kf_err *err)
{
    if (secret_len == 0 || secret_len > 32 || name_len > 66)
        return kf_err_set(err, -EINVAL, "credential: bad secret or name length");
    unsigned char seed[32], sym_key[16], hmac_key[32], plain[34], enc[34], mac[32];
    int r = -EIO;
    size_t ct_len = 0;
    EVP_PKEY_CTX *pc = NULL;
    EVP_CIPHER_CTX *cc = NULL;
    /* The seed, encrypted to the EK with RSA-OAEP-SHA256 and the label "IDENTITY". */
    static const char label[] = "IDENTITY";
    char *label_copy = OPENSSL_memdup(label, sizeof(label));
    if (RAND_bytes(seed, sizeof(seed)) != 1 || label_copy == NULL ||
        (pc = EVP_PKEY_CTX_new_from_pkey(NULL, ek, NULL)) == NULL || EVP_PKEY_encrypt_init(pc) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_OAEP_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(pc, EVP_sha256()) != 1 || EVP_PKEY_CTX_set_rsa_mgf1_md(pc, EVP_sha256()) != 1 ||
        EVP_PKEY_CTX_set0_rsa_oaep_label(pc, label_copy, sizeof(label)) != 1) {
        OPENSSL_free(label_copy);
        goto out;
    }
    label_copy = NULL; /* owned by pc */
    if (EVP_PKEY_encrypt(pc, NULL, &ct_len, seed, sizeof(seed)) != 1 || ct_len > 510 ||
        EVP_PKEY_encrypt(pc, es + 2, &ct_len, seed, sizeof(seed)) != 1)
        goto out;
    es[0] = (unsigned char)(ct_len >> 8);
    es[1] = (unsigned char)ct_len;
    *es_len = ct_len + 2;
    /* encIdentity = AES-128-CFB(KDFa(seed, "STORAGE", name), IV 0, TPM2B(secret)). */
    if (kdfa(seed, sizeof(seed), "STORAGE", name, name_len, sym_key, sizeof(sym_key)) != 0 ||
        kdfa(seed, sizeof(seed), "INTEGRITY", NULL, 0, hmac_key, sizeof(hmac_key)) != 0)
        goto out;
    plain[0] = (unsigned char)(secret_len >> 8);
    plain[1] = (unsigned char)secret_len;
    memcpy(plain + 2, secret, secret_len);
    size_t plain_len = secret_len + 2;
    unsigned char iv[16] = {0};
    int outl = 0, fl = 0;
    if ((cc = EVP_CIPHER_CTX_new()) == NULL || EVP_EncryptInit_ex(cc, EVP_aes_128_cfb128(), NULL, sym_key, iv) != 1 ||
        EVP_EncryptUpdate(cc, enc, &outl, plain, (int)plain_len) != 1 || EVP_EncryptFinal_ex(cc, enc + outl, &fl) != 1 ||
        (size_t)(outl + fl) != plain_len)
        goto out;
    /* outerHMAC = HMAC(KDFa(seed, "INTEGRITY"), encIdentity || name). */
    const kf_span integrity[2] = {{enc, plain_len}, {name, name_len}};
    if (kf_hmac_sha256(hmac_key, sizeof(hmac_key), integrity, 2, mac) != 0)
        goto out;
    size_t total = 2 + 32 + plain_len;
    id[0] = (unsigned char)(total >> 8);
    id[1] = (unsigned char)total;
    id[2] = 0;
    id[3] = 32;
    memcpy(id + 4, mac, 32);
    memcpy(id + 36, enc, plain_len);
    *id_len = 2 + total;
    r = 0;
out:
    if (r != 0)
        kf_err_openssl(err, -EIO, "making the credential");
    EVP_PKEY_CTX_free(pc);
    EVP_CIPHER_CTX_free(cc);
    OPENSSL_cleanse(seed, sizeof(seed));
    OPENSSL_cleanse(sym_key, sizeof(sym_key));
    OPENSSL_cleanse(hmac_key, sizeof(hmac_key));
    OPENSSL_cleanse(plain, sizeof(plain));
    return r;
}

/* ---- the certificate extension ---- */

static void hex(const unsigned char *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", in[i]);
}

int kf_tpm_ext_add(X509 *x, const kf_tpm_verified *v, kf_err *err)
{
    char ak[65], ek[65], text[256];
    hex(v->ak_digest, 32, ak);
    hex(v->ek_digest, 32, ek);
    snprintf(text, sizeof(text), "tpm-key ak=%s ek=%s ek_cert=%s", ak, ek, v->ek_cert_verified ? "verified" : "unverified");
    ASN1_OBJECT *oid = OBJ_txt2obj(KF_TPM_EXT_OID, 1);
    ASN1_UTF8STRING *s = ASN1_UTF8STRING_new();
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    unsigned char *der = NULL;
    int der_len = -1;
    X509_EXTENSION *ext = NULL;
    if (oid != NULL && s != NULL && os != NULL && ASN1_STRING_set(s, text, -1) == 1 &&
        (der_len = i2d_ASN1_UTF8STRING(s, &der)) > 0 && ASN1_OCTET_STRING_set(os, der, der_len) == 1)
        ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 0, os);
    int ok = ext != NULL && X509_add_ext(x, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    OPENSSL_free(der);
    ASN1_OCTET_STRING_free(os);
    ASN1_UTF8STRING_free(s);
    ASN1_OBJECT_free(oid);
    return ok ? 0 : kf_err_openssl(err, -EIO, "adding the TPM extension");
}

bool kf_tpm_ext_get(X509 *x, char *ret_ak_hex)
{
    ASN1_OBJECT *oid = OBJ_txt2obj(KF_TPM_EXT_OID, 1);
    int i = oid != NULL ? X509_get_ext_by_OBJ(x, oid, -1) : -1;
    bool ok = false;
    /* Exactly one. */
    if (i >= 0 && X509_get_ext_by_OBJ(x, oid, i) < 0) {
        ASN1_OCTET_STRING *os = X509_EXTENSION_get_data(X509_get_ext(x, i));
        const unsigned char *p = ASN1_STRING_get0_data(os);
        ASN1_UTF8STRING *s = d2i_ASN1_UTF8STRING(NULL, &p, ASN1_STRING_length(os));
        char ak[65] = "";
        if (s != NULL && p == ASN1_STRING_get0_data(os) + ASN1_STRING_length(os) && ASN1_STRING_length(s) < 256) {
            char text[256];
            memcpy(text, ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
            text[ASN1_STRING_length(s)] = '\0';
            /* Only a certificate whose EK certificate the CA checked against a manufacturer CA
             * counts: without one, evidence can be made in software (no TPM at all). */
            char ek[65] = "", verdict[16] = "";
            int end = 0;
            ok = sscanf(text, "tpm-key ak=%64[0-9a-f] ek=%64[0-9a-f] ek_cert=%15[a-z]%n", ak, ek, verdict, &end) == 3 &&
                 strlen(ak) == 64 && strlen(ek) == 64 && strcmp(verdict, "verified") == 0 && text[end] == '\0';
        }
        ASN1_UTF8STRING_free(s);
        if (ok && ret_ak_hex != NULL)
            memcpy(ret_ak_hex, ak, 65);
    }
    ASN1_OBJECT_free(oid);
    ERR_clear_error();
    return ok;
}

/* ---- the credential bundle ---- */

void kf_tpm_credential_clear(kf_tpm_credential *c)
{
    free(c->box);
    memset(c, 0, sizeof(*c));
}

static const unsigned char CRED_AAD[] = "keyfleet tpm credential v1";

static int gcm(bool enc, const unsigned char *key, const unsigned char *iv, const unsigned char *in, size_t len,
               unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int ol = 0, fl = 0;
    int ok = c != NULL && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv, enc ? 1 : 0) == 1 &&
             EVP_CipherUpdate(c, NULL, &ol, CRED_AAD, sizeof(CRED_AAD)) == 1 &&
             EVP_CipherUpdate(c, out, &ol, in, (int)len) == 1 &&
             (enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1) &&
             EVP_CipherFinal_ex(c, out + ol, &fl) == 1 && (size_t)(ol + fl) == len &&
             (!enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1);
    EVP_CIPHER_CTX_free(c);
    ERR_clear_error();
    return ok ? 0 : -EACCES;
}

int kf_tpm_credential_make(const kf_tpm_verified *v, const char *cert_pem, size_t len, kf_tpm_credential *ret,
                           kf_err *err)
{
    kf_tpm_credential c = {0};
    unsigned char secret[32];
    int r = -EIO;
    if (len > 16384 || RAND_bytes(secret, sizeof(secret)) != 1 || RAND_bytes(c.iv, sizeof(c.iv)) != 1 ||
        (c.box = malloc(len + 16)) == NULL) {
        r = kf_err_set(err, -ENOMEM, "making the credential: out of memory or randomness");
        goto out;
    }
    if ((r = kf_tpm_make_credential(v->ek, v->ak_name, sizeof(v->ak_name), secret, sizeof(secret), c.id, &c.id_len,
                                    c.es, &c.es_len, err)) != 0)
        goto out;
    if (gcm(true, secret, c.iv, (const unsigned char *)cert_pem, len, c.box, c.box + len) != 0) {
        r = kf_err_set(err, -EIO, "sealing the certificate");
        goto out;
    }
    c.box_len = len + 16;
    *ret = c;
    c.box = NULL;
    r = 0;
out:
    OPENSSL_cleanse(secret, sizeof(secret));
    kf_tpm_credential_clear(&c);
    return r;
}

int kf_tpm_credential_write(const kf_tpm_credential *c, const char *path, kf_err *err)
{
    FILE *f = fopen(path, "wx");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: %s", path, errno == EEXIST ? "already exists" : strerror(errno));
    int r = fprintf(f, "kf-tpm-credential 1\n") > 0 ? 0 : -EIO;
    if (r == 0)
        r = put_line(f, "id_object", c->id, c->id_len);
    if (r == 0)
        r = put_line(f, "encrypted_secret", c->es, c->es_len);
    if (r == 0)
        r = put_line(f, "iv", c->iv, sizeof(c->iv));
    if (r == 0)
        r = put_line(f, "certificate", c->box, c->box_len);
    if (fclose(f) != 0 || r != 0) {
        remove(path);
        return kf_err_set(err, -EIO, "%s: write failed", path);
    }
    return 0;
}

int kf_tpm_credential_read(const char *path, kf_tpm_credential *c, kf_err *err)
{
    memset(c, 0, sizeof(*c));
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
    char line[32768];
    int r = 0, lineno = 0;
    size_t iv_len = 0;
    while (r == 0 && fgets(line, sizeof(line), f) != NULL) {
        size_t len = strlen(line);
        if (len == 0 || line[len - 1] != '\n') {
            r = -EINVAL;
            break;
        }
        line[--len] = '\0';
        if (lineno++ == 0) {
            r = strcmp(line, "kf-tpm-credential 1") == 0 ? 0 : -EINVAL;
            continue;
        }
        char *sp = strchr(line, ' ');
        if (sp == NULL) {
            r = -EINVAL;
            break;
        }
        *sp = '\0';
        const char *v = sp + 1;
        size_t vl = strlen(v);
        r = -EINVAL;
        if (strcmp(line, "id_object") == 0 && c->id_len == 0)
            r = get_field(v, vl, c->id, sizeof(c->id), &c->id_len);
        else if (strcmp(line, "encrypted_secret") == 0 && c->es_len == 0)
            r = get_field(v, vl, c->es, sizeof(c->es), &c->es_len);
        else if (strcmp(line, "iv") == 0 && iv_len == 0)
            r = get_field(v, vl, c->iv, sizeof(c->iv), &iv_len);
        else if (strcmp(line, "certificate") == 0 && c->box == NULL && (c->box = malloc(vl)) != NULL)
            r = get_field(v, vl, c->box, vl, &c->box_len);
    }
    fclose(f);
    if (r == 0 && (lineno == 0 || c->id_len == 0 || c->es_len == 0 || iv_len != sizeof(c->iv) || c->box_len <= 16))
        r = -EINVAL;
    if (r != 0) {
        kf_tpm_credential_clear(c);
        return kf_err_set(err, -EINVAL, "%s: not a credential from keyfleetctl cert issue --tpm-evidence", path);
    }
    return 0;
}

int kf_tpm_credential_open(const kf_tpm_credential *c, const unsigned char *secret, size_t secret_len,
                           char **ret_pem, kf_err *err)
{
    if (secret_len != 32)
        return kf_err_set(err, -EACCES, "the activated secret has the wrong length");
    size_t len = c->box_len - 16;
    char *pem = malloc(len + 1);
    if (pem == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    unsigned char tag[16];
    memcpy(tag, c->box + len, 16);
    if (gcm(false, secret, c->iv, c->box, len, (unsigned char *)pem, tag) != 0) {
        free(pem);
        return kf_err_set(err, -EACCES, "the certificate does not open with the activated secret");
    }
    pem[len] = '\0';
    *ret_pem = pem;
    return 0;
}

/* ---- measured-boot quotes ---- */

static void put_lp(EVP_MD_CTX *m, const void *p, size_t n)
{
    unsigned char len[4] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16), (unsigned char)(n >> 8),
                            (unsigned char)n};
    EVP_DigestUpdate(m, len, 4);
    if (n > 0)
        EVP_DigestUpdate(m, p, n);
}

void kf_tpm_quote_qualifying(const unsigned char exporter[32], const char *method, const char *volume_id,
                             const unsigned char *eph_pub, size_t eph_len, const char *request_id,
                             unsigned char out[32])
{
    static const char tag[] = "keyfleet quote v1";
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    unsigned int n = 32;
    if (m == NULL || EVP_DigestInit_ex(m, EVP_sha256(), NULL) != 1) {
        memset(out, 0, 32);
        EVP_MD_CTX_free(m);
        return;
    }
    EVP_DigestUpdate(m, tag, sizeof(tag));
    put_lp(m, exporter, 32);
    put_lp(m, method, strlen(method));
    put_lp(m, volume_id, strlen(volume_id));
    put_lp(m, eph_pub, eph_len);
    put_lp(m, request_id, strlen(request_id));
    if (EVP_DigestFinal_ex(m, out, &n) != 1)
        memset(out, 0, 32);
    EVP_MD_CTX_free(m);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Exactly 2 * n hex digits (either case), nothing else: no sign, space or 0x. */
static int unhex_exact(const char *hex, size_t len, unsigned char *out, size_t n)
{
    if (hex == NULL || len != 2 * n)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

static int unhex32(const char *hex, unsigned char out[32])
{
    return hex == NULL ? -EINVAL : unhex_exact(hex, strlen(hex), out, 32);
}

/* TPMS_ATTEST of a TPM2_Quote (Part 2, 10.12.1): type, qualifying data, selection and digest. */
static int parse_quote(const unsigned char *p, size_t len, const unsigned char *q, uint32_t *ret_mask,
                       const unsigned char **ret_digest, kf_tpm_clock *ret_clock, kf_err *err)
{
    rd r = {.p = p, .len = len};
    uint32_t magic = u32(&r);
    uint16_t type = u16(&r);
    size_t n, extra_len, digest_len;
    b2(&r, &n); /* qualifiedSigner */
    const unsigned char *extra = b2(&r, &extra_len);
    kf_tpm_clock clock = {0};
    clock.clock = (uint64_t)u32(&r) << 32; /* TPMS_CLOCK_INFO */
    clock.clock |= u32(&r);
    clock.reset_count = u32(&r);
    clock.restart_count = u32(&r);
    clock.safe = !r.bad && r.off < r.len && r.p[r.off] != 0;
    skip(&r, 1 + 8); /* safe, firmwareVersion */
    uint32_t count = u32(&r);
    uint16_t hash = 0;
    uint32_t mask = 0;
    if (!r.bad && count == 1) {
        hash = u16(&r);
        size_t size_of_select = r.bad || r.off >= r.len ? 0 : r.p[r.off];
        skip(&r, 1);
        for (size_t i = 0; i < size_of_select && !r.bad; i++) {
            unsigned char byte = r.off < r.len ? r.p[r.off] : 0;
            skip(&r, 1);
            if (i >= 3 && byte != 0)
                return kf_err_set(err, -EINVAL, "the quote selects a PCR above 23");
            if (i < 3)
                mask |= (uint32_t)byte << (8 * i);
        }
    }
    const unsigned char *digest = b2(&r, &digest_len);
    if (r.bad || r.off != len)
        return kf_err_set(err, -EINVAL, "malformed TPM2_Quote attestation");
    if (magic != GENERATED_VALUE || type != ST_ATTEST_QUOTE)
        return kf_err_set(err, -EINVAL, "the attestation is not a TPM-made TPM2_Quote");
    if (count != 1 || hash != ALG_SHA256 || mask == 0 || digest_len != 32)
        return kf_err_set(err, -EINVAL, "the quote must select PCRs of the SHA-256 bank only");
    if (extra_len != 32 || CRYPTO_memcmp(extra, q, 32) != 0)
        return kf_err_set(err, -EACCES,
                          "the quote's qualifying data is not for this request and connection (replayed?)");
    *ret_mask = mask;
    *ret_digest = digest;
    *ret_clock = clock;
    return 0;
}

int kf_tpm_quote_verify(const unsigned char *ak_pub, size_t ak_len, const char *ak_digest_hex,
                        const unsigned char *quoted, size_t quoted_len, const unsigned char *sig, size_t sig_len,
                        const unsigned char *pcr_values, size_t values_len, const unsigned char q[32],
                        kf_tpm_pcrs *ret, kf_tpm_clock *ret_clock, kf_err *err)
{
    /* Structure first (garbage is -EINVAL, whoever sent it), then what it proves. */
    unsigned char want[32], got[32];
    if (ak_len == 0 || ak_len > 512)
        return kf_err_set(err, -EINVAL, "the quote's AK public area is missing or too large");
    tpm_public ak;
    int r = parse_public(ak_pub, ak_len, "AK", &ak, err);
    if (r != 0)
        return r;
    uint32_t mask = 0;
    const unsigned char *digest = NULL;
    kf_tpm_clock clock;
    if ((r = parse_quote(quoted, quoted_len, q, &mask, &digest, &clock, err)) != 0)
        return r;
    size_t n = (size_t)__builtin_popcount(mask);
    if (values_len != 32 * n)
        return kf_err_set(err, -EINVAL, "the quote selects %zu PCRs and %zu bytes of values came with it", n,
                          values_len);
    if (unhex32(ak_digest_hex, want) != 0)
        return kf_err_set(err, -EACCES, "the node's certificate names no attestation key");
    SHA256(ak_pub, ak_len, got);
    if (CRYPTO_memcmp(want, got, 32) != 0)
        return kf_err_set(err, -EACCES, "the quote is signed by another AK than the one the node's certificate names");
    if (!ak_ok(&ak))
        return kf_err_set(err, -EACCES, "the AK is not a restricted ECDSA-SHA256 signing key made in and fixed to the TPM");
    EVP_PKEY *key = ec_key(&ak);
    if (key == NULL)
        return kf_err_set(err, -EINVAL, "the AK is not a usable P-256 public key");
    r = verify_sig(key, quoted, quoted_len, sig, sig_len, err);
    EVP_PKEY_free(key);
    if (r != 0)
        return r;
    SHA256(pcr_values, values_len, got);
    if (CRYPTO_memcmp(got, digest, 32) != 0)
        return kf_err_set(err, -EACCES, "the PCR values sent do not match the quoted digest");
    memset(ret, 0, sizeof(*ret));
    ret->mask = mask;
    for (size_t i = 0, k = 0; i < 24; i++)
        if (mask & (1u << i))
            memcpy(ret->values[i], pcr_values + 32 * k++, 32);
    if (ret_clock != NULL)
        *ret_clock = clock;
    return 0;
}

int kf_tpm_pcrs_require(const kf_tpm_pcrs *got, uint32_t required, kf_err *err)
{
    char list[64];
    /* PCRs 16-23 can be reset (16 by anyone, 17-22 by a DRTM launch, 23 by software): a value
     * there proves nothing about the boot. */
    if (got->mask & KF_TPM_PCRS_RESETTABLE) {
        kf_tpm_pcr_list(got->mask & KF_TPM_PCRS_RESETTABLE, list, sizeof(list));
        return kf_err_set(err, -EACCES, "the quote covers PCR %s, which software can reset; only PCRs 0..15 count",
                          list);
    }
    if (required & ~got->mask) {
        kf_tpm_pcr_list(required & ~got->mask, list, sizeof(list));
        return kf_err_set(err, -EACCES,
                          "the quote does not cover PCR %s, which the policy's attestation.pcrs requires", list);
    }
    uint32_t blank = 0;
    for (unsigned i = 0; i < 24; i++) {
        if (!(required & (1u << i)))
            continue;
        unsigned char zero = 0, ones = 0xff;
        for (size_t k = 0; k < 32; k++) {
            zero |= got->values[i][k];
            ones &= got->values[i][k];
        }
        if (zero == 0 || ones == 0xff)
            blank |= 1u << i;
    }
    if (blank != 0) {
        kf_tpm_pcr_list(blank, list, sizeof(list));
        return kf_err_set(err, -EACCES,
                          "PCR %s was never extended (all zeros or all ones): nothing was measured into it", list);
    }
    return 0;
}

void kf_tpm_pcrs_format(const kf_tpm_pcrs *p, char *out)
{
    size_t off = 0;
    out[0] = '\0';
    for (unsigned i = 0; i < 24; i++) {
        if (!(p->mask & (1u << i)))
            continue;
        off += (size_t)snprintf(out + off, KF_TPM_PCRS_TEXT_MAX - off, "%s%u=", off > 0 ? " " : "", i);
        hex(p->values[i], 32, out + off);
        off += 64;
    }
}

int kf_tpm_pcrs_parse(const char *text, kf_tpm_pcrs *ret, kf_err *err)
{
    memset(ret, 0, sizeof(*ret));
    if (text == NULL || *text == '\0')
        return kf_err_set(err, -EINVAL, "no PCR values (expected PCR=HEX, separated by one space)");
    for (const char *p = text;;) {
        /* PCR: 0..23 in decimal, no sign, space or leading zero. */
        size_t digits = 0;
        unsigned i = 0;
        while (digits < 3 && p[digits] >= '0' && p[digits] <= '9')
            i = 10 * i + (unsigned)(p[digits++] - '0');
        if (digits == 0 || digits > 2 || (digits == 2 && p[0] == '0') || p[digits] != '=')
            return kf_err_set(err, -EINVAL, "'%.8s...': expected a PCR number 0..23, then '='", p);
        if (i > 23)
            return kf_err_set(err, -EINVAL, "PCR %u: PCRs are numbered 0..23", i);
        if (ret->mask & (1u << i))
            return kf_err_set(err, -EINVAL, "PCR %u is given twice", i);
        const char *h = p + digits + 1;
        size_t n = strcspn(h, " ");
        if (unhex_exact(h, n, ret->values[i], 32) != 0)
            return kf_err_set(err, -EINVAL, "PCR %u: expected exactly 64 hex digits (a SHA-256 value), got '%.*s%s'", i,
                              (int)(n < 70 ? n : 70), h, n < 70 ? "" : "...");
        ret->mask |= 1u << i;
        p = h + n;
        if (*p == '\0')
            return 0;
        if (p[1] == '\0' || p[1] == ' ')
            return kf_err_set(err, -EINVAL, "PCR values are separated by exactly one space, with none at the end");
        p++;
    }
}

void kf_tpm_pcr_list(uint32_t mask, char *out, size_t cap)
{
    size_t off = 0;
    out[0] = '\0';
    for (unsigned i = 0; i < 24 && off < cap; i++)
        if (mask & (1u << i))
            off += (size_t)snprintf(out + off, cap - off, "%s%u", off > 0 ? "," : "", i);
}

uint32_t kf_tpm_pcrs_diff(const kf_tpm_pcrs *accepted, const kf_tpm_pcrs *presented)
{
    uint32_t changed = accepted->mask ^ presented->mask;
    for (unsigned i = 0; i < 24; i++)
        if ((accepted->mask & presented->mask & (1u << i)) &&
            CRYPTO_memcmp(accepted->values[i], presented->values[i], 32) != 0)
            changed |= 1u << i;
    return changed;
}

int kf_tpm_attest_token(const char *node, const char *accepted, const char *seen, const char *seen_clock,
                        char out[KF_TPM_ATTEST_TOKEN_LEN + 1])
{
    static const char tag[] = "keyfleet attest accept v1";
    unsigned char d[32];
    unsigned int n = 32;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    int ok = m != NULL && EVP_DigestInit_ex(m, EVP_sha256(), NULL) == 1;
    if (ok) {
        EVP_DigestUpdate(m, tag, sizeof(tag));
        put_lp(m, node, strlen(node));
        put_lp(m, accepted, strlen(accepted));
        put_lp(m, seen, strlen(seen));
        put_lp(m, seen_clock, strlen(seen_clock));
        ok = EVP_DigestFinal_ex(m, d, &n) == 1;
    }
    EVP_MD_CTX_free(m);
    out[0] = '\0';
    if (!ok)
        return -ENOMEM;
    hex(d, KF_TPM_ATTEST_TOKEN_LEN / 2, out);
    out[KF_TPM_ATTEST_TOKEN_LEN] = '\0';
    return 0;
}
