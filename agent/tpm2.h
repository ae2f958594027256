/* TPM2 fallback: a copy of a volume key sealed to this machine's TPM under a PCR policy, for
 * when no coordinator answers before the deadline and policy allowed it at enrollment.
 * tpm2-tss ESAPI; every call runs on a worker thread with its own ESYS_CONTEXT (ESAPI blocks,
 * and swtpm's TCTI has no poll handles), and every object and session is flushed, also after
 * failures. The sealed blob ("kftpm1:" BASE64) holds the PCR selection and the TPM2B_PUBLIC and
 * TPM2B_PRIVATE of the sealed object; it is useless without the same TPM in the same state. */
#ifndef KFA_TPM2_H
#define KFA_TPM2_H

#include <stddef.h>
#include <stdint.h>

#include "kf_err.h"
#include "kf_secmem.h"

#define KFA_TPM_BLOB_MAX 2048

/* Seals key under PolicyPCR(pcrs, sha256, current values), then unseals it again and compares
 * (seal, then verify). *ret_blob is malloc'ed. */
int kfa_tpm_seal(const char *tcti, const uint32_t *pcrs, size_t n_pcrs, const kf_secbuf *key, char **ret_blob,
                 uint64_t timeout_ms, kf_err *err);
/* Unseals. -EACCES with a clear message when the PCRs changed since sealing. */
int kfa_tpm_unseal(const char *tcti, const char *blob, kf_secbuf **ret_key, uint64_t timeout_ms, kf_err *err);

#endif
