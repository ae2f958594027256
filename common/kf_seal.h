/* Sealing data keys to an agent's X25519 key with HPKE (docs/protocol.md, "Sealing released
 * keys"). The coordinator seals, the agent opens; both build the info and AAD the same way.
 *
 * One HPKE context serves every key sealed to the same recipient key for the same node
 * (RFC 9180 5.2, several messages under one context): the info binds the node, each key's AAD
 * binds purpose, request id, node and volume id, and each key uses the next sequence number,
 * which the answer carries. An agent keeps one key pair per run, so the X25519 work is done once
 * per connection instead of once per volume. */
#ifndef KF_SEAL_H
#define KF_SEAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kf_hpke.h"
#include "kf_identity.h"

#define KF_SEAL_KEY_LEN 32
#define KF_SEAL_CT_LEN (KF_SEAL_KEY_LEN + KF_HPKE_NTAG)
#define KF_SEAL_AAD_MAX 512
#define KF_SEAL_INFO_MAX 128
#define KF_SEAL_AEAD KF_HPKE_AEAD_AES256GCM
/* A sender starts a new context (new enc) after this many keys. */
#define KF_SEAL_MAX_SEQ (UINT64_C(1) << 32)

/* "keyfleet/v1 session" 0x00 len16(node) node. Returns the length, or 0 if it does not fit. */
size_t kf_seal_info(const char *node, uint8_t *buf, size_t size);

/* "keyfleet/v1 " PURPOSE 0x00 len16(request_id) request_id len16(node) node len16(volume_id) volume_id.
 * Returns the length, or 0 if it does not fit. */
size_t kf_seal_aad(const char *purpose, const char *request_id, const char *node, const char *volume_id,
                   uint8_t *buf, size_t size);

/* The sender's side: one context for one recipient key and node. Keep it in secure memory. */
typedef struct kf_seal_session {
    uint8_t pk[32];
    uint8_t enc[32];
    char node[KF_NAME_MAX + 1];
    bool ready;
    kf_hpke_ctx hpke;
} kf_seal_session;

/* True when s can seal for (pk, node) without a new context. */
bool kf_seal_session_matches(const kf_seal_session *s, const uint8_t pk[32], const char *node);
/* Starts a context for (pk, node): one X25519 key generation and one DH. */
int kf_seal_session_begin(kf_seal_session *s, const uint8_t pk[32], const char *node);
/* Seals key under aad with the next sequence number. Writes enc (32), the sequence number used and ct (48). */
int kf_seal_session_seal(kf_seal_session *s, const uint8_t *aad, size_t aad_len, const uint8_t key[KF_SEAL_KEY_LEN],
                         uint8_t ret_enc[32], uint64_t *ret_seq, uint8_t ret_ct[KF_SEAL_CT_LEN]);
void kf_seal_session_wipe(kf_seal_session *s);

/* The recipient's side: a key pair in secure memory, bound to one node name, and the contexts of
 * the last few senders (by enc). Not thread-safe. */
typedef struct kf_seal_receiver kf_seal_receiver;

int kf_seal_receiver_new(const char *node, kf_seal_receiver **ret);
/* A receiver whose key pair is derived from ikm (RFC 9180 DeriveKeyPair): for tests and fuzzing,
 * which need a fixed recipient key. The agent uses kf_seal_receiver_new. */
int kf_seal_receiver_derive(const char *node, const uint8_t *ikm, size_t ikm_len, kf_seal_receiver **ret);
void kf_seal_receiver_free(kf_seal_receiver *rx);
const uint8_t *kf_seal_receiver_public_key(const kf_seal_receiver *rx);
/* Opens the key sealed with (enc, seq) under aad; 0 or -EBADMSG (wrong key, node, AAD or tampering). */
int kf_seal_receiver_open(kf_seal_receiver *rx, const uint8_t *enc, size_t enc_len, uint64_t seq, const uint8_t *aad,
                          size_t aad_len, const uint8_t *ct, size_t ct_len, uint8_t ret_key[KF_SEAL_KEY_LEN]);

#endif
