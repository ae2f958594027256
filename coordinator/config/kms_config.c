#include "config/kms_config.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    char *identity, *scope, *federated_token_file, *imds_endpoint;
    int identity_kind; /* kfd_azure_identity, set by dec_azure */
} azure_section;

static const kf_yaml_field azure_fields[] = {
    {"vault_url", kf_yaml_dec_string, offsetof(azure_section, vault_url), NULL, true},
    {"ca", kf_yaml_dec_string, offsetof(azure_section, ca), NULL, false},
    {"key", kf_yaml_dec_string, offsetof(azure_section, key), NULL, true},
    {"key_version", kf_yaml_dec_string, offsetof(azure_section, key_version), NULL, false},
    {"identity", kf_yaml_dec_string, offsetof(azure_section, identity), NULL, false},
    {"tenant", kf_yaml_dec_string, offsetof(azure_section, tenant), NULL, false},
    {"client_id", kf_yaml_dec_string, offsetof(azure_section, client_id), NULL, false},
    {"client_secret_file", kf_yaml_dec_string, offsetof(azure_section, client_secret_file), NULL, false},
    {"federated_token_file", kf_yaml_dec_string, offsetof(azure_section, federated_token_file), NULL, false},
    {"imds_endpoint", kf_yaml_dec_string, offsetof(azure_section, imds_endpoint), NULL, false},
    {"login_host", kf_yaml_dec_string, offsetof(azure_section, login_host), NULL, false},
    {"scope", kf_yaml_dec_string, offsetof(azure_section, scope), NULL, false},
    {"api_version", kf_yaml_dec_string, offsetof(azure_section, api_version), NULL, false},
};

/* Key Vault and Managed HSM data-plane domains per cloud: the token's resource and the cloud's
 * Entra ID login host (Azure's published cloud endpoints; the German cloud is closed). */
static const struct azure_cloud {
    const char *suffix, *resource, *login_host;
} azure_clouds[] = {
    {".vault.azure.net", "https://vault.azure.net", "https://login.microsoftonline.com"},
    {".managedhsm.azure.net", "https://managedhsm.azure.net", "https://login.microsoftonline.com"},
    {".vault.usgovcloudapi.net", "https://vault.usgovcloudapi.net", "https://login.microsoftonline.us"},
    {".managedhsm.usgovcloudapi.net", "https://managedhsm.usgovcloudapi.net", "https://login.microsoftonline.us"},
    {".vault.azure.cn", "https://vault.azure.cn", "https://login.chinacloudapi.cn"},
    {".managedhsm.azure.cn", "https://managedhsm.azure.cn", "https://login.chinacloudapi.cn"},
};

int kfd_azure_cloud(const char *vault_url, const char **ret_resource, const char **ret_login_host)
{
    if (vault_url == NULL || strncmp(vault_url, "https://", 8) != 0)
        return -ENOENT;
    const char *host = vault_url + 8;
    size_t n = strcspn(host, ":/");
    for (size_t i = 0; i < sizeof(azure_clouds) / sizeof(azure_clouds[0]); i++) {
        size_t sn = strlen(azure_clouds[i].suffix);
        /* NAME + suffix, NAME non-empty and one DNS label: a vault name never holds a dot */
        if (n > sn && strncasecmp(host + n - sn, azure_clouds[i].suffix, sn) == 0 && memchr(host, '.', n - sn) == NULL) {
            /* Key Vault's kid is https://NAME.SUFFIX/keys/...: lower case, no port, no path. */
            for (size_t k = 0; k < n; k++)
                if (host[k] >= 'A' && host[k] <= 'Z')
                    return -EINVAL;
            if (host[n] != '\0')
                return -EINVAL;
            *ret_resource = azure_clouds[i].resource;
            *ret_login_host = azure_clouds[i].login_host;
            return 0;
        }
    }
    return -ENOENT;
}

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

/* https://HOST[:PORT][/PATH] with nothing libcurl would read differently from us: no userinfo
 * (https://good.example@evil.example goes to evil.example), no escapes, no control bytes. */
