/* keyfleetctl audit [filters] [--json] | audit verify */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "ctl.h"
#include "keyfleet/v1/admin.pb-c.h"

static const char *decision_name(Keyfleet__V1__Decision d)
{
    switch (d) {
    case KEYFLEET__V1__DECISION__DECISION_ALLOW:
        return "allow";
    case KEYFLEET__V1__DECISION__DECISION_DENY:
        return "deny";
    case KEYFLEET__V1__DECISION__DECISION_PENDING:
        return "pending";
    case KEYFLEET__V1__DECISION__DECISION_ERROR:
        return "error";
    default:
        return "-";
    }
}

static int parse_decision(const char *s, Keyfleet__V1__Decision *ret)
{
    static const Keyfleet__V1__Decision all[] = {
        KEYFLEET__V1__DECISION__DECISION_ALLOW, KEYFLEET__V1__DECISION__DECISION_DENY,
        KEYFLEET__V1__DECISION__DECISION_PENDING, KEYFLEET__V1__DECISION__DECISION_ERROR};
    for (size_t i = 0; i < 4; i++)
        if (strcmp(s, decision_name(all[i])) == 0) {
            *ret = all[i];
            return 0;
        }
    return -1;
}

/* Every action the coordinator records (docs/audit.md, "Actions"; docs/approle.md for the
 * approle ones): a filter naming another would match nothing, so it is refused. */
static const char *const audit_actions[] = {
    "approle_create", "approle_revoke", "approle_secret_id", "approve", "attest_accept", "attest_heartbeat", "attest_hold", "attest_unhold",
    "auth_fail", "cert_revoke", "change_proposed", "checkpoint", "cluster_add", "cluster_change", "cluster_remove", "dead_man_lock",
    "deny", "enroll", "enroll_replay", "erase_confirm_refused", "erase_failed", "expire", "kms_rotate", "login",
    "node_wipe", "node_wipe_cancel", "offline_unlock", "pending", "policy_deny", "policy_put", "recovery_escrow",
    "recovery_replaced", "recovery_request", "recovery_reveal", "release", "reports_over_budget", "reports_refused",
    "revoke", "rotate_begin", "rotate_commit", "totp_lockout", "unrevoke", "volume_erased", "volume_retire"};

static int check_action(const char *s)
{
    size_t n = sizeof(audit_actions) / sizeof(audit_actions[0]);
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, audit_actions[i]) == 0)
            return 0;
    fprintf(stderr, "keyfleetctl: --action '%s' is not an audit action; the actions are:", s);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, " %s", audit_actions[i]);
    fprintf(stderr, "\n");
    return -1;
}

/* Unix seconds, an ISO time "YYYY-MM-DDTHH:MM:SSZ", or a duration ago ("15m", "2h"). */
static int parse_when(const char *s, int64_t *ret)
{
    struct tm tm = {0};
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (end != NULL && *end == '\0') {
        *ret = (int64_t)timegm(&tm);
        return 0;
    }
    uint64_t ms;
    size_t n = strlen(s);
    if (n > 1 && (s[n - 1] == 's' || s[n - 1] == 'm' || s[n - 1] == 'h') && kf_parse_duration_ms(s, &ms) == 0) {
        *ret = (int64_t)time(NULL) - (int64_t)(ms / 1000);
        return 0;
    }
    char *e;
    long long v = strtoll(s, &e, 10);
    if (*s != '\0' && *e == '\0' && v >= 0) {
        *ret = v;
        return 0;
    }
    return -1;
}

static void hex(const ProtobufCBinaryData *b, char *out, size_t size)
{
    out[0] = '\0';
    for (size_t i = 0; i < b->len && 2 * i + 2 < size; i++)
        snprintf(out + 2 * i, 3, "%02x", b->data[i]);
}

static void print_record(const Keyfleet__V1__AuditRecord *r, int json)
{
    char when[32] = "-", h[80];
    time_t t = r->time != NULL ? (time_t)r->time->seconds : 0;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    const char *actor = r->actor != NULL ? r->actor->name : "";
    if (json) {
        hex(&r->hash, h, sizeof(h));
        json_t *o = json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "seq", (json_int_t)r->seq,
                              "time", when, "action", r->action, "actor", actor, "node", r->node, "volume",
                              r->volume_id, "request_id", r->request_id, "decision", decision_name(r->decision),
                              "reason", r->reason, "source", r->source_address, "hash", h);
        char *s = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
        if (s != NULL)
            printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        printf("%-6llu %-20s %-12s %-8s %-14s %-14s %-30.30s %s\n", (unsigned long long)r->seq, when, r->action,
               decision_name(r->decision), actor, r->node, r->volume_id, r->reason);
    }
}

