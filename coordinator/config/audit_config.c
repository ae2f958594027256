#include "config/audit_config.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct raw_sink {
    char *type, *path, *socket;
    bool required;
} raw_sink;

static const kf_yaml_field sink_fields[] = {
    {"type", kf_yaml_dec_string, offsetof(raw_sink, type), NULL, true},
    {"path", kf_yaml_dec_string, offsetof(raw_sink, path), NULL, false},
    {"socket", kf_yaml_dec_string, offsetof(raw_sink, socket), NULL, false},
    {"required", kf_yaml_dec_bool, offsetof(raw_sink, required), NULL, false},
};

static int dec_sink(const kf_yaml_doc *doc, const kf_yaml_node *node, kfd_sink_config *out, kf_err *err)
{
    raw_sink raw = {0};
    int r = kf_yaml_decode_map(doc, node, sink_fields, sizeof(sink_fields) / sizeof(sink_fields[0]), &raw, err);
    if (r == 0 && strcmp(raw.type, "file") == 0) {
        if (raw.path == NULL || raw.socket != NULL)
            r = kf_yaml_error(doc, node, err, "a file sink needs path (and no socket)");
        out->type = KFD_SINK_FILE;
        out->path = raw.path;
        raw.path = NULL;
    } else if (r == 0 && strcmp(raw.type, "syslog") == 0) {
        if (raw.path != NULL)
            r = kf_yaml_error(doc, node, err, "a syslog sink takes socket (default /dev/log), not path");
        out->type = KFD_SINK_SYSLOG;
        out->path = raw.socket != NULL ? raw.socket : strdup("/dev/log");
        raw.socket = NULL;
        if (out->path == NULL)
            r = kf_err_set(err, -ENOMEM, "out of memory");
    } else if (r == 0) {
        r = kf_yaml_error(doc, node, err, "sink type must be file or syslog");
    }
    out->required = raw.required;
    free(raw.type);
    free(raw.path);
    free(raw.socket);
    return r;
}

int kfd_audit_config_decode(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    kfd_audit_config *c = dst;
    if (node->type != KF_YAML_MAP)
        return kf_yaml_error(doc, node, err, "audit must be a map");
    for (size_t i = 0; i < node->n; i++) {
        const kf_yaml_node *k = node->items[2 * i], *v = node->items[2 * i + 1];
        if (strcmp(k->str, "sinks") != 0)
            return kf_yaml_error(doc, k, err, "unknown key '%s' in audit", k->str);
        if (v->type != KF_YAML_SEQ)
            return kf_yaml_error(doc, v, err, "audit.sinks must be a list");
        if (v->n > KFD_AUDIT_SINKS_MAX)
            return kf_yaml_error(doc, v, err, "at most %d audit sinks", KFD_AUDIT_SINKS_MAX);
        for (size_t j = 0; j < v->n; j++) {
            int r = dec_sink(doc, v->items[j], &c->sinks[c->n_sinks++], err);
            if (r != 0) {
                kfd_audit_config_clear(c); /* this sink's path too */
                return r;
            }
        }
    }
    return 0;
}

int kfd_audit_config_resolve(kfd_audit_config *c, const char *config_path)
{
    for (size_t i = 0; i < c->n_sinks; i++) {
        if (c->sinks[i].type != KFD_SINK_FILE)
            continue;
        c->sinks[i].path = kf_config_path(config_path, c->sinks[i].path); /* takes the old one */
        if (c->sinks[i].path == NULL)
            return -ENOMEM;
    }
    return 0;
}

void kfd_audit_config_clear(kfd_audit_config *c)
{
    for (size_t i = 0; i < c->n_sinks; i++)
        free(c->sinks[i].path);
    memset(c, 0, sizeof(*c));
}
