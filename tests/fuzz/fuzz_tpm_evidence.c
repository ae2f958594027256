/* libFuzzer: the TPM structures keyfleet reads from outside: a TSS2 PRIVATE KEY file (the node's
 * key blob, on an unencrypted /boot), the evidence a node hands the fleet CA (TPM2B_PUBLIC areas,
 * TPMS_ATTEST, TPMT_SIGNATURE, an EK certificate) through the CA's whole check, and the sealed
 * credential the CA hands back, and a Release's quote (AK public area, TPMS_ATTEST, signature,
 * PCR values: four parts with 2-byte lengths, then 32 bytes of qualifying data; the AK digest
 * is taken from the AK given, so the fuzzer reaches the signature and PCR checks) and the PCR
 * text the coordinator stores. The first byte picks the decoder. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/sha.h>

#include "fuzz_file.h"
#include "kf_tpm_evidence.h"
#include "kf_tpmkey.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 64 * 1024)
        return 0;
    kf_err err = {0};
    switch (data[0] % 5) {
    case 3: {
        const uint8_t *p = data + 1, *part[4];
        size_t left = size - 1, len[4];
        for (int i = 0; i < 4; i++) {
            if (left < 2)
                return 0;
            len[i] = (size_t)(p[0] << 8 | p[1]);
            if (left - 2 < len[i])
                return 0;
            part[i] = p + 2;
            p += 2 + len[i];
            left -= 2 + len[i];
        }
        if (left < 32)
            return 0;
        unsigned char d[32];
        char hex[65];
        SHA256(part[0], len[0], d);
        for (int i = 0; i < 32; i++)
            snprintf(hex + 2 * i, 3, "%02x", d[i]);
        kf_tpm_pcrs got;
        kf_tpm_clock clock;
        if (kf_tpm_quote_verify(part[0], len[0], hex, part[1], len[1], part[2], len[2], part[3], len[3], p, &got,
                                &clock, &err) == 0) {
            (void)kf_tpm_pcrs_require(&got, KF_TPM_DEFAULT_PCRS, &err);
            char text[KF_TPM_PCRS_TEXT_MAX];
            kf_tpm_pcrs back;
            kf_tpm_pcrs_format(&got, text);
            if (kf_tpm_pcrs_parse(text, &back, NULL) != 0 || kf_tpm_pcrs_diff(&got, &back) != 0)
                __builtin_trap(); /* the stored form must read back as written */
        }
        break;
    }
    case 4: {
        char text[KF_TPM_PCRS_TEXT_MAX + 64];
        size_t n = size - 1 < sizeof(text) - 1 ? size - 1 : sizeof(text) - 1;
        memcpy(text, data + 1, n);
        text[n] = '\0';
        kf_tpm_pcrs got;
        kf_err perr = {0};
        if (kf_tpm_pcrs_parse(text, &got, &perr) == 0) {
            char back[KF_TPM_PCRS_TEXT_MAX];
            kf_tpm_pcrs again;
            kf_tpm_pcrs_format(&got, back); /* strict: what parses formats and parses back the same */
            if (kf_tpm_pcrs_parse(back, &again, NULL) != 0 || kf_tpm_pcrs_diff(&got, &again) != 0)
                __builtin_trap();
        }
        break;
    }
    case 0: {
        kf_tpmkey_info info;
        (void)kf_tpmkey_parse((const char *)data + 1, size - 1, &info, &err);
        break;
    }
    case 1: {
        const char *path = fuzz_write_file("evidence", data + 1, size - 1);
        kf_tpm_evidence ev;
        if (path != NULL && kf_tpm_evidence_read(path, &ev, &err) == 0) {
            kf_tpm_verified v;
            if (kf_tpm_evidence_verify(&ev, NULL, &v, &err) == 0)
                kf_tpm_verified_clear(&v);
            kf_tpm_evidence_clear(&ev);
        }
        break;
    }
    default: {
        const char *path = fuzz_write_file("credential", data + 1, size - 1);
        kf_tpm_credential c;
        if (path != NULL && kf_tpm_credential_read(path, &c, &err) == 0) {
            static const unsigned char secret[32];
            char *pem = NULL;
            if (kf_tpm_credential_open(&c, secret, sizeof(secret), &pem, &err) == 0)
                free(pem);
            kf_tpm_credential_clear(&c);
        }
        break;
    }
    }
    return 0;
}
