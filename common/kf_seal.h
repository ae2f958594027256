/* Sealing data keys to an agent's ephemeral X25519 key with HPKE (docs/protocol.md, "Sealing
 * released keys"). The coordinator seals, the agent opens; both build the info the same way. */
#ifndef KF_SEAL_H
#define KF_SEAL_H

#include <stddef.h>
#include <stdint.h>

#include "kf_hpke.h"

#define KF_SEAL_KEY_LEN 32
#define KF_SEAL_CT_LEN (KF_SEAL_KEY_LEN + KF_HPKE_NTAG)
#define KF_SEAL_INFO_MAX 512
#define KF_SEAL_AEAD KF_HPKE_AEAD_AES256GCM

/* "keyfleet/v1 " PURPOSE 0x00 len16(request_id) request_id len16(node) node len16(volume_id) volume_id.
 * Returns the length, or 0 if it does not fit. */
size_t kf_seal_info(const char *purpose, const char *request_id, const char *node, const char *volume_id,
                    uint8_t *buf, size_t size);

/* Seals key (32 bytes) to pk. Writes enc (32) and ct (48). */
int kf_seal_key(const uint8_t pk[32], const uint8_t *info, size_t info_len, const uint8_t key[KF_SEAL_KEY_LEN],
                uint8_t ret_enc[32], uint8_t ret_ct[KF_SEAL_CT_LEN]);

/* Opens a sealed key with sk; returns 0 or -EBADMSG (wrong key, info or tampering). */
int kf_open_key(const uint8_t sk[32], const uint8_t *info, size_t info_len, const uint8_t *enc, size_t enc_len,
                const uint8_t *ct, size_t ct_len, uint8_t ret_key[KF_SEAL_KEY_LEN]);

#endif
