/* AppRole-style node authentication, as Vault's AppRole: roles with a role_id, secret ids shown
 * once and stored as SHA-256, and Login exchanging role_id + secret_id for a short-lived bearer
 * token (stored as SHA-256) that stands for the role's node. Failed logins get one generic
 * error, are audited (rate-capped) and rate limited per source address; secrets are compared
 * in constant time. Formats:
 *   secret id  "kfs." BASE64URL(32 random bytes)
 *   token      "kft." HEX(8 random bytes, the public token id) "." BASE64URL(32 random bytes) */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "core/app.h"
#include "core/approle.h"
#include "core/audit.h"
#include "core/cidr.h"
#include "core/ratelimit.h"
#include "front/server.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/node.pb-c.h"
#include "kf_b64.h"
#include "kf_time.h"
#include "kf_log.h"
#include "kf_secmem.h"
#include "rpc/rpc_admin.h"
#include "rpc/rpc_approle.h"
#include "rpc/rpc_change.h"
#include "store/store_apply.h"
#include "store/store_approle.h"
#include "store/store_judged.h"
#include "rpc/rpc_check.h"

#define LOGIN_ERROR "invalid role or secret ID"
#define LOGIN_PER_MINUTE 30
#define LOGIN_BURST 10
#define MAX_CIDRS KFD_ROLE_MAX_CIDRS
#define TOKEN_TTL_DEFAULT KFD_ROLE_TOKEN_TTL_DEFAULT
#define SECRET_PREFIX KFD_SECRET_ID_PREFIX
#define TOKEN_PREFIX KFD_TOKEN_PREFIX
#define TOKEN_ID_HEX KFD_TOKEN_ID_HEX
#define ACCESSOR_HEX KFD_ROLE_ACCESSOR_HEX
#define SECRET_TEXT_LEN KFD_SECRET_ID_LEN
#define TOKEN_TEXT_LEN KFD_TOKEN_TEXT_LEN

static int64_t now_s(void) { return (int64_t)time(NULL); }

static void hex(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", in[i]);
}

/* "kfs."/"kft." + base64url of 32 random bytes; returns 0 or -EIO. */
static int random_text(const char *prefix, char *out, size_t size)
{
    uint8_t raw[32];
    size_t plen = strlen(prefix);
    if (RAND_priv_bytes(raw, sizeof(raw)) != 1)
        return -EIO;
    char text[64]; /* the encoder writes the padded form first */
    int r = kf_b64_encode(raw, sizeof(raw), true, text, sizeof(text));
    kf_wipe(raw, sizeof(raw));
    if (r <= 0 || plen + (size_t)r + 1 > size) {
        kf_wipe(text, sizeof(text));
        return -EIO;
    }
    memcpy(out, prefix, plen);
    memcpy(out + plen, text, (size_t)r + 1);
    kf_wipe(text, sizeof(text));
    return 0;
}

static void new_role_id(char out[37])
{
    uint8_t u[16];
    RAND_bytes(u, sizeof(u));
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    char h[33];
    hex(u, 16, h);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
}

/* ------------------------------------------------------------------ Login */

typedef struct login_op {
    kfd_op base;
    char token[TOKEN_TEXT_LEN + 1];
    uint32_t ttl;
    char node[64];
    char role[64];
} login_op;

static void login_failed(kfd_call *call, const char *role, const char *reason)
{
    call->srv->metrics.auth_failures++;
    char why[200];
    snprintf(why, sizeof(why), "approle login: %s", reason);
    kfd_audit_auth_failure(kfd_call_app(call), kfd_call_actor(call), role, why);
    kf_log_info("login_failed", "role=%s source=%s reason=%s", role[0] ? role : "-", call->source, kf_log_q(reason));
    kfd_call_error(call, KF_CONNECT_UNAUTHENTICATED, LOGIN_ERROR);
}

