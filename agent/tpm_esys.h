/* The one place the agent opens a TPM through ESAPI: the TCTI, the ESYS context, TPM2_Startup
 * (TPM2_RC_INITIALIZE tolerated: the TPM was started already), and the transient objects to
 * flush when done, also after a failure (swtpm has three slots, and without a resource manager
 * handles outlive the process). Used by the TPM fallback (tpm2.c) and TPM-bound identity and
 * quotes (tpm_attest.c); each call opens and closes its own context (ESAPI blocks). */
#ifndef KFA_TPM_ESYS_H
#define KFA_TPM_ESYS_H

#include <stddef.h>

#include "kf_err.h"
#include "tss2_dl.h"

#define KFA_TPM_MAX_OBJS 6

typedef struct kfa_tpm {
    TSS2_TCTI_CONTEXT *tcti;
    ESYS_CONTEXT *esys;
    ESYS_TR objs[KFA_TPM_MAX_OBJS]; /* flushed by kfa_tpm_close, last first */
    size_t n_objs;
} kfa_tpm;

/* Loads tpm2-tss (kfa_tss2_load), opens tcti and starts the TPM. On failure nothing is left open. */
int kfa_tpm_open(kfa_tpm *t, const char *tcti, kf_err *err);
/* Flushes every tracked object that is still set, then finalizes ESYS and the TCTI. */
void kfa_tpm_close(kfa_tpm *t);
/* A tracked slot, ESYS_TR_NONE until a command fills it; set it back to ESYS_TR_NONE when the
 * object is flushed early or ends with its command. At most KFA_TPM_MAX_OBJS per context. */
ESYS_TR *kfa_tpm_track(kfa_tpm *t);
/* err = "TPM WHAT failed: DECODED RC"; returns -EIO. */
int kfa_tpm_error(kf_err *err, const char *what, TSS2_RC rc);
/* The owner hierarchy's ECC P-256 storage primary (the standard SRK template, tpm2-openssl's
 * parent for node keys): the same template gives the same key, so nothing is persisted. */
int kfa_tpm_create_srk(kfa_tpm *t, ESYS_TR *ret, kf_err *err);

#endif
