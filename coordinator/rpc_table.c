/* Every RPC of keyfleet.v1, who may call it, and its handler. A NULL handler answers
 * unimplemented until the issue that builds it lands (docs/protocol.md lists which). */
#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/node.pb-c.h"
#include "rpc.h"
#include "server.h"

#define NODE(m, req) {"/keyfleet.v1.NodeService/" m, &keyfleet__v1__##req##__descriptor, KF_PEER_NODE, NULL}
#define ADMIN(m, req, fn) {"/keyfleet.v1.AdminService/" m, &keyfleet__v1__##req##__descriptor, KF_PEER_OPERATOR, fn}

const kfd_method kfd_methods[] = {
    NODE("Enroll", enroll_request),
    NODE("Release", release_request),
    NODE("Login", login_request),
    NODE("Heartbeat", heartbeat_request),
    ADMIN("ListPending", list_pending_request, NULL),
    ADMIN("Approve", approve_request, NULL),
    ADMIN("Deny", deny_request, NULL),
    ADMIN("QueryAudit", query_audit_request, NULL),
    ADMIN("VerifyAudit", verify_audit_request, NULL),
    ADMIN("GetPolicy", get_policy_request, NULL),
    ADMIN("PutPolicy", put_policy_request, NULL),
    ADMIN("CheckPolicy", check_policy_request, NULL),
    ADMIN("RevokeNode", revoke_node_request, NULL),
    ADMIN("CreateRole", create_role_request, NULL),
    ADMIN("GetRole", get_role_request, NULL),
    ADMIN("CreateSecretId", create_secret_id_request, NULL),
    ADMIN("RevokeRole", revoke_role_request, NULL),
    ADMIN("ClusterStatus", cluster_status_request, kfd_rpc_cluster_status),
    ADMIN("RotateKms", rotate_kms_request, NULL),
};

const size_t kfd_methods_count = sizeof(kfd_methods) / sizeof(kfd_methods[0]);

_Static_assert(sizeof(kfd_methods) / sizeof(kfd_methods[0]) <= KFD_METRICS_MAX_METHODS, "metrics table too small");
