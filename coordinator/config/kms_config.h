/* The kms: section of keyfleetd.yaml, shared by the config loader and the backends. */
#ifndef KFD_KMS_CONFIG_H
#define KFD_KMS_CONFIG_H

#include <stdint.h>

#include "kf_err.h"
#include "kf_yaml.h"

typedef struct kfd_kms_config {
    char *backend;   /* "local" (default), "vault-transit" or "azure-keyvault" */
    char *local_dir; /* local: KEK folder (default STATE_DIR/kek) */
    uint64_t timeout_ms; /* remote: per HTTP attempt */
    uint32_t attempts;   /* remote: tries per call, with backoff between */
    char *address;       /* vault: address; azure: vault URL */
    char *ca_file;       /* remote: CA bundle for the KMS's TLS certificate (default: system store) */
    char *key;           /* remote: key name */
    char *mount;         /* vault: transit mount (default "transit"; may be a path) */
    char *vault_namespace; /* vault: X-Vault-Namespace on every request, login included (NULL: none) */
    char *approle_mount; /* vault: AppRole auth mount (default "approle") */
    char *token_file;    /* vault: token auth */
    char *role_id_file, *secret_id_file; /* vault: AppRole auth */
    char *key_version;   /* azure: a version, or NULL for the latest */
    char *tenant, *client_id, *client_secret_file;
    char *login_host;    /* azure: default https://login.microsoftonline.com */
    char *api_version;   /* azure: default 7.4 */
} kfd_kms_config;

/* Decodes the kms: map (a kf_yaml_decode_fn); relative paths are resolved by kfd_kms_config_resolve. */
int kfd_kms_config_decode(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err);
/* Fills defaults and resolves paths against config_file. Returns 0 or -ENOMEM. */
int kfd_kms_config_resolve(kfd_kms_config *k, const char *config_file, const char *state_dir);
void kfd_kms_config_clear(kfd_kms_config *k);

#endif
