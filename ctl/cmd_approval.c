/* keyfleetctl pending | approve ID [--totp CODE] [--comment TEXT] | deny ID [--reason TEXT] */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "keyfleet/v1/admin.pb-c.h"

static void fmt_time(int64_t t, char *buf, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* pending --json: one array, a release request's volume or a held change's description. */
static int print_pending_json(const Keyfleet__V1__ListPendingResponse *resp)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < resp->n_requests; i++) {
        const Keyfleet__V1__PendingRequest *p = resp->requests[i];
        char created[32] = "", expires[32] = "";
        if (p->created_at != NULL)
            fmt_time(p->created_at->seconds, created, sizeof(created));
        if (p->expires_at != NULL)
            fmt_time(p->expires_at->seconds, expires, sizeof(expires));
        json_t *by = json_array();
        for (size_t k = 0; k < p->n_approved_by; k++)
            json_array_append_new(by, json_string(p->approved_by[k]));
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:o, s:b}", "request_id", p->request_id,
                           "node", p->node, "volume_id", p->volume != NULL ? p->volume->id : "", "volume_name",
                           p->volume != NULL ? p->volume->name : "", "change", p->change, "source_address",
                           p->source_address, "created_at", created, "expires_at", expires, "rule", p->rule,
                           "approvals_needed", (int)p->approvals_needed, "approved_by", by, "totp_required",
                           p->totp_required));
    }
    return kfctl_print_json(arr);
}

int kfctl_cmd_pending(kfctl *ctl, int argc, char **argv)
{
    int json;
    if (kfctl_json_flag(argc, argv, "pending", &json) != 0)
        return KFCTL_EXIT_USAGE;
    Keyfleet__V1__ListPendingRequest req = KEYFLEET__V1__LIST_PENDING_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    int rc = 1;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/ListPending", &req.base,
                        &keyfleet__v1__list_pending_response__descriptor, &m) == 0) {
        Keyfleet__V1__ListPendingResponse *resp = (Keyfleet__V1__ListPendingResponse *)m;
        if (json) {
            rc = print_pending_json(resp) == 0 ? 0 : 1;
            protobuf_c_message_free_unpacked(m, NULL);
            return rc;
        }
        printf("%-32s  %-16s  %-36s  %-9s  %-20s  %s\n", "REQUEST", "NODE", "VOLUME", "APPROVALS", "EXPIRES", "RULE");
        for (size_t i = 0; i < resp->n_requests; i++) {
            Keyfleet__V1__PendingRequest *p = resp->requests[i];
            char exp[32] = "-";
            if (p->expires_at != NULL)
                fmt_time(p->expires_at->seconds, exp, sizeof(exp));
            char appr[16];
            snprintf(appr, sizeof(appr), "%zu/%u", p->n_approved_by, p->approvals_needed);
            if (p->change[0] != '\0')
                printf("%-32s  %-16s  %-36s  %-9s  %-20s  %s%s\n", p->request_id, "(change)", p->change, appr, exp,
                       p->rule, p->totp_required ? " +totp" : "");
            else
                printf("%-32s  %-16s  %-36s  %-9s  %-20s  %s%s\n", p->request_id, p->node,
                       p->volume != NULL ? p->volume->id : "", appr, exp, p->rule, p->totp_required ? " +totp" : "");
        }
        protobuf_c_message_free_unpacked(m, NULL);
        rc = 0;
    }
    return rc;
}

int kfctl_cmd_approve(kfctl *ctl, int argc, char **argv)
{
    const char *totp = "", *comment = "";
    static const struct option opts[] = {{"totp", required_argument, NULL, 't'},
                                         {"comment", required_argument, NULL, 'c'},
                                         {NULL, 0, NULL, 0}};
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 't')
            totp = optarg;
        else if (o == 'c')
            comment = optarg;
        else
            return KFCTL_EXIT_USAGE;
    }
    if (optind + 1 != argc) {
        kfctl_usage("approve");
        return KFCTL_EXIT_USAGE;
    }
    Keyfleet__V1__ApproveRequest req = KEYFLEET__V1__APPROVE_REQUEST__INIT;
    req.request_id = argv[optind];
    req.totp_code = (char *)totp;
    req.comment = (char *)comment;
    ProtobufCMessage *m = NULL;
    int rc = 1;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/Approve", &req.base,
                        &keyfleet__v1__approve_response__descriptor, &m) == 0) {
        Keyfleet__V1__ApproveResponse *resp = (Keyfleet__V1__ApproveResponse *)m;
        printf("%s: %u of %u approvals%s\n", req.request_id, resp->approvals_have, resp->approvals_needed,
               resp->approved ? "; approved, the node's next poll gets the key" : "");
        protobuf_c_message_free_unpacked(m, NULL);
        rc = 0;
    }
    return rc;
}

int kfctl_cmd_deny(kfctl *ctl, int argc, char **argv)
{
    const char *reason = "";
    static const struct option opts[] = {{"reason", required_argument, NULL, 'r'}, {NULL, 0, NULL, 0}};
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'r')
            reason = optarg;
        else
            return KFCTL_EXIT_USAGE;
    }
    if (optind + 1 != argc) {
        kfctl_usage("deny");
        return KFCTL_EXIT_USAGE;
    }
    Keyfleet__V1__DenyRequest req = KEYFLEET__V1__DENY_REQUEST__INIT;
    req.request_id = argv[optind];
    req.reason = (char *)reason;
    ProtobufCMessage *m = NULL;
    int rc = 1;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/Deny", &req.base, &keyfleet__v1__deny_response__descriptor,
                        &m) == 0) {
        printf("%s: denied\n", req.request_id);
        protobuf_c_message_free_unpacked(m, NULL);
        rc = 0;
    }
    return rc;
}
