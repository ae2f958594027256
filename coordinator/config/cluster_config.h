/* The `cluster:` section of keyfleetd.yaml: this coordinator's Raft peers and timings. Without
 * the section a coordinator is a cluster of one, on the same replicated code path. */
#ifndef KFD_CLUSTER_CONFIG_H
#define KFD_CLUSTER_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "kf_yaml.h"

typedef struct kfd_cluster_peer {
    char *name; /* as in its coordinator certificate */
    char *raft; /* host:port of its Raft listener */
    char *rpc;  /* host:port of its RPC listener, given to clients as the leader hint */
} kfd_cluster_peer;

typedef struct kfd_cluster_config {
    bool configured;
    char *raft_listen; /* where this coordinator accepts Raft peers; NULL: no listener */
    kfd_cluster_peer *peers;
    size_t n_peers;
    bool join; /* start empty and wait for `keyfleetctl cluster add` instead of bootstrapping */
    uint64_t election_timeout_ms, heartbeat_ms;
    uint32_t snapshot_threshold, snapshot_trailing;
} kfd_cluster_config;

/* A kf_yaml decoder for the section (dst: kfd_cluster_config *). */
int kfd_cluster_config_decode(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg,
                              kf_err *err);
/* Checks the section against this coordinator's name; errors point at the section. */
int kfd_cluster_config_check(kfd_cluster_config *c, const char *self, const kf_yaml_doc *doc,
                             const kf_yaml_node *node, kf_err *err);
void kfd_cluster_config_defaults(kfd_cluster_config *c);
void kfd_cluster_config_clear(kfd_cluster_config *c);

/* "host:port": a host of visible ASCII without spaces, a port of 1..65535 (0 too when
 * allow_zero). */
bool kfd_hostport_valid(const char *s, bool allow_zero);

#endif
