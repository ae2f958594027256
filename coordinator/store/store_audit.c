/* The audit log: an append-only table whose records form a SHA-256 hash chain.
 *   hash(n) = SHA-256(hash(n-1) || canonical(n)),  hash(0) = 32 zero bytes
 * canonical() is a fixed, length-prefixed encoding of every field (docs/audit.md), so editing,
 * deleting, inserting or reordering any row breaks verification from that record on. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "store/store_internal.h"

typedef struct enc {
    uint8_t *buf;
    size_t size, len;
} enc;

static void put(enc *e, const void *p, size_t n)
{
    if (e->len + n <= e->size)
        memcpy(e->buf + e->len, p, n);
    e->len += n;
}

static void put_u32(enc *e, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    put(e, b, 4);
}

static void put_u64(enc *e, uint64_t v)
{
    put_u32(e, (uint32_t)(v >> 32));
    put_u32(e, (uint32_t)v);
}

static void put_str(enc *e, const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    put_u32(e, (uint32_t)n);
    put(e, s, n);
}

size_t kfd_audit_canonical(const Keyfleet__V1__AuditRecord *r, uint8_t *buf, size_t size)
{
    enc e = {buf, size, 0};
    put(&e, "KFA1", 4);
    put_u64(&e, r->seq);
    put_u64(&e, (uint64_t)(r->time != NULL ? r->time->seconds : 0));
    put_u32(&e, (uint32_t)(r->time != NULL ? r->time->nanos : 0));
    put_str(&e, r->action);
    put_u32(&e, (uint32_t)(r->actor != NULL ? r->actor->kind : 0));
    put_str(&e, r->actor != NULL ? r->actor->name : "");
    put_str(&e, r->actor != NULL ? r->actor->auth : "");
    put_str(&e, r->node);
    put_str(&e, r->volume_id);
    put_str(&e, r->request_id);
    put_u32(&e, (uint32_t)r->decision);
    put_str(&e, r->reason);
    put_str(&e, r->source_address);
    return e.len;
}

#define CANON_MAX 8192

static void chain_hash(const uint8_t prev[KFD_HASH_LEN], const uint8_t *canon, size_t len, uint8_t out[KFD_HASH_LEN])
{
    uint8_t buf[KFD_HASH_LEN + CANON_MAX];
    memcpy(buf, prev, KFD_HASH_LEN);
    memcpy(buf + KFD_HASH_LEN, canon, len);
    SHA256(buf, KFD_HASH_LEN + len, out);
}

int kfd_store_append_audit(kfd_store *s, const Keyfleet__V1__AuditEntry *e, uint64_t *ret_seq, kf_err *err)
{
    if (e == NULL || e->time == NULL || e->action == NULL || e->action[0] == '\0')
        return kf_err_set(err, -EINVAL, "audit entry incomplete");
    Keyfleet__V1__AuditRecord r = KEYFLEET__V1__AUDIT_RECORD__INIT;
    r.seq = s->tx_head_seq + 1;
    r.time = e->time;
    r.action = e->action;
    r.actor = e->actor;
    r.node = e->node;
    r.volume_id = e->volume_id;
    r.request_id = e->request_id;
    r.decision = e->decision;
    r.reason = e->reason;
    r.source_address = e->source_address;
    uint8_t canon[CANON_MAX], hash[KFD_HASH_LEN];
    size_t len = kfd_audit_canonical(&r, canon, sizeof(canon));
    if (len > sizeof(canon))
        return kf_err_set(err, -EMSGSIZE, "audit record too large");
    chain_hash(s->tx_head_hash, canon, len, hash);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_INSERT);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)r.seq);
    sqlite3_bind_int64(st, 2, e->time->seconds);
    sqlite3_bind_int(st, 3, e->time->nanos);
    kfd_bind_text(st, 4, e->action);
    sqlite3_bind_int(st, 5, e->actor != NULL ? (int)e->actor->kind : 0);
    kfd_bind_text(st, 6, e->actor != NULL ? e->actor->name : "");
    kfd_bind_text(st, 7, e->actor != NULL ? e->actor->auth : "");
    kfd_bind_text(st, 8, e->node);
    kfd_bind_text(st, 9, e->volume_id);
    kfd_bind_text(st, 10, e->request_id);
    sqlite3_bind_int(st, 11, (int)e->decision);
    kfd_bind_text(st, 12, e->reason);
    kfd_bind_text(st, 13, e->source_address);
    sqlite3_bind_blob(st, 14, s->tx_head_hash, KFD_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 15, hash, KFD_HASH_LEN, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return kfd_store_sql_error(s, rc, "appending to the audit log", err);
    s->tx_head_seq = r.seq;
    memcpy(s->tx_head_hash, hash, KFD_HASH_LEN);
    *ret_seq = r.seq;
    return 0;
}

int kfd_store_load_audit_head(kfd_store *s, kf_err *err)
{
    sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_HEAD);
    int rc = sqlite3_step(st);
    s->head_seq = 0;
    memset(s->head_hash, 0, KFD_HASH_LEN);
    if (rc == SQLITE_ROW) {
        s->head_seq = (uint64_t)sqlite3_column_int64(st, 0);
        if (sqlite3_column_bytes(st, 1) == KFD_HASH_LEN)
            memcpy(s->head_hash, sqlite3_column_blob(st, 1), KFD_HASH_LEN);
        rc = SQLITE_DONE;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : kfd_store_sql_error(s, rc, "reading the audit head", err);
}

static char *dup_col(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return strdup(t != NULL ? (const char *)t : "");
}

/* Builds a record from the current row of ST_AUDIT_ALL (all heap-allocated). */
static Keyfleet__V1__AuditRecord *row_record(sqlite3_stmt *st)
{
    Keyfleet__V1__AuditRecord *r = calloc(1, sizeof(*r));
    Keyfleet__V1__Timestamp *t = calloc(1, sizeof(*t));
    Keyfleet__V1__Principal *a = calloc(1, sizeof(*a));
    if (r == NULL || t == NULL || a == NULL) {
        free(r);
        free(t);
        free(a);
        return NULL;
    }
    keyfleet__v1__audit_record__init(r);
    keyfleet__v1__timestamp__init(t);
    keyfleet__v1__principal__init(a);
    r->seq = (uint64_t)sqlite3_column_int64(st, 0);
    t->seconds = sqlite3_column_int64(st, 1);
    t->nanos = sqlite3_column_int(st, 2);
    r->time = t;
    r->action = dup_col(st, 3);
    a->kind = (Keyfleet__V1__PrincipalKind)sqlite3_column_int(st, 4);
    a->name = dup_col(st, 5);
    a->auth = dup_col(st, 6);
    r->actor = a;
    r->node = dup_col(st, 7);
    r->volume_id = dup_col(st, 8);
    r->request_id = dup_col(st, 9);
    r->decision = (Keyfleet__V1__Decision)sqlite3_column_int(st, 10);
    r->reason = dup_col(st, 11);
    r->source_address = dup_col(st, 12);
    r->prev_hash.len = (size_t)sqlite3_column_bytes(st, 13);
    r->prev_hash.data = malloc(r->prev_hash.len + 1);
    if (r->prev_hash.data != NULL)
        memcpy(r->prev_hash.data, sqlite3_column_blob(st, 13), r->prev_hash.len);
    r->hash.len = (size_t)sqlite3_column_bytes(st, 14);
    r->hash.data = malloc(r->hash.len + 1);
    if (r->hash.data != NULL)
        memcpy(r->hash.data, sqlite3_column_blob(st, 14), r->hash.len);
    return r;
}

