/* What AdminService handlers check in a request before anything else is done with it, apart
 * from the handlers so that tests/fuzz/fuzz_rpc_request.c reaches them (NodeService's checks are
 * common/kf_node_check.h). Each returns NULL when the request is valid, else what is wrong (a
 * static text, or one written to buf). */
#ifndef KFD_RPC_CHECK_H
#define KFD_RPC_CHECK_H

#include <stddef.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "kf_identity.h"
#include "kf_node_check.h"
#include "kf_tpm_evidence.h"

#define KFD_ROLE_MAX_CIDRS 16
#define KFD_ROLE_TOKEN_TTL_DEFAULT 1200
#define KFD_ROLE_TOKEN_TTL_MAX (24 * 3600)
#define KFD_ROLE_ACCESSOR_HEX 32
/* "kfs." and the base64url text of 32 random bytes (rpc_approle.c). */
#define KFD_SECRET_ID_PREFIX "kfs."
#define KFD_SECRET_ID_LEN (4 + 43)
#define KFD_ROLE_ID_LEN 36
#define KFD_AUDIT_QUERY_LIMIT_MAX 10000

struct kfd_policy;

const char *kfd_check_approve(const Keyfleet__V1__ApproveRequest *req);
const char *kfd_check_deny(const Keyfleet__V1__DenyRequest *req);
const char *kfd_check_check_policy(const Keyfleet__V1__CheckPolicyRequest *req);
const char *kfd_check_revoke_node(const Keyfleet__V1__RevokeNodeRequest *req);
/* Also returns the normalized serial and the kind named (KF_PEER_NONE when none). */
const char *kfd_check_revoke_cert(const Keyfleet__V1__RevokeCertRequest *req, char serial[KF_SERIAL_MAX],
                                  kf_peer_kind *kind);
const char *kfd_check_create_role(const Keyfleet__V1__CreateRoleRequest *req, char *buf, size_t size);
const char *kfd_check_revoke_role(const Keyfleet__V1__RevokeRoleRequest *req);
const char *kfd_check_revoke_role_credential(const Keyfleet__V1__RevokeRoleCredentialRequest *req);
const char *kfd_check_prove_audit(const Keyfleet__V1__ProveAuditRequest *req);
const char *kfd_check_add_member(const Keyfleet__V1__AddMemberRequest *req);
const char *kfd_check_remove_member(const Keyfleet__V1__RemoveMemberRequest *req);
const char *kfd_check_get_node_attestation(const Keyfleet__V1__GetNodeAttestationRequest *req);
/* Also returns the expected PCR values when given. */
const char *kfd_check_accept_node_attestation(const Keyfleet__V1__AcceptNodeAttestationRequest *req,
                                              kf_tpm_pcrs *expected, char *buf, size_t size);

/* Login: role_id a 36-character lowercase UUID, secret_id "kfs." and 43 base64url characters.
 * Shapes only: whether the role or the secret exists is the handler's (one generic answer). */
const char *kfd_check_login(const Keyfleet__V1__LoginRequest *req);
const char *kfd_check_create_secret_id(const Keyfleet__V1__CreateSecretIdRequest *req);
const char *kfd_check_query_audit(const Keyfleet__V1__QueryAuditRequest *req);
/* old_size at least 1 and, when new_size is given, at most new_size (the handler checks it
 * against the checkpoint new_size names). */
const char *kfd_check_prove_consistency(const Keyfleet__V1__ProveConsistencyRequest *req);
/* Also parses the YAML: on success *parsed is the policy (the caller frees it with
 * kfd_policy_free), else NULL. */
const char *kfd_check_put_policy(const Keyfleet__V1__PutPolicyRequest *req, struct kfd_policy **parsed, char *buf,
                                 size_t size);

const char *kfd_check_get_role(const Keyfleet__V1__GetRoleRequest *req);
const char *kfd_check_unrevoke_node(const Keyfleet__V1__UnrevokeNodeRequest *req);
const char *kfd_check_retire_volume(const Keyfleet__V1__RetireVolumeRequest *req);
const char *kfd_check_wipe_node(const Keyfleet__V1__WipeNodeRequest *req);
const char *kfd_check_reveal_recovery_key(const Keyfleet__V1__RevealRecoveryKeyRequest *req);
const char *kfd_check_enroll_recovery_key(const Keyfleet__V1__EnrollRecoveryKeyRequest *req);

/* The check for requests of type desc (NodeService's and AdminService's), or NULL. */
kf_request_check_fn kfd_request_check_for(const ProtobufCMessageDescriptor *desc);

#endif
