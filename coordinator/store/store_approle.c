/* AppRole state: roles, secret ids (SHA-256 only) and tokens (SHA-256 only). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "store/store_internal.h"
#include "store/store_approle.h"
#include "store/store_audit.h"
#include "store/store_judged.h"

static int64_t ts_or_zero(const Keyfleet__V1__Timestamp *t) { return t != NULL ? t->seconds : 0; }

static int create_role(kfd_store *s, const Keyfleet__V1__CmdCreateRole *c, kf_err *err)
{
    char cidrs[1024] = "";
    size_t used = 0;
    for (size_t i = 0; i < c->n_bound_cidrs; i++) {
        int n = snprintf(cidrs + used, sizeof(cidrs) - used, "%s%s", i ? "," : "", c->bound_cidrs[i]);
        if (n < 0 || (size_t)n >= sizeof(cidrs) - used)
            return kf_err_set(err, -E2BIG, "bound CIDRs too long");
        used += (size_t)n;
    }
    sqlite3_stmt *st = kfd_store_stmt(s, ST_ROLE_INSERT);
    kfd_bind_text(st, 1, c->name);
    kfd_bind_text(st, 2, c->role_id);
    kfd_bind_text(st, 3, cidrs);
    sqlite3_bind_int64(st, 4, c->token_ttl_seconds);
    sqlite3_bind_int64(st, 5, c->secret_id_ttl_seconds);
    sqlite3_bind_int64(st, 6, c->secret_id_num_uses);
    kfd_bind_text(st, 7, c->node_name);
    kfd_bind_text(st, 8, c->node_group);
    sqlite3_bind_int64(st, 9, ts_or_zero(c->audit != NULL ? c->audit->time : NULL));
    int r = kfd_store_step_done(s, st, "creating the role", err);
    if (r == -EEXIST)
        kf_err_set(err, -EEXIST, "role %s already exists", c->name);
    return r;
}


static int create_secret_id(kfd_store *s, const Keyfleet__V1__CmdCreateSecretId *c, kf_err *err)
{
    if (c->secret_hash.len != KFD_HASH_LEN)
        return kf_err_set(err, -EINVAL, "secret id hash must be 32 bytes");
    kfd_role role;
    if (kfd_store_get_role(s, c->role_name, NULL, &role) != 0)
        return kf_err_set(err, -ENOENT, "no role %s", c->role_name);
    if (c->role_id[0] != '\0' && strcmp(c->role_id, role.role_id) != 0)
        return kf_err_set(err, -ESTALE, "role %s was revoked and created again since this secret id was made",
                          c->role_name);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_SECRET_INSERT);
    kfd_bind_text(st, 1, c->accessor);
    kfd_bind_text(st, 2, c->role_name);
    sqlite3_bind_blob(st, 3, c->secret_hash.data, (int)c->secret_hash.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, ts_or_zero(c->expires_at));
    sqlite3_bind_int64(st, 5, c->num_uses == 0 ? -1 : (int64_t)c->num_uses);
    return kfd_store_step_done(s, st, "recording the secret id", err);
}

/* What only the login's handler judged (review rev44 J1, as store_judged.h for keys): the secret
 * id it matched (hash) and the role row (bound CIDRs, token TTL, identity). A mismatch is
 * -EAGAIN: recorded as a denial by the caller. Empty fields (an older version's command) are not
 * compared. */
static int login_judged(kfd_store *s, const Keyfleet__V1__CmdLogin *c, bool hash_matches, kf_err *err)
{
    if (c->secret_hash.len != 0 && !hash_matches)
        return kf_err_set(err, -EAGAIN, "the secret id this login was decided on differs from this coordinator's "
                          "(a coordinator's database edited outside keyfleetd?)");
    if (c->judged_role.len == 0)
        return 0;
    kfd_role role;
    uint8_t d[KFD_JUDGED_LEN];
    int r = kfd_store_get_role(s, c->role_name, NULL, &role);
    if (r == -ENOENT)
        return kf_err_set(err, -EACCES, "no role %s", c->role_name);
    if (r != 0 || kfd_judged_role(&role, d) != 0)
        return kf_err_set(err, r != 0 ? r : -EIO, "reading the role");
    if (CRYPTO_memcmp(d, c->judged_role.data, KFD_JUDGED_LEN) != 0)
        return kf_err_set(err, -EAGAIN, "the role this login was decided on (its bound CIDRs, token TTL or "
                          "identity) differs from this coordinator's; retry");
    return 0;
}

/* Spends one use (a secret id with uses_left -1 is unlimited); the last use deletes it. A
 * concurrent login that spent it first makes this one fail, so a use is never spent twice. */
