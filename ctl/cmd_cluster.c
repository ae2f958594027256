/* keyfleetctl cluster status | add NAME --raft HOST:PORT --rpc HOST:PORT | remove NAME
 * status asks every member for its own view, so each member's applied index is its own word. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "keyfleet/v1/admin.pb-c.h"

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

static int cmd_status(kfctl *ctl, bool json)
{
    Keyfleet__V1__ClusterStatusRequest req = KEYFLEET__V1__CLUSTER_STATUS_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/ClusterStatus", &req.base,
                        &keyfleet__v1__cluster_status_response__descriptor, &m) != 0)
        return 1;
    Keyfleet__V1__ClusterStatusResponse *resp = (Keyfleet__V1__ClusterStatusResponse *)m;
    if (!json)
        printf("leader: %s\nterm: %llu\nmembers:\n", resp->leader[0] ? resp->leader : "(none)",
               (unsigned long long)resp->term);
    int rc = resp->leader[0] ? 0 : 1;
    json_t *members = json_array();
    for (size_t i = 0; i < resp->n_members; i++) {
        const Keyfleet__V1__ClusterMember *mem = resp->members[i];
        Keyfleet__V1__ClusterStatusResponse *own = mem->rpc_address[0] ? ask_member(ctl, mem->rpc_address) : NULL;
        json_t *jm = json_pack("{s:s, s:s, s:s, s:b, s:b, s:b}", "name", mem->name, "raft", mem->raft_address, "rpc",
                               mem->rpc_address, "voter", mem->voter, "leader", mem->leader, "reachable", own != NULL);
        json_array_append_new(members, jm);
        if (!json)
            printf("  - %s raft=%s rpc=%s %s%s", mem->name, mem->raft_address, mem->rpc_address,
                   mem->voter ? "voter" : "spare", mem->leader ? " leader" : "");
        if (own == NULL) {
            if (!json)
                printf(" unreachable\n");
            continue;
        }
        unsigned long long applied = 0;
        for (size_t k = 0; k < own->n_members; k++)
            if (strcmp(own->members[k]->name, own->self) == 0)
                applied = (unsigned long long)own->members[k]->applied_index;
        json_t *more = json_pack("{s:I, s:I, s:s, s:i, s:i, s:I, s:I, s:s}", "applied", (json_int_t)applied,
                                         "term", (json_int_t)own->term, "sees_leader", own->leader, "kms_version",
                                         (int)own->kms_key_version, "kms_missing", (int)own->kms_key_missing,
                                         "audit_records", (json_int_t)own->audit_head_seq, "audit_diverged_seq",
                                         (json_int_t)own->audit_diverged_seq, "audit_diverged_reason",
                                         own->audit_diverged_reason);
        json_object_update(jm, more);
        json_decref(more);
        if (!json)
            printf(" applied=%llu term=%llu sees_leader=%s kms_version=%u", applied, (unsigned long long)own->term,
                   own->leader[0] ? own->leader : "(none)", own->kms_key_version);
        if (own->kms_key_missing != 0) {
            if (!json)
                printf(" kms_missing=%u", own->kms_key_missing);
            rc = 1;
        }
        if (!json)
            printf(" audit_records=%llu", (unsigned long long)own->audit_head_seq);
        if (own->audit_diverged_seq != 0) {
            /* Its audit log left the signed history: it serves nothing (operations.md). */
            if (!json)
                printf(" diverged at seq %llu (%s)", (unsigned long long)own->audit_diverged_seq,
                       own->audit_diverged_reason);
            rc = 1;
        }
        if (!json)
            printf("\n");
        protobuf_c_message_free_unpacked(&own->base, NULL);
    }
    if (json && kfctl_print_json(json_pack("{s:s, s:I, s:b, s:o}", "leader", resp->leader, "term",
                                           (json_int_t)resp->term, "healthy", rc == 0, "members", members)) != 0)
        rc = 1;
    else if (!json)
        json_decref(members);
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

int kfctl_cmd_cluster(kfctl *ctl, int argc, char **argv)
{
    if (argc < 2) {
        kfctl_usage("cluster");
        return KFCTL_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "status") == 0 && (argc == 2 || (argc == 3 && strcmp(argv[2], "--json") == 0))) {
        if (kfctl_client_config(ctl) != 0)
            return 1;
        return cmd_status(ctl, argc == 3);
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
        kfctl_usage("cluster");
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
            kfctl_usage("cluster");
            return KFCTL_EXIT_USAGE;
        }
    }
    if (optind != argc || req.raft_address == NULL || req.rpc_address == NULL) {
        kfctl_usage("cluster");
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
