#include "tss2_dl.h"

#include <pthread.h>
#include <stddef.h>

KF_DLSYM_DEFINE(Esys_Initialize);
KF_DLSYM_DEFINE(Esys_Finalize);
KF_DLSYM_DEFINE(Esys_Startup);
KF_DLSYM_DEFINE(Esys_Free);
KF_DLSYM_DEFINE(Esys_FlushContext);
KF_DLSYM_DEFINE(Esys_CreatePrimary);
KF_DLSYM_DEFINE(Esys_Create);
KF_DLSYM_DEFINE(Esys_Load);
KF_DLSYM_DEFINE(Esys_Unseal);
KF_DLSYM_DEFINE(Esys_StartAuthSession);
KF_DLSYM_DEFINE(Esys_PolicyPCR);
KF_DLSYM_DEFINE(Esys_PolicyGetDigest);
KF_DLSYM_DEFINE(Esys_Certify);
KF_DLSYM_DEFINE(Esys_Quote);
KF_DLSYM_DEFINE(Esys_PCR_Read);
KF_DLSYM_DEFINE(Esys_ActivateCredential);
KF_DLSYM_DEFINE(Esys_PolicySecret);
KF_DLSYM_DEFINE(Esys_TR_FromTPMPublic);
KF_DLSYM_DEFINE(Esys_TR_Close);
KF_DLSYM_DEFINE(Esys_NV_ReadPublic);
KF_DLSYM_DEFINE(Esys_NV_Read);
KF_DLSYM_DEFINE(Tss2_MU_TPMT_SIGNATURE_Marshal);
KF_DLSYM_DEFINE(Tss2_MU_TPM2B_PUBLIC_Marshal);
KF_DLSYM_DEFINE(Tss2_MU_TPM2B_PUBLIC_Unmarshal);
KF_DLSYM_DEFINE(Tss2_MU_TPM2B_PRIVATE_Marshal);
KF_DLSYM_DEFINE(Tss2_MU_TPM2B_PRIVATE_Unmarshal);
KF_DLSYM_DEFINE(Tss2_RC_Decode);
KF_DLSYM_DEFINE(Tss2_TctiLdr_Initialize);
KF_DLSYM_DEFINE(Tss2_TctiLdr_Finalize);

static void *esys, *mu, *rc, *tctildr;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

int kfa_tss2_load(kf_err *err)
{
    pthread_mutex_lock(&lock);
    int r = kf_dlopen_all(&esys, "libtss2-esys.so.0", err, KF_DLSYM_ARG(Esys_Initialize), KF_DLSYM_ARG(Esys_Finalize),
                          KF_DLSYM_ARG(Esys_Startup), KF_DLSYM_ARG(Esys_Free), KF_DLSYM_ARG(Esys_FlushContext),
                          KF_DLSYM_ARG(Esys_CreatePrimary), KF_DLSYM_ARG(Esys_Create), KF_DLSYM_ARG(Esys_Load),
                          KF_DLSYM_ARG(Esys_Unseal), KF_DLSYM_ARG(Esys_StartAuthSession),
                          KF_DLSYM_ARG(Esys_PolicyPCR), KF_DLSYM_ARG(Esys_PolicyGetDigest),
                          KF_DLSYM_ARG(Esys_Certify), KF_DLSYM_ARG(Esys_ActivateCredential), KF_DLSYM_ARG(Esys_PolicySecret), KF_DLSYM_ARG(Esys_TR_FromTPMPublic), KF_DLSYM_ARG(Esys_TR_Close), KF_DLSYM_ARG(Esys_NV_ReadPublic), KF_DLSYM_ARG(Esys_NV_Read), KF_DLSYM_ARG(Esys_Quote), KF_DLSYM_ARG(Esys_PCR_Read), NULL);
    if (r == 0)
        r = kf_dlopen_all(&mu, "libtss2-mu.so.0", err, KF_DLSYM_ARG(Tss2_MU_TPM2B_PUBLIC_Marshal),
                          KF_DLSYM_ARG(Tss2_MU_TPM2B_PUBLIC_Unmarshal), KF_DLSYM_ARG(Tss2_MU_TPM2B_PRIVATE_Marshal),
                          KF_DLSYM_ARG(Tss2_MU_TPM2B_PRIVATE_Unmarshal),
                          KF_DLSYM_ARG(Tss2_MU_TPMT_SIGNATURE_Marshal), NULL);
    if (r == 0)
        r = kf_dlopen_all(&rc, "libtss2-rc.so.0", err, KF_DLSYM_ARG(Tss2_RC_Decode), NULL);
    if (r == 0)
        r = kf_dlopen_all(&tctildr, "libtss2-tctildr.so.0", err, KF_DLSYM_ARG(Tss2_TctiLdr_Initialize),
                          KF_DLSYM_ARG(Tss2_TctiLdr_Finalize), NULL);
    pthread_mutex_unlock(&lock);
    return r;
}
