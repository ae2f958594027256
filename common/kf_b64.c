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
    if (n > KF_B64_DECODE_MAX)
        return -EINVAL;
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
    if (decoded > out_size)
        return -ENOSPC;
    /* Decoded in stack-sized chunks of whole quads (the padding lands in the last one), so a
     * large certificate or TPM blob needs no heap copy; the chunk buffers are wiped after use,
     * as they may hold key material, and so is what was written before a failure. */
    char tmp[2048];
    uint8_t raw[sizeof(tmp) / 4 * 3];
    size_t in_off = 0, out_off = 0;
    int result = (int)decoded;
    while (in_off < full) {
        size_t take = full - in_off < sizeof(tmp) ? full - in_off : sizeof(tmp);
        size_t avail = in_off < n ? (n - in_off < take ? n - in_off : take) : 0;
        memcpy(tmp, in + in_off, avail);
        for (size_t i = 0; url && i < avail; i++)
            tmp[i] = tmp[i] == '-' ? '+' : tmp[i] == '_' ? '/' : tmp[i];
        for (size_t i = avail; i < take; i++)
            tmp[i] = '=';
        if (EVP_DecodeBlock(raw, (const unsigned char *)tmp, (int)take) < 0) {
            result = -EINVAL;
            kf_wipe(out, out_off);
            break;
        }
        size_t got = take / 4 * 3 < decoded - out_off ? take / 4 * 3 : decoded - out_off;
        memcpy(out + out_off, raw, got);
        out_off += got;
        in_off += take;
    }
    kf_wipe(tmp, sizeof(tmp));
    kf_wipe(raw, sizeof(raw));
    return result;
}
