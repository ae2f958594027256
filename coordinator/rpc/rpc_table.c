/* Every RPC of keyfleet.v1, who may call it, and its handler. A NULL handler answers
 * unimplemented until the issue that builds it lands (docs/protocol.md lists which). */
#include "rpc/rpc_table.h"

#include "front/metrics.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/node.pb-c.h"
#include "rpc/rpc_admin.h"
#include "rpc/rpc_attest.h"
#include "rpc/rpc_approle.h"
#include "rpc/rpc_audit.h"
#include "rpc/rpc_cluster.h"
#include "rpc/rpc_erase.h"
#include "rpc/rpc_heartbeat.h"
#include "rpc/rpc_lifecycle.h"
#include "rpc/rpc_node.h"
#include "rpc/rpc_recovery.h"

/* W: changes state, so only the Raft leader serves it; R: served by any replica from its copy. */
#define W true
#define R false
#define NODE(m, req, fn, w)                                                                                          \
    {"/keyfleet.v1.NodeService/" m, &keyfleet__v1__##req##__descriptor, KF_PEER_NODE, fn, w, false}
/* Callable without an identity: Login is how a node gets one. */
#define ANONYMOUS_NODE(m, req, fn, w)                                                                                \
    {"/keyfleet.v1.NodeService/" m, &keyfleet__v1__##req##__descriptor, KF_PEER_NODE, fn, w, true}
#define ADMIN(m, req, fn, w)                                                                                         \
    {"/keyfleet.v1.AdminService/" m, &keyfleet__v1__##req##__descriptor, KF_PEER_OPERATOR, fn, w, false}

/* Coordinators asking each other (the leader confirming its audit head, docs/audit.md). */
#define PEER(m, req, fn, w)                                                                                          \
    {"/keyfleet.v1.PeerService/" m, &keyfleet__v1__##req##__descriptor, KF_PEER_COORDINATOR, fn, w, false}

const kfd_method kfd_methods[] = {
    NODE("Enroll", enroll_request, kfd_rpc_enroll, W),
    NODE("Release", release_request, kfd_rpc_release, W),
    ANONYMOUS_NODE("Login", login_request, kfd_rpc_login, W),
    NODE("Heartbeat", heartbeat_request, kfd_rpc_heartbeat, W),
    NODE("RotateKey", rotate_key_request, kfd_rpc_rotate_key, W),
    NODE("EnrollRecoveryKey", enroll_recovery_key_request, kfd_rpc_enroll_recovery_key, W),
    ADMIN("ListPending", list_pending_request, kfd_rpc_list_pending, R),
    ADMIN("Approve", approve_request, kfd_rpc_approve, W),
    ADMIN("Deny", deny_request, kfd_rpc_deny, W),
    ADMIN("QueryAudit", query_audit_request, kfd_rpc_query_audit, R),
    ADMIN("VerifyAudit", verify_audit_request, kfd_rpc_verify_audit, R),
    ADMIN("GetCheckpoint", get_checkpoint_request, kfd_rpc_get_checkpoint, R),
    ADMIN("ProveAudit", prove_audit_request, kfd_rpc_prove_audit, R),
    ADMIN("ProveConsistency", prove_consistency_request, kfd_rpc_prove_consistency, R),
    ADMIN("GetPolicy", get_policy_request, kfd_rpc_get_policy, R),
    ADMIN("PutPolicy", put_policy_request, kfd_rpc_put_policy, W),
    ADMIN("CheckPolicy", check_policy_request, kfd_rpc_check_policy, R),
    ADMIN("RevokeNode", revoke_node_request, kfd_rpc_revoke_node, W),
    ADMIN("GetNodeAttestation", get_node_attestation_request, kfd_rpc_get_node_attestation, R),
    ADMIN("AcceptNodeAttestation", accept_node_attestation_request, kfd_rpc_accept_node_attestation, W),
    ADMIN("CreateRole", create_role_request, kfd_rpc_create_role, W),
    ADMIN("GetRole", get_role_request, kfd_rpc_get_role, R),
    ADMIN("CreateSecretId", create_secret_id_request, kfd_rpc_create_secret_id, W),
    ADMIN("RevokeRole", revoke_role_request, kfd_rpc_revoke_role, W),
    ADMIN("RevokeRoleCredential", revoke_role_credential_request, kfd_rpc_revoke_role_credential, W),
    ADMIN("ClusterStatus", cluster_status_request, kfd_rpc_cluster_status, R),
    ADMIN("RotateKms", rotate_kms_request, kfd_rpc_rotate_kms, W),
    ADMIN("AddMember", add_member_request, kfd_rpc_add_member, W),
    ADMIN("RemoveMember", remove_member_request, kfd_rpc_remove_member, W),
    ADMIN("RevokeCert", revoke_cert_request, kfd_rpc_revoke_cert, W),
    ADMIN("ListVolumes", list_volumes_request, kfd_rpc_list_volumes, R),
    ADMIN("ListNodes", list_nodes_request, kfd_rpc_list_nodes, R),
    ADMIN("UnrevokeNode", unrevoke_node_request, kfd_rpc_unrevoke_node, W),
    ADMIN("RetireVolume", retire_volume_request, kfd_rpc_retire_volume, W),
    ADMIN("RevealRecoveryKey", reveal_recovery_key_request, kfd_rpc_reveal_recovery_key, W),
    ADMIN("WipeNode", wipe_node_request, kfd_rpc_wipe_node, W),
    PEER("AuditHead", audit_head_request, kfd_rpc_audit_head, R),
};

const size_t kfd_methods_count = sizeof(kfd_methods) / sizeof(kfd_methods[0]);

_Static_assert(sizeof(kfd_methods) / sizeof(kfd_methods[0]) <= KFD_METRICS_MAX_METHODS, "metrics table too small");
