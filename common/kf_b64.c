#include "kf_b64.h"

#include <errno.h>
#include <string.h>

#include <openssl/evp.h>

#include "kf_secmem.h"

size_t kf_b64_encoded_len(size_t n, bool url)
{
    return url ? (n * 4 + 2) / 3 : 4 * ((n + 2) / 3);
}

int kf_b64_encode(const uint8_t *in, size_t n, bool url, char *out, size_t out_size)
{
    size_t padded = 4 * ((n + 2) / 3);
    if (padded + 1 > out_size || n > (1u << 28))
        return -ENOSPC;
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    if (!url)
        return (int)padded;
    size_t len = kf_b64_encoded_len(n, true);
    for (size_t i = 0; i < len; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    out[len] = '\0';
    return (int)len;
}

static bool valid_char(char c, bool url)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
        return true;
    return url ? (c == '-' || c == '_') : (c == '+' || c == '/');
}

int kf_b64_decode(const char *in, size_t n, bool url, uint8_t *out, size_t out_size)
{
    size_t pad = 0;
    if (!url) {
        if (n % 4 != 0)
            return -EINVAL;
        while (pad < 2 && n > pad && in[n - 1 - pad] == '=')
            pad++;
    } else if (n % 4 == 1) {
        return -EINVAL;
    }
    size_t data = n - pad;
    for (size_t i = 0; i < data; i++)
        if (!valid_char(in[i], url))
            return -EINVAL;
    size_t full = url ? 4 * ((n + 3) / 4) : n;
    size_t decoded = data * 3 / 4;
    if (decoded > out_size || full > (1u << 28))
        return decoded > out_size ? -ENOSPC : -EINVAL;
    char tmp_stack[2048];
    uint8_t raw_stack[1536];
    char *tmp = tmp_stack;
    uint8_t *raw = raw_stack;
    if (full > sizeof(tmp_stack))
        return -ENOSPC; /* keyfleet decodes keys, tokens and small blobs only */
    memcpy(tmp, in, n);
    for (size_t i = 0; url && i < n; i++)
        tmp[i] = tmp[i] == '-' ? '+' : tmp[i] == '_' ? '/' : tmp[i];
    for (size_t i = n; i < full; i++)
        tmp[i] = '=';
    int r = full == 0 ? 0 : EVP_DecodeBlock(raw, (const unsigned char *)tmp, (int)full);
    int result = r < 0 ? -EINVAL : (int)decoded;
    if (r >= 0)
        memcpy(out, raw, decoded);
    kf_wipe(tmp, full);
    kf_wipe(raw, (size_t)(r > 0 ? r : 0));
    return result;
}
