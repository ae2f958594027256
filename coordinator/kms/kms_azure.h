/* The azure-keyvault KMS backend (kms_azure.c): a Key Vault or Managed HSM key. */
#ifndef KFD_KMS_AZURE_H
#define KFD_KMS_AZURE_H

#include <uv.h>

#include "config/kms_config.h"
#include "kf_err.h"
#include "kms/kms.h"

int kfd_kms_azure_open(uv_loop_t *loop, const kfd_kms_config *cfg, kfd_kms **ret, kf_err *err);

#endif