static int base_url_ok(const char *s)
{
    size_t n = strlen(s);
    if (strncmp(s, "https://", 8) != 0 || n <= 8 || n >= 512 || s[n - 1] == '/' || strpbrk(s, "?# \t@%\\") != NULL)
        return 0;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            return 0;
    return 1;
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

/* A token scope: https://RESOURCE[/PATH]/.default, nothing a form body or a URL would read differently. */
static int scope_ok(const char *s)
{
    size_t n = strlen(s);
    return strncmp(s, "https://", 8) == 0 && n > 17 && n < 256 && strcmp(s + n - 9, "/.default") == 0 &&
           strpbrk(s, "?#&%+ \t\"\\") == NULL;
}

/* IMDS is plain HTTP on a link-local address; any other http:// endpoint must stay on this host. */
static int imds_ok(const char *s)
{
    if (strncmp(s, "https://", 8) == 0)
        return strlen(s) < 512 && strpbrk(s, "?# \t") == NULL;
    if (strncmp(s, "http://", 7) != 0 || strlen(s) >= 512 || strpbrk(s, "?# \t@") != NULL)
        return 0;
    const char *h = s + 7;
    static const char *const local[] = {"169.254.169.254", "127.0.0.1", "localhost", "[::1]"};
    for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++) {
        size_t n = strlen(local[i]);
        if (strncmp(h, local[i], n) == 0 && (h[n] == '/' || h[n] == ':'))
            return 1;
    }
    return 0;
}

/* Key Vault key names: ^[0-9a-zA-Z-]+$, at most 127 characters. */
static int azure_key_name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= 127 && strspn(s, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-") == n;
}

static const char *const identity_names[] = {"client_secret", "managed", "workload"};

/* The options each identity needs (need) and refuses (refuse), as bits of the fields below. */
enum { F_TENANT = 1, F_CLIENT_ID = 2, F_SECRET = 4, F_FEDERATED = 8, F_IMDS = 16, F_LOGIN = 32 };
static const struct {
    unsigned need, refuse;
} identity_rules[] = {
    [KFD_AZURE_CLIENT_SECRET] = {F_TENANT | F_CLIENT_ID | F_SECRET, F_FEDERATED | F_IMDS},
    [KFD_AZURE_MANAGED] = {0, F_TENANT | F_SECRET | F_FEDERATED | F_LOGIN},
    [KFD_AZURE_WORKLOAD] = {F_TENANT | F_CLIENT_ID | F_FEDERATED, F_SECRET | F_IMDS},
};

