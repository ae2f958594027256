/* keyfleetd's configuration file (YAML). Relative paths are resolved against the file's folder. */
#ifndef KFD_CONFIG_H
#define KFD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "kf_err.h"
#include "kf_tls.h"
#include "kf_log.h"
#include "kf_yaml.h"
#include "config/audit_config.h"
#include "config/cluster_config.h"
#include "config/kms_config.h"

typedef struct kfd_limits {
    uint32_t max_body_bytes;             /* protocol limit; larger bodies get resource_exhausted */
    uint32_t max_connections_per_source; /* per client IP address */
    uint32_t max_connections;            /* in total */
    uint32_t max_streams_per_connection; /* HTTP/2 requests processed at once on one connection */
    uint32_t max_stream_resets;          /* HTTP/2 resets a connection may send at once (front/h2guard.h) */
    uint32_t max_connection_body_bytes;  /* request body bytes h2o may buffer for one connection */
    uint32_t max_total_body_bytes;       /* ... and for all connections together */
    uint32_t max_open_streams;           /* HTTP/2 streams open on all connections together */
    /* TLS handshakes a source address may start (front/server.c): a token bucket of burst,
     * refilled at per_second, taken at accept before any TLS work */
    struct {
        uint32_t burst, per_second;
    } handshakes_per_source;
    /* An IPv6 source counts under its first this-many bits (128: each address alone) */
    uint32_t ipv6_source_prefix;
    uint64_t idle_timeout_ms;
    uint64_t shutdown_grace_ms; /* how long SIGTERM waits for in-flight requests */
} kfd_limits;

typedef struct kfd_config {
    char *path;
    char *name; /* this coordinator's name, as in its certificate */
    kf_strlist listen; /* "host:port"; port 0 picks a free one */
    /* Plain-HTTP listeners that answer only GET /healthz and /readyz (ok / not ready), for load
     * balancers that cannot present a client certificate (docs/threat-model.md). */
    kf_strlist probe_listen;
    char *port_file; /* optional: the bound ports are written here, one per line (listen, then probe_listen) */
    char *state_dir;
    char *tls_cert, *tls_key, *tls_ca;
    kf_tls_peer_mode client_auth;
    char *user; /* optional: drop privileges to this user after binding */
    char *log_level;
    kfd_limits limits;
    kfd_kms_config kms;
    kfd_cluster_config cluster;
    kfd_audit_config audit; /* audit sinks */
    uint64_t approval_poll_ms; /* retry delay given to agents while PENDING */
    char *totp_dir;      /* optional: OPERATOR.b32 files; operators with one must give a TOTP code */
    char *webhook_url;   /* optional: notified of each new pending request */
    char *webhook_secret_file;
} kfd_config;

/* Loads and validates path. On error err holds "file:line:col: ..." and nothing is allocated. */
int kfd_config_load(const char *path, kfd_config **ret, kf_err *err);
void kfd_config_free(kfd_config *cfg);

#endif
