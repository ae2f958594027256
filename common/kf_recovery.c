/* Recovery key text (kf_recovery.h, docs/recovery.md). */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "kf_recovery.h"

#define DATA_SYMBOLS (KF_RECOVERY_GROUPS * 4) /* 260 bits: the key and 4 check bits */
#define SYMBOLS (KF_RECOVERY_GROUPS * 5)

static const char ALPHABET[] = "0123456789abcdefghjkmnpqrstvwxyz";

/* A symbol's value, or -1; Crockford's reading of look-alikes. */
static int symbol_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        c = (char)(c - 'A' + 'a');
    if (c == 'o')
        return 0;
    if (c == 'i' || c == 'l')
        return 1;
    const char *p = c != '\0' ? strchr(ALPHABET, c) : NULL;
    return p != NULL ? (int)(p - ALPHABET) : -1;
}

/* Odd weights: any one symbol changed changes the sum mod 32; the group's number: a group typed
 * in another group's place fails. */
static int group_check(const uint8_t v[4], int group)
{
    return (v[0] + 3 * v[1] + 5 * v[2] + 7 * v[3] + 7 * group) % 32;
}

/* The 4 bits after the key: the top of SHA-256("keyfleet recovery v1" || key). */
static uint8_t key_check(const uint8_t key[KF_RECOVERY_KEY_LEN])
{
    static const char label[] = "keyfleet recovery v1";
    uint8_t in[sizeof(label) - 1 + KF_RECOVERY_KEY_LEN], h[SHA256_DIGEST_LENGTH];
    memcpy(in, label, sizeof(label) - 1);
    memcpy(in + sizeof(label) - 1, key, KF_RECOVERY_KEY_LEN);
    SHA256(in, sizeof(in), h);
    uint8_t c = h[0] >> 4;
    OPENSSL_cleanse(in, sizeof(in));
    OPENSSL_cleanse(h, sizeof(h));
    return c;
}

void kf_recovery_encode(const uint8_t key[KF_RECOVERY_KEY_LEN], char out[KF_RECOVERY_TEXT_LEN + 1])
{
    uint8_t bits[KF_RECOVERY_KEY_LEN + 1]; /* the key, then the check in the top 4 bits */
    memcpy(bits, key, KF_RECOVERY_KEY_LEN);
    bits[KF_RECOVERY_KEY_LEN] = (uint8_t)(key_check(key) << 4);
    uint8_t v[DATA_SYMBOLS];
    for (int i = 0; i < DATA_SYMBOLS; i++) {
        int bit = i * 5, byte = bit / 8, shift = bit % 8;
        unsigned w = (unsigned)bits[byte] << 8 | (byte + 1 < (int)sizeof(bits) ? bits[byte + 1] : 0);
        v[i] = (uint8_t)((w >> (11 - shift)) & 31);
    }
    size_t n = 0;
    for (int g = 0; g < KF_RECOVERY_GROUPS; g++) {
        if (g > 0)
            out[n++] = '-';
        for (int j = 0; j < 4; j++)
            out[n++] = ALPHABET[v[g * 4 + j]];
        out[n++] = ALPHABET[group_check(&v[g * 4], g)];
    }
    out[n] = '\0';
    OPENSSL_cleanse(bits, sizeof(bits));
    OPENSSL_cleanse(v, sizeof(v));
}

int kf_recovery_decode(const char *text, uint8_t ret_key[KF_RECOVERY_KEY_LEN], kf_err *err)
{
    uint8_t sym[SYMBOLS], v[DATA_SYMBOLS], bits[KF_RECOVERY_KEY_LEN + 1];
    size_t n = 0;
    int r = 0;
    memset(bits, 0, sizeof(bits));
    for (const char *p = text; *p != '\0' && r == 0; p++) {
        if (*p == '-' || *p == ' ')
            continue;
        int x = symbol_value(*p);
        if (x < 0)
            r = kf_err_set(err, -EINVAL, "symbol %zu is not one of 0-9 and a-z without u", n + 1);
        else if (n == SYMBOLS)
            r = kf_err_set(err, -EINVAL, "more than %d symbols; a recovery key has %d groups of 5", SYMBOLS,
                           KF_RECOVERY_GROUPS);
        else
            sym[n++] = (uint8_t)x;
    }
    if (r == 0 && n != SYMBOLS)
        r = kf_err_set(err, -EINVAL, "%zu symbols; a recovery key has %d (%d groups of 5)", n, SYMBOLS,
                       KF_RECOVERY_GROUPS);
    for (int g = 0; r == 0 && g < KF_RECOVERY_GROUPS; g++) {
        memcpy(&v[g * 4], &sym[g * 5], 4);
        if (group_check(&v[g * 4], g) != sym[g * 5 + 4])
            r = kf_err_set(err, -EINVAL, "group %d of %d does not check: a symbol in it is mistyped", g + 1,
                           KF_RECOVERY_GROUPS);
    }
    for (int i = 0; r == 0 && i < DATA_SYMBOLS; i++) {
        int bit = i * 5, byte = bit / 8, shift = bit % 8;
        unsigned w = (unsigned)v[i] << (11 - shift);
        bits[byte] |= (uint8_t)(w >> 8);
        if (byte + 1 < (int)sizeof(bits))
            bits[byte + 1] |= (uint8_t)w;
    }
    if (r == 0 && bits[KF_RECOVERY_KEY_LEN] >> 4 != key_check(bits))
        r = kf_err_set(err, -EINVAL, "every group checks but the key as a whole does not: two symbols of a "
                       "group are swapped or mistyped together; read each group again");
    if (r == 0)
        memcpy(ret_key, bits, KF_RECOVERY_KEY_LEN);
    else
        OPENSSL_cleanse(ret_key, KF_RECOVERY_KEY_LEN);
    OPENSSL_cleanse(sym, sizeof(sym));
    OPENSSL_cleanse(v, sizeof(v));
    OPENSSL_cleanse(bits, sizeof(bits));
    return r;
}
