/* keyfleetctl node list [--json] | node unrevoke NAME [--reason TEXT] [--totp -|--totp-fd N] |
 * node wipe NAME [--volumes ID,...] [--reason TEXT] [--totp -|--totp-fd N] [--erase-all-keyslots|--cancel] |
 * volume show ID|NAME [--json] | volume retire ID [--reason TEXT] (docs/operations.md, "Node and
 * volume lifecycle"). */
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
    if (t == 0) {
        snprintf(buf, size, "-");
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *time_json(int64_t t)
{
    char buf[32];
    fmt_time(t, buf, sizeof(buf));
    return t == 0 ? json_null() : json_string(buf);
}

/* --reason TEXT, --totp - and --totp-fd N after the positional argument (argv[2]); the code into
 * totp (NULL: the command takes none). */
static int parse_opts(int argc, char **argv, const char *cmd, const char **reason, char *totp)
{
    static const struct option opts[] = {{"reason", required_argument, NULL, 'r'},
                                         {"totp", required_argument, NULL, 't'},
                                         {"totp-fd", required_argument, NULL, 'f'},
                                         {NULL, 0, NULL, 0}};
    const char *totp_arg = NULL, *totp_fd = NULL;
    int o;
    optind = 0;
    while ((o = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
        if (o == 'r')
            *reason = optarg;
        else if (o == 't' && totp != NULL)
            totp_arg = optarg;
        else if (o == 'f' && totp != NULL)
            totp_fd = optarg;
        else
            return kfctl_usage(cmd);
    }
    if (optind + 2 != argc)
        return kfctl_usage(cmd);
    return totp != NULL && kfctl_totp_read(totp_arg, totp_fd, totp) != 0 ? KFCTL_EXIT_USAGE : 0;
}

/* A dead-man window as the policy would write it: 3d, 12h, 90s; "-" for none. */
static void fmt_window(uint64_t s, char *buf, size_t size)
{
    if (s == 0)
        snprintf(buf, size, "-");
    else if (s % 86400 == 0)
        snprintf(buf, size, "%llud", (unsigned long long)(s / 86400));
    else if (s % 3600 == 0)
        snprintf(buf, size, "%lluh", (unsigned long long)(s / 3600));
    else
        snprintf(buf, size, "%llus", (unsigned long long)s);
}

/* One node as a JSON object: the dead-man view (docs/operations.md, "Dead-man switch") first,
 * then its lifecycle ("Node and volume lifecycle"). */
static json_t *node_json(const Keyfleet__V1__NodeInfo *n, int64_t now)
{
    json_t *vols = json_array();
    for (size_t k = 0; k < n->n_volumes; k++)
        json_array_append_new(vols, json_string(n->volumes[k]));
    /* Whole days until the certificate expires (negative once expired), for health checks. */
    json_t *left = n->cert_not_after == 0
                       ? json_null()
                       : json_integer((json_int_t)((n->cert_not_after - now - (n->cert_not_after < now ? 86399 : 0)) / 86400));
    return json_pack("{s:s, s:I, s:I, s:b, s:b, s:s, s:o, s:s, s:o, s:s, s:o, s:o, s:s, s:o}", "node", n->name,
                     "last_seen_at", (json_int_t)n->last_seen_at, "dead_man_after_s", (json_int_t)n->dead_man_after_s,
                     "dead_man_past", n->dead_man_past, "revoked", n->revoked, "state",
                     n->revoked ? "revoked" : "active", "revoked_at", time_json(n->revoked_at), "revoked_reason",
                     n->revoked_reason, "last_request", time_json(n->last_request_at), "cert_serial", n->cert_serial,
                     "cert_expires", time_json(n->cert_not_after), "cert_days_left", left, "identity", n->identity,
                     "volumes", vols);
}

/* node list [--json]: every node keyfleetd knows of; --json prints one object per line. */
int kfctl_node_list(kfctl *ctl, int argc, char **argv)
{
    bool json = argc == 3 && strcmp(argv[2], "--json") == 0;
    if (argc != 2 && !json)
        return kfctl_usage("node");
    Keyfleet__V1__ListNodesRequest req = KEYFLEET__V1__LIST_NODES_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/ListNodes", &req.base,
                        &keyfleet__v1__list_nodes_response__descriptor, &m) != 0)
        return 1;
    Keyfleet__V1__ListNodesResponse *resp = (Keyfleet__V1__ListNodesResponse *)m;
    int64_t now = time(NULL);
    if (!json)
        printf("%-24s  %-7s  %-20s  %-8s  %-4s  %-20s  %-8s  %-20s  %-16s  %s\n", "NODE", "STATE", "LAST SEEN",
               "DEAD MAN", "PAST", "LAST REQUEST", "IDENTITY", "CERT EXPIRES", "CERT SERIAL", "VOLUMES");
    int rc = 0;
    for (size_t i = 0; i < resp->n_nodes; i++) {
        const Keyfleet__V1__NodeInfo *n = resp->nodes[i];
        if (json) {
            json_t *o = node_json(n, now);
            char *line = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
            if (line == NULL)
                rc = 1;
            else
                printf("%s\n", line);
            free(line);
            json_decref(o);
            continue;
        }
        char seen[32] = "never", window[24], req_at[32], exp[32];
        if (n->last_seen_at > 0)
            fmt_time(n->last_seen_at, seen, sizeof(seen));
        fmt_window(n->dead_man_after_s, window, sizeof(window));
        fmt_time(n->last_request_at, req_at, sizeof(req_at));
        fmt_time(n->cert_not_after, exp, sizeof(exp));
        printf("%-24s  %-7s  %-20s  %-8s  %-4s  %-20s  %-8s  %-20s  %-16s  %zu\n", n->name,
               n->revoked ? "revoked" : "active", seen, window, n->dead_man_past ? "PAST" : "-", req_at,
               n->identity[0] ? n->identity : "-", exp, n->cert_serial[0] ? n->cert_serial : "-", n->n_volumes);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

int kfctl_node_unrevoke(kfctl *ctl, int argc, char **argv)
{
    const char *reason = "";
    char totp[KFCTL_TOTP_MAX + 1] = "";
    if (parse_opts(argc, argv, "node", &reason, totp) != 0)
        return KFCTL_EXIT_USAGE;
    Keyfleet__V1__UnrevokeNodeRequest req = KEYFLEET__V1__UNREVOKE_NODE_REQUEST__INIT;
    req.node = argv[optind + 1];
    req.reason = (char *)reason;
    req.totp_code = totp;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/UnrevokeNode", &req.base,
                        &keyfleet__v1__unrevoke_node_response__descriptor, &m) != 0)
        return 1;
    Keyfleet__V1__UnrevokeNodeResponse *resp = (Keyfleet__V1__UnrevokeNodeResponse *)m;
    if (resp->pending_request_id[0] != '\0')
        printf("unrevoke of node %s held as request %s: %u approvals needed\n", req.node, resp->pending_request_id,
               resp->approvals_needed);
    else
        printf("node %s is no longer revoked\n", req.node);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

/* node wipe NAME [--volumes ID,...] [--reason TEXT] [--totp -|--totp-fd N] [--erase-all-keyslots | --cancel]
 * (docs/operations.md, "Remote crypto-erase"): held for approval like unrevoke. --cancel drops
 * erases asked for and not confirmed by the node. */
int kfctl_node_wipe(kfctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {{"volumes", required_argument, NULL, 'v'},
                                         {"reason", required_argument, NULL, 'r'},
                                         {"totp", required_argument, NULL, 't'},
                                         {"totp-fd", required_argument, NULL, 'f'},
                                         {"erase-all-keyslots", no_argument, NULL, 'A'},
                                         {"cancel", no_argument, NULL, 'C'},
                                         {NULL, 0, NULL, 0}};
    const char *reason = "", *totp_arg = NULL, *totp_fd = NULL;
    char *vols = NULL;
    bool all = false, cancel = false;
    int o;
    optind = 0;
    while ((o = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
        if (o == 'v')
            vols = optarg;
        else if (o == 'r')
            reason = optarg;
        else if (o == 't')
            totp_arg = optarg;
        else if (o == 'f')
            totp_fd = optarg;
        else if (o == 'A')
            all = true;
        else if (o == 'C')
            cancel = true;
        else
            return kfctl_usage("node");
    }
    if (optind + 2 != argc || (cancel && all))
        return kfctl_usage("node");
    char totp[KFCTL_TOTP_MAX + 1];
    if (kfctl_totp_read(totp_arg, totp_fd, totp) != 0)
        return KFCTL_EXIT_USAGE;
    char *ids[100], *save = NULL;
    size_t n = 0;
    for (char *t = vols != NULL ? strtok_r(vols, ",", &save) : NULL; t != NULL; t = strtok_r(NULL, ",", &save)) {
        if (n == sizeof(ids) / sizeof(ids[0])) {
            fprintf(stderr, "keyfleetctl: at most 100 volumes per wipe\n");
            return KFCTL_EXIT_USAGE;
        }
        ids[n++] = t;
    }
    if (vols != NULL && n == 0)
        return kfctl_usage("node");
    Keyfleet__V1__WipeNodeRequest req = KEYFLEET__V1__WIPE_NODE_REQUEST__INIT;
    req.node = argv[optind + 1];
    req.volume_ids = ids;
    req.n_volume_ids = n;
    req.reason = (char *)reason;
    req.totp_code = totp;
    req.erase_all_keyslots = all;
    req.cancel = cancel;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/WipeNode", &req.base,
                        &keyfleet__v1__wipe_node_response__descriptor, &m) != 0)
        return 1;
    Keyfleet__V1__WipeNodeResponse *resp = (Keyfleet__V1__WipeNodeResponse *)m;
    printf("%s of node %s (", cancel ? "wipe cancel" : "wipe", req.node);
    for (size_t i = 0; i < resp->n_volume_ids; i++)
        printf("%s%s", i > 0 ? " " : "", resp->volume_ids[i]);
    if (resp->pending_request_id[0] != '\0')
        printf(") held as request %s: %u approvals needed\n", resp->pending_request_id, resp->approvals_needed);
    else if (cancel)
        printf(") approved: the node is no longer told to erase them; they stay retired\n");
    else
        printf(") approved: the keys are refused now; the node erases at its next heartbeat\n");
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

/* "pending" (asked for, not confirmed by the node), "erased", or NULL. */
static const char *erase_state(const Keyfleet__V1__VolumeInfo *v)
{
    return v->erase_requested_at == 0 ? NULL : v->erased_at != 0 ? "erased" : "pending";
}

static json_t *volume_json(const Keyfleet__V1__VolumeInfo *v)
{
    json_t *labels = json_object();
    for (size_t k = 0; k < v->n_labels; k++)
        json_object_set_new(labels, v->labels[k]->key, json_string(v->labels[k]->value));
    const char *kind = v->volume->kind == KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS ? "zfs" : "luks2";
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:o, s:o, s:o, s:o, s:b, s:o, s:s, s:o, s:s}", "volume", v->volume->id,
                     "name", v->volume->name, "kind", kind, "node", v->node, "labels", labels, "enrolled_at",
                     time_json(v->created_at), "key_created_at", time_json(v->key_created_at), "last_released_at",
                     time_json(v->last_released_at), "rotation_in_progress", v->rotation_in_progress, "retired_at",
                     time_json(v->retired_at), "retired_reason", v->retired_reason, "retired",
                     json_boolean(v->retired_at != 0), "last_node", v->last_node);
    if (o != NULL) {
        const char *e = erase_state(v);
        json_object_set_new(o, "erase", e != NULL ? json_string(e) : json_null());
        json_object_set_new(o, "erase_requested_at", time_json(v->erase_requested_at));
        json_object_set_new(o, "erased_at", time_json(v->erased_at));
        json_object_set_new(o, "erase_detail", json_string(v->erase_detail));
        json_object_set_new(o, "erase_all_keyslots", json_boolean(v->erase_all_keyslots));
    }
    return o;
}

