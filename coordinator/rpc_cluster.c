/* AdminService.ClusterStatus. Until replication lands a coordinator is a cluster of one: it is
 * its own leader and sole member. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "rpc.h"

void kfd_rpc_cluster_status(kfd_call *call)
{
    kfd_server *srv = call->srv;
    char rpc_addr[80];
    /* The configured host with the bound port, which differs when the config asked for port 0. */
    const char *spec = srv->cfg->listen.v[0];
    int host_len = (int)(strrchr(spec, ':') - spec);
    snprintf(rpc_addr, sizeof(rpc_addr), "%.*s:%d", host_len, spec, kfd_server_port(srv, 0));
    Keyfleet__V1__ClusterMember self = KEYFLEET__V1__CLUSTER_MEMBER__INIT;
    self.id = 1;
    self.name = srv->cfg->name;
    self.rpc_address = rpc_addr;
    self.raft_address = (char *)"";
    self.leader = true;
    self.voter = true;
    Keyfleet__V1__ClusterMember *members[] = {&self};
    Keyfleet__V1__ClusterStatusResponse resp = KEYFLEET__V1__CLUSTER_STATUS_RESPONSE__INIT;
    resp.leader = srv->cfg->name;
    resp.self = srv->cfg->name;
    resp.n_members = 1;
    resp.members = members;
    resp.version = (char *)KF_VERSION;
    resp.uptime_seconds = (uint64_t)(time(NULL) - srv->started);
    kfd_call_reply(call, &resp.base);
}