static void on_login_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    login_op *op = arg;
    kfd_call *call = op->base.call;
    if (call != NULL && status == -EACCES && res->refused) {
        /* Spent by a concurrent login, or expired: the apply recorded the refusal (store_judged.h). */
        call->srv->metrics.auth_failures++;
        kf_log_info("login_failed", "role=%s source=%s reason=%s", op->role, call->source, kf_log_q(err->msg));
        kfd_call_error(call, KF_CONNECT_UNAUTHENTICATED, LOGIN_ERROR);
    } else if (call != NULL && status == -EACCES) {
        login_failed(call, op->role, err->msg); /* not recorded at apply: recorded here, answered alike (R45-4) */
    } else if (call != NULL && status != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "login not answered: %s", err->msg);
    } else if (call != NULL) {
        Keyfleet__V1__LoginResponse resp = KEYFLEET__V1__LOGIN_RESPONSE__INIT;
        resp.token = op->token;
        resp.ttl_seconds = op->ttl;
        resp.node_name = op->node;
        kf_log_info("login", "role=%s node=%s source=%s ttl_s=%u", op->role, op->node, call->source, op->ttl);
        kfd_call_reply(call, &resp.base);
    }
    kf_wipe(op->token, sizeof(op->token));
    kfd_op_free(op);
}

void kfd_rpc_login(kfd_call *call)
{
    const Keyfleet__V1__LoginRequest *req = (const Keyfleet__V1__LoginRequest *)call->request;
    kfd_app *app = kfd_call_app(call);
    if (!kfd_rpc_store_ok(call))
        return;
    char limit_key[96];
    snprintf(limit_key, sizeof(limit_key), " login %s", call->source);
    uint32_t wait = kfd_ratelimit_take(app->ratelimit, limit_key, LOGIN_PER_MINUTE, LOGIN_BURST, kf_monotonic_ms());
    if (wait != 0) {
        kfd_call_error(call, KF_CONNECT_RESOURCE_EXHAUSTED, "too many logins from %s; retry after %u ms", call->source,
                       wait);
        return;
    }
    /* After the rate limit: a malformed request counts against it like a wrong secret. */
    const char *bad = kfd_check_login(req);
    if (bad != NULL) {
        kf_log_info("login_refused", "source=%s reason=%s", call->source, kf_log_q(bad));
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    kfd_role role;
    if (kfd_store_get_role(app->store, NULL, req->role_id, &role) != 0) {
        login_failed(call, "", "unknown role_id");
        return;
    }
    if (!kfd_approle_source_allowed(role.bound_cidrs, call->source)) {
        login_failed(call, role.name, "source address outside the role's bound CIDRs");
        return;
    }
    uint8_t hash[KFD_HASH_LEN];
    char accessor[ACCESSOR_HEX + 1];
    size_t slen = strnlen(req->secret_id, SECRET_TEXT_LEN + 1);
    kfd_approle_sha256(req->secret_id, slen, hash);
    int r = slen == SECRET_TEXT_LEN ? kfd_store_match_secret_id(app->store, role.name, hash, now_s(), accessor)
                                    : -ENOENT;
    if (r != 0) {
        login_failed(call, role.name, r == -EIO ? "store failure" : "wrong, expired or spent secret id");
        return;
    }
    login_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    uint8_t id_raw[TOKEN_ID_HEX / 2];
    char token_id[TOKEN_ID_HEX + 1], prefix[4 + TOKEN_ID_HEX + 2];
    RAND_bytes(id_raw, sizeof(id_raw));
    hex(id_raw, sizeof(id_raw), token_id);
    snprintf(prefix, sizeof(prefix), TOKEN_PREFIX "%s.", token_id);
    if (random_text(prefix, op->token, sizeof(op->token)) != 0) {
        kfd_op_free(op);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "no randomness for a token");
        return;
    }
    op->ttl = role.token_ttl_s;
    snprintf(op->node, sizeof(op->node), "%s", kfd_approle_identity(&role));
    snprintf(op->role, sizeof(op->role), "%s", role.name);
    uint8_t token_hash[KFD_HASH_LEN];
    kfd_approle_sha256(op->token, strlen(op->token), token_hash);
    Keyfleet__V1__Timestamp exp = KEYFLEET__V1__TIMESTAMP__INIT;
    exp.seconds = now_s() + role.token_ttl_s;
    char reason[160];
    snprintf(reason, sizeof(reason), "approle %s secret id %s token %s ttl %us", role.name, accessor, token_id,
             role.token_ttl_s);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "login", KEYFLEET__V1__DECISION__DECISION_ALLOW, op->node, "", "", reason);
    a.actor.kind = KEYFLEET__V1__PRINCIPAL_KIND__PRINCIPAL_KIND_NODE;
    a.actor.name = op->node;
    a.actor.auth = (char *)"approle";
    Keyfleet__V1__CmdLogin c = KEYFLEET__V1__CMD_LOGIN__INIT;
    c.role_name = role.name;
    c.accessor = accessor;
    c.token_id = token_id;
    c.token_hash.data = token_hash;
    c.token_hash.len = sizeof(token_hash);
    c.expires_at = &exp;
    c.audit = &a.entry;
    /* What this login was judged by, for every replica's apply to compare with its own rows
     * (review rev44 J1): the secret id matched and the role row. */
    uint8_t judged_role[KFD_JUDGED_LEN];
    if (kfd_judged_role(&role, judged_role) != 0) {
        kf_wipe(op->token, sizeof(op->token));
        kfd_op_free(op);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "cannot digest the role");
        return;
    }
    c.secret_hash.data = hash;
    c.secret_hash.len = sizeof(hash);
    c.judged_role.data = judged_role;
    c.judged_role.len = sizeof(judged_role);
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_LOGIN;
    cmd.login = &c;
    kfd_commit(app, &cmd, on_login_committed, op);
}

