/* Reads from the state store. Each read resets its statement so no read lock is held. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "store/store_internal.h"
#include "store/store_read.h"

static char *dup_col(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return strdup(t != NULL ? (const char *)t : "");
}

void kfd_volume_clear(kfd_volume *v)
{
    free(v->labels_json);
    free(v->wrapped_key);
    free(v->next_wrapped_key);
    memset(v, 0, sizeof(*v));
}

int kfd_store_get_volume(kfd_store *s, const char *id, kfd_volume *ret)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_VOLUME_GET);
    kfd_bind_text(st, 1, id);
    int r = kfd_store_step_row(s, st, "reading a volume");
    if (r != 0)
        return r;
    memset(ret, 0, sizeof(*ret));
    kfd_store_copy_col(st, 0, ret->id, sizeof(ret->id));
    ret->kind = sqlite3_column_int(st, 1);
    kfd_store_copy_col(st, 2, ret->name, sizeof(ret->name));
    kfd_store_copy_col(st, 3, ret->node, sizeof(ret->node));
    ret->labels_json = dup_col(st, 4);
    ret->wrapped_key = dup_col(st, 5);
    kfd_store_copy_col(st, 6, ret->enroll_request_id, sizeof(ret->enroll_request_id));
    ret->created_at = sqlite3_column_int64(st, 7);
    ret->last_released_at = sqlite3_column_int64(st, 8);
    bool has_next = sqlite3_column_type(st, 9) != SQLITE_NULL;
    ret->next_wrapped_key = has_next ? dup_col(st, 9) : NULL;
    kfd_store_copy_col(st, 10, ret->key_kcv, sizeof(ret->key_kcv));
    kfd_store_copy_col(st, 11, ret->next_kcv, sizeof(ret->next_kcv));
    ret->key_created_at = sqlite3_column_int64(st, 12);
    ret->retired_at = sqlite3_column_int64(st, 13);
    ret->tpm_and_network = sqlite3_column_int(st, 14) != 0;
    sqlite3_reset(st);
    if (ret->labels_json == NULL || ret->wrapped_key == NULL || (has_next && ret->next_wrapped_key == NULL)) {
        kfd_volume_clear(ret);
        return -ENOMEM;
    }
    return 0;
}

int kfd_store_count_volumes(kfd_store *s, uint64_t *ret)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_VOLUME_COUNT);
    int r = kfd_store_step_row(s, st, "counting volumes");
    if (r != 0)
        return r == -ENOENT ? -EIO : r;
    *ret = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return 0;
}

int kfd_store_node_has_volumes(kfd_store *s, const char *node, bool *ret)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_NODE_HAS_VOLUMES);
    kfd_bind_text(st, 1, node);
    int r = kfd_store_step_row(s, st, "counting a node's volumes");
    if (r != 0)
        return r == -ENOENT ? -EIO : r;
    *ret = sqlite3_column_int64(st, 0) > 0;
    sqlite3_reset(st);
    return 0;
}

int kfd_store_node_revoked(kfd_store *s, const char *node, bool *ret_revoked)
{
    int64_t at = 0;
    return kfd_store_node_revoked_at(s, node, ret_revoked, &at);
}

int kfd_store_node_revoked_at(kfd_store *s, const char *node, bool *ret_revoked, int64_t *ret_at)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_NODE_GET);
    kfd_bind_text(st, 1, node);
    int r = kfd_store_step_row(s, st, "reading a node");
    *ret_revoked = false;
    *ret_at = 0;
    if (r == -ENOENT)
        return 0;
    if (r != 0)
        return r;
    *ret_revoked = sqlite3_column_int(st, 0) != 0;
    *ret_at = sqlite3_column_int64(st, 1);
    sqlite3_reset(st);
    return 0;
}

static void pending_from_row(sqlite3_stmt *st, kfd_pending *p)
{
    memset(p, 0, sizeof(*p));
    kfd_store_copy_col(st, 0, p->request_id, sizeof(p->request_id));
    kfd_store_copy_col(st, 1, p->node, sizeof(p->node));
    kfd_store_copy_col(st, 2, p->volume_id, sizeof(p->volume_id));
    kfd_store_copy_col(st, 3, p->source, sizeof(p->source));
    p->created_at = sqlite3_column_int64(st, 4);
    p->expires_at = sqlite3_column_int64(st, 5);
    p->approvals_needed = (uint32_t)sqlite3_column_int(st, 6);
    p->approvals_have = (uint32_t)sqlite3_column_int(st, 7);
    p->state = (kfd_pending_state)sqlite3_column_int(st, 8);
    kfd_store_copy_col(st, 9, p->rule, sizeof(p->rule));
    p->require_totp = sqlite3_column_int(st, 10) != 0;
    kfd_store_copy_col(st, 11, p->change_summary, sizeof(p->change_summary));
    p->has_change = sqlite3_column_int(st, 12) != 0;
}

int kfd_store_get_pending(kfd_store *s, const char *request_id, kfd_pending *ret)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_GET);
    kfd_bind_text(st, 1, request_id);
    int r = kfd_store_step_row(s, st, "reading a pending request");
    if (r != 0)
        return r;
    pending_from_row(st, ret);
    sqlite3_reset(st);
    return 0;
}

static int exists(kfd_store *s, int which, const char *a, const char *b, int64_t n, bool *ret)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, which);
    kfd_bind_text(st, 1, a);
    if (b != NULL)
        kfd_bind_text(st, 2, b);
    else
        sqlite3_bind_int64(st, 2, n);
    int r = kfd_store_step_row(s, st, "reading approvals");
    if (r == 0)
        sqlite3_reset(st);
    *ret = r == 0;
    return r == -ENOENT ? 0 : r;
}

int kfd_store_has_approved(kfd_store *s, const char *request_id, const char *op, bool *ret)
{
    return exists(s, ST_APPROVAL_GET, request_id, op, 0, ret);
}

int kfd_store_totp_used(kfd_store *s, const char *op, int64_t step, bool *ret)
{
    return exists(s, ST_TOTP_GET, op, NULL, step, ret);
}

static Keyfleet__V1__Timestamp *ts(int64_t sec)
{
    Keyfleet__V1__Timestamp *t = malloc(sizeof(*t));
    if (t != NULL) {
        keyfleet__v1__timestamp__init(t);
        t->seconds = sec;
    }
    return t;
}

void kfd_store_free_pending_list(Keyfleet__V1__ListPendingResponse *resp)
{
    for (size_t i = 0; i < resp->n_requests; i++) {
        Keyfleet__V1__PendingRequest *p = resp->requests[i];
        free(p->request_id);
        free(p->node);
        if (p->volume != NULL) {
            free(p->volume->id);
            if (p->volume->name != protobuf_c_empty_string)
                free(p->volume->name);
        }
        free(p->volume);
        kfd_store_free_labels(p->labels, p->n_labels);
        free(p->source_address);
        free(p->created_at);
        free(p->expires_at);
        for (size_t k = 0; k < p->n_approved_by; k++)
            free(p->approved_by[k]);
        free(p->approved_by);
        free(p->rule);
        free(p->change);
        free(p);
    }
    free(resp->requests);
    resp->requests = NULL;
    resp->n_requests = 0;
}

static int approvers_of(kfd_store *s, Keyfleet__V1__PendingRequest *p)
{
    sqlite3_stmt *st = kfd_store_stmt(s, ST_APPROVALS_OF);
    kfd_bind_text(st, 1, p->request_id);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char **v = realloc(p->approved_by, (p->n_approved_by + 1) * sizeof(char *));
        if (v == NULL)
            break;
        p->approved_by = v;
        if ((v[p->n_approved_by] = dup_col(st, 0)) == NULL)
            break;
        p->n_approved_by++;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : rc == SQLITE_ROW ? -ENOMEM : kfd_store_sql_error(s, rc, "reading approvals", NULL);
}

/* A release request's volume name and labels, for `keyfleetctl pending` (none for a change). */
static int pending_volume(kfd_store *s, Keyfleet__V1__PendingRequest *p)
{
    if (p->volume == NULL || p->volume->id == NULL || p->volume->id[0] == '\0')
        return 0;
    kfd_volume v;
    int r = kfd_store_get_volume(s, p->volume->id, &v);
    if (r == -ENOENT)
        return 0;
    if (r != 0)
        return r;
    p->volume->kind = (Keyfleet__V1__VolumeKind)v.kind;
    p->volume->name = strdup(v.name);
    r = p->volume->name != NULL ? kfd_store_labels_from_json(v.labels_json, &p->labels, &p->n_labels) : -ENOMEM;
    if (p->volume->name == NULL)
        p->volume->name = (char *)protobuf_c_empty_string;
    kfd_volume_clear(&v);
    return r;
}

