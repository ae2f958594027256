#include "kf_tpm_eventlog.h"

#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define EV_NO_ACTION 0x00000003u
#define ALG_SHA256 0x000bu
#define MAX_BANKS 8u

typedef struct rd {
    const unsigned char *p;
    size_t len, off;
    bool bad;
} rd;

static uint32_t le32(rd *r)
{
    if (r->bad || r->len - r->off < 4) {
        r->bad = true;
        return 0;
    }
    const unsigned char *b = r->p + r->off;
    r->off += 4;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint16_t le16(rd *r)
{
    if (r->bad || r->len - r->off < 2) {
        r->bad = true;
        return 0;
    }
    const unsigned char *b = r->p + r->off;
    r->off += 2;
    return (uint16_t)(b[0] | b[1] << 8);
}

/* n bytes at the cursor (NULL when past the end), skipped. */
static const unsigned char *take(rd *r, size_t n)
{
    if (r->bad || r->len - r->off < n) {
        r->bad = true;
        return NULL;
    }
    const unsigned char *b = r->p + r->off;
    r->off += n;
    return b;
}

typedef struct bank {
    uint16_t alg, size;
} bank;

/* The first event: a TCG_PCClientPCREvent (SHA-1 sized digest) of type EV_NO_ACTION on PCR 0
 * whose data is the TCG_EfiSpecIdEvent; fills the banks. */
static int spec_id(rd *r, bank banks[MAX_BANKS], uint32_t *n_banks, kf_err *err)
{
    uint32_t pcr = le32(r), type = le32(r);
    take(r, 20);
    uint32_t size = le32(r);
    const unsigned char *ev = take(r, size);
    static const char sig[16] = "Spec ID Event03";
    if (r->bad || pcr != 0 || type != EV_NO_ACTION || size < 29 || memcmp(ev, sig, sizeof(sig)) != 0)
        return kf_err_set(err, -EINVAL, "event log: no Spec ID Event03 header (not a crypto-agile TCG log)");
    rd h = {ev + 24, size - 24, 0, false}; /* past signature, platformClass, versions, uintnSize */
    uint32_t n = le32(&h);
    if (n == 0 || n > MAX_BANKS)
        return kf_err_set(err, -EINVAL, "event log: the header lists %u banks (1..%u)", n, MAX_BANKS);
    bool sha256 = false;
    for (uint32_t i = 0; i < n; i++) {
        banks[i].alg = le16(&h);
        banks[i].size = le16(&h);
        if (banks[i].size == 0 || banks[i].size > 64 || (banks[i].alg == ALG_SHA256 && banks[i].size != 32))
            return kf_err_set(err, -EINVAL, "event log: bank 0x%04x has digest size %u", banks[i].alg, banks[i].size);
        sha256 = sha256 || banks[i].alg == ALG_SHA256;
    }
    if (h.bad)
        return kf_err_set(err, -EINVAL, "event log: truncated Spec ID header");
    if (!sha256)
        return kf_err_set(err, -EINVAL, "event log: no SHA-256 bank");
    *n_banks = n;
    return 0;
}

static int extend(unsigned char pcr[32], const unsigned char digest[32])
{
    unsigned char buf[64];
    memcpy(buf, pcr, 32);
    memcpy(buf + 32, digest, 32);
    unsigned int n = 0;
    return EVP_Digest(buf, sizeof(buf), pcr, &n, EVP_sha256(), NULL) == 1 && n == 32 ? 0 : -EIO;
}

/* One TCG_PCR_EVENT2 at r: its PCR, type, SHA-256 digest and data. */
static int event2(rd *r, const bank *banks, uint32_t n_banks, uint32_t *pcr, uint32_t *type,
                  const unsigned char **sha256, const unsigned char **data, uint32_t *data_len, kf_err *err)
{
    size_t at = r->off;
    *pcr = le32(r);
    *type = le32(r);
    uint32_t count = le32(r);
    if (!r->bad && (count == 0 || count > n_banks))
        return kf_err_set(err, -EINVAL, "event log: event at offset %zu has %u digests (1..%u)", at, count, n_banks);
    *sha256 = NULL;
    for (uint32_t i = 0; i < count && !r->bad; i++) {
        uint16_t alg = le16(r);
        uint32_t j = 0;
        while (j < n_banks && banks[j].alg != alg)
            j++;
        if (j == n_banks && !r->bad)
            return kf_err_set(err, -EINVAL, "event log: event at offset %zu names bank 0x%04x, not in the header",
                              at, alg);
        const unsigned char *d = take(r, j < n_banks ? banks[j].size : 0);
        if (alg == ALG_SHA256)
            *sha256 = d;
    }
    *data_len = le32(r);
    *data = take(r, *data_len);
    if (r->bad)
        return kf_err_set(err, -EINVAL, "event log: event at offset %zu runs past the end", at);
    if (*pcr > 23)
        return kf_err_set(err, -EINVAL, "event log: event at offset %zu extends PCR %u", at, *pcr);
    if (*sha256 == NULL)
        return kf_err_set(err, -EINVAL, "event log: event at offset %zu has no SHA-256 digest", at);
    return 0;
}

int kf_tpm_eventlog_replay(const unsigned char *log, size_t len, kf_tpm_pcrs *ret, size_t *n_events, kf_err *err)
{
    memset(ret, 0, sizeof(*ret));
    if (n_events != NULL)
        *n_events = 0;
    if (log == NULL || len == 0 || len > KF_TPM_EVENTLOG_MAX)
        return kf_err_set(err, -EINVAL, "event log: empty or larger than %u bytes", KF_TPM_EVENTLOG_MAX);
    rd r = {log, len, 0, false};
    bank banks[MAX_BANKS];
    uint32_t n_banks = 0;
    int rc = spec_id(&r, banks, &n_banks, err);
    kf_tpm_pcrs out = {0};
    size_t n = 0;
    static const char startup[16] = "StartupLocality";
    while (rc == 0 && r.off < r.len) {
        if (++n > KF_TPM_EVENTLOG_MAX_EVENTS) {
            rc = kf_err_set(err, -EINVAL, "event log: more than %u events", KF_TPM_EVENTLOG_MAX_EVENTS);
            break;
        }
        uint32_t pcr = 0, type = 0, data_len = 0;
        const unsigned char *digest = NULL, *data = NULL;
        rc = event2(&r, banks, n_banks, &pcr, &type, &digest, &data, &data_len, err);
        if (rc != 0)
            break;
        if (type == EV_NO_ACTION) {
            /* Not extended; the one that matters says which locality started PCR 0. */
            if (pcr == 0 && data_len == 17 && memcmp(data, startup, sizeof(startup)) == 0 && out.mask == 0)
                out.values[0][31] = data[16];
            continue;
        }
        if (extend(out.values[pcr], digest) != 0) {
            rc = kf_err_set(err, -EIO, "event log: SHA-256 failed");
            break;
        }
        out.mask |= 1u << pcr;
    }
    if (rc == 0) {
        *ret = out;
        if (n_events != NULL)
            *n_events = n;
    }
    OPENSSL_cleanse(&out, sizeof(out));
    return rc;
}

uint32_t kf_tpm_eventlog_mismatch(const kf_tpm_pcrs *replayed, const kf_tpm_pcrs *quoted)
{
    uint32_t bad = 0;
    for (unsigned i = 0; i < 24; i++)
        if ((quoted->mask & (1u << i)) && CRYPTO_memcmp(replayed->values[i], quoted->values[i], 32) != 0)
            bad |= 1u << i;
    return bad;
}
