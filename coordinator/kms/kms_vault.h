/* The vault-transit KMS backend (kms_vault.c): HashiCorp Vault's or OpenBao's Transit engine. */
#ifndef KFD_KMS_VAULT_H
#define KFD_KMS_VAULT_H

#include <uv.h>

#include "config/kms_config.h"
#include "kf_err.h"
#include "kms/kms.h"

int kfd_kms_vault_open(uv_loop_t *loop, const kfd_kms_config *cfg, kfd_kms **ret, kf_err *err);

#endif
