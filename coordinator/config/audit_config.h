/* keyfleetd.yaml's audit: section: where every audit record is streamed besides the database
 * (docs/audit.md, "Sinks").
 *
 *   audit:
 *     sinks:
 *       - {type: file, path: /var/log/keyfleet/audit.jsonl, required: true}
 *       - {type: syslog, socket: /dev/log}                   # RFC 5424 datagrams */
#ifndef KFD_AUDIT_CONFIG_H
#define KFD_AUDIT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "kf_err.h"
#include "kf_yaml.h"

#define KFD_AUDIT_SINKS_MAX 4

typedef enum { KFD_SINK_FILE = 1, KFD_SINK_SYSLOG } kfd_sink_type;

typedef struct kfd_sink_config {
    kfd_sink_type type;
    char *path;    /* file: the JSON-lines file; syslog: the socket (default /dev/log) */
    bool required; /* a record it cannot take fails the command that wrote it, and releases stop */
} kfd_sink_config;

typedef struct kfd_audit_config {
    kfd_sink_config sinks[KFD_AUDIT_SINKS_MAX];
    size_t n_sinks;
} kfd_audit_config;

int kfd_audit_config_decode(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err);
/* Makes relative paths relative to the config file. 0 or -ENOMEM. */
int kfd_audit_config_resolve(kfd_audit_config *c, const char *config_path);
void kfd_audit_config_clear(kfd_audit_config *c);

#endif