static int login(kfd_store *s, const Keyfleet__V1__CmdLogin *c, kf_err *err)
{
    if (c->token_hash.len != KFD_HASH_LEN)
        return kf_err_set(err, -EINVAL, "token hash must be 32 bytes");
    if ((c->secret_hash.len != 0 && c->secret_hash.len != KFD_HASH_LEN) ||
        (c->judged_role.len != 0 && c->judged_role.len != KFD_JUDGED_LEN))
        return kf_err_set(err, -EINVAL, "a login's secret hash and role digest must be 32 bytes");
    int64_t at = c->audit != NULL && c->audit->time != NULL ? c->audit->time->seconds : 0;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_SECRETS_OF);
    kfd_bind_text(st, 1, c->role_name);
    int64_t uses_left = 0, expires_at = 0;
    bool found = false, hash_matches = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *acc = sqlite3_column_text(st, 0);
        if (acc != NULL && strcmp((const char *)acc, c->accessor) == 0) {
            found = true;
            hash_matches = c->secret_hash.len == KFD_HASH_LEN && sqlite3_column_bytes(st, 1) == KFD_HASH_LEN &&
                           CRYPTO_memcmp(sqlite3_column_blob(st, 1), c->secret_hash.data, KFD_HASH_LEN) == 0;
            expires_at = sqlite3_column_int64(st, 2);
            uses_left = sqlite3_column_int64(st, 3);
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return kfd_store_sql_error(s, rc, "reading secret ids", err);
    if (!found || uses_left == 0)
        return kf_err_set(err, -EACCES, "secret id spent or revoked");
    /* Judged again here as every replica holds it, not only as the handler read it. */
    if (c->secret_hash.len != 0 && expires_at != 0 && at >= expires_at)
        return kf_err_set(err, -EACCES, "secret id expired");
    int r = login_judged(s, c, hash_matches, err);
    if (r != 0)
        return r; /* -EAGAIN: recorded as a denial (kfd_store_apply_batch) */
    if (uses_left > 0) {
        st = kfd_store_stmt(s, ST_SECRET_SPEND);
        kfd_bind_text(st, 1, c->accessor);
        kfd_bind_text(st, 2, c->role_name);
        if ((r = kfd_store_step_done(s, st, "spending the secret id", err)) != 0)
            return r;
        st = kfd_store_stmt(s, ST_SECRET_PURGE);
        kfd_bind_text(st, 1, c->accessor);
        if ((r = kfd_store_step_done(s, st, "deleting the spent secret id", err)) != 0)
            return r;
    }
    st = kfd_store_stmt(s, ST_TOKEN_INSERT);
    kfd_bind_text(st, 1, c->token_id);
    kfd_bind_text(st, 2, c->role_name);
    sqlite3_bind_blob(st, 3, c->token_hash.data, (int)c->token_hash.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, ts_or_zero(c->expires_at));
    return kfd_store_step_done(s, st, "recording the token", err);
}

static int revoke_role(kfd_store *s, const char *name, kf_err *err)
{
    kfd_role role;
    if (kfd_store_get_role(s, name, NULL, &role) != 0)
        return kf_err_set(err, -ENOENT, "no role %s", name);
    static const int stmts[] = {ST_TOKEN_DELETE_ROLE, ST_SECRET_DELETE_ROLE, ST_ROLE_DELETE};
    for (size_t i = 0; i < sizeof(stmts) / sizeof(stmts[0]); i++) {
        sqlite3_stmt *st = kfd_store_stmt(s, stmts[i]);
        kfd_bind_text(st, 1, name);
        int r = kfd_store_step_done(s, st, "revoking the role", err);
        if (r != 0)
            return r;
    }
    return 0;
}

/* Deletes one secret id or one token of the role; -ENOENT when the role has no such credential. */
static int revoke_credential(kfd_store *s, const Keyfleet__V1__CmdRevokeRoleCredential *c, kf_err *err)
{
    bool secret = c->secret_id_accessor[0] != '\0';
    sqlite3_stmt *st = kfd_store_stmt(s, secret ? ST_SECRET_DELETE_ONE : ST_TOKEN_DELETE_ONE);
    kfd_bind_text(st, 1, secret ? c->secret_id_accessor : c->token_id);
    kfd_bind_text(st, 2, c->role_name);
    int r = kfd_store_step_done(s, st, "revoking a credential", err);
    if (r == 0 && sqlite3_changes(s->db) == 0)
        r = kf_err_set(err, -ENOENT, "role %s has no %s %s", c->role_name, secret ? "secret id with accessor" : "token",
                       secret ? c->secret_id_accessor : c->token_id);
    return r;
}

