/* Remote crypto-erase (docs/operations.md): a wipe retires the volumes and records them as being
 * erased; the node's report confirms each. Decided in the apply, so every replica agrees. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"
#include "store/store_audit.h"
#include "store/store_erase.h"
#include "store/store_read.h"
#include "store/store_recovery.h"

static int64_t audit_time(const Keyfleet__V1__AuditEntry *a)
{
    return a != NULL && a->time != NULL ? a->time->seconds : 0;
}

int kfd_store_get_erase(kfd_store *s, const char *volume_id, char *ret_node, size_t node_size, int64_t *ret_erased_at)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_ERASE_GET);
    kfd_bind_text(st, 1, volume_id);
    int r = kfd_store_step_row(s, st, "reading the volume's erase");
    if (r != 0)
        return r;
    const char *node = (const char *)sqlite3_column_text(st, 0);
    snprintf(ret_node, node_size, "%s", node != NULL ? node : "");
    *ret_erased_at = sqlite3_column_int64(st, 1);
    sqlite3_reset(st);
    return 0;
}

void kfd_store_free_ids(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
}

int kfd_store_erase_pending(kfd_store *s, const char *node, char ***ret_ids, size_t *ret_n, bool *ret_all)
{
    *ret_ids = NULL;
    *ret_n = 0;
    if (s->failed)
        return -EIO;
    char **ids = calloc(KFD_ERASE_MAX, sizeof(*ids));
    if (ids == NULL)
        return -ENOMEM;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_ERASE_PENDING_OF);
    kfd_bind_text(st, 1, node);
    size_t n = 0;
    int rc, r = 0;
    while (n < KFD_ERASE_MAX && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        if ((ids[n] = strdup(id != NULL ? id : "")) == NULL) {
            r = -ENOMEM;
            break;
        }
        if (ret_all != NULL)
            ret_all[n] = sqlite3_column_int(st, 1) != 0;
        n++;
    }
    sqlite3_reset(st);
    if (r == 0 && n < KFD_ERASE_MAX && rc != SQLITE_DONE)
        r = kfd_store_sql_error(s, rc, "listing the node's erases", NULL);
    if (r != 0) {
        kfd_store_free_ids(ids, n);
        return r;
    }
    *ret_ids = ids;
    *ret_n = n;
    return 0;
}

static int wipe_one(kfd_store *s, const Keyfleet__V1__CmdWipeVolumes *c, const char *id, kf_err *err)
{
    kfd_volume v;
    int r = kfd_store_get_volume(s, id, &v);
    if (r != 0)
        return r == -ENOENT ? kf_err_set(err, -ENOENT, "volume %s is not enrolled", id)
                            : kf_err_set(err, r, "reading the volume");
    bool mine = strcmp(v.node, c->node) == 0, retired = v.retired_at != 0;
    kfd_volume_clear(&v);
    if (!mine)
        return kf_err_set(err, -ESTALE, "volume %s was enrolled by another node than %s", id, c->node);
    char node[256];
    int64_t erased_at = 0;
    if ((r = kfd_store_get_erase(s, id, node, sizeof(node), &erased_at)) == 0)
        return kf_err_set(err, -ESTALE, "volume %s is already %s", id, erased_at != 0 ? "erased" : "being erased");
    if (r != -ENOENT)
        return kf_err_set(err, r, "reading the volume's erase");
    sqlite3_stmt *st;
    if (!retired) { /* its key is refused from now on, before the node has erased anything */
        char reason[600];
        snprintf(reason, sizeof(reason), "crypt-erase: %s", c->audit->reason);
        st = kfd_store_stmt(s, ST_VOLUME_RETIRE);
        sqlite3_bind_int64(st, 1, audit_time(c->audit));
        kfd_bind_text(st, 2, reason);
        kfd_bind_text(st, 3, id);
        if ((r = kfd_store_step_done(s, st, "retiring the volume", err)) != 0)
            return r;
    }
    /* The escrowed recovery key goes with the wipe: whoever could unwrap it (or was shown it)
     * must not open the erased volume through the coordinators' copy (review rev26b F2). */
    if ((r = kfd_store_recovery_drop(s, id, err)) != 0)
        return r;
    /* So do the volume's wrapped keys, the current one and a rotation's staged one: a keyslot an
     * erase could not find (left by an older agent cut off before its token) then opens only with
     * a store copy from before the wipe (review rev26c R4). */
    st = kfd_store_stmt(s, ST_VOLUME_FORGET_KEYS);
    kfd_bind_text(st, 1, id);
    if ((r = kfd_store_step_done(s, st, "forgetting the volume's wrapped keys", err)) != 0)
        return r;
    st = kfd_store_stmt(s, ST_ERASE_INSERT);
    kfd_bind_text(st, 1, id);
    kfd_bind_text(st, 2, c->node);
    sqlite3_bind_int64(st, 3, audit_time(c->audit));
    sqlite3_bind_int(st, 4, c->erase_all_keyslots ? 1 : 0);
    return kfd_store_step_done(s, st, "recording the erase", err);
}

