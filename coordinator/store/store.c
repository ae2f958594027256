#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kf_log.h"
#include "kf_tpm_evidence.h"
#include "store/store_internal.h"

/* Each migration moves the schema from version i to i + 1; never edit a shipped one. */
static const char *const migrations[] = {
    /* 1: the release path */
    "CREATE TABLE volumes ("
    "  id TEXT PRIMARY KEY, kind INTEGER NOT NULL, name TEXT NOT NULL, labels TEXT NOT NULL,"
    "  node TEXT NOT NULL, wrapped_key TEXT NOT NULL, enroll_request_id TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, last_node TEXT, last_released_at INTEGER);"
    "CREATE TABLE nodes (name TEXT PRIMARY KEY, revoked INTEGER NOT NULL, revoked_at INTEGER, reason TEXT);"
    "CREATE TABLE pending ("
    "  request_id TEXT PRIMARY KEY, node TEXT NOT NULL, volume_id TEXT NOT NULL, source TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, approvals_needed INTEGER NOT NULL,"
    "  approvals_have INTEGER NOT NULL DEFAULT 0, state INTEGER NOT NULL DEFAULT 0, rule TEXT NOT NULL);"
    "CREATE INDEX pending_state ON pending(state, expires_at);"
    "CREATE TABLE approvals (request_id TEXT NOT NULL, operator TEXT NOT NULL, at INTEGER NOT NULL,"
    "  PRIMARY KEY (request_id, operator));"
    "CREATE TABLE totp_used (operator TEXT NOT NULL, step INTEGER NOT NULL, PRIMARY KEY (operator, step));"
    "CREATE TABLE policy (version INTEGER PRIMARY KEY, yaml TEXT NOT NULL, created_at INTEGER NOT NULL);"
    "CREATE TABLE audit ("
    "  seq INTEGER PRIMARY KEY, time_s INTEGER NOT NULL, time_ns INTEGER NOT NULL, action TEXT NOT NULL,"
    "  actor_kind INTEGER NOT NULL, actor_name TEXT NOT NULL, actor_auth TEXT NOT NULL, node TEXT NOT NULL,"
    "  volume_id TEXT NOT NULL, request_id TEXT NOT NULL, decision INTEGER NOT NULL, reason TEXT NOT NULL,"
    "  source TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL);"
    "CREATE INDEX audit_node ON audit(node);"
    "CREATE INDEX audit_volume ON audit(volume_id);",
    /* 2: AppRole-style node authentication */
    "CREATE TABLE roles ("
    "  name TEXT PRIMARY KEY, role_id TEXT NOT NULL UNIQUE, bound_cidrs TEXT NOT NULL,"
    "  token_ttl INTEGER NOT NULL, secret_id_ttl INTEGER NOT NULL, secret_id_num_uses INTEGER NOT NULL,"
    "  node_name TEXT NOT NULL, node_group TEXT NOT NULL, created_at INTEGER NOT NULL);"
    "CREATE TABLE secret_ids ("
    "  accessor TEXT PRIMARY KEY, role_name TEXT NOT NULL, secret_hash BLOB NOT NULL,"
    "  expires_at INTEGER NOT NULL, uses_left INTEGER NOT NULL);"
    "CREATE INDEX secret_ids_role ON secret_ids(role_name);"
    "CREATE TABLE tokens ("
    "  token_id TEXT PRIMARY KEY, role_name TEXT NOT NULL, token_hash BLOB NOT NULL, expires_at INTEGER NOT NULL);"
    "CREATE INDEX tokens_role ON tokens(role_name);",
    /* 3: replication. The applied Raft index commits with each command, so replays are skipped. */
    "CREATE TABLE raft_state (id INTEGER PRIMARY KEY CHECK (id = 1), applied_index INTEGER NOT NULL);"
    "INSERT INTO raft_state (id, applied_index) VALUES (1, 0);"
    "CREATE INDEX audit_request ON audit(request_id);",
    /* 4: the newest KMS key version the cluster rotated to, so a replica can tell it lacks one. */
    "CREATE TABLE kms_state (backend TEXT PRIMARY KEY, latest_version INTEGER NOT NULL);",
    /* 5: approvals that need TOTP, operator changes held for approval, TOTP lockouts, revoked
     * certificates. */
    "ALTER TABLE pending ADD COLUMN require_totp INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE pending ADD COLUMN change BLOB;"
    "ALTER TABLE pending ADD COLUMN change_summary TEXT NOT NULL DEFAULT '';"
    "CREATE TABLE totp_failures (operator TEXT PRIMARY KEY, failures INTEGER NOT NULL, locked_until INTEGER NOT NULL);"
    "CREATE TABLE revoked_certs (serial TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,"
    "  reason TEXT NOT NULL, revoked_at INTEGER NOT NULL);",
    /* 6: audit format 2 (docs/audit.md): each record's RFC 9162 Merkle root (filled in for older
     * records at the first open), and the signatures of checkpoint records. */
    "ALTER TABLE audit ADD COLUMN root BLOB;"
    "CREATE TABLE audit_checkpoints (seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, signature BLOB NOT NULL,"
    "  cert BLOB NOT NULL);"
    "CREATE INDEX audit_checkpoints_size ON audit_checkpoints(size);",
    /* 7: measured-boot records (docs/attestation.md): a node's accepted PCR values (at its first
     * attested enrollment, or by an operator) and the last quote that did not match them. */
    "CREATE TABLE node_attest (node TEXT PRIMARY KEY, accepted TEXT NOT NULL DEFAULT '',"
    "  accepted_at INTEGER NOT NULL DEFAULT 0, accepted_by TEXT NOT NULL DEFAULT '',"
    "  seen TEXT NOT NULL DEFAULT '', seen_at INTEGER NOT NULL DEFAULT 0);",
    /* 8: volume key rotation (docs/operations.md): the rotation in progress (its wrapped key and
     * key check value), the current key's check value and when that key was made. Rows from
     * before have no key_kcv: their first release records it (store_guard.c). */
    "ALTER TABLE volumes ADD COLUMN next_wrapped_key TEXT;"
    "ALTER TABLE volumes ADD COLUMN key_created_at INTEGER;"
    "ALTER TABLE volumes ADD COLUMN key_kcv TEXT;"
    "ALTER TABLE volumes ADD COLUMN next_kcv TEXT;",
    /* 9: the highest TPM reset/restart counters a node's quotes showed (a lower pair means its
     * TPM state was rolled back), and those of the seen quote (docs/attestation.md). */
    "ALTER TABLE node_attest ADD COLUMN reset_count INTEGER;"
    "ALTER TABLE node_attest ADD COLUMN restart_count INTEGER;"
    "ALTER TABLE node_attest ADD COLUMN seen_reset INTEGER;"
    "ALTER TABLE node_attest ADD COLUMN seen_restart INTEGER;",
    /* 10: the dead-man switch (docs/operations.md): when each node last reached a coordinator
     * (its heartbeats, replicated), so nodes silent past their group's window are shown. */
    "ALTER TABLE nodes ADD COLUMN last_seen_at INTEGER;",
};