int kfctl_volume_show(kfctl *ctl, int argc, char **argv)
{
    bool json = argc == 4 && strcmp(argv[3], "--json") == 0;
    if (argc != 3 && !json)
        return kfctl_usage("volume");
    Keyfleet__V1__ListVolumesRequest req = KEYFLEET__V1__LIST_VOLUMES_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/ListVolumes", &req.base,
                        &keyfleet__v1__list_volumes_response__descriptor, &m) != 0)
        return 1;
    Keyfleet__V1__ListVolumesResponse *resp = (Keyfleet__V1__ListVolumesResponse *)m;
    const Keyfleet__V1__VolumeInfo *found = NULL;
    size_t by_name = 0;
    for (size_t i = 0; i < resp->n_volumes && found == NULL; i++)
        if (strcmp(resp->volumes[i]->volume->id, argv[2]) == 0)
            found = resp->volumes[i];
    for (size_t i = 0; i < resp->n_volumes && found == NULL; i++)
        by_name += strcmp(resp->volumes[i]->volume->name, argv[2]) == 0;
    for (size_t i = 0; i < resp->n_volumes && found == NULL && by_name == 1; i++)
        if (strcmp(resp->volumes[i]->volume->name, argv[2]) == 0)
            found = resp->volumes[i];
    int rc = 1;
    if (found == NULL) {
        if (by_name > 1)
            fprintf(stderr, "keyfleetctl: %zu volumes are named '%s': give the volume id\n", by_name, argv[2]);
        else
            fprintf(stderr, "keyfleetctl: no enrolled volume has the id or name '%s'\n", argv[2]);
    } else if (json) {
        rc = kfctl_print_json(volume_json(found)) == 0 ? 0 : 1;
    } else {
        char made[32], key[32], rel[32], ret[32];
        fmt_time(found->created_at, made, sizeof(made));
        fmt_time(found->key_created_at, key, sizeof(key));
        fmt_time(found->last_released_at, rel, sizeof(rel));
        fmt_time(found->retired_at, ret, sizeof(ret));
        printf("volume:        %s\nname:          %s\nkind:          %s\nnode:          %s\nlabels:       ",
               found->volume->id, found->volume->name,
               found->volume->kind == KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS ? "zfs" : "luks2", found->node);
        for (size_t k = 0; k < found->n_labels; k++)
            printf(" %s=%s", found->labels[k]->key, found->labels[k]->value);
        printf("%s\nenrolled:      %s\nkey made:      %s\nlast released: %s%s%s\nrotation:      %s\n",
               found->n_labels == 0 ? " -" : "", made, key, rel, found->last_node[0] ? " to " : "", found->last_node,
               found->rotation_in_progress ? "in progress" : "-");
        if (found->retired_at != 0)
            printf("state:         retired %s: %s\n", ret, found->retired_reason);
        else
            printf("state:         in service\n");
        char asked[32], done[32];
        fmt_time(found->erase_requested_at, asked, sizeof(asked));
        fmt_time(found->erased_at, done, sizeof(done));
        if (found->erased_at != 0)
            printf("erase:         erased %s (asked %s): %s\n", done, asked, found->erase_detail);
        else if (found->erase_requested_at != 0)
            printf("erase:         PENDING since %s%s: the node has not confirmed it\n", asked,
                   found->erase_all_keyslots ? " (every keyslot)" : "");
        rc = 0;
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

int kfctl_volume_retire(kfctl *ctl, int argc, char **argv)
{
    const char *reason = "";
    if (parse_opts(argc, argv, "volume", &reason, NULL) != 0)
        return KFCTL_EXIT_USAGE;
    Keyfleet__V1__RetireVolumeRequest req = KEYFLEET__V1__RETIRE_VOLUME_REQUEST__INIT;
    req.volume_id = argv[optind + 1];
    req.reason = (char *)reason;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/RetireVolume", &req.base,
                        &keyfleet__v1__retire_volume_response__descriptor, &m) != 0)
        return 1;
    protobuf_c_message_free_unpacked(m, NULL);
    printf("volume %s retired: its key is refused from now on\n", req.volume_id);
    return 0;
}
