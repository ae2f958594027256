/* Base64 (RFC 4648 §4, padded) and base64url (§5, unpadded, as JOSE and Azure use it), strict:
 * decoding refuses whitespace, bad characters, misplaced padding and impossible lengths. Built on EVP_EncodeBlock/EVP_DecodeBlock. */
#ifndef KF_B64_H
#define KF_B64_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Encoded length without the NUL. */
size_t kf_b64_encoded_len(size_t n, bool url);
/* Writes a NUL-terminated encoding; out_size must hold the padded form and its NUL even for url.
 * Returns the length, or -ENOSPC. */
int kf_b64_encode(const uint8_t *in, size_t n, bool url, char *out, size_t out_size);
/* The longest input kf_b64_decode takes (1 MiB): far above any key, token, certificate chain or
 * TPM blob keyfleet reads, and a bound on what a hostile input can make it do. */
#define KF_B64_DECODE_MAX (1u << 20)
/* Returns the decoded length, or -EINVAL (malformed, or longer than KF_B64_DECODE_MAX) or
 * -ENOSPC (out_size too small). */
int kf_b64_decode(const char *in, size_t n, bool url, uint8_t *out, size_t out_size);

#endif