static const char *const sql[ST_COUNT] = {
    [ST_ROLE_INSERT] = "INSERT INTO roles (name, role_id, bound_cidrs, token_ttl, secret_id_ttl, secret_id_num_uses, "
                       "node_name, node_group, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    [ST_ROLE_GET] = "SELECT name, role_id, bound_cidrs, token_ttl, secret_id_ttl, secret_id_num_uses, node_name, "
                    "node_group, created_at FROM roles WHERE name = ?1 OR role_id = ?2",
    [ST_ROLE_DELETE] = "DELETE FROM roles WHERE name = ?",
    [ST_SECRET_INSERT] = "INSERT INTO secret_ids (accessor, role_name, secret_hash, expires_at, uses_left) "
                         "VALUES (?, ?, ?, ?, ?)",
    [ST_SECRETS_OF] = "SELECT accessor, secret_hash, expires_at, uses_left FROM secret_ids WHERE role_name = ?",
    [ST_SECRET_SPEND] = "UPDATE secret_ids SET uses_left = uses_left - 1 WHERE accessor = ? AND role_name = ? "
                        "AND uses_left > 0",
    [ST_SECRET_PURGE] = "DELETE FROM secret_ids WHERE accessor = ? AND uses_left = 0",
    [ST_SECRET_DELETE_ROLE] = "DELETE FROM secret_ids WHERE role_name = ?",
    [ST_TOKEN_INSERT] = "INSERT INTO tokens (token_id, role_name, token_hash, expires_at) VALUES (?, ?, ?, ?)",
    [ST_TOKEN_GET] = "SELECT token_hash, role_name, expires_at FROM tokens WHERE token_id = ?",
    [ST_TOKEN_DELETE_ROLE] = "DELETE FROM tokens WHERE role_name = ?",
    [ST_KMS_ROTATED] = "INSERT INTO kms_state (backend, latest_version) VALUES (?, ?) ON CONFLICT (backend) "
                       "DO UPDATE SET latest_version = max(latest_version, excluded.latest_version)",
    [ST_KMS_LATEST] = "SELECT latest_version FROM kms_state WHERE backend = ?",
    [ST_SECRET_DELETE_ONE] = "DELETE FROM secret_ids WHERE accessor = ? AND role_name = ?",
    [ST_TOKEN_DELETE_ONE] = "DELETE FROM tokens WHERE token_id = ? AND role_name = ?",
    [ST_APPLIED_SET] = "UPDATE raft_state SET applied_index = ? WHERE id = 1",
    [ST_TOTP_FAIL_GET] = "SELECT failures, locked_until FROM totp_failures WHERE operator = ?",
    [ST_TOTP_FAIL_SET] = "INSERT INTO totp_failures (operator, failures, locked_until) VALUES (?1, ?2, ?3) "
                         "ON CONFLICT (operator) DO UPDATE SET failures = ?2, locked_until = ?3",
    [ST_CERT_REVOKE] = "INSERT INTO revoked_certs (serial, kind, name, reason, revoked_at) VALUES (?, ?, ?, ?, ?)",
    [ST_CERT_GET] = "SELECT 1 FROM revoked_certs WHERE serial = ?",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SAVEPOINT] = "SAVEPOINT cmd",
    [ST_ROLLBACK_TO] = "ROLLBACK TO cmd",
    [ST_RELEASE] = "RELEASE cmd",
    [ST_VOLUME_INSERT] = "INSERT INTO volumes (id, kind, name, labels, node, wrapped_key, enroll_request_id, "
                         "created_at, key_kcv, key_created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, nullif(?9, ''), ?8)",
    [ST_VOLUME_GET] = "SELECT id, kind, name, node, labels, wrapped_key, enroll_request_id, created_at, "
                      "coalesce(last_released_at, 0), next_wrapped_key, coalesce(key_kcv, ''), "
                      "coalesce(next_kcv, ''), coalesce(key_created_at, created_at) FROM volumes WHERE id = ?",
    [ST_VOLUME_ROTATE_BEGIN] = "UPDATE volumes SET next_wrapped_key = ?, next_kcv = ? WHERE id = ?",
    [ST_VOLUME_ROTATE_COMMIT] = "UPDATE volumes SET wrapped_key = next_wrapped_key, key_kcv = next_kcv, "
                                "next_wrapped_key = NULL, next_kcv = NULL, key_created_at = ? "
                                "WHERE id = ? AND next_wrapped_key IS NOT NULL",
    [ST_VOLUME_LIST] = "SELECT id, kind, name, node, created_at, coalesce(key_created_at, created_at), "
                       "next_wrapped_key IS NOT NULL, coalesce(last_released_at, 0), labels FROM volumes ORDER BY id",
    [ST_NODE_SEEN] = "INSERT INTO nodes (name, revoked, last_seen_at) VALUES (?1, 0, ?2) ON CONFLICT(name) DO UPDATE "
                     "SET last_seen_at = max(coalesce(last_seen_at, 0), excluded.last_seen_at)",
    /* Every node keyfleetd knows of: seen or revoked (nodes), or owning a volume. */
    [ST_NODE_LIST] = "SELECT name, revoked, coalesce(last_seen_at, 0) FROM nodes UNION ALL "
                     "SELECT DISTINCT node, 0, 0 FROM volumes WHERE node NOT IN (SELECT name FROM nodes) ORDER BY 1",
    [ST_VOLUME_SET_KCV] = "UPDATE volumes SET key_kcv = ? WHERE id = ? AND key_kcv IS NULL",
    [ST_VOLUME_COUNT] = "SELECT count(*) FROM volumes",
    [ST_VOLUME_RELEASED] = "UPDATE volumes SET last_node = ?, last_released_at = ? WHERE id = ?",
    [ST_ATTEST_GET] = "SELECT accepted, accepted_at, accepted_by, seen, seen_at, reset_count IS NOT NULL, "
                      "coalesce(reset_count, 0), coalesce(restart_count, 0), seen_reset IS NOT NULL, "
                      "coalesce(seen_reset, 0), coalesce(seen_restart, 0) FROM node_attest WHERE node = ?",
    [ST_ATTEST_ACCEPT] = "INSERT INTO node_attest (node, accepted, accepted_at, accepted_by) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(node) DO UPDATE SET accepted = excluded.accepted, "
                         "accepted_at = excluded.accepted_at, accepted_by = excluded.accepted_by, "
                         "seen_reset = CASE WHEN seen = excluded.accepted THEN NULL ELSE seen_reset END, "
                         "seen_restart = CASE WHEN seen = excluded.accepted THEN NULL ELSE seen_restart END, "
                         "seen = CASE WHEN seen = excluded.accepted THEN '' ELSE seen END",
    /* Trust on first use: only when the node has no accepted values. */
    /* Trust on first use only at the node's first enrollment: no volume of its own but this one
     * (?4); a node that already has volumes gets its values accepted by an operator. */
    [ST_ATTEST_TOFU] = "INSERT INTO node_attest (node, accepted, accepted_at, accepted_by) SELECT ?1, ?2, ?3, 'tofu' "
                       "WHERE NOT EXISTS (SELECT 1 FROM volumes WHERE node = ?1 AND id != ?4) "
                       "ON CONFLICT(node) DO UPDATE SET accepted = excluded.accepted, "
                       "accepted_at = excluded.accepted_at, accepted_by = 'tofu' WHERE node_attest.accepted = ''",
    [ST_NODE_HAS_VOLUMES] = "SELECT count(*) FROM volumes WHERE node = ?",
    [ST_ATTEST_SEEN] = "INSERT INTO node_attest (node, seen, seen_at, seen_reset, seen_restart) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT(node) DO UPDATE SET seen = excluded.seen, seen_at = excluded.seen_at, "
                       "seen_reset = excluded.seen_reset, seen_restart = excluded.seen_restart",
    /* The highest counters a node's quotes showed: only ever raised here. */
    [ST_ATTEST_CLOCK_MAX] = "INSERT INTO node_attest (node, reset_count, restart_count) VALUES (?1, ?2, ?3) "
                            "ON CONFLICT(node) DO UPDATE SET reset_count = ?2, restart_count = ?3 "
                            "WHERE node_attest.reset_count IS NULL OR ?2 > node_attest.reset_count OR "
                            "(?2 = node_attest.reset_count AND ?3 > node_attest.restart_count)",
    /* An operator accepted a quote whose counters went backwards: those become the record. */
    [ST_ATTEST_CLOCK_SET] = "UPDATE node_attest SET reset_count = ?2, restart_count = ?3 WHERE node = ?1",
    [ST_NODE_REVOKE] = "INSERT INTO nodes (name, revoked, revoked_at, reason) VALUES (?, 1, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET revoked = 1, revoked_at = excluded.revoked_at, "
                       "reason = excluded.reason",
    [ST_NODE_GET] = "SELECT revoked FROM nodes WHERE name = ?",
    [ST_PENDING_INSERT] = "INSERT INTO pending (request_id, node, volume_id, source, created_at, expires_at, "
                          "approvals_needed, rule, require_totp, change, change_summary) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    [ST_PENDING_GET] = "SELECT request_id, node, volume_id, source, created_at, expires_at, approvals_needed, "
                       "approvals_have, state, rule, require_totp, change_summary, change IS NOT NULL "
                       "FROM pending WHERE request_id = ?",
    [ST_PENDING_CHANGE] = "SELECT change FROM pending WHERE request_id = ?",
    [ST_PENDING_SET_STATE] = "UPDATE pending SET state = ? WHERE request_id = ?",
    [ST_PENDING_ADD_APPROVAL] = "UPDATE pending SET approvals_have = approvals_have + 1, "
                                "state = CASE WHEN approvals_have + 1 >= approvals_needed THEN 1 ELSE state END "
                                "WHERE request_id = ?",
    [ST_PENDING_LIST] = "SELECT request_id, node, volume_id, source, created_at, expires_at, approvals_needed, "
                        "approvals_have, state, rule, require_totp, change_summary, change IS NOT NULL "
                        "FROM pending WHERE state = 0 ORDER BY created_at, request_id",
    [ST_PENDING_EXPIRED] = "SELECT request_id FROM pending WHERE state = 0 AND expires_at <= ? "
                           "ORDER BY expires_at LIMIT ?",
    [ST_APPROVAL_INSERT] = "INSERT INTO approvals (request_id, operator, at) VALUES (?, ?, ?)",
    [ST_APPROVAL_GET] = "SELECT 1 FROM approvals WHERE request_id = ? AND operator = ?",
    [ST_APPROVALS_OF] = "SELECT operator FROM approvals WHERE request_id = ? ORDER BY at, operator",
    [ST_TOTP_INSERT] = "INSERT INTO totp_used (operator, step) VALUES (?, ?)",
    [ST_TOTP_GET] = "SELECT 1 FROM totp_used WHERE operator = ? AND step = ?",
    [ST_POLICY_INSERT] = "INSERT INTO policy (version, yaml, created_at) VALUES (?, ?, ?)",
    [ST_POLICY_LATEST] = "SELECT version, yaml FROM policy ORDER BY version DESC LIMIT 1",
    [ST_AUDIT_INSERT] = "INSERT INTO audit (seq, time_s, time_ns, action, actor_kind, actor_name, actor_auth, node, "
                        "volume_id, request_id, decision, reason, source, prev_hash, hash, root) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    [ST_AUDIT_HEAD] = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
    [ST_AUDIT_ALL] = "SELECT " KFD_AUDIT_COLS " ORDER BY a.seq",
    [ST_AUDIT_AT] = "SELECT root, hash FROM audit WHERE seq = ?",
    [ST_AUDIT_SET_ROOT] = "UPDATE audit SET root = ? WHERE seq = ?",
    [ST_CHECKPOINT_INSERT] = "INSERT INTO audit_checkpoints (seq, size, signature, cert) VALUES (?, ?, ?, ?)",
    /* The newest membership record naming a coordinator (rpc_cluster.c: "member NAME[ ...]"), and the
     * time of its newest removal. */
    [ST_MEMBER_LAST] = "SELECT action, (SELECT time_s FROM audit WHERE action = 'cluster_remove' AND (reason = ?1 OR "
                       "substr(reason, 1, length(?1) + 1) = ?1 || ' ') ORDER BY seq DESC LIMIT 1) FROM audit WHERE action IN ('cluster_add', 'cluster_remove') AND "
                       "(reason = ?1 OR substr(reason, 1, length(?1) + 1) = ?1 || ' ') ORDER BY seq DESC LIMIT 1",
    [ST_CHECKPOINT_LATEST] = "SELECT " KFD_AUDIT_COLS " WHERE a.seq = (SELECT max(seq) FROM audit_checkpoints)",
    [ST_CHECKPOINT_FOR_SIZE] = "SELECT " KFD_AUDIT_COLS " WHERE a.seq = (SELECT max(seq) FROM audit_checkpoints "
                               "WHERE size = ?)",
    [ST_AUDIT_OF_REQUEST] = "SELECT " KFD_AUDIT_COLS " WHERE a.request_id = ? ORDER BY a.seq",
    [ST_AUDIT_ONE] = "SELECT " KFD_AUDIT_COLS " WHERE a.seq = ?",
    [ST_AUDIT_AFTER] = "SELECT " KFD_AUDIT_COLS " WHERE a.seq > ? ORDER BY a.seq LIMIT ?",
};

