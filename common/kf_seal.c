#include "kf_seal.h"

#include <errno.h>
#include <string.h>

static size_t put_field(uint8_t *buf, size_t size, size_t o, const char *s)
{
    size_t n = strlen(s);
    if (o == 0 || n > 0xffff || o + 2 + n > size)
        return 0;
    buf[o] = (uint8_t)(n >> 8);
    buf[o + 1] = (uint8_t)n;
    memcpy(buf + o + 2, s, n);
    return o + 2 + n;
}

size_t kf_seal_info(const char *purpose, const char *request_id, const char *node, const char *volume_id,
                    uint8_t *buf, size_t size)
{
    static const char prefix[] = "keyfleet/v1 ";
    size_t plen = strlen(purpose), o = sizeof(prefix) - 1 + plen + 1;
    if (o > size)
        return 0;
    memcpy(buf, prefix, sizeof(prefix) - 1);
    memcpy(buf + sizeof(prefix) - 1, purpose, plen);
    buf[o - 1] = 0x00;
    o = put_field(buf, size, o, request_id);
    o = put_field(buf, size, o, node);
    return put_field(buf, size, o, volume_id);
}

int kf_seal_key(const uint8_t pk[32], const uint8_t *info, size_t info_len, const uint8_t key[KF_SEAL_KEY_LEN],
                uint8_t ret_enc[32], uint8_t ret_ct[KF_SEAL_CT_LEN])
{
    kf_hpke_ctx ctx;
    int r = kf_hpke_setup_base_s(KF_SEAL_AEAD, pk, info, info_len, NULL, 0, ret_enc, &ctx);
    if (r == 0)
        r = kf_hpke_seal(&ctx, NULL, 0, key, KF_SEAL_KEY_LEN, ret_ct);
    kf_hpke_ctx_wipe(&ctx);
    return r;
}

int kf_open_key(const uint8_t sk[32], const uint8_t *info, size_t info_len, const uint8_t *enc, size_t enc_len,
                const uint8_t *ct, size_t ct_len, uint8_t ret_key[KF_SEAL_KEY_LEN])
{
    if (enc_len != 32 || ct_len != KF_SEAL_CT_LEN)
        return -EBADMSG;
    kf_hpke_ctx ctx;
    int r = kf_hpke_setup_base_r(KF_SEAL_AEAD, enc, sk, info, info_len, &ctx);
    if (r == 0)
        r = kf_hpke_open(&ctx, NULL, 0, ct, ct_len, ret_key);
    kf_hpke_ctx_wipe(&ctx);
    return r == 0 ? 0 : -EBADMSG;
}
