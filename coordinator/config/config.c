#include "config/config.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct tls_section {
    char *cert, *key, *ca, *client_auth;
} tls_section;

static const kf_yaml_uint_range body_range = {1024, 1u << 20};
static const kf_yaml_uint_range count_range = {1, 1000000};
static const kf_yaml_uint_range streams_range = {1, 100};
static const kf_yaml_uint_range resets_range = {1, 100000};
static const kf_yaml_uint_range prefix_range = {32, 128};
static const kf_yaml_uint_range held_range = {64 * 1024, 1u << 30};

static const kf_yaml_field handshake_fields[] = {
    {"burst", kf_yaml_dec_uint, offsetof(kfd_limits, handshakes_per_source.burst), &count_range, false},
    {"per_second", kf_yaml_dec_uint, offsetof(kfd_limits, handshakes_per_source.per_second), &count_range, false},
};

static int dec_handshakes(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    /* dst is the field inside kfd_limits; the offsets above are kfd_limits'. */
    char *limits = (char *)dst - offsetof(kfd_limits, handshakes_per_source);
    return kf_yaml_decode_map(doc, node, handshake_fields, sizeof(handshake_fields) / sizeof(handshake_fields[0]),
                              limits, err);
}

static const kf_yaml_field limits_fields[] = {
    {"max_body_bytes", kf_yaml_dec_uint, offsetof(kfd_limits, max_body_bytes), &body_range, false},
    {"max_connections_per_source", kf_yaml_dec_uint, offsetof(kfd_limits, max_connections_per_source), &count_range,
     false},
    {"max_connections", kf_yaml_dec_uint, offsetof(kfd_limits, max_connections), &count_range, false},
    {"max_streams_per_connection", kf_yaml_dec_uint, offsetof(kfd_limits, max_streams_per_connection), &streams_range,
     false},
    {"max_stream_resets", kf_yaml_dec_uint, offsetof(kfd_limits, max_stream_resets), &resets_range, false},
    {"max_connection_body_bytes", kf_yaml_dec_uint, offsetof(kfd_limits, max_connection_body_bytes), &held_range,
     false},
    {"max_total_body_bytes", kf_yaml_dec_uint, offsetof(kfd_limits, max_total_body_bytes), &held_range, false},
    {"max_open_streams", kf_yaml_dec_uint, offsetof(kfd_limits, max_open_streams), &count_range, false},
    {"ipv6_source_prefix", kf_yaml_dec_uint, offsetof(kfd_limits, ipv6_source_prefix), &prefix_range, false},
    {"handshakes_per_source", dec_handshakes, offsetof(kfd_limits, handshakes_per_source), NULL, false},
    {"idle_timeout", kf_yaml_dec_duration_ms, offsetof(kfd_limits, idle_timeout_ms), NULL, false},
    {"shutdown_grace", kf_yaml_dec_duration_ms, offsetof(kfd_limits, shutdown_grace_ms), NULL, false},
};

static int dec_limits(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    return kf_yaml_decode_map(doc, node, limits_fields, sizeof(limits_fields) / sizeof(limits_fields[0]), dst, err);
}

static const kf_yaml_field tls_fields[] = {
    {"cert", kf_yaml_dec_string, offsetof(tls_section, cert), NULL, true},
    {"key", kf_yaml_dec_string, offsetof(tls_section, key), NULL, true},
    {"ca", kf_yaml_dec_string, offsetof(tls_section, ca), NULL, true},
    {"client_auth", kf_yaml_dec_string, offsetof(tls_section, client_auth), NULL, false},
};

static int dec_tls(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    int r = kf_yaml_decode_map(doc, node, tls_fields, sizeof(tls_fields) / sizeof(tls_fields[0]), dst, err);
    tls_section *t = dst;
    if (r == 0 && t->client_auth != NULL && strcmp(t->client_auth, "required") != 0 &&
        strcmp(t->client_auth, "optional") != 0) {
        for (size_t i = 0; i < node->n; i++)
            if (strcmp(node->items[2 * i]->str, "client_auth") == 0)
                return kf_yaml_error(doc, node->items[2 * i + 1], err, "client_auth must be required or optional");
    }
    return r;
}

typedef struct approvals_section {
    uint64_t poll_ms;
    char *totp_dir;
} approvals_section;

static const kf_yaml_field approvals_fields[] = {
    {"poll_interval", kf_yaml_dec_duration_ms, offsetof(approvals_section, poll_ms), NULL, false},
    {"totp_dir", kf_yaml_dec_string, offsetof(approvals_section, totp_dir), NULL, false},
};

static int dec_approvals(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    return kf_yaml_decode_map(doc, node, approvals_fields, sizeof(approvals_fields) / sizeof(approvals_fields[0]),
                              dst, err);
}