bool kfd_store_failed(const kfd_store *s) { return s == NULL || s->failed; }
const char *kfd_store_failure(const kfd_store *s) { return s == NULL ? "no store" : s->failure; }

int kfd_store_sql_error(kfd_store *s, int rc, const char *what, kf_err *err)
{
    int primary = rc & 0xff;
    if (primary == SQLITE_CONSTRAINT)
        return kf_err_set(err, -EEXIST, "%s: already exists", what);
    return kfd_store_fail(s, what, s->db != NULL ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc), rc, err);
}

int kfd_store_fail(kfd_store *s, const char *what, const char *msg, int code, kf_err *err)
{
    if (!s->failed) {
        s->failed = true;
        if (code != 0)
            snprintf(s->failure, sizeof(s->failure), "%s: %s (sqlite %d)", what, msg, code);
        else
            snprintf(s->failure, sizeof(s->failure), "%s: %s", what, msg);
        kf_log_error("store_failed", "what=%s error=%s code=%d action=\"failing closed until restart\"",
                     kf_log_q(what), kf_log_q(msg), code);
    }
    return kf_err_set(err, -EIO, "state store unavailable: %s", s->failure);
}

sqlite3_stmt *kfd_store_stmt(kfd_store *s, int which)
{
    sqlite3_stmt *st = s->st[which];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

static int exec(kfd_store *s, const char *q, const char *what, kf_err *err)
{
    int rc = sqlite3_exec(s->db, q, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : kfd_store_sql_error(s, rc, what, err);
}

uint32_t kfd_store_state_version(void) { return (uint32_t)(sizeof(migrations) / sizeof(migrations[0])); }

static int migrate(kfd_store *s, kf_err *err)
{
    sqlite3_stmt *st;
    int version = 0;
    int rc = sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return kfd_store_sql_error(s, rc, "reading schema version", err);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW)
        version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW)
        return kfd_store_sql_error(s, rc, "reading schema version", err);
    const int latest = (int)(sizeof(migrations) / sizeof(migrations[0]));
    if (version > latest) {
        s->failed = true;
        snprintf(s->failure, sizeof(s->failure), "database schema %d is newer than this keyfleetd (%d)", version,
                 latest);
        return kf_err_set(err, -EIO, "%s", s->failure);
    }
    for (int v = version; v < latest; v++) {
        char bump[64];
        snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", v + 1);
        int r = exec(s, "BEGIN IMMEDIATE", "migration", err);
        if (r == 0)
            r = exec(s, migrations[v], "migration", err);
        if (r == 0)
            r = exec(s, bump, "migration", err);
        if (r == 0)
            r = exec(s, "COMMIT", "migration", err);
        if (r != 0) {
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return r;
        }
        kf_log_info("store_migrated", "to_version=%d", v + 1);
    }
    return 0;
}

