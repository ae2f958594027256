/* HMAC-SHA256 over a message given in parts, with the digest fetched once per process. */
#ifndef KF_HMAC_H
#define KF_HMAC_H

#include <stddef.h>
#include <stdint.h>

#define KF_HMAC_SHA256_LEN 32

typedef struct kf_span {
    const void *data;
    size_t len;
} kf_span;

/* out = HMAC-SHA256(key, parts[0] || ... || parts[n - 1]). A part may be empty; so may the key
 * (HMAC pads it with zeros either way). The HMAC context is set up once and copied per call:
 * naming the digest on each call, as HMAC() does, costs OpenSSL 3.0 an implicit fetch that
 * takes longer than the MAC itself (issue #29). Thread-safe. 0, -ENOSYS when HMAC-SHA256 is
 * unavailable, or -EIO. */
int kf_hmac_sha256(const void *key, size_t key_len, const kf_span *parts, size_t n, uint8_t out[KF_HMAC_SHA256_LEN]);

#endif
