/* The store's ground: the schema and its migrations, the prepared statements, open and close,
 * faults and the failed state, and the helpers that step statements (store_internal.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kf_log.h"
#include "store/store_audit.h"
#include "store/store_internal.h"
#include "store/store_dispute.h"
#include "store/store_schema.h"
#include "store/store_snapshot.h"

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
    /* 11: volume lifecycle (docs/operations.md): a retired volume's key is refused from then on. */
    ("ALTER TABLE volumes ADD COLUMN retired_at INTEGER;"
     "ALTER TABLE volumes ADD COLUMN retired_reason TEXT;"),
    /* 12: recovery keys (docs/recovery.md): each volume's escrowed key (LUKS2: wrapped under
     * VOLUME_ID/recovery; ZFS: '', the dataset's own key), whether an operator was shown it, and
     * the operator who proposed a held request (a reveal is answered to that operator only). */
    "CREATE TABLE recovery_keys (volume_id TEXT PRIMARY KEY, node TEXT NOT NULL, wrapped TEXT NOT NULL,"
    "  kcv TEXT NOT NULL, request_id TEXT NOT NULL, created_at INTEGER NOT NULL, revealed_at INTEGER,"
    "  revealed_by TEXT);"
    "ALTER TABLE pending ADD COLUMN proposer TEXT NOT NULL DEFAULT '';",
    /* 13: remote crypto-erase (docs/operations.md): volumes an approved wipe asked their node to
     * erase, and the node's confirmation. */
    "CREATE TABLE volume_erase (volume_id TEXT PRIMARY KEY, node TEXT NOT NULL, requested_at INTEGER NOT NULL,"
    "  erased_at INTEGER, detail TEXT, erase_all INTEGER NOT NULL DEFAULT 0);",
    /* 14: the TPM clock with the counters (review rev17, A1; docs/attestation.md, "TPM clock"):
     * the recorded quote's TPMS_CLOCK_INFO clock and safe flag and when it was recorded, and a
     * node held (every key request refused) until an operator acts, with the reason and the TPM
     * state of the quote that caused it. */
    "ALTER TABLE node_attest ADD COLUMN clock INTEGER;"
    "ALTER TABLE node_attest ADD COLUMN clock_safe INTEGER;"
    "ALTER TABLE node_attest ADD COLUMN clock_at INTEGER;"
    "ALTER TABLE node_attest ADD COLUMN held TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE node_attest ADD COLUMN held_kind TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE node_attest ADD COLUMN held_at INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE node_attest ADD COLUMN held_reset INTEGER;"
    "ALTER TABLE node_attest ADD COLUMN held_restart INTEGER;"
    "ALTER TABLE node_attest ADD COLUMN held_clock INTEGER;"
    "ALTER TABLE node_attest ADD COLUMN held_safe INTEGER;",
    /* 15: a revealed recovery key's replacement (docs/recovery.md, "Replacing a revealed key"):
     * the new key stays apart, the revealed one escrowed and marked, until the node confirms the
     * new keyslot exists and the revealed one is killed. */
    "ALTER TABLE recovery_keys ADD COLUMN next_wrapped TEXT;"
    "ALTER TABLE recovery_keys ADD COLUMN next_kcv TEXT;"
    "ALTER TABLE recovery_keys ADD COLUMN next_request_id TEXT;"
    "ALTER TABLE recovery_keys ADD COLUMN next_at INTEGER;",
    /* 16: the staged replacement was shown by a reveal (review rev26c R2): its promotion leaves the
     * volume marked revealed, so it is replaced again. */
    "ALTER TABLE recovery_keys ADD COLUMN next_revealed_at INTEGER;",
    /* 17: the membership records, which every checkpoint's signer check reads (ST_MEMBER_LAST):
     * without it that read scanned the whole audit log twice per checkpoint (issue #29's profile;
     * a log of a million records would have cost seconds every 200 ms). Partial, so a release's
     * record costs it nothing. And a node's volumes, which an attested enroll counts (trust on
     * first use) and `node list` joins: each was a scan of every volume. */
    "CREATE INDEX audit_membership ON audit(seq) WHERE action IN ('cluster_add', 'cluster_remove');"
    "CREATE INDEX volumes_node ON volumes(node);",
    /* 18: ZFS, the check value of the dataset key a reveal showed (review rev26c L2): the
     * escrow asks whether that key is still the dataset's, not whether a rotation's second came
     * after the reveal's. */
    "ALTER TABLE recovery_keys ADD COLUMN revealed_kcv TEXT;"
    /* (18) the mode the volume was enrolled in (review rev26b F1): 1 under tpm_and_network;
     * NULL for a volume enrolled before (unknown: the rule decides, as before). */
    "ALTER TABLE volumes ADD COLUMN tpm_and_network INTEGER;",
    /* 19: the seen quote's TPM clock beside its counters (review rev16e E4): an operator who
     * accepts a quote whose counters went backwards sets the record's clock from it too, so the
     * clock rules hold from the next quote on. */
    "ALTER TABLE node_attest ADD COLUMN seen_clock INTEGER;"
    "ALTER TABLE node_attest ADD COLUMN seen_safe INTEGER;",
    /* 20: the certificate serial an approval (or a proposal, its first) was given with (review
     * rev45c R45c-3): revoking that certificate withdraws what it approved and not yet used,
     * whatever kind and name the revocation names. NULL: given before, or by no certificate. */
    "ALTER TABLE approvals ADD COLUMN serial TEXT;",
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
    /* A certificate revoked: the approvals given with it to requests still waiting or approved
     * and not yet used stop counting (reviews rev45b R45b-2, rev45c R45c-3), then are removed. */
    [ST_APPROVALS_WITHDRAW_COUNT] =
        "UPDATE pending SET approvals_have = approvals_have - (SELECT count(*) FROM approvals a WHERE "
        "a.request_id = pending.request_id AND a.serial = ?1), state = CASE WHEN approvals_have - (SELECT count(*) "
        "FROM approvals a WHERE a.request_id = pending.request_id AND a.serial = ?1) >= approvals_needed THEN state "
        "ELSE 0 END WHERE state IN (0, 1) AND request_id IN (SELECT request_id FROM approvals WHERE serial = ?1)",
    [ST_APPROVALS_WITHDRAW] = "DELETE FROM approvals WHERE serial = ?1 AND request_id IN (SELECT request_id FROM "
                              "pending WHERE state IN (0, 1))",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_DATA_VERSION] = "PRAGMA data_version",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SAVEPOINT] = "SAVEPOINT cmd",
    [ST_ROLLBACK_TO] = "ROLLBACK TO cmd",
    [ST_RELEASE] = "RELEASE cmd",
    [ST_VOLUME_INSERT] = "INSERT INTO volumes (id, kind, name, labels, node, wrapped_key, enroll_request_id, "
                         "created_at, key_kcv, key_created_at, tpm_and_network) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                         "nullif(?9, ''), ?8, ?10)",
    [ST_VOLUME_GET] = "SELECT id, kind, name, node, labels, wrapped_key, enroll_request_id, created_at, "
                      "coalesce(last_released_at, 0), next_wrapped_key, coalesce(key_kcv, ''), "
                      "coalesce(next_kcv, ''), coalesce(key_created_at, created_at), coalesce(retired_at, 0), "
                      "coalesce(tpm_and_network, 0) FROM volumes WHERE id = ?",
    [ST_VOLUME_ROTATE_BEGIN] = "UPDATE volumes SET next_wrapped_key = ?, next_kcv = ? WHERE id = ?",
    [ST_VOLUME_ROTATE_COMMIT] = "UPDATE volumes SET wrapped_key = next_wrapped_key, key_kcv = next_kcv, "
                                "next_wrapped_key = NULL, next_kcv = NULL, key_created_at = ? "
                                "WHERE id = ? AND next_wrapped_key IS NOT NULL",
    [ST_VOLUME_LIST] = "SELECT id, kind, name, volumes.node, created_at, coalesce(key_created_at, created_at), "
                       "next_wrapped_key IS NOT NULL, coalesce(last_released_at, 0), labels, coalesce(retired_at, 0), "
                       "coalesce(retired_reason, ''), coalesce(last_node, ''), coalesce(e.requested_at, 0), "
                       "coalesce(e.erased_at, 0), coalesce(e.detail, ''), coalesce(e.erase_all, 0) FROM volumes "
                       "LEFT JOIN volume_erase e ON e.volume_id = volumes.id ORDER BY id",
    [ST_ERASE_INSERT] = "INSERT INTO volume_erase (volume_id, node, requested_at, erase_all) VALUES (?, ?, ?, ?)",
    /* A wiped volume's wrapped keys go (review rev26c R4): '' is no wrapped key (unwrap refuses it). */
    [ST_VOLUME_FORGET_KEYS] = "UPDATE volumes SET wrapped_key = '', next_wrapped_key = NULL, next_kcv = NULL WHERE id = ?",
    [ST_ERASE_GET] = "SELECT node, coalesce(erased_at, 0) FROM volume_erase WHERE volume_id = ?",
    [ST_ERASE_CONFIRM] = "UPDATE volume_erase SET erased_at = ?, detail = ? WHERE volume_id = ? AND node = ? "
                         "AND erased_at IS NULL",
    [ST_ERASE_PENDING_OF] = "SELECT volume_id, erase_all FROM volume_erase WHERE node = ? AND erased_at IS NULL "
                            "ORDER BY volume_id LIMIT 100",
    [ST_NODE_SEEN] = "INSERT INTO nodes (name, revoked, last_seen_at) VALUES (?1, 0, ?2) ON CONFLICT(name) DO UPDATE "
                     "SET last_seen_at = max(coalesce(last_seen_at, 0), excluded.last_seen_at)",
    /* Every node keyfleetd knows of: seen or revoked (nodes), or owning a volume. */
    [ST_NODE_LIST] = "SELECT name, revoked, coalesce(last_seen_at, 0), coalesce(revoked_at, 0), coalesce(reason, '') "
                     "FROM nodes UNION ALL SELECT DISTINCT node, 0, 0, 0, '' FROM volumes "
                     "WHERE node NOT IN (SELECT name FROM nodes) ORDER BY 1",
    [ST_NODE_UNREVOKE] = "UPDATE nodes SET revoked = 0, revoked_at = NULL, reason = NULL WHERE name = ?1 AND revoked = 1 "
                         "AND (?2 = 0 OR coalesce(revoked_at, 0) = ?2)",
    [ST_VOLUME_RETIRE] = "UPDATE volumes SET retired_at = ?, retired_reason = ? WHERE id = ? AND retired_at IS NULL",
    /* The newest record of the node's own requests (not an operator's about it). */
    [ST_NODE_LAST_AUDIT] = "SELECT max(time_s) FROM audit WHERE node = ?1 AND actor_name = ?1",
    [ST_VOLUME_SET_KCV] = "UPDATE volumes SET key_kcv = ? WHERE id = ? AND key_kcv IS NULL",
    [ST_VOLUME_COUNT] = "SELECT count(*) FROM volumes",
    [ST_VOLUME_RELEASED] = "UPDATE volumes SET last_node = ?, last_released_at = ? WHERE id = ?",
    [ST_ATTEST_GET] = "SELECT accepted, accepted_at, accepted_by, seen, seen_at, reset_count IS NOT NULL, "
                      "coalesce(reset_count, 0), coalesce(restart_count, 0), seen_reset IS NOT NULL, "
                      "coalesce(seen_reset, 0), coalesce(seen_restart, 0), clock IS NOT NULL, coalesce(clock, 0), "
                      "coalesce(clock_safe, 0), coalesce(clock_at, 0), held, held_kind, held_at, "
                      "held_reset IS NOT NULL, coalesce(held_reset, 0), coalesce(held_restart, 0), "
                      "held_clock IS NOT NULL, coalesce(held_clock, 0), coalesce(held_safe, 0), "
                      "seen_clock IS NOT NULL, coalesce(seen_clock, 0), coalesce(seen_safe, 0) "
                      "FROM node_attest WHERE node = ?",
    [ST_ATTEST_ACCEPT] = "INSERT INTO node_attest (node, accepted, accepted_at, accepted_by) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(node) DO UPDATE SET accepted = excluded.accepted, "
                         "accepted_at = excluded.accepted_at, accepted_by = excluded.accepted_by, "
                         "seen_reset = CASE WHEN seen = excluded.accepted THEN NULL ELSE seen_reset END, "
                         "seen_restart = CASE WHEN seen = excluded.accepted THEN NULL ELSE seen_restart END, "
                         "seen_clock = CASE WHEN seen = excluded.accepted THEN NULL ELSE seen_clock END, "
                         "seen_safe = CASE WHEN seen = excluded.accepted THEN NULL ELSE seen_safe END, "
                         "seen = CASE WHEN seen = excluded.accepted THEN '' ELSE seen END, "
                         /* accepting new values is what lifts a hold for drift (not a TPM one) */
                         "held_at = CASE WHEN held_kind = 'drift' THEN 0 ELSE held_at END, "
                         "held = CASE WHEN held_kind = 'drift' THEN '' ELSE held END, "
                         "held_kind = CASE WHEN held_kind = 'drift' THEN '' ELSE held_kind END",
    /* Trust on first use: only when the node has no accepted values. */
    /* Trust on first use only at the node's first enrollment: no volume of its own but this one
     * (?4); a node that already has volumes gets its values accepted by an operator. */
    [ST_ATTEST_TOFU] = "INSERT INTO node_attest (node, accepted, accepted_at, accepted_by) SELECT ?1, ?2, ?3, 'tofu' "
                       "WHERE NOT EXISTS (SELECT 1 FROM volumes WHERE node = ?1 AND id != ?4) "
                       "ON CONFLICT(node) DO UPDATE SET accepted = excluded.accepted, "
                       "accepted_at = excluded.accepted_at, accepted_by = 'tofu' WHERE node_attest.accepted = ''",
    [ST_NODE_HAS_VOLUMES] = "SELECT count(*) FROM volumes WHERE node = ?",
    [ST_ATTEST_SEEN] = "INSERT INTO node_attest (node, seen, seen_at, seen_reset, seen_restart, seen_clock, seen_safe) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT(node) DO UPDATE SET seen = excluded.seen, seen_at = excluded.seen_at, "
                       "seen_reset = excluded.seen_reset, seen_restart = excluded.seen_restart, "
                       "seen_clock = excluded.seen_clock, seen_safe = excluded.seen_safe",
    /* The highest (counters, clock) a node's quotes showed: only ever raised here. ?4 (clock) is
     * NULL in commands from before the clock was recorded. */
    [ST_ATTEST_CLOCK_MAX] = "INSERT INTO node_attest (node, reset_count, restart_count, clock, clock_safe, clock_at) "
                            "VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
                            "ON CONFLICT(node) DO UPDATE SET reset_count = ?2, restart_count = ?3, clock = ?4, "
                            "clock_safe = ?5, clock_at = ?6 "
                            "WHERE node_attest.reset_count IS NULL OR ?2 > node_attest.reset_count OR "
                            "(?2 = node_attest.reset_count AND ?3 > node_attest.restart_count) OR "
                            "(?2 = node_attest.reset_count AND ?3 = node_attest.restart_count AND "
                            "?4 IS NOT NULL AND (node_attest.clock IS NULL OR ?4 >= node_attest.clock))",
    /* An operator accepted a quote whose counters went backwards, or a held TPM state: those
     * become the record. */
    [ST_ATTEST_CLOCK_SET] = "UPDATE node_attest SET reset_count = ?2, restart_count = ?3, clock = ?4, "
                            "clock_safe = ?5, clock_at = ?6 WHERE node = ?1",
    /* A node is held once: a later reason never replaces the first. */
    [ST_ATTEST_HOLD] = "UPDATE node_attest SET held = ?2, held_kind = ?3, held_at = ?4, held_reset = ?5, "
                       "held_restart = ?6, held_clock = ?7, held_safe = ?8 WHERE node = ?1 AND held = ''",
    [ST_ATTEST_UNHOLD] = "UPDATE node_attest SET held = '', held_kind = '', held_at = 0, held_reset = NULL, "
                         "held_restart = NULL, held_clock = NULL, held_safe = NULL "
                         "WHERE node = ?1 AND held != '' AND held_at = ?2",
    [ST_NODE_REVOKE] = "INSERT INTO nodes (name, revoked, revoked_at, reason) VALUES (?, 1, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET revoked = 1, revoked_at = excluded.revoked_at, "
                       "reason = excluded.reason",
    [ST_NODE_GET] = "SELECT revoked, coalesce(revoked_at, 0) FROM nodes WHERE name = ?",
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
    [ST_APPROVAL_INSERT] = "INSERT INTO approvals (request_id, operator, at, serial) VALUES (?, ?, ?, ?)",
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
     * time of its newest removal. Both name audit_membership's condition, "action IN (...)", so
     * both read that partial index (SQLite uses one only where the query names its condition). */
    [ST_MEMBER_LAST] = "SELECT action, (SELECT time_s FROM audit WHERE action IN ('cluster_add', 'cluster_remove') AND "
                       "action = 'cluster_remove' AND (reason = ?1 OR "
                       "substr(reason, 1, length(?1) + 1) = ?1 || ' ') ORDER BY seq DESC LIMIT 1) FROM audit WHERE action IN ('cluster_add', 'cluster_remove') AND "
                       "(reason = ?1 OR substr(reason, 1, length(?1) + 1) = ?1 || ' ') ORDER BY seq DESC LIMIT 1",
    [ST_CHECKPOINT_LATEST] = "SELECT " KFD_AUDIT_COLS " WHERE a.seq = (SELECT max(seq) FROM audit_checkpoints)",
    [ST_CHECKPOINT_FOR_SIZE] = "SELECT " KFD_AUDIT_COLS " WHERE a.seq = (SELECT max(seq) FROM audit_checkpoints "
                               "WHERE size = ?)",
    [ST_AUDIT_OF_REQUEST] = "SELECT " KFD_AUDIT_COLS " WHERE a.request_id = ? ORDER BY a.seq",
    [ST_AUDIT_ONE] = "SELECT " KFD_AUDIT_COLS " WHERE a.seq = ?",
    [ST_RECOVERY_GET] = "SELECT node, wrapped, kcv, request_id, created_at, coalesce(revealed_at, 0), "
                        "coalesce(revealed_by, ''), coalesce(next_request_id, ''), coalesce(next_wrapped, ''), "
                        "coalesce(next_kcv, ''), coalesce(next_at, 0), coalesce(revealed_kcv, ''), "
                        "coalesce(next_revealed_at, 0) FROM recovery_keys WHERE volume_id = ?",
    [ST_RECOVERY_PUT] = "INSERT INTO recovery_keys (volume_id, node, wrapped, kcv, request_id, created_at) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(volume_id) DO UPDATE SET node = ?2, wrapped = ?3, "
                        "kcv = ?4, request_id = ?5, created_at = ?6, revealed_at = NULL, revealed_by = NULL, next_wrapped = NULL, "
                        "next_kcv = NULL, next_request_id = NULL, next_at = NULL, next_revealed_at = NULL, "
                        "revealed_kcv = NULL",
    [ST_RECOVERY_NEXT] = "UPDATE recovery_keys SET next_wrapped = ?, next_kcv = ?, next_request_id = ?, next_at = ?, "
                         "next_revealed_at = NULL WHERE volume_id = ?",
    [ST_RECOVERY_PROMOTE] = "UPDATE recovery_keys SET wrapped = next_wrapped, kcv = next_kcv, request_id = "
                            "next_request_id, created_at = next_at, revealed_at = next_revealed_at, revealed_by = CASE WHEN "
                            "next_revealed_at IS NULL THEN NULL ELSE revealed_by END, next_wrapped = NULL, "
                            "next_kcv = NULL, next_request_id = NULL, next_at = NULL, next_revealed_at = NULL, "
                            "revealed_kcv = NULL WHERE volume_id = ? AND next_request_id IS NOT NULL",
    [ST_RECOVERY_DELETE] = "DELETE FROM recovery_keys WHERE volume_id = ?",
    [ST_ERASE_CANCEL] = "DELETE FROM volume_erase WHERE volume_id = ? AND node = ? AND erased_at IS NULL",
    [ST_RECOVERY_REVEALED] = "UPDATE recovery_keys SET revealed_at = ?1, revealed_by = ?2, next_revealed_at = CASE "
                             "WHEN ?4 <> '' AND next_request_id = ?4 THEN ?1 ELSE next_revealed_at END, "
                             "revealed_kcv = nullif(?5, '') WHERE volume_id = ?3",
    [ST_RECOVERY_TO_REPLACE] = "SELECT r.volume_id FROM recovery_keys r JOIN volumes v ON v.id = r.volume_id "
                               "WHERE r.node = ? AND r.revealed_at IS NOT NULL AND v.retired_at IS NULL "
                               "ORDER BY r.volume_id LIMIT 100",
    [ST_PENDING_SET_PROPOSER] = "UPDATE pending SET proposer = ? WHERE request_id = ?",
    [ST_PENDING_PROPOSER] = "SELECT proposer FROM pending WHERE request_id = ?",
    [ST_AUDIT_AFTER] = "SELECT " KFD_AUDIT_COLS " WHERE a.seq > ? ORDER BY a.seq LIMIT ?",
    [ST_CHECKPOINT_ALL] = "SELECT " KFD_AUDIT_COLS " WHERE a.action = 'checkpoint' ORDER BY a.seq",
};