static int load_applied(kfd_store *s, kf_err *err)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, "SELECT applied_index FROM raft_state WHERE id = 1", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return kfd_store_sql_error(s, rc, "reading the applied index", err);
    rc = sqlite3_step(st);
    s->applied_index = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : kfd_store_sql_error(s, rc == SQLITE_DONE ? SQLITE_CORRUPT : rc, "reading the applied index", err);
}

int kfd_store_open_db(kfd_store *s, kf_err *err)
{
    int rc = sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK)
        return kfd_store_sql_error(s, rc, "opening the database", err);
    sqlite3_extended_result_codes(s->db, 1);
    int r = exec(s, "PRAGMA journal_mode = WAL", "setting WAL mode", err);
    /* NORMAL, not FULL: the Raft log is fsynced before a command is applied, and a transaction
     * lost to a power cut is applied again from it (the applied index rolls back with it). */
    if (r == 0)
        r = exec(s, "PRAGMA synchronous = NORMAL", "setting synchronous", err);
    if (r == 0)
        r = exec(s, "PRAGMA foreign_keys = ON", "setting foreign keys", err);
    /* A checkpoint copies each page once however often the WAL rewrote it; the hot pages (index
     * leaves, the volume rows) are rewritten by every batch, so fewer, larger checkpoints write
     * less. 16 MiB of WAL at most between them. */
    if (r == 0)
        r = exec(s, "PRAGMA wal_autocheckpoint = 4000", "setting the checkpoint interval", err);
    if (r == 0)
        r = migrate(s, err);
    for (int i = 0; r == 0 && i < ST_COUNT; i++) {
        rc = sqlite3_prepare_v3(s->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
        if (rc != SQLITE_OK)
            r = kfd_store_sql_error(s, rc, "preparing statements", err);
    }
    if (r == 0)
        r = kfd_store_load_audit(s, err);
    if (r == 0)
        r = load_applied(s, err);
    return r;
}

