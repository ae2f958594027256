/* HPKE (RFC 9180) base mode: KEM DHKEM(X25519, HKDF-SHA256), KDF HKDF-SHA256,
 * AEAD AES-128-GCM, AES-256-GCM or ChaCha20-Poly1305. Built on OpenSSL 3.0 EVP. */
#ifndef KF_HPKE_H
#define KF_HPKE_H

#include <stddef.h>
#include <stdint.h>

#define KF_HPKE_KEM_X25519_SHA256 0x0020
#define KF_HPKE_KDF_HKDF_SHA256 0x0001
#define KF_HPKE_AEAD_AES128GCM 0x0001
#define KF_HPKE_AEAD_AES256GCM 0x0002
#define KF_HPKE_AEAD_CHACHA20POLY1305 0x0003

#define KF_HPKE_NENC 32  /* enc and X25519 key size */
#define KF_HPKE_NTAG 16
#define KF_HPKE_NN 12
#define KF_HPKE_NH 32

typedef struct kf_hpke_ctx {
    uint16_t aead_id;
    uint8_t key[32];
    size_t nk;
    uint8_t base_nonce[KF_HPKE_NN];
    uint8_t exporter_secret[KF_HPKE_NH];
    uint64_t seq;
} kf_hpke_ctx;

/* DeriveKeyPair(ikm) of RFC 9180 7.1.3. */
int kf_hpke_derive_keypair(const uint8_t *ikm, size_t ikm_len, uint8_t ret_sk[32], uint8_t ret_pk[32]);
/* A fresh random X25519 key pair. */
int kf_hpke_generate_keypair(uint8_t ret_sk[32], uint8_t ret_pk[32]);

/* SetupBaseS. ikm_e selects a deterministic ephemeral key (test vectors); NULL uses a random one. */
int kf_hpke_setup_base_s(uint16_t aead_id, const uint8_t pk_r[32], const uint8_t *info, size_t info_len,
                         const uint8_t *ikm_e, size_t ikm_e_len, uint8_t ret_enc[32], kf_hpke_ctx *ret_ctx);
/* SetupBaseR. */
int kf_hpke_setup_base_r(uint16_t aead_id, const uint8_t enc[32], const uint8_t sk_r[32], const uint8_t *info,
                         size_t info_len, kf_hpke_ctx *ret_ctx);

/* ct must hold pt_len + 16 bytes. Advances the sequence number. */
int kf_hpke_seal(kf_hpke_ctx *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len, uint8_t *ct);
/* pt must hold ct_len - 16 bytes. Returns -EBADMSG when authentication fails. */
int kf_hpke_open(kf_hpke_ctx *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t ct_len, uint8_t *pt);
int kf_hpke_export(const kf_hpke_ctx *ctx, const uint8_t *exp_ctx, size_t exp_ctx_len, uint8_t *out, size_t len);

void kf_hpke_ctx_wipe(kf_hpke_ctx *ctx);

/* Test hook: the raw key schedule outputs, to compare with the vectors. */
int kf_hpke_encap_deterministic(const uint8_t pk_r[32], const uint8_t *ikm_e, size_t ikm_e_len,
                                uint8_t ret_shared_secret[32], uint8_t ret_enc[32]);

#endif
