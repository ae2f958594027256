#include "kf_hpke.h"

#include "kf_hmac.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

/* Fetched once: implicit fetches on every call cost more than the crypto itself in OpenSSL 3.0.
 * HKDF is RFC 5869 on top of kf_hmac_sha256 (which keeps its own HMAC context), because 3.0's
 * HKDF context cannot be duplicated. */
static EVP_CIPHER *aes128gcm, *aes256gcm, *chacha;
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

static void fetch_algorithms(void)
{
    aes128gcm = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
    aes256gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    chacha = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
}

static const EVP_CIPHER *aead_cipher(uint16_t aead_id, size_t *ret_nk)
{
    pthread_once(&fetch_once, fetch_algorithms);
    switch (aead_id) {
    case KF_HPKE_AEAD_AES128GCM:
        *ret_nk = 16;
        return aes128gcm;
    case KF_HPKE_AEAD_AES256GCM:
        *ret_nk = 32;
        return aes256gcm;
    case KF_HPKE_AEAD_CHACHA20POLY1305:
        *ret_nk = 32;
        return chacha;
    default:
        return NULL;
    }
}

/* HMAC-SHA256(key, a || b || c) into out (32 bytes). */
static int hmac3(const uint8_t *key, size_t key_len, const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len,
                 const uint8_t *c, size_t c_len, uint8_t out[32])
{
    const kf_span parts[3] = {{a, a_len}, {b, b_len}, {c, c_len}};
    return kf_hmac_sha256(key, key_len, parts, 3, out);
}

/* HKDF-SHA256 (RFC 5869) in one mode; salt may be empty. */
static int hkdf_run(int mode, const uint8_t *salt, size_t salt_len, const uint8_t *key, size_t key_len,
                    const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len)
{
    if (mode == EVP_KDF_HKDF_MODE_EXTRACT_ONLY)
        return out_len == 32 ? hmac3(salt, salt_len, key, key_len, NULL, 0, NULL, 0, out) : -EINVAL;
    if (mode != EVP_KDF_HKDF_MODE_EXPAND_ONLY || out_len > 255 * 32)
        return -EINVAL;
    uint8_t t[32];
    size_t done = 0;
    for (uint8_t i = 1; done < out_len; i++) {
        int r = hmac3(key, key_len, t, i == 1 ? 0 : sizeof(t), info, info_len, &i, 1, t);
        if (r != 0) {
            OPENSSL_cleanse(t, sizeof(t));
            return r;
        }
        size_t n = out_len - done < sizeof(t) ? out_len - done : sizeof(t);
        memcpy(out + done, t, n);
        done += n;
    }
    OPENSSL_cleanse(t, sizeof(t));
    return 0;
}

#define LABEL_MAX 512

/* LabeledExtract(salt, label, ikm) = Extract(salt, "HPKE-v1" || suite_id || label || ikm) */
static int labeled_extract(const uint8_t *suite, size_t suite_len, const uint8_t *salt, size_t salt_len,
                           const char *label, const uint8_t *ikm, size_t ikm_len, uint8_t out[KF_HPKE_NH])
{
    uint8_t buf[LABEL_MAX];
    size_t label_len = strlen(label);
    size_t n = 7 + suite_len + label_len + ikm_len;
    if (n > sizeof(buf))
        return -EMSGSIZE;
    memcpy(buf, "HPKE-v1", 7);
    memcpy(buf + 7, suite, suite_len);
    memcpy(buf + 7 + suite_len, label, label_len);
    if (ikm_len > 0)
        memcpy(buf + 7 + suite_len + label_len, ikm, ikm_len);
    int r = hkdf_run(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, salt, salt_len, buf, n, NULL, 0, out, KF_HPKE_NH);
    OPENSSL_cleanse(buf, n);
    return r;
}

