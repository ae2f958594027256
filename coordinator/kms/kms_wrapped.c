#include "kms/kms_wrapped.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kf_b64.h"
#include "kf_hmac.h"
#include "kf_secmem.h"

int kfd_kcv(const char *volume_id, const uint8_t key[32], char out[KFD_KCV_TEXT_LEN + 1])
{
    static const char label[] = "keyfleet/kcv/v1"; /* with its NUL as separator */
    uint8_t mac[KF_HMAC_SHA256_LEN];
    size_t vlen = strlen(volume_id);
    if (vlen > 255)
        return -EINVAL;
    const kf_span msg[2] = {{label, sizeof(label)}, {volume_id, vlen}};
    if (kf_hmac_sha256(key, 32, msg, 2, mac) != 0)
        return -EIO;
    char text[32]; /* EVP_EncodeBlock writes the padded form first */
    int r = kf_b64_encode(mac, 16, true, text, sizeof(text));
    kf_wipe(mac, sizeof(mac));
    if (r != KFD_KCV_TEXT_LEN)
        return -EIO;
    memcpy(out, text, KFD_KCV_TEXT_LEN + 1);
    return 0;
}

int kfd_kcv_check(const char *volume_id, const uint8_t key[32], const char *kcv)
{
    char want[KFD_KCV_TEXT_LEN + 1];
    if (kfd_kcv(volume_id, key, want) != 0 || strlen(kcv) != KFD_KCV_TEXT_LEN)
        return -EBADMSG;
    return CRYPTO_memcmp(want, kcv, KFD_KCV_TEXT_LEN) == 0 ? 0 : -EBADMSG;
}

int kfd_wrapped_format(const char *backend, const char *ref, const char *kcv, const char *payload, char *out,
                       size_t out_size)
{
    int n = snprintf(out, out_size, "kf:%s:%s:%s:%s", backend, ref, kcv, payload);
    return n > 0 && (size_t)n < out_size && (size_t)n < KFD_WRAPPED_MAX ? 0 : -ENOSPC;
}

/* Copies the next ':'-terminated field into dst. */
static const char *field(const char *p, char *dst, size_t dst_size)
{
    const char *colon = strchr(p, ':');
    if (colon == NULL || colon == p || (size_t)(colon - p) >= dst_size)
        return NULL;
    memcpy(dst, p, (size_t)(colon - p));
    dst[colon - p] = '\0';
    return colon + 1;
}

bool kfd_wrapped_payload_ok(const char *p)
{
    if (*p == '\0')
        return false;
    for (; *p; p++)
        if (*p == ':' || *p <= ' ' || *p > '~')
            return false;
    return true;
}

int kfd_wrapped_parse(const char *text, const char *backend, kfd_wrapped *ret)
{
    char b[32];
    if (strlen(text) >= KFD_WRAPPED_MAX || strncmp(text, "kf:", 3) != 0)
        return -EINVAL;
    const char *p = field(text + 3, b, sizeof(b));
    if (p == NULL || strcmp(b, backend) != 0 || (p = field(p, ret->ref, sizeof(ret->ref))) == NULL ||
        (p = field(p, ret->kcv, sizeof(ret->kcv))) == NULL || strlen(ret->kcv) != KFD_KCV_TEXT_LEN ||
        !kfd_wrapped_payload_ok(p))
        return -EINVAL;
    ret->payload = p;
    return 0;
}