/* node wipe --cancel: the erase must be asked of c->node and not confirmed; the volume stays
 * retired (its key and recovery key are gone from the coordinators' use for ever). */
static int cancel_one(kfd_store *s, const Keyfleet__V1__CmdWipeVolumes *c, const char *id, kf_err *err)
{
    char node[256];
    int64_t erased_at = 0;
    int r = kfd_store_get_erase(s, id, node, sizeof(node), &erased_at);
    if (r == -ENOENT || (r == 0 && strcmp(c->node, node) != 0))
        return kf_err_set(err, -ESTALE, "volume %s is not being erased for node %s", id, c->node);
    if (r != 0)
        return kf_err_set(err, r, "reading the volume's erase");
    if (erased_at != 0)
        return kf_err_set(err, -ESTALE, "volume %s was erased already: an erase cannot be undone", id);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_ERASE_CANCEL);
    kfd_bind_text(st, 1, id);
    kfd_bind_text(st, 2, c->node);
    return kfd_store_step_done(s, st, "cancelling the erase", err);
}

int kfd_store_apply_wipe(kfd_store *s, const Keyfleet__V1__CmdWipeVolumes *c, uint64_t *seq, kf_err *err)
{
    if (c->audit == NULL || c->node[0] == '\0' || c->n_volume_ids == 0 || c->n_volume_ids > KFD_ERASE_MAX)
        return kf_err_set(err, -EINVAL, "wipe command incomplete");
    for (size_t i = 0; i < c->n_volume_ids; i++) {
        int r = c->cancel ? cancel_one(s, c, c->volume_ids[i], err) : wipe_one(s, c, c->volume_ids[i], err);
        if (r != 0)
            return r;
    }
    return kfd_store_append_audit(s, c->audit, seq, err);
}

int kfd_store_apply_erase_confirm(kfd_store *s, const Keyfleet__V1__CmdEraseConfirm *c, uint64_t *seq, kf_err *err)
{
    if (c->audit == NULL || c->node[0] == '\0' || c->volume_id[0] == '\0')
        return kf_err_set(err, -EINVAL, "erase confirmation incomplete");
    char node[256];
    int64_t erased_at = 0;
    int r = kfd_store_get_erase(s, c->volume_id, node, sizeof(node), &erased_at);
    if (r == -ENOENT || (r == 0 && strcmp(node, c->node) != 0))
        return kf_err_set(err, -EACCES, "volume %s is not being erased for node %s", c->volume_id, c->node);
    if (r != 0)
        return kf_err_set(err, r, "reading the volume's erase");
    if (erased_at != 0)
        return kf_err_set(err, -ESTALE, "volume %s was erased already", c->volume_id);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_ERASE_CONFIRM);
    sqlite3_bind_int64(st, 1, audit_time(c->audit));
    kfd_bind_text(st, 2, c->detail);
    kfd_bind_text(st, 3, c->volume_id);
    kfd_bind_text(st, 4, c->node);
    if ((r = kfd_store_step_done(s, st, "confirming the erase", err)) != 0)
        return r;
    return kfd_store_append_audit(s, c->audit, seq, err);
}