int kfd_store_list_pending(kfd_store *s, Keyfleet__V1__ListPendingResponse *resp)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_LIST);
    int rc;
    /* Collect first: approvers_of() resets the shared statement cache only for its own statement. */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        kfd_pending row;
        pending_from_row(st, &row);
        Keyfleet__V1__PendingRequest *p = calloc(1, sizeof(*p));
        Keyfleet__V1__VolumeRef *v = calloc(1, sizeof(*v));
        Keyfleet__V1__PendingRequest **list = realloc(resp->requests, (resp->n_requests + 1) * sizeof(*list));
        if (p == NULL || v == NULL || list == NULL) {
            free(p);
            free(v);
            if (list != NULL)
                resp->requests = list;
            rc = SQLITE_NOMEM;
            break;
        }
        resp->requests = list;
        keyfleet__v1__pending_request__init(p);
        keyfleet__v1__volume_ref__init(v);
        v->id = strdup(row.volume_id);
        p->volume = v;
        p->request_id = strdup(row.request_id);
        p->node = strdup(row.node);
        p->source_address = strdup(row.source);
        p->created_at = ts(row.created_at);
        p->expires_at = ts(row.expires_at);
        p->approvals_needed = row.approvals_needed;
        p->rule = strdup(row.rule);
        p->change = strdup(row.change_summary);
        p->totp_required = row.require_totp;
        list[resp->n_requests++] = p;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        kfd_store_free_pending_list(resp);
        return rc == SQLITE_NOMEM ? -ENOMEM : kfd_store_sql_error(s, rc, "listing pending requests", NULL);
    }
    for (size_t i = 0; i < resp->n_requests; i++) {
        int r = approvers_of(s, resp->requests[i]);
        if (r == 0)
            r = pending_volume(s, resp->requests[i]);
        if (r != 0) {
            kfd_store_free_pending_list(resp);
            return r;
        }
    }
    return 0;
}