static int check_identity(const kf_yaml_doc *doc, const kf_yaml_node *node, azure_section *a, kf_err *err)
{
    int kind = -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(a->identity != NULL ? a->identity : "client_secret", identity_names[i]) == 0)
            kind = i;
    if (kind < 0)
        return kf_yaml_error(doc, value_of(node, "identity"), err, "azure identity must be client_secret, managed or workload");
    const struct {
        unsigned bit;
        const char *key, *value;
    } opts[] = {{F_TENANT, "tenant", a->tenant},
                {F_CLIENT_ID, "client_id", a->client_id},
                {F_SECRET, "client_secret_file", a->client_secret_file},
                {F_FEDERATED, "federated_token_file", a->federated_token_file},
                {F_IMDS, "imds_endpoint", a->imds_endpoint},
                {F_LOGIN, "login_host", a->login_host}};
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        if ((identity_rules[kind].need & opts[i].bit) && opts[i].value == NULL)
            return kf_yaml_error(doc, node, err, "azure identity %s needs %s", identity_names[kind], opts[i].key);
        if ((identity_rules[kind].refuse & opts[i].bit) && opts[i].value != NULL)
            return kf_yaml_error(doc, value_of(node, opts[i].key), err, "azure %s is not used with identity %s",
                                 opts[i].key, identity_names[kind]);
    }
    a->identity_kind = kind;
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
    if ((r = check_identity(doc, node, a, err)) != 0)
        return r;
    if (a->login_host != NULL && !base_url_ok(a->login_host))
        return kf_yaml_error(doc, value_of(node, "login_host"), err,
                             "azure login_host must be an https:// URL without a trailing slash");
    if (!azure_key_name_ok(a->key))
        return kf_yaml_error(doc, value_of(node, "key"), err,
                             "azure key must be 1..127 of [0-9a-zA-Z-] (Key Vault key names)");
    if (a->key_version != NULL && (strlen(a->key_version) != 32 || strspn(a->key_version, "0123456789abcdefABCDEF") != 32))
        return kf_yaml_error(doc, value_of(node, "key_version"), err, "azure key_version must be 32 hex digits");
    if (a->tenant != NULL && !url_segment_ok(a->tenant))
        return kf_yaml_error(doc, value_of(node, "tenant"), err, "azure tenant must be [A-Za-z0-9._-]");
    if (a->client_id != NULL && !url_segment_ok(a->client_id))
        return kf_yaml_error(doc, value_of(node, "client_id"), err, "azure client_id must be [A-Za-z0-9._-]");
    if (a->api_version != NULL && !url_segment_ok(a->api_version))
        return kf_yaml_error(doc, value_of(node, "api_version"), err, "azure api_version must be like 7.4");
    if (a->imds_endpoint != NULL && !imds_ok(a->imds_endpoint))
        return kf_yaml_error(doc, value_of(node, "imds_endpoint"), err,
                             "azure imds_endpoint must be https://, or http:// to 169.254.169.254 or loopback, "
                             "without a query");
    if (a->scope != NULL && !scope_ok(a->scope))
        return kf_yaml_error(doc, value_of(node, "scope"), err,
                             "azure scope must be an https:// resource followed by /.default");
    const char *resource = NULL, *login = "https://login.microsoftonline.com";
    int cloud = kfd_azure_cloud(a->vault_url, &resource, &login);
    if (cloud == -EINVAL)
        return kf_yaml_error(doc, value_of(node, "vault_url"), err,
                             "azure vault_url must be https://NAME.DOMAIN in lower case with no port or path, as "
                             "Key Vault names its keys");
    if (cloud == 0 && a->scope != NULL && (strncmp(a->scope, resource, strlen(resource)) != 0 ||
                                          strcmp(a->scope + strlen(resource), "/.default") != 0))
        return kf_yaml_error(doc, value_of(node, "scope"), err,
                             "azure scope %s is not the token audience of %s (%s/.default): a token for another "
                             "audience would be sent to the vault",
                             a->scope, a->vault_url, resource);
    if (cloud != 0 && a->scope == NULL)
        return kf_yaml_error(doc, value_of(node, "vault_url"), err,
                             "azure vault_url's host is not a Key Vault or Managed HSM domain keyfleetd knows "
                             "(*.vault.azure.net, *.managedhsm.azure.net, *.vault.usgovcloudapi.net, *.vault.azure.cn, "
                             "...): set scope (e.g. https://vault.azure.net/.default)");
    char derived[300];
    snprintf(derived, sizeof(derived), "%s/.default", resource != NULL ? resource : "");
    if ((a->scope == NULL && (a->scope = strdup(derived)) == NULL) ||
        (a->login_host == NULL && a->identity_kind != KFD_AZURE_MANAGED && (a->login_host = strdup(login)) == NULL))
        return kf_err_set(err, -ENOMEM, "out of memory");
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
    free(a->client_secret_file), free(a->login_host), free(a->api_version), free(a->identity), free(a->scope);
    free(a->federated_token_file), free(a->imds_endpoint);
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
        k->api_version = s.azure.api_version, k->scope = s.azure.scope;
        k->federated_token_file = s.azure.federated_token_file, k->imds_endpoint = s.azure.imds_endpoint;
        k->azure_identity = s.azure.identity_kind;
        free(s.azure.identity);
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
    if (r == 0 && k->local_dir == NULL && state_dir != NULL) {
        /* state_dir is resolved against the config's directory already: not a second time. */
        if (asprintf(&k->local_dir, "%s/kek", state_dir) < 0) {
            k->local_dir = NULL;
            r = -ENOMEM;
        }
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
    if (r == 0)
        r = resolve(config_file, &k->federated_token_file);
    if (r == 0 && strcmp(k->backend, "vault-transit") == 0)
        r = default_str(&k->mount, "transit");
    if (r == 0 && strcmp(k->backend, "vault-transit") == 0 && k->token_file == NULL)
        r = default_str(&k->approle_mount, "approle");
    if (r == 0 && strcmp(k->backend, "azure-keyvault") == 0 && k->azure_identity != KFD_AZURE_MANAGED)
        r = default_str(&k->login_host, "https://login.microsoftonline.com");
    if (r == 0 && strcmp(k->backend, "azure-keyvault") == 0 && k->azure_identity == KFD_AZURE_MANAGED)
        r = default_str(&k->imds_endpoint, KFD_AZURE_IMDS_DEFAULT);
    if (r == 0 && strcmp(k->backend, "azure-keyvault") == 0)
        r = default_str(&k->api_version, "7.4");
    return r;
}

void kfd_kms_config_clear(kfd_kms_config *k)
{
    free(k->backend), free(k->local_dir), free(k->address), free(k->ca_file), free(k->key), free(k->mount);
    free(k->token_file), free(k->role_id_file), free(k->secret_id_file), free(k->key_version), free(k->tenant);
    free(k->client_id), free(k->client_secret_file), free(k->login_host), free(k->api_version), free(k->scope);
    free(k->federated_token_file), free(k->imds_endpoint), free(k->vault_namespace), free(k->approle_mount);
    memset(k, 0, sizeof(*k));
}
