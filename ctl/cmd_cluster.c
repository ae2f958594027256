/* keyfleetctl cluster status | add NAME --raft HOST:PORT --rpc HOST:PORT | remove NAME
 * status asks every member for its own view, so each member's applied index is its own word. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "keyfleet/v1/admin.pb-c.h"

static void usage(void)
{
    fprintf(stderr, "usage: keyfleetctl cluster status\n"
                    "       keyfleetctl cluster add NAME --raft HOST:PORT --rpc HOST:PORT\n"
                    "       keyfleetctl cluster remove NAME\n");
}

/* Asks the member at rpc for its own view; NULL when it does not answer. */
static Keyfleet__V1__ClusterStatusResponse *ask_member(kfctl *ctl, const char *rpc)
{
    const char *servers[] = {rpc};
    kf_rpc_opts opts = {.servers = servers, .n_servers = 1, .cert_file = ctl->cert, .key_file = ctl->key,
                        .ca_file = ctl->ca, .timeout_ms = 2000};
    kf_rpc_client *c = NULL;
    kf_err err = {0};
    if (kf_rpc_client_new(&opts, &c, &err) != 0)
        return NULL;
    Keyfleet__V1__ClusterStatusRequest req = KEYFLEET__V1__CLUSTER_STATUS_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    kf_rpc_status st;
    int r = kf_rpc_call(c, "keyfleet.v1.AdminService/ClusterStatus", &req.base,
                        &keyfleet__v1__cluster_status_response__descriptor, &m, &st, &err);
    kf_rpc_client_free(c);
    if (r != 0 || st.code != KF_CONNECT_OK) {
        if (m != NULL)
            protobuf_c_message_free_unpacked(m, NULL);
        return NULL;
    }
    return (Keyfleet__V1__ClusterStatusResponse *)m;
}

static int cmd_status(kfctl *ctl)
{
    Keyfleet__V1__ClusterStatusRequest req = KEYFLEET__V1__CLUSTER_STATUS_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/ClusterStatus", &req.base,
                        &keyfleet__v1__cluster_status_response__descriptor, &m) != 0)
        return 1;
    Keyfleet__V1__ClusterStatusResponse *resp = (Keyfleet__V1__ClusterStatusResponse *)m;
    printf("leader: %s\nterm: %llu\nmembers:\n", resp->leader[0] ? resp->leader : "(none)",
           (unsigned long long)resp->term);
    int rc = resp->leader[0] ? 0 : 1;
    for (size_t i = 0; i < resp->n_members; i++) {
        const Keyfleet__V1__ClusterMember *mem = resp->members[i];
        Keyfleet__V1__ClusterStatusResponse *own = mem->rpc_address[0] ? ask_member(ctl, mem->rpc_address) : NULL;
        printf("  - %s raft=%s rpc=%s %s%s", mem->name, mem->raft_address, mem->rpc_address,
               mem->voter ? "voter" : "spare", mem->leader ? " leader" : "");
        if (own == NULL) {
            printf(" unreachable\n");
            continue;
        }
        unsigned long long applied = 0;
        for (size_t k = 0; k < own->n_members; k++)
            if (strcmp(own->members[k]->name, own->self) == 0)
                applied = (unsigned long long)own->members[k]->applied_index;
        printf(" applied=%llu term=%llu sees_leader=%s kms_version=%u", applied, (unsigned long long)own->term,
               own->leader[0] ? own->leader : "(none)", own->kms_key_version);
        if (own->kms_key_missing != 0) {
            printf(" kms_missing=%u", own->kms_key_missing);
            rc = 1;
        }
        printf(" audit_records=%llu", (unsigned long long)own->audit_head_seq);
        if (own->audit_diverged_seq != 0) {
            /* Its audit log left the signed history: it serves nothing (operations.md). */
            printf(" diverged at seq %llu (%s)", (unsigned long long)own->audit_diverged_seq,
                   own->audit_diverged_reason);
            rc = 1;
        }
        printf("\n");
        protobuf_c_message_free_unpacked(&own->base, NULL);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

int kfctl_cmd_cluster(kfctl *ctl, int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return KFCTL_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "status") == 0 && argc == 2) {
        if (kfctl_client_config(ctl) != 0)
            return 1;
        return cmd_status(ctl);
    }
    if (strcmp(sub, "remove") == 0 && argc == 3) {
        Keyfleet__V1__RemoveMemberRequest req = KEYFLEET__V1__REMOVE_MEMBER_REQUEST__INIT;
        req.name = argv[2];
        ProtobufCMessage *m = NULL;
        if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/RemoveMember", &req.base,
                            &keyfleet__v1__remove_member_response__descriptor, &m) != 0)
            return 1;
        protobuf_c_message_free_unpacked(m, NULL);
        printf("removed %s\n", argv[2]);
        return 0;
    }
    if (strcmp(sub, "add") != 0 || argc < 3) {
        usage();
        return KFCTL_EXIT_USAGE;
    }
    Keyfleet__V1__AddMemberRequest req = KEYFLEET__V1__ADD_MEMBER_REQUEST__INIT;
    req.name = argv[2];
    static const struct option opts[] = {{"raft", required_argument, NULL, 'r'},
                                         {"rpc", required_argument, NULL, 'p'},
                                         {NULL, 0, NULL, 0}};
    argc -= 2;
    argv += 2;
    optind = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'r')
            req.raft_address = optarg;
        else if (c == 'p')
            req.rpc_address = optarg;
        else {
            usage();
            return KFCTL_EXIT_USAGE;
        }
    }
    if (optind != argc || req.raft_address == NULL || req.rpc_address == NULL) {
        usage();
        return KFCTL_EXIT_USAGE;
    }
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/AddMember", &req.base,
                        &keyfleet__v1__add_member_response__descriptor, &m) != 0)
        return 1;
    protobuf_c_message_free_unpacked(m, NULL);
    printf("added %s as a voter\n", req.name);
    return 0;
}
