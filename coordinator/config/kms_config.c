#include "config/kms_config.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct vault_section {
    char *address, *ca, *mount, *key, *token_file, *role_id_file, *secret_id_file, *namespace, *approle_mount;
} vault_section;

static const kf_yaml_field vault_fields[] = {
    {"address", kf_yaml_dec_string, offsetof(vault_section, address), NULL, true},
    {"ca", kf_yaml_dec_string, offsetof(vault_section, ca), NULL, false},
    {"mount", kf_yaml_dec_string, offsetof(vault_section, mount), NULL, false},
    {"key", kf_yaml_dec_string, offsetof(vault_section, key), NULL, true},
    {"token_file", kf_yaml_dec_string, offsetof(vault_section, token_file), NULL, false},
    {"role_id_file", kf_yaml_dec_string, offsetof(vault_section, role_id_file), NULL, false},
    {"secret_id_file", kf_yaml_dec_string, offsetof(vault_section, secret_id_file), NULL, false},
    {"namespace", kf_yaml_dec_string, offsetof(vault_section, namespace), NULL, false},
    {"approle_mount", kf_yaml_dec_string, offsetof(vault_section, approle_mount), NULL, false},
};

typedef struct azure_section {
    char *vault_url, *ca, *key, *key_version, *tenant, *client_id, *client_secret_file, *login_host, *api_version;
} azure_section;

static const kf_yaml_field azure_fields[] = {
    {"vault_url", kf_yaml_dec_string, offsetof(azure_section, vault_url), NULL, true},
    {"ca", kf_yaml_dec_string, offsetof(azure_section, ca), NULL, false},
    {"key", kf_yaml_dec_string, offsetof(azure_section, key), NULL, true},
    {"key_version", kf_yaml_dec_string, offsetof(azure_section, key_version), NULL, false},
    {"tenant", kf_yaml_dec_string, offsetof(azure_section, tenant), NULL, true},
    {"client_id", kf_yaml_dec_string, offsetof(azure_section, client_id), NULL, true},
    {"client_secret_file", kf_yaml_dec_string, offsetof(azure_section, client_secret_file), NULL, true},
    {"login_host", kf_yaml_dec_string, offsetof(azure_section, login_host), NULL, false},
    {"api_version", kf_yaml_dec_string, offsetof(azure_section, api_version), NULL, false},
};

/* A path segment we put into URLs: no slashes, dots-only names, query or escape characters. */
static int url_segment_ok(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > 127 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
              *p == '_' || *p == '.'))
            return 0;
    return 1;
}

/* A Vault path (a mount or a namespace): url_segment_ok segments joined by single slashes. */
static int url_path_ok(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > 255)
        return 0;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", s);
    for (char *seg = buf, *slash; seg != NULL; seg = slash != NULL ? slash + 1 : NULL) {
        slash = strchr(seg, '/');
        if (slash != NULL)
            *slash = '\0';
        if (!url_segment_ok(seg))
            return 0;
    }
    return 1;
}

static bool word_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static const kf_yaml_node *value_of(const kf_yaml_node *map, const char *key)
{
    for (size_t i = 0; map != NULL && map->type == KF_YAML_MAP && i < map->n; i++)
        if (strcmp(map->items[2 * i]->str, key) == 0)
            return map->items[2 * i + 1];
    return map;
}

static int base_url_ok(const char *s)
{
    size_t n = strlen(s);
    return strncmp(s, "https://", 8) == 0 && n > 8 && n < 512 && s[n - 1] != '/' && strpbrk(s, "?# \t") == NULL;
}

