/* keyfleetctl status: the coordinator's health, as seen with the operator certificate. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "keyfleet/v1/admin.pb-c.h"

int kfctl_cmd_status(kfctl *ctl, int argc, char **argv)
{
    int json;
    if (kfctl_json_flag(argc, argv, "status", &json) != 0)
        return KFCTL_EXIT_USAGE;
    kf_rpc_client *c = kfctl_client(ctl);
    if (c == NULL)
        return 1;
    Keyfleet__V1__ClusterStatusRequest req = KEYFLEET__V1__CLUSTER_STATUS_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    int rc = 1;
    if (kfctl_call(ctl, c, "keyfleet.v1.AdminService/ClusterStatus", &req.base,
                   &keyfleet__v1__cluster_status_response__descriptor, &m) != 0)
        goto out;
    Keyfleet__V1__ClusterStatusResponse *resp = (Keyfleet__V1__ClusterStatusResponse *)m;
    long http = 0;
    char *body = NULL;
    kf_err err = {0};
    int got = kf_rpc_get(c, "/readyz", &http, &body, &err) == 0;
    int ready = got && http == 200;
    /* "not ready: WHY\n" from the coordinator; printed on the same line so scripts keep one. */
    const char *why = got && body != NULL && strncmp(body, "not ready: ", 11) == 0 ? body + 11 : got ? "" : err.msg;
    int why_len = (int)strcspn(why, "\n");
    if (json) {
        json_t *members = json_array();
        for (size_t i = 0; i < resp->n_members; i++)
            json_array_append_new(members, json_pack("{s:s, s:s, s:b, s:I}", "name", resp->members[i]->name, "rpc",
                                                     resp->members[i]->rpc_address, "leader", resp->members[i]->leader,
                                                     "applied", (json_int_t)resp->members[i]->applied_index));
        json_t *o = json_pack("{s:s, s:s, s:b, s:s%, s:s, s:I, s:i, s:i, s:I, s:s, s:o}", "coordinator", resp->self,
                              "version", resp->version, "ready", ready, "reason", ready ? "" : why, (size_t)(ready ? 0 : why_len),
                              "leader", resp->leader, "uptime_seconds", (json_int_t)resp->uptime_seconds,
                              "kms_key_version", (int)resp->kms_key_version, "kms_key_missing",
                              (int)resp->kms_key_missing, "audit_diverged_seq", (json_int_t)resp->audit_diverged_seq,
                              "audit_diverged_reason", resp->audit_diverged_reason, "members", members);
        free(body);
        if (kfctl_print_json(o) != 0)
            goto free_resp;
    } else {
        printf("coordinator: %s\nversion: %s\nready: %s%s%.*s%s\nleader: %s\nuptime: %llus\n", resp->self, resp->version,
               ready ? "yes" : "no", !ready && why_len > 0 ? " (" : "", why_len, why, !ready && why_len > 0 ? ")" : "",
               resp->leader[0] ? resp->leader : "(none)", (unsigned long long)resp->uptime_seconds);
        free(body);
        if (resp->kms_key_missing != 0)
            printf("kms: version %u, missing version %u\n", resp->kms_key_version, resp->kms_key_missing);
        if (resp->audit_diverged_seq != 0)
            printf("audit: diverged at seq %llu (%s)\n", (unsigned long long)resp->audit_diverged_seq,
                   resp->audit_diverged_reason);
        printf("members:\n");
        for (size_t i = 0; i < resp->n_members; i++)
            printf("  - %s rpc=%s%s applied=%llu\n", resp->members[i]->name, resp->members[i]->rpc_address,
                   resp->members[i]->leader ? " leader" : "", (unsigned long long)resp->members[i]->applied_index);
    }
    rc = ready ? 0 : 1;
free_resp:
    protobuf_c_message_free_unpacked(m, NULL);
out:
    kf_rpc_client_free(c);
    return rc;
}