int kfd_store_expired_pending(kfd_store *s, int64_t now, char ids[][65], size_t max, size_t *ret_n)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_EXPIRED);
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)max);
    size_t n = 0;
    int rc;
    while (n < max && (rc = sqlite3_step(st)) == SQLITE_ROW)
        kfd_store_copy_col(st, 0, ids[n++], 65);
    if (n == max)
        rc = SQLITE_DONE;
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return kfd_store_sql_error(s, rc, "listing expired requests", NULL);
    *ret_n = n;
    return 0;
}

int kfd_store_get_policy(kfd_store *s, char **ret_yaml, uint64_t *ret_version)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_POLICY_LATEST);
    int r = kfd_store_step_row(s, st, "reading the policy");
    *ret_yaml = NULL;
    *ret_version = 0;
    if (r == -ENOENT)
        return 0;
    if (r != 0)
        return r;
    *ret_version = (uint64_t)sqlite3_column_int64(st, 0);
    *ret_yaml = dup_col(st, 1);
    sqlite3_reset(st);
    return *ret_yaml != NULL ? 0 : -ENOMEM;
}

int kfd_store_kms_latest(kfd_store *s, const char *backend, uint32_t *ret)
{
    *ret = 0;
    if (s == NULL || s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_KMS_LATEST);
    kfd_bind_text(st, 1, backend);
    int r = kfd_store_step_row(s, st, "reading the KMS key version");
    if (r == 0) {
        *ret = (uint32_t)sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    return r == -ENOENT ? 0 : r;
}

void kfd_store_free_labels(Keyfleet__V1__Label **labels, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (labels[i] != NULL) {
            free(labels[i]->key);
            free(labels[i]->value);
        }
        free(labels[i]);
    }
    free(labels);
}

