/* keyfleet's wrapped-key text for remote KMS backends:
 *   "kf:" BACKEND ":" REF ":" KCV ":" PAYLOAD
 * REF names the KMS key version (vault: "vN"; azure: base64url of the key id), PAYLOAD is the
 * KMS's ciphertext, and KCV is base64url(HMAC-SHA256(data key, "keyfleet/kcv/v1" 0x00 volume_id))
 * truncated to 16 bytes. The KCV binds the data key to its volume (a KMS ciphertext moved to
 * another volume is refused) and catches a KMS that answers with the wrong key; it reveals
 * nothing about the key. */
#ifndef KFD_KMS_WRAPPED_H
#define KFD_KMS_WRAPPED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KFD_KCV_TEXT_LEN 22
#define KFD_WRAPPED_MAX 2048

typedef struct kfd_wrapped {
    char ref[512];
    char kcv[KFD_KCV_TEXT_LEN + 1];
    const char *payload; /* points into the parsed text */
} kfd_wrapped;

/* Returns 0 or -EINVAL. */
int kfd_kcv(const char *volume_id, const uint8_t key[32], char out[KFD_KCV_TEXT_LEN + 1]);
/* 0 when kcv matches (constant time), else -EBADMSG. */
int kfd_kcv_check(const char *volume_id, const uint8_t key[32], const char *kcv);
/* Returns 0, or -ENOSPC. */
int kfd_wrapped_format(const char *backend, const char *ref, const char *kcv, const char *payload, char *out,
                       size_t out_size);
/* Whether a KMS's ciphertext can be stored as PAYLOAD: printable ASCII without spaces or ':'. A
 * wrapped key that kfd_wrapped_parse refuses could never be unwrapped. */
bool kfd_wrapped_payload_ok(const char *payload);
/* Returns 0, or -EINVAL when text is not a well-formed BACKEND wrapped key. */
int kfd_wrapped_parse(const char *text, const char *backend, kfd_wrapped *ret);

#endif