typedef struct webhook_section {
    char *url, *secret_file;
} webhook_section;

static const kf_yaml_field webhook_fields[] = {
    {"url", kf_yaml_dec_string, offsetof(webhook_section, url), NULL, true},
    {"secret_file", kf_yaml_dec_string, offsetof(webhook_section, secret_file), NULL, true},
};

static int dec_webhook(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    int r = kf_yaml_decode_map(doc, node, webhook_fields, sizeof(webhook_fields) / sizeof(webhook_fields[0]), dst,
                               err);
    webhook_section *w = dst;
    if (r == 0 && strncmp(w->url, "https://", 8) != 0 && strncmp(w->url, "http://", 7) != 0)
        return kf_yaml_error(doc, node, err, "webhook url must start with https:// or http://");
    return r;
}

typedef struct raw_config {
    char *name, *port_file, *state_dir, *user, *log_level;
    kf_strlist listen, probe_listen;
    tls_section tls;
    kfd_limits limits;
    kfd_kms_config kms;
    kfd_cluster_config cluster;
    approvals_section approvals;
    webhook_section webhook;
    kfd_audit_config audit;
} raw_config;

static const kf_yaml_field top_fields[] = {
    {"name", kf_yaml_dec_string, offsetof(raw_config, name), NULL, true},
    {"listen", kf_yaml_dec_strlist, offsetof(raw_config, listen), NULL, true},
    {"probe_listen", kf_yaml_dec_strlist, offsetof(raw_config, probe_listen), NULL, false},
    {"port_file", kf_yaml_dec_string, offsetof(raw_config, port_file), NULL, false},
    {"state_dir", kf_yaml_dec_string, offsetof(raw_config, state_dir), NULL, true},
    {"tls", dec_tls, offsetof(raw_config, tls), NULL, true},
    {"user", kf_yaml_dec_string, offsetof(raw_config, user), NULL, false},
    {"log_level", kf_yaml_dec_string, offsetof(raw_config, log_level), NULL, false},
    {"limits", dec_limits, offsetof(raw_config, limits), NULL, false},
    {"kms", kfd_kms_config_decode, offsetof(raw_config, kms), NULL, false},
    {"approvals", dec_approvals, offsetof(raw_config, approvals), NULL, false},
    {"webhook", dec_webhook, offsetof(raw_config, webhook), NULL, false},
    {"cluster", kfd_cluster_config_decode, offsetof(raw_config, cluster), NULL, false},
    {"audit", kfd_audit_config_decode, offsetof(raw_config, audit), NULL, false},
};


static const kf_yaml_node *find_key(const kf_yaml_node *map, const char *key)
{
    for (size_t i = 0; map != NULL && map->type == KF_YAML_MAP && i < map->n; i++)
        if (strcmp(map->items[2 * i]->str, key) == 0)
            return map->items[2 * i + 1];
    return NULL;
}

static int validate_listen(const kf_yaml_doc *doc, const kf_strlist *l, const kf_strlist *probe, kf_err *err)
{
    const kf_yaml_node *node = find_key(doc->root, "listen");
    if (l->n == 0)
        return kf_yaml_error(doc, node, err, "listen needs at least one address");
    for (size_t i = 0; i < l->n; i++)
        if (!kfd_hostport_valid(l->v[i], true))
            return kf_yaml_error(doc, node, err, "listen address '%.64s' is not host:port", l->v[i]);
    node = find_key(doc->root, "probe_listen");
    for (size_t i = 0; i < probe->n; i++) {
        if (!kfd_hostport_valid(probe->v[i], true))
            return kf_yaml_error(doc, node, err, "probe_listen address '%.64s' is not host:port", probe->v[i]);
        size_t len = strlen(probe->v[i]);
        bool any_port = len > 2 && strcmp(probe->v[i] + len - 2, ":0") == 0; /* each gets its own */
        for (size_t k = 0; k < l->n && !any_port; k++)
            if (strcmp(probe->v[i], l->v[k]) == 0)
                return kf_yaml_error(doc, node, err, "probe_listen address '%.64s' is also in listen", probe->v[i]);
    }
    return 0;
}

void kfd_config_free(kfd_config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->path);
    free(cfg->name);
    kf_strlist_free(&cfg->listen);
    kf_strlist_free(&cfg->probe_listen);
    free(cfg->port_file);
    free(cfg->state_dir);
    free(cfg->tls_cert);
    free(cfg->tls_key);
    free(cfg->tls_ca);
    free(cfg->user);
    free(cfg->log_level);
    kfd_kms_config_clear(&cfg->kms);
    kfd_cluster_config_clear(&cfg->cluster);
    kfd_audit_config_clear(&cfg->audit);
    free(cfg->totp_dir);
    free(cfg->webhook_url);
    free(cfg->webhook_secret_file);
    free(cfg);
}