static int dec_vault(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    vault_section *v = dst;
    int r = kf_yaml_decode_map(doc, node, vault_fields, sizeof(vault_fields) / sizeof(vault_fields[0]), v, err);
    if (r != 0)
        return r;
    if (!base_url_ok(v->address))
        return kf_yaml_error(doc, value_of(node, "address"), err,
                             "vault address must be an https:// URL without a trailing slash");
    if (!url_segment_ok(v->key) || !word_char(v->key[0]) || !word_char(v->key[strlen(v->key) - 1]))
        return kf_yaml_error(doc, value_of(node, "key"), err,
                             "vault key must be 1..127 of [A-Za-z0-9._-], starting and ending with [A-Za-z0-9_] "
                             "(Vault routes no other names)");
    static const char path_rule[] = "must be segments of 1..127 of [A-Za-z0-9._-] joined by '/', with no leading or "
                                    "trailing '/'";
    if (v->mount != NULL && !url_path_ok(v->mount))
        return kf_yaml_error(doc, value_of(node, "mount"), err, "vault mount %s", path_rule);
    if (v->approle_mount != NULL && !url_path_ok(v->approle_mount))
        return kf_yaml_error(doc, value_of(node, "approle_mount"), err, "vault approle_mount %s", path_rule);
    if (v->namespace != NULL && !url_path_ok(v->namespace))
        return kf_yaml_error(doc, value_of(node, "namespace"), err, "vault namespace %s (e.g. admin or admin/team-a)",
                             path_rule);
    if (v->approle_mount != NULL && v->token_file != NULL)
        return kf_yaml_error(doc, value_of(node, "approle_mount"), err,
                             "vault approle_mount is for AppRole logins; token_file auth does not log in");
    int approle = v->role_id_file != NULL || v->secret_id_file != NULL;
    if ((v->token_file != NULL) == approle || (approle && (v->role_id_file == NULL || v->secret_id_file == NULL)))
        return kf_yaml_error(doc, node, err, "vault needs token_file, or role_id_file and secret_id_file");
    return 0;
}

static int dec_azure(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    azure_section *a = dst;
    int r = kf_yaml_decode_map(doc, node, azure_fields, sizeof(azure_fields) / sizeof(azure_fields[0]), a, err);
    if (r != 0)
        return r;
    if (!base_url_ok(a->vault_url))
        return kf_yaml_error(doc, value_of(node, "vault_url"), err,
                             "azure vault_url must be an https:// URL without a trailing slash");
    if (a->login_host != NULL && !base_url_ok(a->login_host))
        return kf_yaml_error(doc, value_of(node, "login_host"), err,
                             "azure login_host must be an https:// URL without a trailing slash");
    if (!url_segment_ok(a->key))
        return kf_yaml_error(doc, value_of(node, "key"), err, "azure key must be 1..127 of [A-Za-z0-9._-]");
    if (a->key_version != NULL && (strlen(a->key_version) != 32 || strspn(a->key_version, "0123456789abcdefABCDEF") != 32))
        return kf_yaml_error(doc, value_of(node, "key_version"), err, "azure key_version must be 32 hex digits");
    if (!url_segment_ok(a->tenant))
        return kf_yaml_error(doc, value_of(node, "tenant"), err, "azure tenant must be [A-Za-z0-9._-]");
    if (a->api_version != NULL && !url_segment_ok(a->api_version))
        return kf_yaml_error(doc, value_of(node, "api_version"), err, "azure api_version must be like 7.4");
    return 0;
}

typedef struct kms_section {
    char *backend, *dir;
    uint64_t timeout_ms;
    uint32_t attempts;
    vault_section vault;
    azure_section azure;
} kms_section;

static const kf_yaml_uint_range attempts_range = {1, 10};

static const kf_yaml_field kms_fields[] = {
    {"backend", kf_yaml_dec_string, offsetof(kms_section, backend), NULL, false},
    {"dir", kf_yaml_dec_string, offsetof(kms_section, dir), NULL, false},
    {"timeout", kf_yaml_dec_duration_ms, offsetof(kms_section, timeout_ms), NULL, false},
    {"attempts", kf_yaml_dec_uint, offsetof(kms_section, attempts), &attempts_range, false},
    {"vault", dec_vault, offsetof(kms_section, vault), NULL, false},
    {"azure", dec_azure, offsetof(kms_section, azure), NULL, false},
};

static void vault_clear(vault_section *v)
{
    free(v->address), free(v->ca), free(v->mount), free(v->key), free(v->token_file);
    free(v->role_id_file), free(v->secret_id_file), free(v->namespace), free(v->approle_mount);
}

static void azure_clear(azure_section *a)
{
    free(a->vault_url), free(a->ca), free(a->key), free(a->key_version), free(a->tenant), free(a->client_id);
    free(a->client_secret_file), free(a->login_host), free(a->api_version);
}