/* ------------------------------------------------------------------ Admin */

static void fill_role(Keyfleet__V1__Role *out, kfd_role *r, char **cidrs, size_t *n)
{
    keyfleet__v1__role__init(out);
    out->name = r->name;
    out->role_id = r->role_id;
    out->token_ttl_seconds = r->token_ttl_s;
    out->secret_id_ttl_seconds = r->secret_id_ttl_s;
    out->secret_id_num_uses = r->secret_id_num_uses;
    out->node_name = r->node_name;
    out->node_group = r->node_group;
    *n = 0;
    char *save = NULL;
    for (char *t = strtok_r(r->bound_cidrs, ",", &save); t != NULL && *n < MAX_CIDRS; t = strtok_r(NULL, ",", &save))
        cidrs[(*n)++] = t;
    out->bound_cidrs = cidrs;
    out->n_bound_cidrs = *n;
}

typedef struct role_op {
    kfd_op base;
    kfd_role role;
} role_op;

static void on_role_committed(void *arg, int status, const kfd_change_result *res, const kf_err *err)
{
    role_op *op = arg;
    if (op->base.call != NULL && kfd_rpc_commit_answer(op->base.call, status, err)) {
        Keyfleet__V1__Role role;
        char *cidrs[MAX_CIDRS];
        size_t n;
        fill_role(&role, &op->role, cidrs, &n);
        Keyfleet__V1__CreateRoleResponse resp = KEYFLEET__V1__CREATE_ROLE_RESPONSE__INIT;
        resp.role = &role;
        resp.pending_request_id = (char *)res->held_request_id;
        resp.approvals_needed = res->approvals_needed;
        kfd_call_reply(op->base.call, &resp.base);
    }
    kfd_op_free(op);
}

