#include "rpc/rpc_check.h"

#include <stdio.h>
#include <string.h>

#include "config/cluster_config.h"
#include "core/approle.h"
#include "core/cidr.h"
#include "core/policy.h"
#include "store/store_erase.h"

const char *kfd_check_approve(const Keyfleet__V1__ApproveRequest *req)
{
    if (!kf_request_id_valid(req->request_id))
        return "request_id must be 16..64 of [0-9A-Za-z-]";
    if (strlen(req->comment) > 512 || strlen(req->totp_code) > 16)
        return "comment is at most 512 characters, totp_code 6 digits";
    return NULL;
}

const char *kfd_check_deny(const Keyfleet__V1__DenyRequest *req)
{
    if (!kf_request_id_valid(req->request_id) || strlen(req->reason) > 512 || strlen(req->totp_code) > 16)
        return "request_id must be 16..64 of [0-9A-Za-z-], reason <= 512, totp_code 6 digits";
    return NULL;
}

const char *kfd_check_check_policy(const Keyfleet__V1__CheckPolicyRequest *req)
{
    if (!kf_name_valid(req->node, strlen(req->node)) || req->volume_id[0] == '\0' || strlen(req->volume_id) > 128)
        return "node and volume_id are required";
    return NULL;
}

const char *kfd_check_revoke_node(const Keyfleet__V1__RevokeNodeRequest *req)
{
    if (!kf_name_valid(req->node, strlen(req->node)) || strlen(req->reason) > 512)
        return "node must be a valid node name; reason <= 512";
    return NULL;
}

const char *kfd_check_revoke_cert(const Keyfleet__V1__RevokeCertRequest *req, char serial[KF_SERIAL_MAX],
                                  kf_peer_kind *kind)
{
    *kind = KF_PEER_NONE;
    if (strlen(req->serial) > 128 || kf_serial_normalize(req->serial, serial) != 0)
        return "serial must be the certificate's serial in hex";
    if ((req->kind[0] != '\0' && kf_peer_kind_parse(req->kind, kind) != 0) ||
        (req->name[0] != '\0' && !kf_name_valid(req->name, strlen(req->name))) || strlen(req->reason) > 512)
        return "kind must be node, operator or coordinator; name a valid name; reason <= 512";
    return NULL;
}

const char *kfd_check_create_role(const Keyfleet__V1__CreateRoleRequest *req, char *buf, size_t size)
{
    const Keyfleet__V1__Role *in = req->role;
    if (in == NULL || !kf_name_valid(in->name, strlen(in->name)))
        return "role name must be 1..63 of [A-Za-z0-9._-]";
    if (strlen(req->totp_code) > 16)
        return "totp_code is 6 digits";
    if (!kf_name_valid(in->node_name, strlen(in->node_name)))
        return "node_name must be 1..63 of [A-Za-z0-9._-]";
    if (in->node_group[0] != '\0' && !kf_name_valid(in->node_group, strlen(in->node_group)))
        return "node_group must be 1..63 of [A-Za-z0-9._-]";
    if (in->n_bound_cidrs > KFD_ROLE_MAX_CIDRS) {
        snprintf(buf, size, "at most %d bound CIDRs", KFD_ROLE_MAX_CIDRS);
        return buf;
    }
    for (size_t i = 0; i < in->n_bound_cidrs; i++) {
        kfd_cidr c;
        if (strlen(in->bound_cidrs[i]) > 50 || kfd_cidr_parse(in->bound_cidrs[i], &c) != 0) {
            snprintf(buf, size, "bound CIDR '%.50s' is not an address/prefix", in->bound_cidrs[i]);
            return buf;
        }
    }
    uint32_t ttl = in->token_ttl_seconds != 0 ? in->token_ttl_seconds : KFD_ROLE_TOKEN_TTL_DEFAULT;
    if (ttl > KFD_ROLE_TOKEN_TTL_MAX)
        return "token TTL must be at most 24h";
    return NULL;
}

