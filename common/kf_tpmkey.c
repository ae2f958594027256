/* The EC_KEY_METHOD below is OpenSSL's deprecated-but-supported way to give a key its own
 * signing function: the key OpenSSL sees is a "foreign" legacy EC key whose sign callback asks
 * the tpm2 provider. Why not hand the provider's key to TLS directly: in one library context
 * with both providers, OpenSSL 3.0 fetches ECDSA from whichever provider was loaded first, and
 * then either signs with the default provider's ECDSA on an exported public-only key (fails) or
 * does every TLS hash in the TPM (the tpm2 provider offers SHA-2 too, at a TPM round trip per
 * call). This way exactly one TPM2_Sign happens per handshake and nothing else changes. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "kf_tpmkey.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/asn1t.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/store.h>
#include <openssl/x509.h>

/* ---- the file format (TCG "TSS2 PRIVATE KEY", as tpm2-openssl and tpm2-tss-engine write it) ---- */

typedef struct {
    ASN1_OBJECT *type;
    ASN1_BOOLEAN empty_auth;
    ASN1_INTEGER *parent;
    ASN1_OCTET_STRING *pubkey;
    ASN1_OCTET_STRING *privkey;
} KF_TSSKEY;

ASN1_SEQUENCE(KF_TSSKEY) = {
    ASN1_SIMPLE(KF_TSSKEY, type, ASN1_OBJECT),
    ASN1_EXP_OPT(KF_TSSKEY, empty_auth, ASN1_BOOLEAN, 0),
    ASN1_SIMPLE(KF_TSSKEY, parent, ASN1_INTEGER),
    ASN1_SIMPLE(KF_TSSKEY, pubkey, ASN1_OCTET_STRING),
    ASN1_SIMPLE(KF_TSSKEY, privkey, ASN1_OCTET_STRING),
} ASN1_SEQUENCE_END(KF_TSSKEY)

DECLARE_ASN1_FUNCTIONS(KF_TSSKEY)
IMPLEMENT_ASN1_FUNCTIONS(KF_TSSKEY)

#define OID_LOADABLE_KEY "2.23.133.10.1.3"

static uint16_t be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const unsigned char *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* TPM2B_PUBLIC of an ECC key (Part 2, 12.2.5): size, type, nameAlg, objectAttributes,
 * authPolicy, TPMS_ECC_PARMS (symmetric, scheme, curveID, kdf), unique. */
static int parse_public(const unsigned char *p, size_t len, kf_tpmkey_info *ret, kf_err *err)
{
    if (len < 2 || be16(p) != len - 2 || len > sizeof(ret->pub))
        return kf_err_set(err, -EINVAL, "TPM key: public area size does not match");
    size_t off = 2;
#define NEED(n)                                                                                        \
    do {                                                                                               \
        if (len - off < (size_t)(n))                                                                   \
            return kf_err_set(err, -EINVAL, "TPM key: public area truncated");                         \
    } while (0)
    NEED(8);
    ret->type = be16(p + off);
    ret->attributes = be32(p + off + 4);
    off += 8;
    if (ret->type != 0x0023)
        return kf_err_set(err, -EINVAL, "TPM key: not an ECC key (type 0x%04x)", ret->type);
    NEED(2);
    size_t policy = be16(p + off);
    off += 2;
    NEED(policy);
    off += policy;
    NEED(2);
    uint16_t sym = be16(p + off);
    off += 2;
    if (sym != 0x0010) { /* TPM2_ALG_NULL */
        NEED(4);
        off += 4;
    }
    NEED(2);
    uint16_t scheme = be16(p + off);
    off += 2;
    if (scheme != 0x0010) {
        NEED(2);
        off += 2;
    }
    NEED(2);
    ret->curve = be16(p + off);
    off += 2;
    NEED(2);
    uint16_t kdf = be16(p + off);
    off += 2;
    if (kdf != 0x0010) {
        NEED(2);
        off += 2;
    }
    for (int i = 0; i < 2; i++) {
        NEED(2);
        size_t n = be16(p + off);
        off += 2;
        NEED(n);
        off += n;
    }
    if (off != len)
        return kf_err_set(err, -EINVAL, "TPM key: %zu stray bytes after the public area", len - off);
#undef NEED
    memcpy(ret->pub, p, len);
    ret->pub_len = len;
    return 0;
}