int kfd_store_labels_from_json(const char *text, Keyfleet__V1__Label ***ret, size_t *ret_n)
{
    *ret = NULL;
    *ret_n = 0;
    json_t *o = json_loads(text != NULL ? text : "{}", 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return 0; /* stored by apply_enroll as an object; anything else shows no labels */
    }
    size_t n = json_object_size(o), i = 0;
    Keyfleet__V1__Label **v = calloc(n > 0 ? n : 1, sizeof(*v));
    const char *k;
    json_t *val;
    int r = v != NULL ? 0 : -ENOMEM;
    json_object_foreach(o, k, val)
    {
        if (r != 0)
            break;
        Keyfleet__V1__Label *l = calloc(1, sizeof(*l));
        if (l == NULL) {
            r = -ENOMEM;
            break;
        }
        keyfleet__v1__label__init(l);
        v[i++] = l;
        l->key = strdup(k);
        l->value = strdup(json_is_string(val) ? json_string_value(val) : "");
        if (l->key == NULL || l->value == NULL)
            r = -ENOMEM;
    }
    json_decref(o);
    if (r != 0) {
        if (v != NULL)
            kfd_store_free_labels(v, i);
        return r;
    }
    *ret = v;
    *ret_n = i;
    return 0;
}

void kfd_store_free_volume_list(Keyfleet__V1__ListVolumesResponse *resp)
{
    for (size_t i = 0; i < resp->n_volumes; i++) {
        Keyfleet__V1__VolumeInfo *v = resp->volumes[i];
        if (v->volume != NULL) {
            free(v->volume->id);
            free(v->volume->name);
        }
        free(v->volume);
        free(v->node);
        kfd_store_free_labels(v->labels, v->n_labels);
        if (v->max_key_age_from != protobuf_c_empty_string) /* set by the handler (malloc'ed) */
            free(v->max_key_age_from);
        free(v->retired_reason);
        free(v->last_node);
        free(v->erase_detail);
        free(v);
    }
    free(resp->volumes);
    resp->volumes = NULL;
    resp->n_volumes = 0;
}