int kfd_config_load(const char *path, kfd_config **ret, kf_err *err)
{
    kf_yaml_doc *doc = NULL;
    int r = kf_yaml_parse_file(path, &doc, err);
    if (r != 0)
        return r;
    raw_config raw = {
        .limits = {.max_body_bytes = 64 * 1024,
                   .max_connections_per_source = 1024,
                   .max_connections = 20000,
                   .max_streams_per_connection = 32,
                   .max_stream_resets = 100,
                   .max_connection_body_bytes = 1u << 20,
                   .max_total_body_bytes = 256u << 20,
                   .max_open_streams = 32768,
                   .handshakes_per_source = {.burst = 200, .per_second = 50},
                   .ipv6_source_prefix = 128,
                   .idle_timeout_ms = 30000,
                   .shutdown_grace_ms = 10000},
        .approvals = {.poll_ms = 2000},
    };
    kfd_cluster_config_defaults(&raw.cluster);
    r = kf_yaml_decode_map(doc, doc->root, top_fields, sizeof(top_fields) / sizeof(top_fields[0]), &raw, err);
    if (r == 0 && !kf_name_valid(raw.name, strlen(raw.name)))
        r = kf_yaml_error(doc, find_key(doc->root, "name"), err, "name must be 1..63 of [A-Za-z0-9._-]");
    if (r == 0)
        r = validate_listen(doc, &raw.listen, &raw.probe_listen, err);
    if (r == 0)
        r = kfd_cluster_config_check(&raw.cluster, raw.name, doc, find_key(doc->root, "cluster"), err);
    kf_log_level lvl;
    if (r == 0 && raw.log_level != NULL && kf_log_level_parse(raw.log_level, &lvl) != 0)
        r = kf_yaml_error(doc, find_key(doc->root, "log_level"), err, "log_level must be debug, info, warn or error");
    kfd_config *cfg = calloc(1, sizeof(*cfg));
    if (r == 0 && cfg == NULL)
        r = kf_err_set(err, -ENOMEM, "out of memory");
    if (r == 0) {
        cfg->path = strdup(path);
        cfg->name = raw.name;
        cfg->listen = raw.listen;
        cfg->probe_listen = raw.probe_listen;
        cfg->port_file = kf_config_path(path, raw.port_file);
        cfg->state_dir = kf_config_path(path, raw.state_dir);
        cfg->tls_cert = kf_config_path(path, raw.tls.cert);
        cfg->tls_key = kf_config_path(path, raw.tls.key);
        cfg->tls_ca = kf_config_path(path, raw.tls.ca);
        cfg->client_auth = raw.tls.client_auth != NULL && strcmp(raw.tls.client_auth, "optional") == 0
                               ? KF_TLS_PEER_OPTIONAL
                               : KF_TLS_PEER_REQUIRED;
        cfg->user = raw.user;
        cfg->log_level = raw.log_level;
        cfg->limits = raw.limits;
        cfg->kms = raw.kms;
        cfg->cluster = raw.cluster;
        cfg->audit = raw.audit;
        int audit_ok = kfd_audit_config_resolve(&cfg->audit, path) == 0;
        int kms_ok = kfd_kms_config_resolve(&cfg->kms, path, cfg->state_dir) == 0;
        cfg->approval_poll_ms = raw.approvals.poll_ms;
        cfg->totp_dir = kf_config_path(path, raw.approvals.totp_dir);
        cfg->webhook_url = raw.webhook.url;
        cfg->webhook_secret_file = kf_config_path(path, raw.webhook.secret_file);
        free(raw.tls.client_auth);
        kf_yaml_free(doc);
        if (cfg->path == NULL || cfg->state_dir == NULL || cfg->tls_cert == NULL || cfg->tls_key == NULL ||
            cfg->tls_ca == NULL || !kms_ok || !audit_ok) {
            kfd_config_free(cfg);
            return kf_err_set(err, -ENOMEM, "out of memory");
        }
        *ret = cfg;
        return 0;
    }
    free(cfg);
    free(raw.name);
    kf_strlist_free(&raw.listen);
    kf_strlist_free(&raw.probe_listen);
    free(raw.port_file);
    free(raw.state_dir);
    free(raw.tls.cert);
    free(raw.tls.key);
    free(raw.tls.ca);
    free(raw.tls.client_auth);
    free(raw.user);
    free(raw.log_level);
    kfd_kms_config_clear(&raw.kms);
    kfd_cluster_config_clear(&raw.cluster);
    kfd_audit_config_clear(&raw.audit);
    free(raw.approvals.totp_dir);
    free(raw.webhook.url);
    free(raw.webhook.secret_file);
    kf_yaml_free(doc);
    return r;
}
