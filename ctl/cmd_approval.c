/* keyfleetctl pending | approve ID [--totp -] [--totp-fd N] [--comment TEXT] |
 * deny ID [--reason TEXT] [--totp -] [--totp-fd N] |
 * volume list [--json] */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

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
        json_t *labels = json_object();
        for (size_t k = 0; k < p->n_labels; k++)
            json_object_set_new(labels, p->labels[k]->key, json_string(p->labels[k]->value));
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:s, s:s, s:s, s:s, s:i, s:o, s:b}", "request_id",
                           p->request_id,
                           "node", p->node, "volume_id", p->volume != NULL ? p->volume->id : "", "volume_name",
                           p->volume != NULL ? p->volume->name : "", "labels", labels, "change", p->change, "source_address",
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
        printf("%-32s  %-16s  %-36s  %-6s  %-9s  %-20s  %s\n", "REQUEST", "NODE", "VOLUME", "AGE", "APPROVALS",
               "EXPIRES", "RULE");
        int64_t now = time(NULL);
        for (size_t i = 0; i < resp->n_requests; i++) {
            Keyfleet__V1__PendingRequest *p = resp->requests[i];
            char exp[32] = "-";
            if (p->expires_at != NULL)
                fmt_time(p->expires_at->seconds, exp, sizeof(exp));
            char appr[16], age[32], by[256] = "", vol[400];
            snprintf(appr, sizeof(appr), "%zu/%u", p->n_approved_by, p->approvals_needed);
            int64_t secs = p->created_at != NULL && now > p->created_at->seconds ? now - p->created_at->seconds : 0;
            if (secs < 120)
                snprintf(age, sizeof(age), "%llds", (long long)secs);
            else if (secs < 7200)
                snprintf(age, sizeof(age), "%lldm", (long long)secs / 60);
            else
                snprintf(age, sizeof(age), "%lldh", (long long)secs / 3600);
            for (size_t k = 0; k < p->n_approved_by; k++)
                snprintf(by + strlen(by), sizeof(by) - strlen(by), "%s%s", k == 0 ? " by " : ",", p->approved_by[k]);
            /* A release request's volume by name (its id when it has none) and labels. */
            const char *vname = p->volume == NULL ? "" : p->volume->name[0] ? p->volume->name : p->volume->id;
            snprintf(vol, sizeof(vol), "%s", vname);
            for (size_t k = 0; k < p->n_labels; k++)
                snprintf(vol + strlen(vol), sizeof(vol) - strlen(vol), " %s=%s", p->labels[k]->key,
                         p->labels[k]->value);
            if (p->change[0] != '\0')
                printf("%-32s  %-16s  %-36s  %-6s  %-9s  %-20s  %s%s%s\n", p->request_id, "(change)", p->change, age,
                       appr, exp, p->rule, p->totp_required ? " +totp" : "", by);
            else
                printf("%-32s  %-16s  %-36s  %-6s  %-9s  %-20s  %s%s%s\n", p->request_id, p->node, vol, age, appr, exp,
                       p->rule, p->totp_required ? " +totp" : "", by);
        }
        protobuf_c_message_free_unpacked(m, NULL);
        rc = 0;
    }
    return rc;
}

/* volume list [--json]: every enrolled volume with its key's age in days and whether a key
 * rotation is in progress (docs/operations.md, "Rotating volume keys"). */