/* LabeledExpand(prk, label, info, L) = Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id || label || info, L) */
static int labeled_expand(const uint8_t *suite, size_t suite_len, const uint8_t prk[KF_HPKE_NH], const char *label,
                          const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len)
{
    uint8_t buf[LABEL_MAX];
    size_t label_len = strlen(label);
    size_t n = 2 + 7 + suite_len + label_len + info_len;
    if (n > sizeof(buf) || out_len > 0xffff)
        return -EMSGSIZE;
    buf[0] = (uint8_t)(out_len >> 8);
    buf[1] = (uint8_t)out_len;
    memcpy(buf + 2, "HPKE-v1", 7);
    memcpy(buf + 9, suite, suite_len);
    memcpy(buf + 9 + suite_len, label, label_len);
    if (info_len > 0)
        memcpy(buf + 9 + suite_len + label_len, info, info_len);
    return hkdf_run(EVP_KDF_HKDF_MODE_EXPAND_ONLY, NULL, 0, prk, KF_HPKE_NH, buf, n, out, out_len);
}

static const uint8_t KEM_SUITE[5] = {'K', 'E', 'M', 0x00, 0x20};

static void hpke_suite(uint16_t aead_id, uint8_t suite[10])
{
    memcpy(suite, "HPKE", 4);
    suite[4] = 0x00;
    suite[5] = 0x20; /* KEM */
    suite[6] = 0x00;
    suite[7] = 0x01; /* KDF */
    suite[8] = (uint8_t)(aead_id >> 8);
    suite[9] = (uint8_t)aead_id;
}

static int x25519_public(const uint8_t sk[32], uint8_t pk[32])
{
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, sk, 32);
    if (k == NULL)
        return -EINVAL;
    size_t len = 32;
    int ok = EVP_PKEY_get_raw_public_key(k, pk, &len);
    EVP_PKEY_free(k);
    return ok == 1 && len == 32 ? 0 : -EIO;
}

/* DH with a private key already loaded as an EVP_PKEY (importing raw keys is the expensive part
 * of X25519 in OpenSSL 3.0). */
static int x25519_dh_pkey(EVP_PKEY *priv, const uint8_t pk[32], uint8_t out[32])
{
    int r = -EINVAL;
    EVP_PKEY *peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, pk, 32);
    EVP_PKEY_CTX *dctx = priv != NULL ? EVP_PKEY_CTX_new(priv, NULL) : NULL;
    size_t len = 32;
    if (peer != NULL && dctx != NULL && EVP_PKEY_derive_init(dctx) == 1 && EVP_PKEY_derive_set_peer(dctx, peer) == 1 &&
        EVP_PKEY_derive(dctx, out, &len) == 1 && len == 32) {
        /* RFC 9180 7.1.4: an all-zero result means a low-order public key; refuse it. */
        uint8_t zero[32] = {0};
        r = CRYPTO_memcmp(out, zero, 32) == 0 ? -EINVAL : 0;
    }
    EVP_PKEY_CTX_free(dctx);
    EVP_PKEY_free(peer);
    return r;
}

static int x25519_dh(const uint8_t sk[32], const uint8_t pk[32], uint8_t out[32])
{
    EVP_PKEY *priv = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, sk, 32);
    if (priv == NULL)
        return -EINVAL;
    int r = x25519_dh_pkey(priv, pk, out);
    EVP_PKEY_free(priv);
    return r;
}

int kf_hpke_derive_keypair(const uint8_t *ikm, size_t ikm_len, uint8_t ret_sk[32], uint8_t ret_pk[32])
{
    uint8_t prk[KF_HPKE_NH];
    int r = labeled_extract(KEM_SUITE, sizeof(KEM_SUITE), NULL, 0, "dkp_prk", ikm, ikm_len, prk);
    if (r == 0)
        r = labeled_expand(KEM_SUITE, sizeof(KEM_SUITE), prk, "sk", NULL, 0, ret_sk, 32);
    OPENSSL_cleanse(prk, sizeof(prk));
    if (r == 0)
        r = x25519_public(ret_sk, ret_pk);
    return r;
}

int kf_hpke_generate_keypair(uint8_t ret_sk[32], uint8_t ret_pk[32])
{
    if (RAND_priv_bytes(ret_sk, 32) != 1)
        return -EIO;
    return x25519_public(ret_sk, ret_pk);
}

