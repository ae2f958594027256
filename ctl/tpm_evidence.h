/* keyfleetctl's check of a node's TPM evidence before it issues a TPM-bound certificate. */
#ifndef KFCTL_TPM_EVIDENCE_H
#define KFCTL_TPM_EVIDENCE_H

#include <openssl/evp.h>

#include "kf_tpm_evidence.h"

/* Reads and verifies the evidence file (kf_tpm_evidence_verify, with the EK CA files, if any,
 * as trust anchors) and checks that the certified key is csr_key. */
int kfctl_tpm_evidence_check(const char *path, const char *const *ek_cas, size_t n_ek_cas, EVP_PKEY *csr_key,
                             kf_tpm_verified *ret, kf_err *err);

#endif
