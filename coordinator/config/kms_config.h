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
    int azure_identity;  /* azure: how keyfleetd gets its Entra ID token (kfd_azure_identity) */
    char *scope;         /* azure: token scope RESOURCE/.default (default: from vault_url's host) */
    char *federated_token_file; /* azure workload identity: the projected service account token */
    char *imds_endpoint; /* azure managed identity: the IMDS token URL (default: the link-local IMDS) */
} kfd_kms_config;

typedef enum {
    KFD_AZURE_CLIENT_SECRET = 0, /* an app registration's client secret (the default) */
    KFD_AZURE_MANAGED,           /* the VM's or node's managed identity, through IMDS */
    KFD_AZURE_WORKLOAD,          /* a federated token file exchanged for a token (AKS workload identity) */
} kfd_azure_identity;

#define KFD_AZURE_IMDS_DEFAULT "http://169.254.169.254/metadata/identity/oauth2/token"

/* The Key Vault or Managed HSM resource (e.g. "https://vault.azure.net") and Entra ID login host of
 * a vault URL's cloud, from its host's domain; -ENOENT when the host is no known Azure vault domain,
 * -EINVAL when it is one but written as Key Vault never names it (upper case, a port or a path). */
int kfd_azure_cloud(const char *vault_url, const char **ret_resource, const char **ret_login_host);

/* Decodes the kms: map (a kf_yaml_decode_fn); relative paths are resolved by kfd_kms_config_resolve. */
int kfd_kms_config_decode(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err);
/* Fills defaults and resolves paths against config_file. Returns 0 or -ENOMEM. */
int kfd_kms_config_resolve(kfd_kms_config *k, const char *config_file, const char *state_dir);
void kfd_kms_config_clear(kfd_kms_config *k);

#endif