int kfd_kms_config_decode(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    kms_section s = {.timeout_ms = 5000, .attempts = 3};
    int r = kf_yaml_decode_map(doc, node, kms_fields, sizeof(kms_fields) / sizeof(kms_fields[0]), &s, err);
    const char *b = s.backend != NULL ? s.backend : "local";
    if (r == 0 && strcmp(b, "local") != 0 && strcmp(b, "vault-transit") != 0 && strcmp(b, "azure-keyvault") != 0)
        r = kf_yaml_error(doc, value_of(node, "backend"), err,
                          "kms backend must be local, vault-transit or azure-keyvault");
    if (r == 0 && (strcmp(b, "vault-transit") == 0) != (s.vault.address != NULL))
        r = kf_yaml_error(doc, value_of(node, "vault"), err,
                          s.vault.address != NULL ? "kms.vault is set but backend is not vault-transit"
                                                  : "backend vault-transit needs a kms.vault section");
    if (r == 0 && (strcmp(b, "azure-keyvault") == 0) != (s.azure.vault_url != NULL))
        r = kf_yaml_error(doc, value_of(node, "azure"), err,
                          s.azure.vault_url != NULL ? "kms.azure is set but backend is not azure-keyvault"
                                                    : "backend azure-keyvault needs a kms.azure section");
    if (r == 0 && (s.timeout_ms < 100 || s.timeout_ms > 120000))
        r = kf_yaml_error(doc, value_of(node, "timeout"), err, "kms timeout must be between 100ms and 2m");
    if (r != 0) {
        free(s.backend), free(s.dir);
        vault_clear(&s.vault);
        azure_clear(&s.azure);
        return r;
    }
    kfd_kms_config *k = dst;
    k->backend = s.backend;
    k->local_dir = s.dir;
    k->timeout_ms = s.timeout_ms;
    k->attempts = s.attempts;
    if (s.vault.address != NULL) {
        k->address = s.vault.address, k->ca_file = s.vault.ca, k->key = s.vault.key, k->mount = s.vault.mount;
        k->token_file = s.vault.token_file, k->role_id_file = s.vault.role_id_file;
        k->secret_id_file = s.vault.secret_id_file;
        k->vault_namespace = s.vault.namespace, k->approle_mount = s.vault.approle_mount;
    } else if (s.azure.vault_url != NULL) {
        k->address = s.azure.vault_url, k->ca_file = s.azure.ca, k->key = s.azure.key;
        k->key_version = s.azure.key_version, k->tenant = s.azure.tenant, k->client_id = s.azure.client_id;
        k->client_secret_file = s.azure.client_secret_file, k->login_host = s.azure.login_host;
        k->api_version = s.azure.api_version;
    }
    return 0;
}

static int resolve(const char *config_file, char **p)
{
    if (*p == NULL)
        return 0;
    *p = kf_config_path(config_file, *p); /* takes ownership */
    return *p != NULL ? 0 : -ENOMEM;
}

static int default_str(char **p, const char *value)
{
    if (*p == NULL && (*p = strdup(value)) == NULL)
        return -ENOMEM;
    return 0;
}

int kfd_kms_config_resolve(kfd_kms_config *k, const char *config_file, const char *state_dir)
{
    if (k->timeout_ms == 0)
        k->timeout_ms = 5000;
    if (k->attempts == 0)
        k->attempts = 3;
    int r = default_str(&k->backend, "local");
    if (r == 0 && k->local_dir == NULL && state_dir != NULL && asprintf(&k->local_dir, "%s/kek", state_dir) < 0) {
        k->local_dir = NULL;
        r = -ENOMEM;
    } else if (r == 0) {
        r = resolve(config_file, &k->local_dir);
    }
    if (r == 0)
        r = resolve(config_file, &k->ca_file);
    if (r == 0)
        r = resolve(config_file, &k->token_file);
    if (r == 0)
        r = resolve(config_file, &k->role_id_file);
    if (r == 0)
        r = resolve(config_file, &k->secret_id_file);
    if (r == 0)
        r = resolve(config_file, &k->client_secret_file);
    if (r == 0 && strcmp(k->backend, "vault-transit") == 0)
        r = default_str(&k->mount, "transit");
    if (r == 0 && strcmp(k->backend, "vault-transit") == 0 && k->token_file == NULL)
        r = default_str(&k->approle_mount, "approle");
    if (r == 0 && strcmp(k->backend, "azure-keyvault") == 0)
        r = default_str(&k->login_host, "https://login.microsoftonline.com");
    if (r == 0 && strcmp(k->backend, "azure-keyvault") == 0)
        r = default_str(&k->api_version, "7.4");
    return r;
}

void kfd_kms_config_clear(kfd_kms_config *k)
{
    free(k->backend), free(k->local_dir), free(k->address), free(k->ca_file), free(k->key), free(k->mount);
    free(k->token_file), free(k->role_id_file), free(k->secret_id_file), free(k->key_version), free(k->tenant);
    free(k->client_id), free(k->client_secret_file), free(k->login_host), free(k->api_version);
    free(k->vault_namespace), free(k->approle_mount);
    memset(k, 0, sizeof(*k));
}
