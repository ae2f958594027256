#include <errno.h>
#include <string.h>

#include "kms/kms.h"
#include "kms/kms_azure.h"
#include "kms/kms_local.h"
#include "kms/kms_vault.h"

int kfd_kms_open(uv_loop_t *loop, const kfd_kms_config *cfg, kfd_kms **ret, kf_err *err)
{
    if (strcmp(cfg->backend, "vault-transit") == 0)
        return kfd_kms_vault_open(loop, cfg, ret, err);
    if (strcmp(cfg->backend, "azure-keyvault") == 0)
        return kfd_kms_azure_open(loop, cfg, ret, err);
    if (strcmp(cfg->backend, "local") == 0)
        return kfd_kms_local_open(loop, cfg->local_dir, ret, err);
    return kf_err_set(err, -EINVAL, "unknown kms backend %s", cfg->backend);
}
