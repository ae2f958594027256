#include "config/cluster_config.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kf_identity.h"

static const kf_yaml_field peer_fields[] = {
    {"name", kf_yaml_dec_string, offsetof(kfd_cluster_peer, name), NULL, true},
    {"raft", kf_yaml_dec_string, offsetof(kfd_cluster_peer, raft), NULL, true},
    {"rpc", kf_yaml_dec_string, offsetof(kfd_cluster_peer, rpc), NULL, true},
};

static const kf_yaml_uint_range snapshot_range = {16, 1u << 30};

static int dec_peers(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err);

static const kf_yaml_field cluster_fields[] = {
    {"raft_listen", kf_yaml_dec_string, offsetof(kfd_cluster_config, raft_listen), NULL, false},
    {"peers", dec_peers, 0, NULL, false},
    {"join", kf_yaml_dec_bool, offsetof(kfd_cluster_config, join), NULL, false},
    {"election_timeout", kf_yaml_dec_duration_ms, offsetof(kfd_cluster_config, election_timeout_ms), NULL, false},
    {"heartbeat", kf_yaml_dec_duration_ms, offsetof(kfd_cluster_config, heartbeat_ms), NULL, false},
    {"snapshot_threshold", kf_yaml_dec_uint, offsetof(kfd_cluster_config, snapshot_threshold), &snapshot_range,
     false},
    {"snapshot_trailing", kf_yaml_dec_uint, offsetof(kfd_cluster_config, snapshot_trailing), &snapshot_range, false},
};

bool kfd_hostport_valid(const char *s, bool allow_zero)
{
    const char *colon = s != NULL ? strrchr(s, ':') : NULL;
    if (colon == NULL || colon == s || colon - s > 253)
        return false;
    /* Addresses end up in member addresses and headers: visible ASCII only, no spaces. */
    for (const char *p = s; p < colon; p++)
        if (*p <= 0x20 || *p > 0x7e)
            return false;
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    return end != colon + 1 && *end == '\0' && port >= (allow_zero ? 0 : 1) && port <= 65535;
}

static int dec_peers(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    kfd_cluster_config *c = dst;
    if (node->type != KF_YAML_SEQ || node->n == 0 || node->n > 7)
        return kf_yaml_error(doc, node, err, "peers must be a list of 1 to 7 coordinators");
    c->peers = calloc(node->n, sizeof(*c->peers));
    if (c->peers == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    c->n_peers = node->n;
    for (size_t i = 0; i < node->n; i++) {
        const kf_yaml_node *item = node->items[i];
        int r = kf_yaml_decode_map(doc, item, peer_fields, sizeof(peer_fields) / sizeof(peer_fields[0]),
                                   &c->peers[i], err);
        if (r != 0)
            return r;
        const kfd_cluster_peer *p = &c->peers[i];
        if (!kf_name_valid(p->name, strlen(p->name)))
            return kf_yaml_error(doc, item, err, "peer name must be 1..63 of [A-Za-z0-9._-]");
        if (!kfd_hostport_valid(p->raft, false) || !kfd_hostport_valid(p->rpc, false))
            return kf_yaml_error(doc, item, err, "peer '%s': raft and rpc must be host:port with a fixed port",
                                 p->name);
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->peers[j].name, p->name) == 0 || strcmp(c->peers[j].raft, p->raft) == 0)
                return kf_yaml_error(doc, item, err, "peer '%s' is listed twice (same name or raft address)",
                                     p->name);
    }
    return 0;
}

void kfd_cluster_config_defaults(kfd_cluster_config *c)
{
    memset(c, 0, sizeof(*c));
    c->election_timeout_ms = 300;
    c->heartbeat_ms = 50;
    c->snapshot_threshold = 8192;
    c->snapshot_trailing = 2048;
}

int kfd_cluster_config_decode(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg,
                              kf_err *err)
{
    (void)arg;
    kfd_cluster_config *c = dst;
    c->configured = true;
    return kf_yaml_decode_map(doc, node, cluster_fields, sizeof(cluster_fields) / sizeof(cluster_fields[0]), c, err);
}

int kfd_cluster_config_check(kfd_cluster_config *c, const char *self, const kf_yaml_doc *doc,
                             const kf_yaml_node *node, kf_err *err)
{
    if (!c->configured)
        return 0;
    if (c->election_timeout_ms < 50 || c->election_timeout_ms > 60000)
        return kf_yaml_error(doc, node, err, "election_timeout must be between 50ms and 60s");
    if (c->heartbeat_ms < 10 || c->heartbeat_ms * 2 > c->election_timeout_ms)
        return kf_yaml_error(doc, node, err, "heartbeat must be at least 10ms and at most half the election_timeout");
    if (c->snapshot_trailing > c->snapshot_threshold)
        return kf_yaml_error(doc, node, err, "snapshot_trailing must not exceed snapshot_threshold");
    const kfd_cluster_peer *me = NULL;
    for (size_t i = 0; i < c->n_peers; i++)
        if (strcmp(c->peers[i].name, self) == 0)
            me = &c->peers[i];
    if (c->join && c->raft_listen == NULL)
        return kf_yaml_error(doc, node, err, "a joining coordinator needs raft_listen");
    if (!c->join && me == NULL)
        return kf_yaml_error(doc, node, err, "peers must list this coordinator ('%s') unless join is true", self);
    if (c->raft_listen == NULL && me != NULL && (c->raft_listen = strdup(me->raft)) == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    if (c->raft_listen != NULL && !kfd_hostport_valid(c->raft_listen, false))
        return kf_yaml_error(doc, node, err, "raft_listen must be host:port with a fixed port");
    return 0;
}

void kfd_cluster_config_clear(kfd_cluster_config *c)
{
    for (size_t i = 0; i < c->n_peers; i++) {
        free(c->peers[i].name);
        free(c->peers[i].raft);
        free(c->peers[i].rpc);
    }
    free(c->peers);
    free(c->raft_listen);
    memset(c, 0, sizeof(*c));
}
