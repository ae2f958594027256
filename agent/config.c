#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct identity_sec {
    char *cert, *key, *tpm_key, *ca, *role_id_file, *secret_id_file, *secret_id_tpm_file;
} identity_sec;

static const kf_yaml_field identity_fields[] = {
    {"cert", kf_yaml_dec_string, offsetof(identity_sec, cert), NULL, false},
    {"key", kf_yaml_dec_string, offsetof(identity_sec, key), NULL, false},
    {"tpm_key", kf_yaml_dec_string, offsetof(identity_sec, tpm_key), NULL, false},
    {"ca", kf_yaml_dec_string, offsetof(identity_sec, ca), NULL, true},
    {"role_id_file", kf_yaml_dec_string, offsetof(identity_sec, role_id_file), NULL, false},
    {"secret_id_file", kf_yaml_dec_string, offsetof(identity_sec, secret_id_file), NULL, false},
    {"secret_id_tpm_file", kf_yaml_dec_string, offsetof(identity_sec, secret_id_tpm_file), NULL, false},
};

/* A certificate and key (a key file, or a TPM-resident key: tpm_key), or AppRole credentials (the secret id in a file, or sealed to the TPM
 * with `keyfleet-agent seal-secret-id`): exactly one of the two. */
static int dec_identity(const kf_yaml_doc *doc, const kf_yaml_node *n, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    identity_sec *id = dst;
    int r = kf_yaml_decode_map(doc, n, identity_fields, sizeof(identity_fields) / sizeof(identity_fields[0]), dst, err);
    bool cert = id->cert != NULL || id->key != NULL || id->tpm_key != NULL;
    bool one_key = (id->key != NULL) != (id->tpm_key != NULL);
    bool approle = id->role_id_file != NULL || id->secret_id_file != NULL || id->secret_id_tpm_file != NULL;
    bool one_secret = (id->secret_id_file != NULL) != (id->secret_id_tpm_file != NULL);
    if (r == 0 && (cert == approle || (cert && (id->cert == NULL || !one_key)) ||
                   (approle && (id->role_id_file == NULL || !one_secret))))
        r = kf_yaml_error(doc, n, err,
                          "identity needs cert and one of key, tpm_key, or role_id_file and one of secret_id_file, secret_id_tpm_file");
    return r;
}

typedef struct zfs_sec {
    char *command;
    bool mount, discover;
} zfs_sec;

static const kf_yaml_field zfs_fields[] = {
    {"command", kf_yaml_dec_string, offsetof(zfs_sec, command), NULL, false},
    {"mount", kf_yaml_dec_bool, offsetof(zfs_sec, mount), NULL, false},
    {"discover", kf_yaml_dec_bool, offsetof(zfs_sec, discover), NULL, false},
};

static int dec_zfs(const kf_yaml_doc *doc, const kf_yaml_node *n, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    int r = kf_yaml_decode_map(doc, n, zfs_fields, sizeof(zfs_fields) / sizeof(zfs_fields[0]), dst, err);
    zfs_sec *z = dst;
    if (r == 0 && z->command != NULL && z->command[0] != '/')
        return kf_yaml_error(doc, n, err, "zfs.command must be an absolute path");
    return r;
}

typedef struct luks_sec {
    bool activate;
} luks_sec;

static const kf_yaml_field luks_fields[] = {
    {"activate", kf_yaml_dec_bool, offsetof(luks_sec, activate), NULL, false},
};

static int dec_luks(const kf_yaml_doc *doc, const kf_yaml_node *n, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    return kf_yaml_decode_map(doc, n, luks_fields, 1, dst, err);
}

typedef struct tpm_sec {
    char *tcti;
    kf_strlist pcrs;
    char *attest;
    kf_strlist attest_pcrs;
} tpm_sec;

static const kf_yaml_field tpm_fields[] = {
    {"tcti", kf_yaml_dec_string, offsetof(tpm_sec, tcti), NULL, false},
    {"pcrs", kf_yaml_dec_strlist, offsetof(tpm_sec, pcrs), NULL, false},
    {"attest", kf_yaml_dec_string, offsetof(tpm_sec, attest), NULL, false},
    {"attest_pcrs", kf_yaml_dec_strlist, offsetof(tpm_sec, attest_pcrs), NULL, false},
};