void kfd_store_close_db(kfd_store *s)
{
    for (int i = 0; i < ST_COUNT; i++) {
        sqlite3_finalize(s->st[i]);
        s->st[i] = NULL;
    }
    sqlite3_close(s->db);
    s->db = NULL;
}

int kfd_store_open(const char *path, kfd_store **ret, kf_err *err)
{
    kfd_store *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    *ret = s;
    if (snprintf(s->path, sizeof(s->path), "%s", path) >= (int)sizeof(s->path)) {
        s->failed = true;
        snprintf(s->failure, sizeof(s->failure), "database path too long");
        return kf_err_set(err, -ENAMETOOLONG, "%s", s->failure);
    }
    return kfd_store_open_db(s, err);
}

void kfd_store_close(kfd_store *s)
{
    if (s == NULL)
        return;
    kf_err err = {0};
    if (kfd_store_flush(s, &err) != 0)
        kf_log_error("store_flush_failed", "error=%s", kf_log_q(err.msg));
    kfd_store_close_db(s);
    free(s);
}

int kfd_store_step_done(kfd_store *s, sqlite3_stmt *st, const char *what, kf_err *err)
{
    int rc = sqlite3_step(st);
    return rc == SQLITE_DONE ? 0 : kfd_store_sql_error(s, rc, what, err);
}

static char *labels_json(Keyfleet__V1__Label **labels, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; o != NULL && i < n; i++)
        json_object_set_new(o, labels[i]->key, json_string(labels[i]->value));
    char *s = o != NULL ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    return s;
}

static int apply_enroll(kfd_store *s, const Keyfleet__V1__CmdEnrollVolume *c, kf_err *err)
{
    if (c->volume == NULL || c->audit == NULL || c->audit->time == NULL)
        return kf_err_set(err, -EINVAL, "enroll command incomplete");
    char *labels = labels_json(c->labels, c->n_labels);
    if (labels == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    sqlite3_stmt *st = kfd_store_stmt(s, ST_VOLUME_INSERT);
    kfd_bind_text(st, 1, c->volume->id);
    sqlite3_bind_int(st, 2, c->volume->kind);
    kfd_bind_text(st, 3, c->volume->name);
    kfd_bind_text(st, 4, labels);
    kfd_bind_text(st, 5, c->node);
    kfd_bind_text(st, 6, c->wrapped_key);
    kfd_bind_text(st, 7, c->audit->request_id);
    sqlite3_bind_int64(st, 8, c->audit->time->seconds);
    kfd_bind_text(st, 9, c->key_kcv);
    int r = kfd_store_step_done(s, st, "recording the volume", err);
    free(labels);
    return r;
}

static int set_pending_state(kfd_store *s, const char *id, kfd_pending_state from, kfd_pending_state to, kf_err *err)
{
    kfd_pending p;
    int r = kfd_store_get_pending(s, id, &p);
    if (r == -ENOENT)
        return kf_err_set(err, -ENOENT, "no pending request %s", id);
    if (r != 0)
        return kf_err_set(err, r, "reading pending request");
    if (p.state != from)
        return kf_err_set(err, -ESTALE, "request %s is no longer waiting", id);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_SET_STATE);
    sqlite3_bind_int(st, 1, (int)to);
    kfd_bind_text(st, 2, id);
    return kfd_store_step_done(s, st, "updating the pending request", err);
}

int kfd_store_record_approval(kfd_store *s, const char *request_id, const char *op, int64_t totp_step, int64_t at,
                              kf_err *err)
{
    int r;
    if (totp_step != 0) {
        bool used = false;
        if ((r = kfd_store_totp_used(s, op, totp_step, &used)) != 0)
            return r;
        if (used)
            return kf_err_set(err, -EACCES, "TOTP code already used");
        sqlite3_stmt *st = kfd_store_stmt(s, ST_TOTP_INSERT);
        kfd_bind_text(st, 1, op);
        sqlite3_bind_int64(st, 2, totp_step);
        if ((r = kfd_store_step_done(s, st, "recording the TOTP step", err)) != 0)
            return r;
        if ((r = kfd_store_totp_reset(s, op, err)) != 0)
            return r;
    }
    sqlite3_stmt *st = kfd_store_stmt(s, ST_APPROVAL_INSERT);
    kfd_bind_text(st, 1, request_id);
    kfd_bind_text(st, 2, op);
    sqlite3_bind_int64(st, 3, at);
    if ((r = kfd_store_step_done(s, st, "recording the approval", err)) != 0)
        return r;
    st = kfd_store_stmt(s, ST_PENDING_ADD_APPROVAL);
    kfd_bind_text(st, 1, request_id);
    return kfd_store_step_done(s, st, "counting the approval", err);
}

