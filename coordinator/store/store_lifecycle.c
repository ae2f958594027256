/* Node and volume lifecycle (docs/operations.md): lifting a revocation, retiring a volume, and
 * the node inventory `keyfleetctl node list` shows. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"
#include "store/store_audit.h"
#include "store/store_lifecycle.h"
#include "store/store_read.h"

static int64_t audit_time(const Keyfleet__V1__AuditEntry *a)
{
    return a != NULL && a->time != NULL ? a->time->seconds : 0;
}

int kfd_store_apply_unrevoke(kfd_store *s, const Keyfleet__V1__CmdUnrevokeNode *c, uint64_t *seq, kf_err *err)
{
    if (c->audit == NULL)
        return kf_err_set(err, -EINVAL, "unrevoke command incomplete");
    sqlite3_stmt *st = kfd_store_stmt(s, ST_NODE_UNREVOKE);
    kfd_bind_text(st, 1, c->node);
    sqlite3_bind_int64(st, 2, c->revoked_at);
    int r = kfd_store_step_done(s, st, "lifting the node's revocation", err);
    if (r != 0)
        return r;
    if (sqlite3_changes(s->db) == 0) {
        bool revoked = false;
        int64_t at = 0;
        if ((r = kfd_store_node_revoked_at(s, c->node, &revoked, &at)) != 0)
            return kf_err_set(err, r, "reading the node's revocation");
        return revoked ? kf_err_set(err, -ESTALE, "node %s was revoked again since the unrevoke was proposed", c->node)
                       : kf_err_set(err, -ESTALE, "node %s is not revoked", c->node);
    }
    return kfd_store_append_audit(s, c->audit, seq, err);
}

int kfd_store_apply_retire(kfd_store *s, const Keyfleet__V1__CmdRetireVolume *c, uint64_t *seq, kf_err *err)
{
    if (c->audit == NULL)
        return kf_err_set(err, -EINVAL, "retire command incomplete");
    kfd_volume v;
    int r = kfd_store_get_volume(s, c->volume_id, &v);
    if (r != 0)
        return r == -ENOENT ? kf_err_set(err, -ENOENT, "volume %s is not enrolled", c->volume_id)
                            : kf_err_set(err, r, "reading the volume");
    bool retired = v.retired_at != 0;
    kfd_volume_clear(&v);
    if (retired)
        return kf_err_set(err, -ESTALE, "volume %s is already retired", c->volume_id);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_VOLUME_RETIRE);
    sqlite3_bind_int64(st, 1, audit_time(c->audit));
    kfd_bind_text(st, 2, c->audit->reason);
    kfd_bind_text(st, 3, c->volume_id);
    if ((r = kfd_store_step_done(s, st, "retiring the volume", err)) != 0)
        return r;
    return kfd_store_append_audit(s, c->audit, seq, err);
}

void kfd_store_free_node_list(Keyfleet__V1__ListNodesResponse *resp)
{
    for (size_t i = 0; i < resp->n_nodes; i++) {
        Keyfleet__V1__NodeInfo *n = resp->nodes[i];
        free(n->name);
        free(n->revoked_reason);
        for (size_t k = 0; k < n->n_volumes; k++)
            free(n->volumes[k]);
        free(n->volumes);
        if (n->cert_serial != protobuf_c_empty_string)
            free(n->cert_serial);
        if (n->identity != protobuf_c_empty_string)
            free(n->identity);
        free(n);
    }
    free(resp->nodes);
    resp->nodes = NULL;
    resp->n_nodes = 0;
}

static Keyfleet__V1__NodeInfo *node_find(Keyfleet__V1__ListNodesResponse *resp, const char *name)
{
    for (size_t i = 0; i < resp->n_nodes; i++)
        if (strcmp(resp->nodes[i]->name, name) == 0)
            return resp->nodes[i];
    return NULL;
}

static int node_volumes(kfd_store *s, Keyfleet__V1__ListNodesResponse *resp)
{
    Keyfleet__V1__ListVolumesResponse vols = KEYFLEET__V1__LIST_VOLUMES_RESPONSE__INIT;
    int r = kfd_store_list_volumes(s, &vols);
    for (size_t i = 0; r == 0 && i < vols.n_volumes; i++) {
        Keyfleet__V1__NodeInfo *n = node_find(resp, vols.volumes[i]->node);
        if (n == NULL)
            continue;
        char **v = realloc(n->volumes, (n->n_volumes + 1) * sizeof(*v));
        if (v == NULL || (v[n->n_volumes] = strdup(vols.volumes[i]->volume->id)) == NULL)
            r = -ENOMEM;
        if (v != NULL)
            n->volumes = v;
        if (r == 0)
            n->n_volumes++;
    }
    kfd_store_free_volume_list(&vols);
    return r;
}

int kfd_store_list_nodes(kfd_store *s, Keyfleet__V1__ListNodesResponse *resp)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_NODE_LIST);
    int rc, r = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        Keyfleet__V1__NodeInfo *n = calloc(1, sizeof(*n));
        Keyfleet__V1__NodeInfo **list = realloc(resp->nodes, (resp->n_nodes + 1) * sizeof(*list));
        if (list != NULL)
            resp->nodes = list;
        if (n == NULL || list == NULL) {
            free(n);
            r = -ENOMEM;
            break;
        }
        keyfleet__v1__node_info__init(n);
        resp->nodes[resp->n_nodes++] = n;
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *reason = (const char *)sqlite3_column_text(st, 4);
        n->name = strdup(name != NULL ? name : "");
        n->revoked = sqlite3_column_int(st, 1) != 0;
        n->last_seen_at = sqlite3_column_int64(st, 2);
        n->revoked_at = sqlite3_column_int64(st, 3);
        n->revoked_reason = strdup(reason != NULL ? reason : "");
        if (n->name == NULL || n->revoked_reason == NULL) {
            r = -ENOMEM;
            break;
        }
    }
    sqlite3_reset(st);
    if (r == 0 && rc != SQLITE_DONE)
        r = kfd_store_sql_error(s, rc, "listing nodes", NULL);
    for (size_t i = 0; r == 0 && i < resp->n_nodes; i++) {
        st = kfd_store_stmt(s, ST_NODE_LAST_AUDIT);
        kfd_bind_text(st, 1, resp->nodes[i]->name);
        if ((rc = sqlite3_step(st)) == SQLITE_ROW)
            resp->nodes[i]->last_request_at = sqlite3_column_int64(st, 0);
        else
            r = kfd_store_sql_error(s, rc, "reading a node's last record", NULL);
        sqlite3_reset(st);
    }
    if (r == 0)
        r = node_volumes(s, resp);
    if (r != 0)
        kfd_store_free_node_list(resp);
    return r;
}