int kfctl_cmd_volume(kfctl *ctl, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "show") == 0)
        return kfctl_volume_show(ctl, argc, argv);
    if (argc >= 2 && strcmp(argv[1], "retire") == 0)
        return kfctl_volume_retire(ctl, argc, argv);
    if (argc >= 2 && strcmp(argv[1], "recovery-key") == 0)
        return kfctl_volume_recovery_key(ctl, argc - 1, argv + 1);
    bool json = argc == 3 && strcmp(argv[2], "--json") == 0;
    if ((argc != 2 && !json) || strcmp(argv[1], "list") != 0)
        return kfctl_usage("volume");
    Keyfleet__V1__ListVolumesRequest req = KEYFLEET__V1__LIST_VOLUMES_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/ListVolumes", &req.base,
                        &keyfleet__v1__list_volumes_response__descriptor, &m) != 0)
        return 1;
    Keyfleet__V1__ListVolumesResponse *resp = (Keyfleet__V1__ListVolumesResponse *)m;
    int64_t now = time(NULL);
    if (!json)
        printf("%-38s  %-5s  %-16s  %-20s  %-8s  %-8s  %-7s  %-11s  %s\n", "VOLUME", "KIND", "NODE", "KEY MADE",
               "KEY AGE", "MAX AGE", "OVERDUE", "ROTATION", "ERASE");
    for (size_t i = 0; i < resp->n_volumes; i++) {
        Keyfleet__V1__VolumeInfo *v = resp->volumes[i];
        const char *id = v->volume != NULL ? v->volume->id : "";
        const char *kind = v->volume != NULL && v->volume->kind == KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS ? "zfs"
                                                                                                             : "luks2";
        int64_t age_days = now > v->key_created_at ? (now - v->key_created_at) / 86400 : 0;
        /* A crypt-erase: pending until the node confirmed it (docs/operations.md). */
        const char *erase = v->erase_requested_at == 0 ? NULL : v->erased_at != 0 ? "erased" : "pending";
        char made[32];
        fmt_time(v->key_created_at, made, sizeof(made));
        char age[24];
        snprintf(age, sizeof(age), "%lldd", (long long)age_days);
        char max[24] = "-"; /* days, or hours/seconds for a limit under a day */
        if (v->max_key_age_s >= 86400)
            snprintf(max, sizeof(max), "%llud", (unsigned long long)(v->max_key_age_s / 86400));
        else if (v->max_key_age_s >= 3600)
            snprintf(max, sizeof(max), "%lluh", (unsigned long long)(v->max_key_age_s / 3600));
        else if (v->max_key_age_s > 0)
            snprintf(max, sizeof(max), "%llus", (unsigned long long)v->max_key_age_s);
        if (json) {
            json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:b, s:I, s:s, s:b, s:o}", "volume", id, "kind", kind, "node",
                                  v->node, "key_created_at", (json_int_t)v->key_created_at, "key_age_days",
                                  (json_int_t)age_days, "rotation_in_progress", v->rotation_in_progress,
                                  "max_key_age_s", (json_int_t)v->max_key_age_s, "max_key_age_from",
                                  v->max_key_age_from, "key_overdue", v->key_overdue, "erase",
                                  erase ? json_string(erase) : json_null());
            char *line = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
            printf("%s\n", line != NULL ? line : "{}");
            free(line);
            json_decref(o);
        } else {
            printf("%-38s  %-5s  %-16s  %-20s  %-8s  %-8s  %-7s  %-11s  %s\n", id, kind, v->node, made, age, max,
                   v->key_overdue ? "OVERDUE" : "-", v->rotation_in_progress ? "in progress" : "-",
                   erase != NULL ? erase : "-");
        }
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

int kfctl_cmd_approve(kfctl *ctl, int argc, char **argv)
{
    const char *totp_arg = NULL, *totp_fd = NULL, *comment = "";
    static const struct option opts[] = {{"totp", required_argument, NULL, 't'},
                                         {"totp-fd", required_argument, NULL, 'f'},
                                         {"comment", required_argument, NULL, 'c'},
                                         {NULL, 0, NULL, 0}};
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 't')
            totp_arg = optarg;
        else if (o == 'f')
            totp_fd = optarg;
        else if (o == 'c')
            comment = optarg;
        else
            return KFCTL_EXIT_USAGE;
    }
    if (optind + 1 != argc) {
        kfctl_usage("approve");
        return KFCTL_EXIT_USAGE;
    }
    char totp[KFCTL_TOTP_MAX + 1];
    if (kfctl_totp_read(totp_arg, totp_fd, totp) != 0)
        return KFCTL_EXIT_USAGE;
    Keyfleet__V1__ApproveRequest req = KEYFLEET__V1__APPROVE_REQUEST__INIT;
    req.request_id = argv[optind];
    req.totp_code = totp;
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
    const char *reason = "", *totp_arg = NULL, *totp_fd = NULL;
    static const struct option opts[] = {{"reason", required_argument, NULL, 'r'},
                                         {"totp", required_argument, NULL, 't'},
                                         {"totp-fd", required_argument, NULL, 'f'},
                                         {NULL, 0, NULL, 0}};
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'r')
            reason = optarg;
        else if (o == 't')
            totp_arg = optarg;
        else if (o == 'f')
            totp_fd = optarg;
        else
            return KFCTL_EXIT_USAGE;
    }
    if (optind + 1 != argc) {
        kfctl_usage("deny");
        return KFCTL_EXIT_USAGE;
    }
    char totp[KFCTL_TOTP_MAX + 1];
    if (kfctl_totp_read(totp_arg, totp_fd, totp) != 0)
        return KFCTL_EXIT_USAGE;
    Keyfleet__V1__DenyRequest req = KEYFLEET__V1__DENY_REQUEST__INIT;
    req.request_id = argv[optind];
    req.reason = (char *)reason;
    req.totp_code = totp;
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
