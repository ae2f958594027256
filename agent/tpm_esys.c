#include "tpm_esys.h"

#include <errno.h>
#include <string.h>

int kfa_tpm_error(kf_err *err, const char *what, TSS2_RC rc)
{
    return kf_err_set(err, -EIO, "TPM %s failed: %s", what, sym_Tss2_RC_Decode(rc));
}

void kfa_tpm_close(kfa_tpm *t)
{
    for (size_t i = t->n_objs; i-- > 0;)
        if (t->objs[i] != ESYS_TR_NONE && t->esys != NULL)
            sym_Esys_FlushContext(t->esys, t->objs[i]);
    t->n_objs = 0;
    if (t->esys != NULL)
        sym_Esys_Finalize(&t->esys);
    if (t->tcti != NULL)
        sym_Tss2_TctiLdr_Finalize(&t->tcti);
}

int kfa_tpm_open(kfa_tpm *t, const char *tcti, kf_err *err)
{
    memset(t, 0, sizeof(*t));
    int r = kfa_tss2_load(err);
    if (r != 0)
        return r;
    TSS2_RC rc = sym_Tss2_TctiLdr_Initialize(tcti, &t->tcti);
    if (rc != TSS2_RC_SUCCESS)
        return kf_err_set(err, -ENODEV, "TPM: cannot open TCTI '%s': %s", tcti, sym_Tss2_RC_Decode(rc));
    if ((rc = sym_Esys_Initialize(&t->esys, t->tcti, NULL)) != TSS2_RC_SUCCESS) {
        kfa_tpm_close(t);
        return kfa_tpm_error(err, "initialization", rc);
    }
    rc = sym_Esys_Startup(t->esys, TPM2_SU_CLEAR);
    if (rc != TSS2_RC_SUCCESS && (rc & 0xfff) != TPM2_RC_INITIALIZE) {
        kfa_tpm_close(t);
        return kfa_tpm_error(err, "startup", rc);
    }
    return 0;
}

ESYS_TR *kfa_tpm_track(kfa_tpm *t)
{
    if (t->n_objs == KFA_TPM_MAX_OBJS)
        return NULL;
    t->objs[t->n_objs] = ESYS_TR_NONE;
    return &t->objs[t->n_objs++];
}

int kfa_tpm_create_srk(kfa_tpm *t, ESYS_TR *ret, kf_err *err)
{
    TPM2B_PUBLIC tmpl = {.publicArea = {
                             .type = TPM2_ALG_ECC,
                             .nameAlg = TPM2_ALG_SHA256,
                             .objectAttributes = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM |
                                                 TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                                 TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA,
                             .parameters.eccDetail = {.symmetric = {.algorithm = TPM2_ALG_AES,
                                                                    .keyBits.aes = 128,
                                                                    .mode.aes = TPM2_ALG_CFB},
                                                      .scheme = {.scheme = TPM2_ALG_NULL},
                                                      .curveID = TPM2_ECC_NIST_P256,
                                                      .kdf = {.scheme = TPM2_ALG_NULL}},
                         }};
    TPM2B_SENSITIVE_CREATE sens = {0};
    TPM2B_DATA outside = {0};
    TPML_PCR_SELECTION pcrs = {0};
    TSS2_RC rc = sym_Esys_CreatePrimary(t->esys, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sens,
                                        &tmpl, &outside, &pcrs, ret, NULL, NULL, NULL, NULL);
    return rc == TSS2_RC_SUCCESS ? 0 : kfa_tpm_error(err, "creating the storage primary key", rc);
}