static void free_record(Keyfleet__V1__AuditRecord *r)
{
    if (r == NULL)
        return;
    free(r->time);
    if (r->actor != NULL) {
        free(r->actor->name);
        free(r->actor->auth);
        free(r->actor);
    }
    free(r->action);
    free(r->node);
    free(r->volume_id);
    free(r->request_id);
    free(r->reason);
    free(r->source_address);
    free(r->prev_hash.data);
    free(r->hash.data);
    free(r);
}

void kfd_store_free_audit_list(Keyfleet__V1__QueryAuditResponse *resp)
{
    for (size_t i = 0; i < resp->n_records; i++)
        free_record(resp->records[i]);
    free(resp->records);
    resp->records = NULL;
    resp->n_records = 0;
}

static bool matches(const Keyfleet__V1__AuditRecord *r, const Keyfleet__V1__QueryAuditRequest *q)
{
    if (r->seq <= q->after_seq)
        return false;
    if (q->node[0] != '\0' && strcmp(q->node, r->node) != 0)
        return false;
    if (q->volume_id[0] != '\0' && strcmp(q->volume_id, r->volume_id) != 0)
        return false;
    if (q->action[0] != '\0' && strcmp(q->action, r->action) != 0)
        return false;
    if (q->decision != KEYFLEET__V1__DECISION__DECISION_UNSPECIFIED && q->decision != r->decision)
        return false;
    if (q->since_present_case == KEYFLEET__V1__QUERY_AUDIT_REQUEST__SINCE_PRESENT_SINCE && q->since != NULL &&
        r->time->seconds < q->since->seconds)
        return false;
    if (q->until_present_case == KEYFLEET__V1__QUERY_AUDIT_REQUEST__UNTIL_PRESENT_UNTIL && q->until != NULL &&
        r->time->seconds > q->until->seconds)
        return false;
    return true;
}

