/* libFuzzer: the TPM structures keyfleet reads from outside: a TSS2 PRIVATE KEY file (the node's
 * key blob, on an unencrypted /boot), the evidence a node hands the fleet CA (TPM2B_PUBLIC areas,
 * TPMS_ATTEST, TPMT_SIGNATURE, an EK certificate) through the CA's whole check, and the sealed
 * credential the CA hands back. The first byte picks the decoder. */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_file.h"
#include "kf_tpm_evidence.h"
#include "kf_tpmkey.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 64 * 1024)
        return 0;
    kf_err err = {0};
    switch (data[0] % 3) {
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