static int apply_approve(kfd_store *s, const Keyfleet__V1__CmdApprove *c, uint64_t *seq, kf_err *err)
{
    kfd_pending p;
    int r = kfd_store_get_pending(s, c->request_id, &p);
    if (r != 0)
        return r == -ENOENT ? kf_err_set(err, -ENOENT, "no pending request %s", c->request_id) : r;
    if (p.state != KFD_PENDING_WAITING)
        return kf_err_set(err, -ESTALE, "request %s is no longer waiting", c->request_id);
    bool dup = false;
    if ((r = kfd_store_has_approved(s, c->request_id, c->operator_, &dup)) != 0)
        return r;
    if (dup)
        return kf_err_set(err, -EEXIST, "operator %s already approved %s", c->operator_, c->request_id);
    if (p.require_totp && c->totp_step == 0)
        return kf_err_set(err, -EACCES, "request %s needs a TOTP code with each approval", c->request_id);
    int64_t at = c->audit != NULL && c->audit->time != NULL ? c->audit->time->seconds : 0;
    if (at >= p.expires_at)
        return kf_err_set(err, -ESTALE, "request %s has expired", c->request_id);
    if ((r = kfd_store_record_approval(s, c->request_id, c->operator_, c->totp_step, at, err)) != 0)
        return r;
    if ((r = kfd_store_append_audit(s, c->audit, seq, err)) != 0)
        return r;
    /* The approval that completes an operator change applies it, in this same transaction. */
    return p.has_change ? kfd_store_apply_change(s, c->request_id, seq, err) : 0;
}

static int apply_put_policy(kfd_store *s, const Keyfleet__V1__CmdPutPolicy *c, kf_err *err)
{
    uint64_t current = 0;
    char *yaml = NULL;
    int r = kfd_store_get_policy(s, &yaml, &current);
    free(yaml);
    if (r != 0)
        return r;
    if (c->version != current + 1)
        return kf_err_set(err, -ESTALE, "policy version %llu is not the next after %llu",
                          (unsigned long long)c->version, (unsigned long long)current);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_POLICY_INSERT);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)c->version);
    kfd_bind_text(st, 2, c->yaml);
    sqlite3_bind_int64(st, 3, c->audit != NULL && c->audit->time != NULL ? c->audit->time->seconds : 0);
    return kfd_store_step_done(s, st, "storing the policy", err);
}

/* A node's measured-boot record: accepted (by an operator), TOFU, or seen (kf_tpm_pcrs text). */
static int attest_write(kfd_store *s, int which, const char *node, const char *pcrs, const char *volume_id,
                        const Keyfleet__V1__AttestClock *clock, const Keyfleet__V1__AuditEntry *audit, kf_err *err)
{
    kf_tpm_pcrs parsed;
    if (kf_tpm_pcrs_parse(pcrs, &parsed, NULL) != 0)
        return kf_err_set(err, -EINVAL, "attest command: malformed PCR values");
    sqlite3_stmt *st = kfd_store_stmt(s, which);
    kfd_bind_text(st, 1, node);
    kfd_bind_text(st, 2, pcrs);
    sqlite3_bind_int64(st, 3, audit != NULL && audit->time != NULL ? audit->time->seconds : 0);
    if (which == ST_ATTEST_ACCEPT)
        kfd_bind_text(st, 4, audit != NULL && audit->actor != NULL ? audit->actor->name : "");
    if (which == ST_ATTEST_TOFU)
        kfd_bind_text(st, 4, volume_id);
    if (which == ST_ATTEST_SEEN && clock != NULL) {
        sqlite3_bind_int64(st, 4, clock->reset_count);
        sqlite3_bind_int64(st, 5, clock->restart_count);
    } else if (which == ST_ATTEST_SEEN) {
        sqlite3_bind_null(st, 4);
        sqlite3_bind_null(st, 5);
    }
    return kfd_store_step_done(s, st, "recording the node's PCR values", err);
}

/* A verified quote's counters: raise the node's recorded highest (ST_ATTEST_CLOCK_MAX), or, for
 * an operator's acceptance of a rolled-back TPM, set them (ST_ATTEST_CLOCK_SET). */
static int attest_clock(kfd_store *s, int which, const char *node, const Keyfleet__V1__AttestClock *clock, kf_err *err)
{
    if (clock == NULL)
        return 0;
    sqlite3_stmt *st = kfd_store_stmt(s, which);
    kfd_bind_text(st, 1, node);
    sqlite3_bind_int64(st, 2, clock->reset_count);
    sqlite3_bind_int64(st, 3, clock->restart_count);
    return kfd_store_step_done(s, st, "recording the node's TPM counters", err);
}

/* An acceptance applies only to the accepted values it was made for (compare and swap): one held
 * for approval and approved after another acceptance must not roll those back. */
static int attest_accept(kfd_store *s, const Keyfleet__V1__CmdAttest *c, kf_err *err)
{
    if (c->cas) {
        kfd_attest_record rec;
        int r = kfd_store_get_attest(s, c->node, &rec);
        if (r != 0 && r != -ENOENT)
            return kf_err_set(err, -EIO, "reading node %s's PCR values", c->node);
        if (strcmp(r == 0 ? rec.accepted : "", c->prev_accepted) != 0)
            return kf_err_set(err, -ESTALE,
                              "node %s's accepted PCR values changed since this acceptance was requested; look "
                              "again (keyfleetctl node attest show)",
                              c->node);
    }
    int r = attest_write(s, ST_ATTEST_ACCEPT, c->node, c->pcrs, NULL, NULL, c->audit, err);
    return r != 0 ? r : attest_clock(s, ST_ATTEST_CLOCK_SET, c->node, c->clock, err);
}