int kfd_store_query_audit(kfd_store *s, const Keyfleet__V1__QueryAuditRequest *q, Keyfleet__V1__QueryAuditResponse *resp)
{
    if (s->failed)
        return -EIO;
    size_t limit = q->limit == 0 ? 1000 : q->limit > 10000 ? 10000 : q->limit;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_ALL);
    size_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((uint64_t)sqlite3_column_int64(st, 0) <= q->after_seq)
            continue;
        Keyfleet__V1__AuditRecord *r = row_record(st);
        if (r == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        if (!matches(r, q)) {
            free_record(r);
            continue;
        }
        if (resp->n_records == limit) {
            free_record(r);
            resp->more = true;
            rc = SQLITE_DONE;
            break;
        }
        if (resp->n_records == cap) {
            cap = cap ? cap * 2 : 64;
            Keyfleet__V1__AuditRecord **v = realloc(resp->records, cap * sizeof(*v));
            if (v == NULL) {
                free_record(r);
                rc = SQLITE_NOMEM;
                break;
            }
            resp->records = v;
        }
        resp->records[resp->n_records++] = r;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        kfd_store_free_audit_list(resp);
        return rc == SQLITE_NOMEM ? -ENOMEM : kfd_store_sql_error(s, rc, "reading the audit log", NULL);
    }
    return 0;
}

int kfd_store_verify_audit(kfd_store *s, Keyfleet__V1__VerifyAuditResponse *resp, char *problem, size_t problem_size)
{
    if (s->failed)
        return -EIO;
    uint8_t prev[KFD_HASH_LEN] = {0}, canon[CANON_MAX], hash[KFD_HASH_LEN];
    uint64_t expect = 1, n = 0;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_AUDIT_ALL);
    int rc;
    resp->ok = true;
    problem[0] = '\0';
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        Keyfleet__V1__AuditRecord *r = row_record(st);
        if (r == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        n++;
        size_t len = kfd_audit_canonical(r, canon, sizeof(canon));
        const char *bad = NULL;
        if (r->seq != expect)
            bad = r->seq > expect ? "a record is missing before this one" : "records are out of order";
        else if (r->prev_hash.len != KFD_HASH_LEN || CRYPTO_memcmp(r->prev_hash.data, prev, KFD_HASH_LEN) != 0)
            bad = "its prev_hash does not match the previous record's hash";
        else if (len > sizeof(canon))
            bad = "record too large";
        if (bad == NULL) {
            chain_hash(prev, canon, len, hash);
            if (r->hash.len != KFD_HASH_LEN || CRYPTO_memcmp(r->hash.data, hash, KFD_HASH_LEN) != 0)
                bad = "its content does not match its hash (edited)";
        }
        if (bad != NULL) {
            resp->ok = false;
            resp->first_bad_seq = r->seq;
            snprintf(problem, problem_size, "%s", bad);
            free_record(r);
            rc = SQLITE_DONE;
            break;
        }
        memcpy(prev, r->hash.data, KFD_HASH_LEN);
        expect++;
        free_record(r);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return rc == SQLITE_NOMEM ? -ENOMEM : kfd_store_sql_error(s, rc, "reading the audit log", NULL);
    /* Rows cut off the end are only visible against the head this process committed. */
    if (resp->ok && n < s->head_seq) {
        resp->ok = false;
        resp->first_bad_seq = n + 1;
        snprintf(problem, problem_size, "the log ends early (the last committed record is %llu)",
                 (unsigned long long)s->head_seq);
    }
    resp->records = n;
    return 0;
}