static int dec_tpm(const kf_yaml_doc *doc, const kf_yaml_node *n, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    int r = kf_yaml_decode_map(doc, n, tpm_fields, 4, dst, err);
    tpm_sec *t = dst;
    for (size_t i = 0; r == 0 && i < t->pcrs.n; i++) {
        char *end;
        long v = strtol(t->pcrs.v[i], &end, 10);
        if (*end != '\0' || v < 0 || v > 23 || t->pcrs.n > 24)
            r = kf_yaml_error(doc, n, err, "tpm.pcrs must list PCR numbers 0..23");
    }
    for (size_t i = 0; r == 0 && i < t->attest_pcrs.n; i++) {
        char *end;
        long v = strtol(t->attest_pcrs.v[i], &end, 10);
        /* 16..23 can be reset by software; the coordinator refuses quotes over them. */
        if (end == t->attest_pcrs.v[i] || *end != '\0' || v < 0 || v > 15 || t->attest_pcrs.n > 16)
            r = kf_yaml_error(doc, n, err, "tpm.attest_pcrs must list PCR numbers 0..15");
    }
    if (r == 0 && t->attest != NULL && strcmp(t->attest, "true") != 0 && strcmp(t->attest, "false") != 0)
        r = kf_yaml_error(doc, n, err, "tpm.attest must be true or false");
    return r;
}

typedef struct volume_sec {
    char *luks, *zfs, *name;
} volume_sec;

static const kf_yaml_field volume_fields[] = {
    {"luks", kf_yaml_dec_string, offsetof(volume_sec, luks), NULL, false},
    {"zfs", kf_yaml_dec_string, offsetof(volume_sec, zfs), NULL, false},
    {"name", kf_yaml_dec_string, offsetof(volume_sec, name), NULL, false},
};

typedef struct vol_list {
    kfa_volume_cfg *v;
    size_t n;
} vol_list;

static int dec_volumes(const kf_yaml_doc *doc, const kf_yaml_node *n, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    vol_list *out = dst;
    if (n->type != KF_YAML_SEQ)
        return kf_yaml_error(doc, n, err, "volumes must be a list of {luks: PATH} or {zfs: DATASET}");
    out->v = calloc(n->n + 1, sizeof(*out->v));
    if (out->v == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < n->n; i++) {
        volume_sec s = {0};
        int r = kf_yaml_decode_map(doc, n->items[i], volume_fields, 3, &s, err);
        if (r == 0 && (s.luks == NULL) == (s.zfs == NULL))
            r = kf_yaml_error(doc, n->items[i], err, "each volume needs exactly one of luks or zfs");
        if (r != 0) {
            free(s.luks);
            free(s.zfs);
            free(s.name);
            return r;
        }
        kfa_volume_cfg *v = &out->v[out->n++];
        v->kind = s.luks != NULL ? KFA_VOL_LUKS2 : KFA_VOL_ZFS;
        v->path = s.luks != NULL ? s.luks : s.zfs;
        v->spec = strdup(v->path);
        v->name = s.name;
    }
    return 0;
}

typedef struct raw {
    kf_strlist coordinators;
    identity_sec identity;
    char *state_file;
    uint64_t deadline_ms, call_timeout_ms, watch_interval_ms, approval_log_interval_ms;
    zfs_sec zfs;
    luks_sec luks;
    tpm_sec tpm;
    vol_list volumes;
} raw;

static const kf_yaml_uint_range watch_interval_range = {1000, 24 * 3600 * 1000};
static const kf_yaml_uint_range approval_log_range = {1000, 3600 * 1000};

static const kf_yaml_field top_fields[] = {
    {"coordinators", kf_yaml_dec_strlist, offsetof(raw, coordinators), NULL, true},
    {"identity", dec_identity, offsetof(raw, identity), NULL, true},
    {"state_file", kf_yaml_dec_string, offsetof(raw, state_file), NULL, false},
    {"deadline", kf_yaml_dec_duration_ms, offsetof(raw, deadline_ms), NULL, false},
    {"call_timeout", kf_yaml_dec_duration_ms, offsetof(raw, call_timeout_ms), NULL, false},
    {"watch_interval", kf_yaml_dec_duration_ms, offsetof(raw, watch_interval_ms), &watch_interval_range, false},
    {"approval_log_interval", kf_yaml_dec_duration_ms, offsetof(raw, approval_log_interval_ms), &approval_log_range,
     false},
    {"zfs", dec_zfs, offsetof(raw, zfs), NULL, false},
    {"luks", dec_luks, offsetof(raw, luks), NULL, false},
    {"tpm", dec_tpm, offsetof(raw, tpm), NULL, false},
    {"volumes", dec_volumes, offsetof(raw, volumes), NULL, false},
};


void kfa_config_free(kfa_config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->path);
    kf_strlist_free(&cfg->coordinators);
    free(cfg->cert);
    free(cfg->key);
    free(cfg->tpm_key);
    free(cfg->ca);
    free(cfg->role_id_file);
    free(cfg->secret_id_file);
    free(cfg->secret_id_tpm_file);
    free(cfg->state_file);
    free(cfg->zfs_command);
    free(cfg->tpm_tcti);
    for (size_t i = 0; i < cfg->n_volumes; i++) {
        free(cfg->volumes[i].path);
        free(cfg->volumes[i].spec);
        free(cfg->volumes[i].name);
    }
    free(cfg->volumes);
    free(cfg);
}