int kfctl_cmd_audit(kfctl *ctl, int argc, char **argv)
{
    Keyfleet__V1__QueryAuditRequest req = KEYFLEET__V1__QUERY_AUDIT_REQUEST__INIT;
    Keyfleet__V1__Timestamp since = KEYFLEET__V1__TIMESTAMP__INIT, until = KEYFLEET__V1__TIMESTAMP__INIT;
    int json = 0;
    if (argc > 1) {
        int sub = kfctl_audit_sub(ctl, argc - 1, argv + 1);
        if (sub >= 0)
            return sub;
    }
    static const struct option opts[] = {{"node", required_argument, NULL, 'n'},
                                         {"volume", required_argument, NULL, 'v'},
                                         {"action", required_argument, NULL, 'a'},
                                         {"decision", required_argument, NULL, 'd'},
                                         {"since", required_argument, NULL, 's'},
                                         {"until", required_argument, NULL, 'u'},
                                         {"json", no_argument, NULL, 'j'},
                                         {NULL, 0, NULL, 0}};
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'n':
            req.node = optarg;
            break;
        case 'v':
            req.volume_id = optarg;
            break;
        case 'a':
            if (check_action(optarg) != 0)
                return KFCTL_EXIT_USAGE;
            req.action = optarg;
            break;
        case 'd':
            if (parse_decision(optarg, &req.decision) != 0) {
                fprintf(stderr, "keyfleetctl: --decision '%s' is not a decision; the decisions are: allow deny pending "
                                "error\n", optarg);
                return KFCTL_EXIT_USAGE;
            }
            break;
        case 's':
        case 'u': {
            int64_t t;
            if (parse_when(optarg, &t) != 0) {
                fprintf(stderr, "keyfleetctl: --%s takes YYYY-MM-DDTHH:MM:SSZ, Unix seconds or a duration ago (15m)\n",
                        o == 's' ? "since" : "until");
                return KFCTL_EXIT_USAGE;
            }
            if (o == 's') {
                since.seconds = t;
                req.since = &since;
                req.since_present_case = KEYFLEET__V1__QUERY_AUDIT_REQUEST__SINCE_PRESENT_SINCE;
            } else {
                until.seconds = t;
                req.until = &until;
                req.until_present_case = KEYFLEET__V1__QUERY_AUDIT_REQUEST__UNTIL_PRESENT_UNTIL;
            }
            break;
        }
        case 'j':
            json = 1;
            break;
        default:
            return kfctl_usage("audit");
        }
    }
    if (optind != argc) {
        kfctl_usage("audit");
        return KFCTL_EXIT_USAGE;
    }
    kf_rpc_client *c = kfctl_client(ctl);
    if (c == NULL)
        return 1;
    int rc = 0;
    if (!json)
        printf("%-6s %-20s %-12s %-8s %-14s %-14s %-30s %s\n", "SEQ", "TIME", "ACTION", "DECISION", "ACTOR", "NODE",
               "VOLUME", "REASON");
    for (;;) {
        ProtobufCMessage *m = NULL;
        if (kfctl_call(ctl, c, "keyfleet.v1.AdminService/QueryAudit", &req.base,
                       &keyfleet__v1__query_audit_response__descriptor, &m) != 0) {
            rc = 1;
            break;
        }
        Keyfleet__V1__QueryAuditResponse *resp = (Keyfleet__V1__QueryAuditResponse *)m;
        for (size_t i = 0; i < resp->n_records; i++)
            print_record(resp->records[i], json);
        int more = resp->more && resp->n_records > 0;
        if (more)
            req.after_seq = resp->records[resp->n_records - 1]->seq;
        protobuf_c_message_free_unpacked(m, NULL);
        if (!more)
            break;
    }
    kf_rpc_client_free(c);
    return rc;
}