int kfd_store_list_volumes(kfd_store *s, Keyfleet__V1__ListVolumesResponse *resp)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_VOLUME_LIST);
    int rc, r = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        Keyfleet__V1__VolumeInfo *v = calloc(1, sizeof(*v));
        Keyfleet__V1__VolumeRef *ref = calloc(1, sizeof(*ref));
        Keyfleet__V1__VolumeInfo **list = realloc(resp->volumes, (resp->n_volumes + 1) * sizeof(*list));
        if (list != NULL)
            resp->volumes = list;
        if (v == NULL || ref == NULL || list == NULL) {
            free(v);
            free(ref);
            r = -ENOMEM;
            break;
        }
        keyfleet__v1__volume_info__init(v);
        keyfleet__v1__volume_ref__init(ref);
        v->volume = ref;
        resp->volumes[resp->n_volumes++] = v;
        ref->id = dup_col(st, 0);
        ref->kind = (Keyfleet__V1__VolumeKind)sqlite3_column_int(st, 1);
        ref->name = dup_col(st, 2);
        v->node = dup_col(st, 3);
        v->created_at = sqlite3_column_int64(st, 4);
        v->key_created_at = sqlite3_column_int64(st, 5);
        v->rotation_in_progress = sqlite3_column_int(st, 6) != 0;
        v->last_released_at = sqlite3_column_int64(st, 7);
        if (kfd_store_labels_from_json((const char *)sqlite3_column_text(st, 8), &v->labels, &v->n_labels) != 0) {
            r = -ENOMEM;
            break;
        }
        v->retired_at = sqlite3_column_int64(st, 9);
        v->retired_reason = dup_col(st, 10);
        v->last_node = dup_col(st, 11);
        v->erase_requested_at = sqlite3_column_int64(st, 12);
        v->erased_at = sqlite3_column_int64(st, 13);
        v->erase_detail = dup_col(st, 14);
        v->erase_all_keyslots = sqlite3_column_int(st, 15) != 0;
        if (ref->id == NULL || ref->name == NULL || v->node == NULL || v->retired_reason == NULL ||
            v->last_node == NULL || v->erase_detail == NULL) {
            r = -ENOMEM;
            break;
        }
    }
    sqlite3_reset(st);
    if (r == 0 && rc != SQLITE_DONE)
        r = kfd_store_sql_error(s, rc, "listing volumes", NULL);
    if (r != 0)
        kfd_store_free_volume_list(resp);
    return r;
}

int kfd_store_get_attest(kfd_store *s, const char *node, kfd_attest_record *ret)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_ATTEST_GET);
    kfd_bind_text(st, 1, node);
    int r = kfd_store_step_row(s, st, "reading a node's PCR values");
    if (r != 0)
        return r;
    memset(ret, 0, sizeof(*ret));
    kfd_store_copy_col(st, 0, ret->accepted, sizeof(ret->accepted));
    ret->accepted_at = sqlite3_column_int64(st, 1);
    kfd_store_copy_col(st, 2, ret->accepted_by, sizeof(ret->accepted_by));
    kfd_store_copy_col(st, 3, ret->seen, sizeof(ret->seen));
    ret->seen_at = sqlite3_column_int64(st, 4);
    ret->has_clock = sqlite3_column_int(st, 5) != 0;
    ret->reset_count = (uint32_t)sqlite3_column_int64(st, 6);
    ret->restart_count = (uint32_t)sqlite3_column_int64(st, 7);
    ret->has_seen_clock = sqlite3_column_int(st, 8) != 0;
    ret->seen_reset = (uint32_t)sqlite3_column_int64(st, 9);
    ret->seen_restart = (uint32_t)sqlite3_column_int64(st, 10);
    ret->has_tpm_clock = sqlite3_column_int(st, 11) != 0;
    ret->clock = (uint64_t)sqlite3_column_int64(st, 12);
    ret->clock_safe = sqlite3_column_int(st, 13) != 0;
    ret->clock_at = sqlite3_column_int64(st, 14);
    kfd_store_copy_col(st, 15, ret->held, sizeof(ret->held));
    kfd_store_copy_col(st, 16, ret->held_kind, sizeof(ret->held_kind));
    ret->held_at = sqlite3_column_int64(st, 17);
    ret->has_held_state = sqlite3_column_int(st, 18) != 0;
    ret->held_reset = (uint32_t)sqlite3_column_int64(st, 19);
    ret->held_restart = (uint32_t)sqlite3_column_int64(st, 20);
    ret->has_held_clock = sqlite3_column_int(st, 21) != 0;
    ret->held_clock = (uint64_t)sqlite3_column_int64(st, 22);
    ret->held_safe = sqlite3_column_int(st, 23) != 0;
    ret->has_seen_tpm_clock = sqlite3_column_int(st, 24) != 0;
    ret->seen_clock = (uint64_t)sqlite3_column_int64(st, 25);
    ret->seen_safe = sqlite3_column_int(st, 26) != 0;
    sqlite3_reset(st);
    return 0;
}