void kfd_rpc_create_role(kfd_call *call)
{
    const Keyfleet__V1__CreateRoleRequest *req = (const Keyfleet__V1__CreateRoleRequest *)call->request;
    const Keyfleet__V1__Role *in = req->role;
    if (!kfd_rpc_store_ok(call))
        return;
    char bad_buf[120];
    const char *bad = kfd_check_create_role(req, bad_buf, sizeof(bad_buf));
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    uint32_t ttl = in->token_ttl_seconds != 0 ? in->token_ttl_seconds : TOKEN_TTL_DEFAULT;
    role_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    kfd_role *r = &op->role;
    snprintf(r->name, sizeof(r->name), "%s", in->name);
    new_role_id(r->role_id);
    size_t used = 0;
    for (size_t i = 0; i < in->n_bound_cidrs; i++)
        used += (size_t)snprintf(r->bound_cidrs + used, sizeof(r->bound_cidrs) - used, "%s%s", i ? "," : "",
                                 in->bound_cidrs[i]);
    r->token_ttl_s = ttl;
    r->secret_id_ttl_s = in->secret_id_ttl_seconds;
    r->secret_id_num_uses = in->secret_id_num_uses;
    snprintf(r->node_name, sizeof(r->node_name), "%s", in->node_name);
    snprintf(r->node_group, sizeof(r->node_group), "%s", in->node_group);
    char reason[200];
    snprintf(reason, sizeof(reason), "approle %s for node %s", r->name, r->node_name);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "approle_create", KEYFLEET__V1__DECISION__DECISION_ALLOW, r->node_name,
                   "", "", reason);
    Keyfleet__V1__CmdCreateRole c = KEYFLEET__V1__CMD_CREATE_ROLE__INIT;
    c.name = r->name;
    c.role_id = r->role_id;
    c.bound_cidrs = in->bound_cidrs;
    c.n_bound_cidrs = in->n_bound_cidrs;
    c.token_ttl_seconds = r->token_ttl_s;
    c.secret_id_ttl_seconds = r->secret_id_ttl_s;
    c.secret_id_num_uses = r->secret_id_num_uses;
    c.node_name = r->node_name;
    c.node_group = r->node_group;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_ROLE;
    cmd.create_role = &c;
    kfd_commit_change(call, &cmd, reason, req->totp_code, on_role_committed, op);
}