int kfa_config_load(const char *path, kfa_config **ret, kf_err *err)
{
    kf_yaml_doc *doc = NULL;
    int r = kf_yaml_parse_file(path, &doc, err);
    if (r != 0)
        return r;
    raw w = {.deadline_ms = 60000, .call_timeout_ms = 5000, .watch_interval_ms = 60000,
             .approval_log_interval_ms = 15000, .zfs = {.mount = true, .discover = true},
             .luks = {.activate = true}};
    r = kf_yaml_decode_map(doc, doc->root, top_fields, sizeof(top_fields) / sizeof(top_fields[0]), &w, err);
    if (r == 0 && w.coordinators.n == 0)
        r = kf_yaml_error(doc, doc->root, err, "coordinators needs at least one host:port");
    kf_yaml_free(doc);
    kfa_config *cfg = calloc(1, sizeof(*cfg));
    if (r == 0 && cfg == NULL)
        r = kf_err_set(err, -ENOMEM, "out of memory");
    if (cfg != NULL) {
        cfg->path = strdup(path);
        cfg->coordinators = w.coordinators;
        cfg->cert = kf_config_path(path, w.identity.cert);
        cfg->key = kf_config_path(path, w.identity.key);
        cfg->tpm_key = kf_config_path(path, w.identity.tpm_key);
        cfg->ca = kf_config_path(path, w.identity.ca);
        cfg->role_id_file = kf_config_path(path, w.identity.role_id_file);
        cfg->secret_id_file = kf_config_path(path, w.identity.secret_id_file);
        cfg->secret_id_tpm_file = kf_config_path(path, w.identity.secret_id_tpm_file);
        cfg->state_file = w.state_file != NULL ? kf_config_path(path, w.state_file) : strdup(KFA_DEFAULT_STATE_FILE);
        cfg->deadline_ms = w.deadline_ms;
        cfg->call_timeout_ms = w.call_timeout_ms;
        cfg->watch_interval_ms = w.watch_interval_ms;
        cfg->approval_log_interval_ms = w.approval_log_interval_ms;
        cfg->zfs_command = w.zfs.command != NULL ? w.zfs.command : strdup("/sbin/zfs");
        cfg->zfs_mount = w.zfs.mount;
        cfg->zfs_discover = w.zfs.discover;
        cfg->luks_activate = w.luks.activate;
        cfg->tpm_tcti = w.tpm.tcti != NULL ? w.tpm.tcti : strdup("device:/dev/tpmrm0");
        for (size_t i = 0; i < w.tpm.pcrs.n && i < 24; i++)
            cfg->tpm_pcrs[cfg->n_tpm_pcrs++] = (uint32_t)atoi(w.tpm.pcrs.v[i]);
        if (cfg->n_tpm_pcrs == 0)
            cfg->tpm_pcrs[cfg->n_tpm_pcrs++] = 7;
        kf_strlist_free(&w.tpm.pcrs);
        cfg->tpm_attest = w.tpm.attest == NULL || strcmp(w.tpm.attest, "true") == 0;
        for (size_t i = 0; i < w.tpm.attest_pcrs.n && i < 24; i++)
            cfg->tpm_attest_pcrs |= 1u << atoi(w.tpm.attest_pcrs.v[i]);
        if (cfg->tpm_attest_pcrs == 0)
            cfg->tpm_attest_pcrs = (1u << 0) | (1u << 2) | (1u << 4) | (1u << 7);
        free(w.tpm.attest);
        kf_strlist_free(&w.tpm.attest_pcrs);
        cfg->volumes = w.volumes.v;
        cfg->n_volumes = w.volumes.n;
        for (size_t i = 0; i < cfg->n_volumes; i++)
            if (cfg->volumes[i].kind == KFA_VOL_LUKS2)
                cfg->volumes[i].path = kf_config_path(path, cfg->volumes[i].path);
    }
    if (r != 0) {
        if (cfg != NULL)
            kfa_config_free(cfg);
        else {
            kf_strlist_free(&w.coordinators);
            free(w.identity.cert);
            free(w.identity.key);
            free(w.identity.tpm_key);
            free(w.identity.ca);
            free(w.identity.role_id_file);
            free(w.identity.secret_id_file);
            free(w.identity.secret_id_tpm_file);
            free(w.state_file);
            free(w.zfs.command);
            free(w.tpm.tcti);
            free(w.tpm.attest);
            kf_strlist_free(&w.tpm.attest_pcrs);
        }
        return r;
    }
    *ret = cfg;
    return 0;
}