const char *kfd_check_revoke_role(const Keyfleet__V1__RevokeRoleRequest *req)
{
    if (!kf_name_valid(req->name, strlen(req->name)))
        return "role name must be 1..63 of [A-Za-z0-9._-]";
    return NULL;
}

static bool lower_hex(const char *s, size_t want)
{
    size_t n = strlen(s);
    if (n != want)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

const char *kfd_check_revoke_role_credential(const Keyfleet__V1__RevokeRoleCredentialRequest *req)
{
    bool secret = req->secret_id_accessor[0] != '\0', token = req->token_id[0] != '\0';
    if (!kf_name_valid(req->role_name, strlen(req->role_name)))
        return "role name must be 1..63 of [A-Za-z0-9._-]";
    if (secret == token)
        return "give exactly one of secret_id_accessor and token_id";
    if (secret ? !lower_hex(req->secret_id_accessor, KFD_ROLE_ACCESSOR_HEX) : !lower_hex(req->token_id, KFD_TOKEN_ID_HEX))
        return secret ? "secret_id_accessor must be 32 lowercase hex digits"
                      : "token_id must be 16 lowercase hex digits (the part of the token after kft.)";
    return NULL;
}

const char *kfd_check_prove_audit(const Keyfleet__V1__ProveAuditRequest *req)
{
    return kf_request_id_valid(req->request_id) ? NULL : "request_id must be 16..64 of [0-9A-Za-z-]";
}

const char *kfd_check_add_member(const Keyfleet__V1__AddMemberRequest *req)
{
    if (!kf_name_valid(req->name, strlen(req->name)) || !kfd_hostport_valid(req->raft_address, false) ||
        !kfd_hostport_valid(req->rpc_address, false))
        return "name must be a coordinator name, raft_address and rpc_address host:port";
    return NULL;
}

const char *kfd_check_remove_member(const Keyfleet__V1__RemoveMemberRequest *req)
{
    return kf_name_valid(req->name, strlen(req->name)) ? NULL : "name must be a coordinator name";
}

const char *kfd_check_get_node_attestation(const Keyfleet__V1__GetNodeAttestationRequest *req)
{
    return kf_name_valid(req->node, strlen(req->node)) ? NULL : "node must be a valid node name";
}

const char *kfd_check_accept_node_attestation(const Keyfleet__V1__AcceptNodeAttestationRequest *req,
                                              kf_tpm_pcrs *expected, char *buf, size_t size)
{
    if (!kf_name_valid(req->node, strlen(req->node)) || strlen(req->totp_code) > 16 ||
        (req->expected[0] != '\0' && kf_tpm_pcrs_parse(req->expected, expected, NULL) != 0) ||
        strlen(req->token) != KF_TPM_ATTEST_TOKEN_LEN) {
        snprintf(buf, size,
                 "node must be a valid node name, token the %d characters keyfleetctl node attest show "
                 "printed, expected PCR values as '0=HEX 2=HEX ...', totp_code 6 digits",
                 KF_TPM_ATTEST_TOKEN_LEN);
        return buf;
    }
    return NULL;
}

static bool uuid_text(const char *s)
{
    if (strlen(s) != KFD_ROLE_ID_LEN)
        return false;
    for (size_t i = 0; i < KFD_ROLE_ID_LEN; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

const char *kfd_check_login(const Keyfleet__V1__LoginRequest *req)
{
    if (!uuid_text(req->role_id))
        return "role_id must be the role's 36-character lowercase UUID";
    /* The secret itself is never echoed, only the shape it must have. */
    const char *sec = req->secret_id;
    bool ok = strlen(sec) == KFD_SECRET_ID_LEN && strncmp(sec, KFD_SECRET_ID_PREFIX, 4) == 0;
    for (size_t i = 4; ok && i < KFD_SECRET_ID_LEN; i++)
        ok = (sec[i] >= 'A' && sec[i] <= 'Z') || (sec[i] >= 'a' && sec[i] <= 'z') || (sec[i] >= '0' && sec[i] <= '9') ||
             sec[i] == '-' || sec[i] == '_';
    return ok ? NULL : "secret_id must be kfs. and 43 base64url characters";
}

const char *kfd_check_create_secret_id(const Keyfleet__V1__CreateSecretIdRequest *req)
{
    if (!kf_name_valid(req->role_name, strlen(req->role_name)))
        return "role_name must be 1..63 of [A-Za-z0-9._-]";
    if (strlen(req->totp_code) > 16)
        return "totp_code is 6 digits";
    return NULL;
}

const char *kfd_check_query_audit(const Keyfleet__V1__QueryAuditRequest *req)
{
    if (req->node[0] != '\0' && !kf_name_valid(req->node, strlen(req->node)))
        return "node must be a valid node name";
    if (!kf_printable(req->volume_id, 128))
        return "volume_id is at most 128 printable characters";
    if (!kf_printable(req->action, 64))
        return "action is at most 64 printable characters";
    if (protobuf_c_enum_descriptor_get_value(&keyfleet__v1__decision__descriptor, (int)req->decision) == NULL)
        return "decision must be allow, deny, pending or error";
    bool since = req->since_present_case == KEYFLEET__V1__QUERY_AUDIT_REQUEST__SINCE_PRESENT_SINCE && req->since != NULL;
    bool until = req->until_present_case == KEYFLEET__V1__QUERY_AUDIT_REQUEST__UNTIL_PRESENT_UNTIL && req->until != NULL;
    if (since && until && req->since->seconds > req->until->seconds)
        return "since must not be after until";
    if (req->limit > KFD_AUDIT_QUERY_LIMIT_MAX)
        return "limit is at most 10000 (0: the default, 1000)";
    return NULL;
}

const char *kfd_check_prove_consistency(const Keyfleet__V1__ProveConsistencyRequest *req)
{
    if (req->old_size == 0)
        return "old_size must be at least 1";
    if (req->new_size != 0 && req->old_size > req->new_size)
        return "old_size must not be larger than new_size";
    return NULL;
}

const char *kfd_check_put_policy(const Keyfleet__V1__PutPolicyRequest *req, kfd_policy **parsed, char *buf,
                                 size_t size)
{
    *parsed = NULL;
    if (strlen(req->totp_code) > 16)
        return "totp_code is 6 digits";
    kf_err err = {0};
    if (kfd_policy_parse("policy", req->yaml, strlen(req->yaml), parsed, &err) != 0) {
        *parsed = NULL;
        snprintf(buf, size, "%s", err.msg);
        return buf;
    }
    return NULL;
}

const char *kfd_check_get_role(const Keyfleet__V1__GetRoleRequest *req)
{
    return kf_name_valid(req->name, strlen(req->name)) ? NULL : "role name must be 1..63 of [A-Za-z0-9._-]";
}

const char *kfd_check_unrevoke_node(const Keyfleet__V1__UnrevokeNodeRequest *req)
{
    if (!kf_name_valid(req->node, strlen(req->node)) || strlen(req->reason) > 512 || strlen(req->totp_code) > 16)
        return "node must be a valid node name; reason <= 512 characters; totp_code 6 digits";
    return NULL;
}

static bool volume_id_ok(const char *id)
{
    size_t n = strlen(id);
    return n > 0 && n <= 128;
}

const char *kfd_check_retire_volume(const Keyfleet__V1__RetireVolumeRequest *req)
{
    if (!volume_id_ok(req->volume_id) || strlen(req->reason) > 512)
        return "volume_id must be 1..128 characters; reason <= 512";
    return NULL;
}

const char *kfd_check_wipe_node(const Keyfleet__V1__WipeNodeRequest *req)
{
    bool ids_ok = req->n_volume_ids <= KFD_ERASE_MAX;
    for (size_t i = 0; ids_ok && i < req->n_volume_ids; i++)
        ids_ok = volume_id_ok(req->volume_ids[i]);
    if (!kf_name_valid(req->node, strlen(req->node)) || !ids_ok || strlen(req->reason) > 512 ||
        strlen(req->totp_code) > 16)
        return "node must be a valid node name; at most 100 volume ids of 1..128 characters; reason <= 512 "
               "characters; totp_code 6 digits";
    if (req->cancel && req->erase_all_keyslots)
        return "--cancel takes no --erase-all-keyslots";
    return NULL;
}

const char *kfd_check_reveal_recovery_key(const Keyfleet__V1__RevealRecoveryKeyRequest *req)
{
    bool reveal = req->request_id[0] != '\0';
    if (!volume_id_ok(req->volume_id))
        return "volume_id must be 1..128 characters";
    if (reveal && !kf_request_id_valid(req->request_id))
        return "request_id must be 16..64 of [0-9A-Za-z-]";
    if (reveal && req->ephemeral_public_key.len != 32)
        return "ephemeral_public_key must be 32 bytes (X25519)";
    if (strlen(req->totp_code) > 16)
        return "totp_code is 6 digits";
    return NULL;
}

const char *kfd_check_enroll_recovery_key(const Keyfleet__V1__EnrollRecoveryKeyRequest *req)
{
    const char *bad = kf_check_volume_ref(req->volume);
    if (bad == NULL && !kf_request_id_valid(req->request_id))
        bad = "request_id is required: 16..64 of [0-9A-Za-z-]";
    return bad;
}

#define CHECK_FN(name, type, call)                                                                                    \
    static const char *name(const ProtobufCMessage *m, char *buf, size_t size)                                       \
    {                                                                                                                  \
        (void)buf, (void)size;                                                                                         \
        const type *req = (const type *)m;                                                                             \
        return call;                                                                                                   \
    }
CHECK_FN(approve_fn, Keyfleet__V1__ApproveRequest, kfd_check_approve(req))
CHECK_FN(deny_fn, Keyfleet__V1__DenyRequest, kfd_check_deny(req))
CHECK_FN(check_policy_fn, Keyfleet__V1__CheckPolicyRequest, kfd_check_check_policy(req))
CHECK_FN(revoke_node_fn, Keyfleet__V1__RevokeNodeRequest, kfd_check_revoke_node(req))
CHECK_FN(create_role_fn, Keyfleet__V1__CreateRoleRequest, kfd_check_create_role(req, buf, size))
CHECK_FN(revoke_role_fn, Keyfleet__V1__RevokeRoleRequest, kfd_check_revoke_role(req))
CHECK_FN(revoke_role_credential_fn, Keyfleet__V1__RevokeRoleCredentialRequest, kfd_check_revoke_role_credential(req))
CHECK_FN(prove_audit_fn, Keyfleet__V1__ProveAuditRequest, kfd_check_prove_audit(req))
CHECK_FN(add_member_fn, Keyfleet__V1__AddMemberRequest, kfd_check_add_member(req))
CHECK_FN(remove_member_fn, Keyfleet__V1__RemoveMemberRequest, kfd_check_remove_member(req))
CHECK_FN(login_fn, Keyfleet__V1__LoginRequest, kfd_check_login(req))
CHECK_FN(create_secret_id_fn, Keyfleet__V1__CreateSecretIdRequest, kfd_check_create_secret_id(req))
CHECK_FN(query_audit_fn, Keyfleet__V1__QueryAuditRequest, kfd_check_query_audit(req))
CHECK_FN(prove_consistency_fn, Keyfleet__V1__ProveConsistencyRequest, kfd_check_prove_consistency(req))
CHECK_FN(get_role_fn, Keyfleet__V1__GetRoleRequest, kfd_check_get_role(req))
CHECK_FN(unrevoke_node_fn, Keyfleet__V1__UnrevokeNodeRequest, kfd_check_unrevoke_node(req))
CHECK_FN(retire_volume_fn, Keyfleet__V1__RetireVolumeRequest, kfd_check_retire_volume(req))
CHECK_FN(wipe_node_fn, Keyfleet__V1__WipeNodeRequest, kfd_check_wipe_node(req))
CHECK_FN(reveal_recovery_key_fn, Keyfleet__V1__RevealRecoveryKeyRequest, kfd_check_reveal_recovery_key(req))
CHECK_FN(enroll_recovery_key_fn, Keyfleet__V1__EnrollRecoveryKeyRequest, kfd_check_enroll_recovery_key(req))
CHECK_FN(get_node_attestation_fn, Keyfleet__V1__GetNodeAttestationRequest, kfd_check_get_node_attestation(req))

static const char *accept_node_attestation_fn(const ProtobufCMessage *m, char *buf, size_t size)
{
    kf_tpm_pcrs expected;
    return kfd_check_accept_node_attestation((const Keyfleet__V1__AcceptNodeAttestationRequest *)m, &expected, buf,
                                             size);
}

static const char *put_policy_fn(const ProtobufCMessage *m, char *buf, size_t size)
{
    kfd_policy *parsed = NULL;
    const char *bad = kfd_check_put_policy((const Keyfleet__V1__PutPolicyRequest *)m, &parsed, buf, size);
    kfd_policy_free(parsed);
    return bad;
}

static const char *revoke_cert_fn(const ProtobufCMessage *m, char *buf, size_t size)
{
    (void)buf, (void)size;
    char serial[KF_SERIAL_MAX];
    kf_peer_kind kind;
    return kfd_check_revoke_cert((const Keyfleet__V1__RevokeCertRequest *)m, serial, &kind);
}

kf_request_check_fn kfd_request_check_for(const ProtobufCMessageDescriptor *desc)
{
    static const struct {
        const ProtobufCMessageDescriptor *desc;
        kf_request_check_fn fn;
    } table[] = {
        {&keyfleet__v1__approve_request__descriptor, approve_fn},
        {&keyfleet__v1__deny_request__descriptor, deny_fn},
        {&keyfleet__v1__check_policy_request__descriptor, check_policy_fn},
        {&keyfleet__v1__revoke_node_request__descriptor, revoke_node_fn},
        {&keyfleet__v1__revoke_cert_request__descriptor, revoke_cert_fn},
        {&keyfleet__v1__create_role_request__descriptor, create_role_fn},
        {&keyfleet__v1__revoke_role_request__descriptor, revoke_role_fn},
        {&keyfleet__v1__revoke_role_credential_request__descriptor, revoke_role_credential_fn},
        {&keyfleet__v1__prove_audit_request__descriptor, prove_audit_fn},
        {&keyfleet__v1__add_member_request__descriptor, add_member_fn},
        {&keyfleet__v1__remove_member_request__descriptor, remove_member_fn},
        {&keyfleet__v1__get_node_attestation_request__descriptor, get_node_attestation_fn},
        {&keyfleet__v1__accept_node_attestation_request__descriptor, accept_node_attestation_fn},
        {&keyfleet__v1__login_request__descriptor, login_fn},
        {&keyfleet__v1__create_secret_id_request__descriptor, create_secret_id_fn},
        {&keyfleet__v1__query_audit_request__descriptor, query_audit_fn},
        {&keyfleet__v1__prove_consistency_request__descriptor, prove_consistency_fn},
        {&keyfleet__v1__put_policy_request__descriptor, put_policy_fn},
        {&keyfleet__v1__get_role_request__descriptor, get_role_fn},
        {&keyfleet__v1__unrevoke_node_request__descriptor, unrevoke_node_fn},
        {&keyfleet__v1__retire_volume_request__descriptor, retire_volume_fn},
        {&keyfleet__v1__wipe_node_request__descriptor, wipe_node_fn},
        {&keyfleet__v1__reveal_recovery_key_request__descriptor, reveal_recovery_key_fn},
        {&keyfleet__v1__enroll_recovery_key_request__descriptor, enroll_recovery_key_fn},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (table[i].desc == desc)
            return table[i].fn;
    return kf_node_check_for(desc);
}