bool kfd_store_failed(const kfd_store *s) { return s == NULL || s->failed; }
const char *kfd_store_failure(const kfd_store *s) { return s == NULL ? "no store" : s->failure; }

int kfd_store_sql_error(kfd_store *s, int rc, const char *what, kf_err *err)
{
    int primary = rc & 0xff;
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
        return kf_err_set(err, -EEXIST, "%s: already exists", what);
    /* A NULL or a value a NOT NULL or CHECK constraint refuses: the command lacks it, alike on
     * every replica (a bind of ours allocates nothing: SQLITE_STATIC, UTF-8), so it is malformed,
     * not a duplicate recorded as a refusal (review rev45 R45-3). */
    if (primary == SQLITE_CONSTRAINT)
        return kf_err_set(err, -EINVAL, "%s: a required value is missing or out of range", what);
    return kfd_store_fail(s, what, s->db != NULL ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc), rc, err);
}

int kfd_store_fail(kfd_store *s, const char *what, const char *msg, int code, kf_err *err)
{
    if (!s->failed) {
        s->failed = true;
        /* Bounded parts (what and sqlite's message), so the whole always fits s->failure. */
        if (code != 0)
            snprintf(s->failure, sizeof(s->failure), "%.100s: %.120s (sqlite %d)", what, msg, code);
        else
            snprintf(s->failure, sizeof(s->failure), "%.100s: %.140s", what, msg);
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

int kfd_store_migration_step(sqlite3 *db, int v)
{
    char bump[64];
    snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", v + 1);
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, migrations[v], NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, bump, NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    return rc;
}

/* The database must be one keyfleet made (review rev17c, C4): every page and index sound, and
 * the schema what the migrations make at its version, before it is migrated or read. */
static int check_db(kfd_store *s, int version, bool integrity, kf_err *err)
{
    char problem[224];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = integrity ? kfd_store_integrity_check(s->db, problem, sizeof(problem)) : 0;
    if (r == 0)
        r = kfd_store_schema_check(s->db, version, problem, sizeof(problem));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (r == 0) {
        /* A start-time cost that grows with the database (docs/performance.md). */
        kf_log_info("store_checked", "schema_version=%d integrity=%s ms=%lld", version, integrity ? "checked" : "skipped",
                    (long long)(t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
        return 0;
    }
    return kfd_store_fail(s, "checking the database (rebuild this replica)", problem, 0, err);
}

static int migrate(kfd_store *s, kf_err *err)
{
    int version = 0;
    if (kfd_store_schema_version(s->db, &version) != 0)
        return kfd_store_fail(s, "reading schema version", sqlite3_errmsg(s->db), sqlite3_errcode(s->db), err);
    const int latest = (int)(sizeof(migrations) / sizeof(migrations[0]));
    if (version > latest) {
        s->failed = true;
        snprintf(s->failure, sizeof(s->failure), "database schema %d is newer than this keyfleetd (%d)", version,
                 latest);
        return kf_err_set(err, -EIO, "%s", s->failure);
    }
    int r = check_db(s, version, true, err);
    for (int v = version; r == 0 && v < latest; v++) {
        int rc = kfd_store_migration_step(s->db, v);
        if (rc != SQLITE_OK) {
            r = kfd_store_sql_error(s, rc, "migration", err);
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return r;
        }
        kf_log_info("store_migrated", "to_version=%d", v + 1);
    }
    if (r == 0 && version < latest)
        r = check_db(s, latest, false, err);
    return r;
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
    /* A deleted row's bytes are zeroed where that costs no extra I/O (a wipe's dropped recovery
     * key, docs/threat-model.md "Remote crypto-erase"), not left in the page's free space. */
    if (r == 0)
        r = exec(s, "PRAGMA secure_delete = FAST", "setting secure delete", err);
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
    if (r == 0)
        kfd_store_data_version_reset(s); /* the baseline: later changes are other processes' */
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
    char mark[4200];
    kfd_store_restored_path(s, mark, sizeof(mark));
    s->restored = access(mark, F_OK) == 0; /* a snapshot installed before a restart (review rev17, R7) */
    return kfd_store_open_db(s, err);
}

void kfd_store_restored_path(const kfd_store *s, char *out, size_t size) { snprintf(out, size, "%s.restored", s->path); }

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

void kfd_store_copy_col(sqlite3_stmt *st, int i, char *dst, size_t size)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(dst, size, "%s", t != NULL ? (const char *)t : "");
}

int kfd_store_step_row(kfd_store *s, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return 0;
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
        return -ENOENT;
    return kfd_store_sql_error(s, rc, what, NULL);
}
