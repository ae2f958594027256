/* Every RPC of keyfleet.v1, who may call it, and its handler. A NULL handler answers
 * unimplemented until the issue that builds it lands (docs/protocol.md lists which). */
#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/node.pb-c.h"
#include "app.h"
#include "rpc.h"
#include "server.h"

#define NODE(m, req, fn) {"/keyfleet.v1.NodeService/" m, &keyfleet__v1__##req##__descriptor, KF_PEER_NODE, fn}
#define ADMIN(m, req, fn) {"/keyfleet.v1.AdminService/" m, &keyfleet__v1__##req##__descriptor, KF_PEER_OPERATOR, fn}

const kfd_method kfd_methods[] = {
    NODE("Enroll", enroll_request, kfd_rpc_enroll),
    NODE("Release", release_request, kfd_rpc_release),
    NODE("Login", login_request, kfd_rpc_login),
    NODE("Heartbeat", heartbeat_request, kfd_rpc_heartbeat),
    ADMIN("ListPending", list_pending_request, kfd_rpc_list_pending),
    ADMIN("Approve", approve_request, kfd_rpc_approve),
    ADMIN("Deny", deny_request, kfd_rpc_deny),
    ADMIN("QueryAudit", query_audit_request, kfd_rpc_query_audit),
    ADMIN("VerifyAudit", verify_audit_request, kfd_rpc_verify_audit),
    ADMIN("GetPolicy", get_policy_request, kfd_rpc_get_policy),
    ADMIN("PutPolicy", put_policy_request, kfd_rpc_put_policy),
    ADMIN("CheckPolicy", check_policy_request, kfd_rpc_check_policy),
    ADMIN("RevokeNode", revoke_node_request, kfd_rpc_revoke_node),
    ADMIN("CreateRole", create_role_request, kfd_rpc_create_role),
    ADMIN("GetRole", get_role_request, kfd_rpc_get_role),
    ADMIN("CreateSecretId", create_secret_id_request, kfd_rpc_create_secret_id),
    ADMIN("RevokeRole", revoke_role_request, kfd_rpc_revoke_role),
    ADMIN("ClusterStatus", cluster_status_request, kfd_rpc_cluster_status),
    ADMIN("RotateKms", rotate_kms_request, kfd_rpc_rotate_kms),
};

const size_t kfd_methods_count = sizeof(kfd_methods) / sizeof(kfd_methods[0]);

_Static_assert(sizeof(kfd_methods) / sizeof(kfd_methods[0]) <= KFD_METRICS_MAX_METHODS, "metrics table too small");