void kfd_rpc_get_role(kfd_call *call)
{
    const Keyfleet__V1__GetRoleRequest *req = (const Keyfleet__V1__GetRoleRequest *)call->request;
    const char *bad = kfd_check_get_role(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    kfd_role r;
    int rc = kfd_store_get_role(kfd_call_app(call)->store, req->name, NULL, &r);
    if (rc != 0) {
        kfd_call_error(call, rc == -ENOENT ? KF_CONNECT_NOT_FOUND : KF_CONNECT_UNAVAILABLE, "%s",
                       rc == -ENOENT ? "no such role" : "state store unavailable");
        return;
    }
    Keyfleet__V1__Role role;
    char *cidrs[MAX_CIDRS];
    size_t n;
    fill_role(&role, &r, cidrs, &n);
    Keyfleet__V1__GetRoleResponse resp = KEYFLEET__V1__GET_ROLE_RESPONSE__INIT;
    resp.role = &role;
    kfd_call_reply(call, &resp.base);
}

typedef struct secret_op {
    kfd_op base;
    char secret[SECRET_TEXT_LEN + 1];
    char accessor[ACCESSOR_HEX + 1];
    uint32_t ttl, uses;
} secret_op;

static void on_secret_committed(void *arg, int status, const kfd_change_result *res, const kf_err *err)
{
    secret_op *op = arg;
    if (op->base.call != NULL && kfd_rpc_commit_answer(op->base.call, status, err)) {
        Keyfleet__V1__CreateSecretIdResponse resp = KEYFLEET__V1__CREATE_SECRET_ID_RESPONSE__INIT;
        resp.secret_id = op->secret;
        resp.accessor = op->accessor;
        resp.ttl_seconds = op->ttl;
        resp.num_uses = op->uses;
        resp.pending_request_id = (char *)res->held_request_id;
        resp.approvals_needed = res->approvals_needed;
        kfd_call_reply(op->base.call, &resp.base);
    }
    kf_wipe(op->secret, sizeof(op->secret));
    kfd_op_free(op);
}

void kfd_rpc_create_secret_id(kfd_call *call)
{
    const Keyfleet__V1__CreateSecretIdRequest *req = (const Keyfleet__V1__CreateSecretIdRequest *)call->request;
    const char *bad = kfd_check_create_secret_id(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    kfd_role role;
    if (kfd_store_get_role(kfd_call_app(call)->store, req->role_name, NULL, &role) != 0) {
        kfd_call_error(call, KF_CONNECT_NOT_FOUND, "no such role");
        return;
    }
    secret_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    uint8_t acc[16], hash[KFD_HASH_LEN];
    RAND_bytes(acc, sizeof(acc));
    hex(acc, sizeof(acc), op->accessor);
    if (random_text(SECRET_PREFIX, op->secret, sizeof(op->secret)) != 0) {
        kfd_op_free(op);
        kfd_call_error(call, KF_CONNECT_INTERNAL, "no randomness for a secret id");
        return;
    }
    kfd_approle_sha256(op->secret, strlen(op->secret), hash);
    op->ttl = role.secret_id_ttl_s;
    op->uses = role.secret_id_num_uses;
    Keyfleet__V1__Timestamp exp = KEYFLEET__V1__TIMESTAMP__INIT;
    exp.seconds = now_s() + role.secret_id_ttl_s;
    char reason[256];
    snprintf(reason, sizeof(reason), "approle %.63s (node %.63s) secret id %s ttl %us uses %u", role.name, role.node_name, op->accessor, op->ttl,
             op->uses);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "approle_secret_id", KEYFLEET__V1__DECISION__DECISION_ALLOW,
                   kfd_approle_identity(&role), "",
                   "", reason);
    Keyfleet__V1__CmdCreateSecretId c = KEYFLEET__V1__CMD_CREATE_SECRET_ID__INIT;
    c.role_name = role.name;
    c.role_id = role.role_id;
    c.secret_hash.data = hash;
    c.secret_hash.len = sizeof(hash);
    c.accessor = op->accessor;
    c.expires_at = role.secret_id_ttl_s != 0 ? &exp : NULL;
    c.num_uses = role.secret_id_num_uses;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CREATE_SECRET_ID;
    cmd.create_secret_id = &c;
    kfd_commit_change(call, &cmd, reason, req->totp_code, on_secret_committed, op);
}

void kfd_rpc_revoke_role(kfd_call *call)
{
    const Keyfleet__V1__RevokeRoleRequest *req = (const Keyfleet__V1__RevokeRoleRequest *)call->request;
    if (!kfd_rpc_store_ok(call))
        return;
    const char *bad = kfd_check_revoke_role(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    char reason[120];
    snprintf(reason, sizeof(reason), "approle %s revoked with its secret ids and tokens", req->name);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "approle_revoke", KEYFLEET__V1__DECISION__DECISION_ALLOW, "", "", "",
                   reason);
    Keyfleet__V1__CmdRevokeRole c = KEYFLEET__V1__CMD_REVOKE_ROLE__INIT;
    c.name = req->name;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_ROLE;
    cmd.revoke_role = &c;
    kfd_rpc_commit_empty(call, &cmd, &keyfleet__v1__revoke_role_response__descriptor);
}

void kfd_rpc_revoke_role_credential(kfd_call *call)
{
    const Keyfleet__V1__RevokeRoleCredentialRequest *req =
        (const Keyfleet__V1__RevokeRoleCredentialRequest *)call->request;
    bool secret = req->secret_id_accessor[0] != '\0';
    const char *bad = kfd_check_revoke_role_credential(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    char reason[160];
    snprintf(reason, sizeof(reason), "approle %s %s %s revoked", req->role_name, secret ? "secret id" : "token",
             secret ? req->secret_id_accessor : req->token_id);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "approle_revoke", KEYFLEET__V1__DECISION__DECISION_ALLOW, "", "", "",
                   reason);
    Keyfleet__V1__CmdRevokeRoleCredential c = KEYFLEET__V1__CMD_REVOKE_ROLE_CREDENTIAL__INIT;
    c.role_name = req->role_name;
    c.secret_id_accessor = req->secret_id_accessor;
    c.token_id = req->token_id;
    c.audit = &a.entry;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_REVOKE_ROLE_CREDENTIAL;
    cmd.revoke_role_credential = &c;
    kfd_rpc_commit_empty(call, &cmd, &keyfleet__v1__revoke_role_credential_response__descriptor);
}