/* ExtractAndExpand(dh, kem_context) with kem_context = enc || pkR. */
static int kem_shared_secret(const uint8_t dh[32], const uint8_t enc[32], const uint8_t pk_r[32], uint8_t out[32])
{
    uint8_t kem_context[64];
    memcpy(kem_context, enc, 32);
    memcpy(kem_context + 32, pk_r, 32);
    uint8_t prk[KF_HPKE_NH];
    int r = labeled_extract(KEM_SUITE, sizeof(KEM_SUITE), NULL, 0, "eae_prk", dh, 32, prk);
    if (r == 0)
        r = labeled_expand(KEM_SUITE, sizeof(KEM_SUITE), prk, "shared_secret", kem_context, sizeof(kem_context), out,
                           32);
    OPENSSL_cleanse(prk, sizeof(prk));
    return r;
}

int kf_hpke_encap_deterministic(const uint8_t pk_r[32], const uint8_t *ikm_e, size_t ikm_e_len,
                                uint8_t ret_shared_secret[32], uint8_t ret_enc[32])
{
    uint8_t sk_e[32] = {0}, dh[32];
    int r;
    if (ikm_e != NULL) {
        r = kf_hpke_derive_keypair(ikm_e, ikm_e_len, sk_e, ret_enc);
        if (r == 0)
            r = x25519_dh(sk_e, pk_r, dh);
    } else {
        /* A random ephemeral key generated in place: no raw-key imports. */
        EVP_PKEY *e = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
        size_t len = 32;
        r = e != NULL && EVP_PKEY_get_raw_public_key(e, ret_enc, &len) == 1 && len == 32 ? 0 : -EIO;
        if (r == 0)
            r = x25519_dh_pkey(e, pk_r, dh);
        EVP_PKEY_free(e);
    }
    if (r == 0)
        r = kem_shared_secret(dh, ret_enc, pk_r, ret_shared_secret);
    OPENSSL_cleanse(sk_e, sizeof(sk_e));
    OPENSSL_cleanse(dh, sizeof(dh));
    return r;
}

static int key_schedule(uint16_t aead_id, const uint8_t shared_secret[32], const uint8_t *info, size_t info_len,
                        kf_hpke_ctx *ctx)
{
    uint8_t suite[10];
    hpke_suite(aead_id, suite);
    if (aead_cipher(aead_id, &ctx->nk) == NULL)
        return -EINVAL;
    uint8_t ksc[1 + 2 * KF_HPKE_NH];
    ksc[0] = 0x00; /* mode_base */
    int r = labeled_extract(suite, sizeof(suite), NULL, 0, "psk_id_hash", NULL, 0, ksc + 1);
    if (r == 0)
        r = labeled_extract(suite, sizeof(suite), NULL, 0, "info_hash", info, info_len, ksc + 1 + KF_HPKE_NH);
    uint8_t secret[KF_HPKE_NH];
    if (r == 0)
        r = labeled_extract(suite, sizeof(suite), shared_secret, 32, "secret", NULL, 0, secret);
    if (r == 0)
        r = labeled_expand(suite, sizeof(suite), secret, "key", ksc, sizeof(ksc), ctx->key, ctx->nk);
    if (r == 0)
        r = labeled_expand(suite, sizeof(suite), secret, "base_nonce", ksc, sizeof(ksc), ctx->base_nonce, KF_HPKE_NN);
    if (r == 0)
        r = labeled_expand(suite, sizeof(suite), secret, "exp", ksc, sizeof(ksc), ctx->exporter_secret, KF_HPKE_NH);
    OPENSSL_cleanse(secret, sizeof(secret));
    ctx->aead_id = aead_id;
    ctx->seq = 0;
    if (r != 0)
        kf_hpke_ctx_wipe(ctx);
    return r;
}

int kf_hpke_setup_base_s(uint16_t aead_id, const uint8_t pk_r[32], const uint8_t *info, size_t info_len,
                         const uint8_t *ikm_e, size_t ikm_e_len, uint8_t ret_enc[32], kf_hpke_ctx *ret_ctx)
{
    uint8_t ss[32];
    int r = kf_hpke_encap_deterministic(pk_r, ikm_e, ikm_e_len, ss, ret_enc);
    if (r == 0)
        r = key_schedule(aead_id, ss, info, info_len, ret_ctx);
    OPENSSL_cleanse(ss, sizeof(ss));
    return r;
}

