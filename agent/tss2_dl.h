/* tpm2-tss (ESAPI, MU, RC, TCTI loader), loaded at run time (common/kf_dlopen.h says why): only
 * the TPM fallback needs it. Call kfa_tss2_load before any sym_* function here. */
#ifndef KFA_TSS2_DL_H
#define KFA_TSS2_DL_H

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include "kf_dlopen.h"
#include "kf_err.h"

KF_DLSYM(Esys_Initialize);
KF_DLSYM(Esys_Finalize);
KF_DLSYM(Esys_Startup);
KF_DLSYM(Esys_Free);
KF_DLSYM(Esys_FlushContext);
KF_DLSYM(Esys_CreatePrimary);
KF_DLSYM(Esys_Create);
KF_DLSYM(Esys_Load);
KF_DLSYM(Esys_Unseal);
KF_DLSYM(Esys_StartAuthSession);
KF_DLSYM(Esys_PolicyPCR);
KF_DLSYM(Esys_PolicyGetDigest);
KF_DLSYM(Esys_Certify);
KF_DLSYM(Esys_ActivateCredential);
KF_DLSYM(Esys_PolicySecret);
KF_DLSYM(Esys_TR_FromTPMPublic);
KF_DLSYM(Esys_TR_Close);
KF_DLSYM(Esys_NV_ReadPublic);
KF_DLSYM(Esys_NV_Read);
KF_DLSYM(Esys_Quote);
KF_DLSYM(Esys_PCR_Read);
KF_DLSYM(Tss2_MU_TPMT_SIGNATURE_Marshal);
KF_DLSYM(Tss2_MU_TPM2B_PUBLIC_Marshal);
KF_DLSYM(Tss2_MU_TPM2B_PUBLIC_Unmarshal);
KF_DLSYM(Tss2_MU_TPM2B_PRIVATE_Marshal);
KF_DLSYM(Tss2_MU_TPM2B_PRIVATE_Unmarshal);
KF_DLSYM(Tss2_RC_Decode);
KF_DLSYM(Tss2_TctiLdr_Initialize);
KF_DLSYM(Tss2_TctiLdr_Finalize);

/* Loads the four libraries once; later calls return 0 at once. Thread-safe. On failure err
 * names the missing library or function (install libtss2-esys-3.0.2-0 and libtss2-tctildr0). */
int kfa_tss2_load(kf_err *err);

#endif