int kf_tpmkey_parse(const char *pem, size_t len, kf_tpmkey_info *ret, kf_err *err)
{
    if (len > 64 * 1024 || len > INT_MAX)
        return kf_err_set(err, -EINVAL, "TPM key: file too large");
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    char *name = NULL, *header = NULL;
    unsigned char *der = NULL;
    long der_len = 0;
    KF_TSSKEY *k = NULL;
    int r = -EINVAL;
    kf_tpmkey_info info = {0};
    if (bio == NULL) {
        r = kf_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if (PEM_read_bio(bio, &name, &header, &der, &der_len) != 1 || strcmp(name, "TSS2 PRIVATE KEY") != 0) {
        ERR_clear_error();
        r = kf_err_set(err, -EINVAL, "not a TPM key (a PEM block \"%s\" is expected)", KF_TPMKEY_PEM_BEGIN);
        goto out;
    }
    const unsigned char *q = der;
    k = d2i_KF_TSSKEY(NULL, &q, der_len);
    char oid[64];
    uint64_t parent = 0;
    if (k == NULL || q != der + der_len || OBJ_obj2txt(oid, sizeof(oid), k->type, 1) <= 0 ||
        strcmp(oid, OID_LOADABLE_KEY) != 0 || ASN1_INTEGER_get_uint64(&parent, k->parent) != 1 ||
        parent > UINT32_MAX) {
        ERR_clear_error();
        r = kf_err_set(err, -EINVAL, "TPM key: malformed TSS2 PRIVATE KEY structure");
        goto out;
    }
    info.parent = (uint32_t)parent;
    if (k->privkey->length < 2 || (size_t)k->privkey->length > sizeof(info.priv) ||
        be16(k->privkey->data) != (size_t)k->privkey->length - 2) {
        r = kf_err_set(err, -EINVAL, "TPM key: private area size does not match");
        goto out;
    }
    memcpy(info.priv, k->privkey->data, (size_t)k->privkey->length);
    info.priv_len = (size_t)k->privkey->length;
    if ((r = parse_public(k->pubkey->data, (size_t)k->pubkey->length, &info, err)) != 0)
        goto out;
    *ret = info;
    r = 0;
out:
    KF_TSSKEY_free(k);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(der);
    BIO_free(bio);
    return r;
}

/* ---- the provider ---- */

static pthread_mutex_t prov_lock = PTHREAD_MUTEX_INITIALIZER;
static OSSL_LIB_CTX *prov_ctx;
static OSSL_PROVIDER *prov_tpm2, *prov_default;
static char *prov_tcti;

/* The library context holding tpm2 (loaded first, so its ECDSA is picked for its own keys) and
 * default (the file store and PEM decoders). Used only for TPM keys. */
static int provider(const char *tcti, OSSL_LIB_CTX **ret, kf_err *err)
{
    int r = 0;
    pthread_mutex_lock(&prov_lock);
    if (prov_ctx != NULL) {
        if (strcmp(prov_tcti, tcti) != 0)
            r = kf_err_set(err, -EINVAL, "the tpm2 provider is already loaded for TCTI %s, not %s", prov_tcti, tcti);
        goto out;
    }
    if (setenv("TPM2OPENSSL_TCTI", tcti, 1) != 0 || (prov_tcti = strdup(tcti)) == NULL) {
        r = kf_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    OSSL_LIB_CTX *ctx = OSSL_LIB_CTX_new();
    if (ctx == NULL || (prov_tpm2 = OSSL_PROVIDER_load(ctx, "tpm2")) == NULL) {
        char what[300];
        snprintf(what, sizeof(what), "cannot load the OpenSSL tpm2 provider (package tpm2-openssl) with TCTI %.200s",
                 tcti);
        r = kf_err_openssl(err, -ENODEV, what);
        OSSL_LIB_CTX_free(ctx);
        free(prov_tcti);
        prov_tcti = NULL;
        goto out;
    }
    if ((prov_default = OSSL_PROVIDER_load(ctx, "default")) == NULL) {
        r = kf_err_openssl(err, -ENODEV, "cannot load OpenSSL's default provider");
        OSSL_PROVIDER_unload(prov_tpm2);
        prov_tpm2 = NULL;
        OSSL_LIB_CTX_free(ctx);
        free(prov_tcti);
        prov_tcti = NULL;
        goto out;
    }
    prov_ctx = ctx;
out:
    if (r == 0)
        *ret = prov_ctx;
    pthread_mutex_unlock(&prov_lock);
    return r;
}

void kf_tpmkey_unload(void)
{
    pthread_mutex_lock(&prov_lock);
    /* Unloaded explicitly: freeing the library context alone leaves loaded providers (and the
     * tpm2 provider's ESYS context and TPM connection) behind. */
    OSSL_PROVIDER_unload(prov_default);
    OSSL_PROVIDER_unload(prov_tpm2);
    prov_default = prov_tpm2 = NULL;
    OSSL_LIB_CTX_free(prov_ctx);
    prov_ctx = NULL;
    free(prov_tcti);
    prov_tcti = NULL;
    pthread_mutex_unlock(&prov_lock);
}

/* ---- signing through the provider key ---- */

static int ex_index = -1;
static EC_KEY_METHOD *method;
static pthread_once_t method_once = PTHREAD_ONCE_INIT;

static void free_tpm_pkey(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    EVP_PKEY_free(ptr);
}

static ECDSA_SIG *tpm_sign_sig(const unsigned char *dgst, int dgst_len, const BIGNUM *kinv, const BIGNUM *rp,
                               EC_KEY *eckey)
{
    (void)kinv, (void)rp;
    EVP_PKEY *tk = EC_KEY_get_ex_data(eckey, ex_index);
    if (tk == NULL || dgst_len != 32) /* P-256 signs SHA-256 digests (TLS 1.3 ecdsa_secp256r1_sha256) */
        return NULL;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_pkey(prov_ctx, tk, NULL);
    unsigned char der[128];
    size_t der_len = sizeof(der);
    ECDSA_SIG *sig = NULL;
    if (pc != NULL && EVP_PKEY_sign_init(pc) == 1 && EVP_PKEY_sign(pc, der, &der_len, dgst, (size_t)dgst_len) == 1) {
        const unsigned char *q = der;
        sig = d2i_ECDSA_SIG(NULL, &q, (long)der_len);
    }
    EVP_PKEY_CTX_free(pc);
    return sig;
}

static int tpm_sign(int type, const unsigned char *dgst, int dlen, unsigned char *sig, unsigned int *siglen,
                    const BIGNUM *kinv, const BIGNUM *r, EC_KEY *eckey)
{
    (void)type;
    ECDSA_SIG *s = tpm_sign_sig(dgst, dlen, kinv, r, eckey);
    if (s == NULL) {
        *siglen = 0;
        return 0;
    }
    unsigned char *p = sig;
    int n = i2d_ECDSA_SIG(s, &p);
    ECDSA_SIG_free(s);
    if (n <= 0)
        return 0;
    *siglen = (unsigned int)n;
    return 1;
}

static void method_init(void)
{
    ex_index = EC_KEY_get_ex_new_index(0, NULL, NULL, NULL, free_tpm_pkey);
    method = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    if (method != NULL)
        EC_KEY_METHOD_set_sign(method, tpm_sign, NULL, tpm_sign_sig);
}

/* The foreign EC key carrying tk's public key and signing with tk. Takes tk's reference. */
static int wrap(EVP_PKEY *tk, EVP_PKEY **ret, kf_err *err)
{
    pthread_once(&method_once, method_init);
    unsigned char *spki = NULL;
    int n = i2d_PUBKEY(tk, &spki);
    const unsigned char *q = spki;
    EC_KEY *ec = n > 0 ? d2i_EC_PUBKEY(NULL, &q, n) : NULL;
    OPENSSL_free(spki);
    EVP_PKEY *pk = EVP_PKEY_new();
    if (ec == NULL || pk == NULL || method == NULL || ex_index < 0 || EC_KEY_set_method(ec, method) != 1 ||
        EC_KEY_set_ex_data(ec, ex_index, tk) != 1) {
        EC_KEY_free(ec);
        EVP_PKEY_free(pk);
        EVP_PKEY_free(tk);
        return kf_err_openssl(err, -ENOMEM, "wrapping the TPM key");
    }
    /* From here ec owns tk (freed with it through the ex_data callback). */
    if (EVP_PKEY_assign_EC_KEY(pk, ec) != 1) {
        EC_KEY_free(ec);
        EVP_PKEY_free(pk);
        return kf_err_openssl(err, -ENOMEM, "wrapping the TPM key");
    }
    *ret = pk;
    return 0;
}

void kf_tpmkey_detach(EVP_PKEY *pk)
{
    EC_KEY *ec = pk != NULL && ex_index >= 0 ? (EC_KEY *)EVP_PKEY_get0_EC_KEY(pk) : NULL;
    EVP_PKEY *tk = ec != NULL && EC_KEY_get_method(ec) == method ? EC_KEY_get_ex_data(ec, ex_index) : NULL;
    if (tk != NULL) {
        EC_KEY_set_ex_data(ec, ex_index, NULL);
        EVP_PKEY_free(tk);
    }
    ERR_clear_error();
}

static int read_file(const char *path, char **ret, size_t *ret_len, kf_err *err)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return kf_err_set(err, -errno, "TPM key %s: %s", path, strerror(errno));
    char *buf = malloc(64 * 1024 + 1);
    size_t n = buf != NULL ? fread(buf, 1, 64 * 1024 + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (buf == NULL || bad || n > 64 * 1024) {
        free(buf);
        return kf_err_set(err, -EINVAL, "TPM key %s: %s", path, buf == NULL ? "out of memory" : bad ? "read error" : "file too large");
    }
    buf[n] = '\0';
    *ret = buf;
    *ret_len = n;
    return 0;
}

static int check_info(const kf_tpmkey_info *info, kf_err *err)
{
    const uint32_t need = KF_TPMA_FIXEDTPM | KF_TPMA_FIXEDPARENT | KF_TPMA_SENSITIVEDATAORIGIN | KF_TPMA_SIGN;
    if (info->curve != 0x0003)
        return kf_err_set(err, -EINVAL, "TPM key: not a NIST P-256 key (curve 0x%04x)", info->curve);
    if ((info->attributes & need) != need)
        return kf_err_set(err, -EINVAL,
                          "TPM key: attributes 0x%08x lack fixedTPM, fixedParent, sensitiveDataOrigin or sign: "
                          "such a key could exist outside this TPM",
                          info->attributes);
    return 0;
}

int kf_tpmkey_parse_file(const char *path, kf_tpmkey_info *ret, kf_err *err)
{
    char *pem = NULL;
    size_t len = 0;
    int r = read_file(path, &pem, &len, err);
    if (r != 0)
        return r;
    r = kf_tpmkey_parse(pem, len, ret, err);
    free(pem);
    return r;
}

int kf_tpmkey_load(const char *path, const char *tcti, EVP_PKEY **ret, kf_err *err)
{
    kf_tpmkey_info info;
    int r = kf_tpmkey_parse_file(path, &info, err);
    if (r == 0)
        r = check_info(&info, err);
    if (r != 0) {
        kf_err_wrap(err, "%s", path);
        return r;
    }
    OSSL_LIB_CTX *ctx = NULL;
    if ((r = provider(tcti, &ctx, err)) != 0)
        return r;
    OSSL_STORE_CTX *st = OSSL_STORE_open_ex(path, ctx, NULL, NULL, NULL, NULL, NULL, NULL);
    EVP_PKEY *tk = NULL;
    while (st != NULL && tk == NULL && !OSSL_STORE_eof(st)) {
        OSSL_STORE_INFO *si = OSSL_STORE_load(st);
        if (si == NULL)
            break;
        if (OSSL_STORE_INFO_get_type(si) == OSSL_STORE_INFO_PKEY)
            tk = OSSL_STORE_INFO_get1_PKEY(si);
        OSSL_STORE_INFO_free(si);
    }
    OSSL_STORE_close(st);
    if (tk == NULL) {
        r = kf_err_openssl(err, -EACCES, "the TPM refused to load the key (made by another TPM?)");
        kf_err_wrap(err, "%s", path);
        return r;
    }
    if (EVP_PKEY_get0_provider(tk) == NULL || strcmp(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(tk)), "tpm2") != 0) {
        EVP_PKEY_free(tk);
        return kf_err_set(err, -EINVAL, "%s: not loaded by the tpm2 provider", path);
    }
    return wrap(tk, ret, err);
}

int kf_tpmkey_generate(const char *path, const char *tcti, kf_err *err)
{
    OSSL_LIB_CTX *ctx = NULL;
    int r = provider(tcti, &ctx, err);
    if (r != 0)
        return r;
    EVP_PKEY_CTX *gc = EVP_PKEY_CTX_new_from_name(ctx, "EC", "provider=tpm2");
    EVP_PKEY *tk = NULL;
    if (gc == NULL || EVP_PKEY_keygen_init(gc) != 1 || EVP_PKEY_CTX_set_group_name(gc, "P-256") != 1 ||
        EVP_PKEY_generate(gc, &tk) != 1) {
        EVP_PKEY_CTX_free(gc);
        return kf_err_openssl(err, -EIO, "generating a P-256 key in the TPM");
    }
    EVP_PKEY_CTX_free(gc);
    BIO *mem = BIO_new(BIO_s_mem());
    char *pem = NULL;
    long len = 0;
    kf_tpmkey_info info;
    if (mem == NULL || PEM_write_bio_PrivateKey_ex(mem, tk, NULL, NULL, 0, NULL, NULL, ctx, "provider=tpm2") != 1 ||
        (len = BIO_get_mem_data(mem, &pem)) <= 0) {
        r = kf_err_openssl(err, -EIO, "encoding the TPM key");
        goto out;
    }
    if ((r = kf_tpmkey_parse(pem, (size_t)len, &info, err)) != 0 || (r = check_info(&info, err)) != 0)
        goto out;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        r = kf_err_set(err, -errno, "%s: %s", path, errno == EEXIST ? "already exists" : strerror(errno));
        goto out;
    }
    ssize_t w = write(fd, pem, (size_t)len);
    if (w != len || fsync(fd) != 0) {
        r = kf_err_set(err, -EIO, "%s: write failed", path);
        close(fd);
        unlink(path);
        goto out;
    }
    close(fd);
    r = 0;
out:
    BIO_free(mem);
    EVP_PKEY_free(tk);
    return r;
}