int kf_hpke_setup_base_r(uint16_t aead_id, const uint8_t enc[32], const uint8_t sk_r[32], const uint8_t *info,
                         size_t info_len, kf_hpke_ctx *ret_ctx)
{
    uint8_t dh[32], pk_r[32], ss[32];
    int r = x25519_public(sk_r, pk_r);
    if (r == 0)
        r = x25519_dh(sk_r, enc, dh);
    if (r == 0)
        r = kem_shared_secret(dh, enc, pk_r, ss);
    if (r == 0)
        r = key_schedule(aead_id, ss, info, info_len, ret_ctx);
    OPENSSL_cleanse(dh, sizeof(dh));
    OPENSSL_cleanse(ss, sizeof(ss));
    return r;
}

static void compute_nonce(const kf_hpke_ctx *ctx, uint8_t nonce[KF_HPKE_NN])
{
    memcpy(nonce, ctx->base_nonce, KF_HPKE_NN);
    for (int i = 0; i < 8; i++)
        nonce[KF_HPKE_NN - 1 - i] ^= (uint8_t)(ctx->seq >> (8 * i));
}

static int aead_run(kf_hpke_ctx *ctx, int enc, const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
                    uint8_t *out, uint8_t tag[KF_HPKE_NTAG])
{
    size_t nk;
    const EVP_CIPHER *cipher = aead_cipher(ctx->aead_id, &nk);
    if (cipher == NULL || in_len > INT32_MAX || aad_len > INT32_MAX)
        return -EINVAL;
    if (ctx->seq == UINT64_MAX)
        return -EOVERFLOW;
    uint8_t nonce[KF_HPKE_NN];
    compute_nonce(ctx, nonce);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (c == NULL)
        return -ENOMEM;
    int len, ok = EVP_CipherInit_ex2(c, cipher, ctx->key, nonce, enc, NULL);
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, KF_HPKE_NTAG, tag);
    if (ok && aad_len > 0)
        ok = EVP_CipherUpdate(c, NULL, &len, aad, (int)aad_len);
    if (ok && in_len > 0)
        ok = EVP_CipherUpdate(c, out, &len, in, (int)in_len);
    int fin = ok ? EVP_CipherFinal_ex(c, out + in_len, &len) : 0;
    if (ok && fin && enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, KF_HPKE_NTAG, tag);
    EVP_CIPHER_CTX_free(c);
    if (!ok)
        return -EIO;
    if (!fin)
        return enc ? -EIO : -EBADMSG;
    ctx->seq++;
    return 0;
}

int kf_hpke_seal(kf_hpke_ctx *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len, uint8_t *ct)
{
    return aead_run(ctx, 1, aad, aad_len, pt, pt_len, ct, ct + pt_len);
}

int kf_hpke_open(kf_hpke_ctx *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t ct_len, uint8_t *pt)
{
    if (ct_len < KF_HPKE_NTAG)
        return -EBADMSG;
    uint8_t tag[KF_HPKE_NTAG];
    memcpy(tag, ct + ct_len - KF_HPKE_NTAG, KF_HPKE_NTAG);
    int r = aead_run(ctx, 0, aad, aad_len, ct, ct_len - KF_HPKE_NTAG, pt, tag);
    if (r != 0)
        OPENSSL_cleanse(pt, ct_len - KF_HPKE_NTAG);
    return r;
}

int kf_hpke_export(const kf_hpke_ctx *ctx, const uint8_t *exp_ctx, size_t exp_ctx_len, uint8_t *out, size_t len)
{
    uint8_t suite[10];
    hpke_suite(ctx->aead_id, suite);
    if (len > 255 * KF_HPKE_NH)
        return -EINVAL;
    return labeled_expand(suite, sizeof(suite), ctx->exporter_secret, "sec", exp_ctx, exp_ctx_len, out, len);
}

void kf_hpke_ctx_wipe(kf_hpke_ctx *ctx)
{
    OPENSSL_cleanse(ctx, sizeof(*ctx));
}