int kfd_store_apply_approle(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, uint64_t *seq, kf_err *err)
{
    int r;
    const Keyfleet__V1__AuditEntry *audit = NULL;
    switch (cmd->cmd_case) {
    case KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_ROLE:
        r = create_role(s, cmd->create_role, err);
        audit = cmd->create_role->audit;
        break;
    case KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_SECRET_ID:
        r = create_secret_id(s, cmd->create_secret_id, err);
        audit = cmd->create_secret_id->audit;
        break;
    case KEYFLEET__V1__STATE_COMMAND__CMD_LOGIN:
        r = login(s, cmd->login, err);
        audit = cmd->login->audit;
        break;
    case KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_ROLE:
        r = revoke_role(s, cmd->revoke_role->name, err);
        audit = cmd->revoke_role->audit;
        break;
    case KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_ROLE_CREDENTIAL:
        r = revoke_credential(s, cmd->revoke_role_credential, err);
        audit = cmd->revoke_role_credential->audit;
        break;
    default:
        return kf_err_set(err, -ENOSYS, "not an AppRole command");
    }
    /* A login's refusal (judged on other rows, a spent secret id) is recorded by kfd_store_apply_batch. */
    return r != 0 ? r : kfd_store_append_audit(s, audit, seq, err);
}

int kfd_store_get_role(kfd_store *s, const char *name, const char *role_id, kfd_role *ret)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_ROLE_GET);
    kfd_bind_text(st, 1, name != NULL ? name : "");
    kfd_bind_text(st, 2, role_id != NULL ? role_id : "");
    int r = kfd_store_step_row(s, st, "reading a role");
    if (r != 0)
        return r;
    memset(ret, 0, sizeof(*ret));
    kfd_store_copy_col(st, 0, ret->name, sizeof(ret->name));
    kfd_store_copy_col(st, 1, ret->role_id, sizeof(ret->role_id));
    kfd_store_copy_col(st, 2, ret->bound_cidrs, sizeof(ret->bound_cidrs));
    ret->token_ttl_s = (uint32_t)sqlite3_column_int64(st, 3);
    ret->secret_id_ttl_s = (uint32_t)sqlite3_column_int64(st, 4);
    ret->secret_id_num_uses = (uint32_t)sqlite3_column_int64(st, 5);
    kfd_store_copy_col(st, 6, ret->node_name, sizeof(ret->node_name));
    kfd_store_copy_col(st, 7, ret->node_group, sizeof(ret->node_group));
    ret->created_at = sqlite3_column_int64(st, 8);
    sqlite3_reset(st);
    return 0;
}

int kfd_store_match_secret_id(kfd_store *s, const char *role_name, const uint8_t hash[KFD_HASH_LEN], int64_t now,
                              char accessor[33])
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_SECRETS_OF);
    kfd_bind_text(st, 1, role_name);
    int rc, r = -ENOENT;
    /* Every candidate is compared, matched or not, so timing says nothing about which one. */
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const void *h = sqlite3_column_blob(st, 1);
        bool same = h != NULL && sqlite3_column_bytes(st, 1) == KFD_HASH_LEN &&
                    CRYPTO_memcmp(h, hash, KFD_HASH_LEN) == 0;
        int64_t exp = sqlite3_column_int64(st, 2), uses = sqlite3_column_int64(st, 3);
        if (same && (exp == 0 || now < exp) && uses != 0) {
            kfd_store_copy_col(st, 0, accessor, 33);
            r = 0;
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return kfd_store_sql_error(s, rc, "reading secret ids", NULL);
    return r;
}

int kfd_store_get_token(kfd_store *s, const char *token_id, uint8_t hash[KFD_HASH_LEN], char role_name[64],
                        int64_t *expires_at)
{
    if (s->failed)
        return -EIO;
    sqlite3_stmt *st = kfd_store_stmt(s, ST_TOKEN_GET);
    kfd_bind_text(st, 1, token_id);
    int r = kfd_store_step_row(s, st, "reading a token");
    if (r != 0)
        return r;
    const void *h = sqlite3_column_blob(st, 0);
    if (h == NULL || sqlite3_column_bytes(st, 0) != KFD_HASH_LEN) {
        sqlite3_reset(st);
        return -ENOENT;
    }
    memcpy(hash, h, KFD_HASH_LEN);
    kfd_store_copy_col(st, 1, role_name, 64);
    *expires_at = sqlite3_column_int64(st, 2);
    sqlite3_reset(st);
    return 0;
}