int kfd_store_apply_one(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, uint64_t *seq, kf_err *err)
{
    int r = 0;
    switch (cmd->cmd_case) {
    case KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME:
        r = kfd_store_check_not_revoked(s, cmd->enroll_volume->node, err);
        if (r == 0)
            r = apply_enroll(s, cmd->enroll_volume, err);
        if (r == 0 && cmd->enroll_volume->attest_tofu[0] != '\0')
            r = attest_write(s, ST_ATTEST_TOFU, cmd->enroll_volume->node, cmd->enroll_volume->attest_tofu,
                             cmd->enroll_volume->volume->id, NULL, cmd->enroll_volume->audit, err);
        if (r == 0)
            r = attest_clock(s, ST_ATTEST_CLOCK_MAX, cmd->enroll_volume->node, cmd->enroll_volume->attest_clock, err);
        if (r == 0)
            r = kfd_store_append_audit(s, cmd->enroll_volume->audit, seq, err);
        return r;
    case KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE: {
        const Keyfleet__V1__CmdRecordRelease *c = cmd->record_release;
        if ((r = kfd_store_release_allowed(s, c, err)) != 0)
            return r;
        if (c->audit != NULL && c->audit->decision == KEYFLEET__V1__DECISION__DECISION_ALLOW) {
            sqlite3_stmt *st = kfd_store_stmt(s, ST_VOLUME_RELEASED);
            kfd_bind_text(st, 1, c->node);
            sqlite3_bind_int64(st, 2, c->audit->time != NULL ? c->audit->time->seconds : 0);
            kfd_bind_text(st, 3, c->volume_id);
            if ((r = kfd_store_step_done(s, st, "recording the release", err)) != 0)
                return r;
        }
        if ((r = attest_clock(s, ST_ATTEST_CLOCK_MAX, c->node, c->attest_clock, err)) != 0)
            return r;
        return kfd_store_append_audit(s, c->audit, seq, err);
    }
    case KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_PENDING: {
        const Keyfleet__V1__CmdCreatePending *c = cmd->create_pending;
        if (c->volume == NULL || c->created_at == NULL || c->expires_at == NULL)
            return kf_err_set(err, -EINVAL, "pending command incomplete");
        sqlite3_stmt *st = kfd_store_stmt(s, ST_PENDING_INSERT);
        kfd_bind_text(st, 1, c->request_id);
        kfd_bind_text(st, 2, c->node);
        kfd_bind_text(st, 3, c->volume->id);
        kfd_bind_text(st, 4, c->source_address);
        sqlite3_bind_int64(st, 5, c->created_at->seconds);
        sqlite3_bind_int64(st, 6, c->expires_at->seconds);
        sqlite3_bind_int(st, 7, (int)c->approvals_needed);
        kfd_bind_text(st, 8, c->rule);
        sqlite3_bind_int(st, 9, c->require_totp ? 1 : 0);
        if (c->change.len > 0)
            sqlite3_bind_blob(st, 10, c->change.data, (int)c->change.len, SQLITE_STATIC);
        kfd_bind_text(st, 11, c->change_summary);
        if ((r = kfd_store_step_done(s, st, "recording the pending request", err)) != 0)
            return r;
        if ((r = kfd_store_append_audit(s, c->audit, seq, err)) != 0)
            return r;
        return c->change.len > 0 ? kfd_store_propose_change(s, c, seq, err) : 0;
    }
    case KEYFLEET__V1__STATE_COMMAND__CMD_APPROVE:
        return apply_approve(s, cmd->approve, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_DENY:
        if ((r = set_pending_state(s, cmd->deny->request_id, KFD_PENDING_WAITING, KFD_PENDING_DENIED, err)) != 0)
            return r;
        return kfd_store_append_audit(s, cmd->deny->audit, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_EXPIRE_PENDING: {
        const Keyfleet__V1__CmdExpirePending *c = cmd->expire_pending;
        if (c->n_request_ids != c->n_audits)
            return kf_err_set(err, -EINVAL, "expire command has %zu ids and %zu audits", c->n_request_ids,
                              c->n_audits);
        for (size_t i = 0; i < c->n_request_ids; i++) {
            r = set_pending_state(s, c->request_ids[i], KFD_PENDING_WAITING, KFD_PENDING_EXPIRED, err);
            if (r == -ESTALE)
                continue; /* approved or denied meanwhile */
            if (r == 0)
                r = kfd_store_append_audit(s, c->audits[i], seq, err);
            if (r != 0)
                return r;
        }
        return 0;
    }
    case KEYFLEET__V1__STATE_COMMAND__CMD_PUT_POLICY:
        if ((r = apply_put_policy(s, cmd->put_policy, err)) != 0)
            return r;
        s->policy_changed = true;
        return kfd_store_append_audit(s, cmd->put_policy->audit, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_NODE: {
        const Keyfleet__V1__CmdRevokeNode *c = cmd->revoke_node;
        sqlite3_stmt *st = kfd_store_stmt(s, ST_NODE_REVOKE);
        kfd_bind_text(st, 1, c->node);
        sqlite3_bind_int64(st, 2, c->audit != NULL && c->audit->time != NULL ? c->audit->time->seconds : 0);
        kfd_bind_text(st, 3, c->audit != NULL ? c->audit->reason : "");
        if ((r = kfd_store_step_done(s, st, "revoking the node", err)) != 0)
            return r;
        return kfd_store_append_audit(s, c->audit, seq, err);
    }
    case KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST: {
        const Keyfleet__V1__CmdAttest *c = cmd->attest;
        bool accept = strcmp(c->kind, "accept") == 0;
        if (!accept && strcmp(c->kind, "seen") != 0)
            return kf_err_set(err, -EINVAL, "attest command of unknown kind '%.32s'", c->kind);
        r = accept ? attest_accept(s, c, err) : attest_write(s, ST_ATTEST_SEEN, c->node, c->pcrs, NULL, c->clock, c->audit, err);
        if (r == 0 && !accept)
            r = attest_clock(s, ST_ATTEST_CLOCK_MAX, c->node, c->clock, err);
        if (r != 0)
            return r;
        return kfd_store_append_audit(s, c->audit, seq, err);
    }
    case KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT:
        return kfd_store_append_audit(s, cmd->append_audit->audit, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_KMS_ROTATE: {
        sqlite3_stmt *st = kfd_store_stmt(s, ST_KMS_ROTATED);
        kfd_bind_text(st, 1, cmd->kms_rotate->backend);
        sqlite3_bind_int64(st, 2, cmd->kms_rotate->new_version);
        r = kfd_store_step_done(s, st, "recording the KMS rotation", err);
        return r != 0 ? r : kfd_store_append_audit(s, cmd->kms_rotate->audit, seq, err);
    }
    case KEYFLEET__V1__STATE_COMMAND__CMD_TOTP_FAILURE:
        return kfd_store_apply_totp_failure(s, cmd->totp_failure, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_CERT:
        return kfd_store_apply_revoke_cert(s, cmd->revoke_cert, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_CHECKPOINT:
        return kfd_store_apply_checkpoint(s, cmd->checkpoint, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_ROTATE_KEY:
        return kfd_store_apply_rotate(s, cmd->rotate_key, seq, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_AUDIT_HEAD_CHECK:
        return kfd_store_apply_head_check(s, cmd->audit_head_check, err);
    case KEYFLEET__V1__STATE_COMMAND__CMD_NODE_SEEN: {
        const Keyfleet__V1__CmdNodeSeen *c = cmd->node_seen;
        if (c->node[0] == '\0' || c->at <= 0)
            return kf_err_set(err, -EINVAL, "node_seen command without a node or time");
        sqlite3_stmt *st = kfd_store_stmt(s, ST_NODE_SEEN);
        kfd_bind_text(st, 1, c->node);
        sqlite3_bind_int64(st, 2, c->at);
        return kfd_store_step_done(s, st, "recording a node's heartbeat", err);
    }
    case KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_ROLE:
    case KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_SECRET_ID:
    case KEYFLEET__V1__STATE_COMMAND__CMD_LOGIN:
    case KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_ROLE:
    case KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_ROLE_CREDENTIAL:
        return kfd_store_apply_approle(s, cmd, seq, err);
    default:
        return kf_err_set(err, -ENOSYS, "state command %d is not supported by this version", (int)cmd->cmd_case);
    }
}

int kfd_store_apply_batch(kfd_store *s, const Keyfleet__V1__StateCommand *const *cmds, size_t n, uint64_t raft_index,
                          int *statuses, kfd_apply_result *results, kf_err *errs)
{
    kf_err tx_err = {0};
    for (size_t i = 0; i < n; i++) {
        statuses[i] = -EIO;
        results[i].audit_seq = 0;
        kf_err_clear(&errs[i]);
    }
    if (s->failed) {
        for (size_t i = 0; i < n; i++)
            kf_err_set(&errs[i], -EIO, "state store unavailable: %s", s->failure);
        return -EIO;
    }
    int r = s->tx_open ? 0 : kfd_store_step_done(s, kfd_store_stmt(s, ST_BEGIN), "beginning a transaction", &tx_err);
    s->tx_head_seq = s->head_seq;
    memcpy(s->tx_head_hash, s->head_hash, KFD_HASH_LEN);
    s->tx_tree = s->tree;
    s->tx_cp_seq = s->cp_seq;
    s->tx_cp_size = s->cp_size;
    for (size_t i = 0; r == 0 && i < n; i++) {
        uint64_t head = s->tx_head_seq, cp_seq = s->tx_cp_seq, cp_size = s->tx_cp_size;
        uint8_t hash[KFD_HASH_LEN];
        memcpy(hash, s->tx_head_hash, KFD_HASH_LEN);
        /* The tree before this command, in case it is undone. */
        kf_merkle_frontier tree_before = s->tx_tree;
        if ((r = kfd_store_step_done(s, kfd_store_stmt(s, ST_SAVEPOINT), "savepoint", &tx_err)) != 0)
            break;
        uint64_t seq = 0;
        int cr = cmds[i] != NULL ? kfd_store_apply_one(s, cmds[i], &seq, &errs[i])
                                 : kf_err_set(&errs[i], -EINVAL, "replicated entry could not be decoded");
        if (cr != 0 && s->failed) {
            r = cr;
            tx_err = errs[i];
            break;
        }
        if (cr != 0) {
            /* This command only: undo it and its audit records. */
            r = kfd_store_step_done(s, kfd_store_stmt(s, ST_ROLLBACK_TO), "rolling back a command", &tx_err);
            s->tx_head_seq = head;
            memcpy(s->tx_head_hash, hash, KFD_HASH_LEN);
            s->tx_tree = tree_before;
            s->tx_cp_seq = cp_seq;
            s->tx_cp_size = cp_size;
        }
        if (r == 0)
            r = kfd_store_step_done(s, kfd_store_stmt(s, ST_RELEASE), "releasing a savepoint", &tx_err);
        statuses[i] = cr;
        results[i].audit_seq = cr == 0 ? seq : 0;
    }
    if (r == 0 && raft_index != 0) {
        sqlite3_stmt *st = kfd_store_stmt(s, ST_APPLIED_SET);
        sqlite3_bind_int64(st, 1, (sqlite3_int64)raft_index);
        r = kfd_store_step_done(s, st, "recording the applied index", &tx_err);
    }
    if (r == 0 && s->deferred) {
        s->tx_commands = s->tx_open ? s->tx_commands + n : n;
        s->tx_open = true;
    }
    else if (r == 0)
        r = kfd_store_step_done(s, kfd_store_stmt(s, ST_COMMIT), "committing", &tx_err);
    if (r != 0) {
        /* With a deferred commit this also undoes earlier applies of the open transaction; the
         * store is failed then, and they are applied again from the Raft log after a restart. */
        s->tx_open = false;
        sqlite3_step(kfd_store_stmt(s, ST_ROLLBACK));
        sqlite3_reset(s->st[ST_ROLLBACK]);
        for (size_t i = 0; i < n; i++) {
            statuses[i] = -EIO;
            results[i].audit_seq = 0;
            errs[i] = tx_err;
            if (errs[i].code == 0)
                kf_err_set(&errs[i], -EIO, "state store unavailable");
        }
        return -EIO;
    }
    s->head_seq = s->tx_head_seq;
    memcpy(s->head_hash, s->tx_head_hash, KFD_HASH_LEN);
    s->tree = s->tx_tree;
    s->cp_seq = s->tx_cp_seq;
    s->cp_size = s->tx_cp_size;
    if (raft_index != 0)
        s->applied_index = raft_index;
    return 0;
}

int kfd_store_apply(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, kfd_apply_result *ret, kf_err *err)
{
    const Keyfleet__V1__StateCommand *cmds[1] = {cmd};
    int status;
    kfd_apply_result res = {0};
    kf_err e = {0};
    kfd_store_apply_batch(s, cmds, 1, 0, &status, &res, &e);
    if (ret != NULL)
        *ret = res;
    if (status != 0 && err != NULL)
        *err = e;
    return status;
}

bool kfd_store_take_policy_changed(kfd_store *s)
{
    bool changed = s->policy_changed;
    s->policy_changed = false;
    return changed;
}
