/* keyfleetctl policy get|put FILE|check NODE VOLUME [--source IP], node revoke NAME, kms rotate */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "kf_tpm_evidence.h"

#define POLICY_MAX (60 * 1024)

static char *read_file(const char *path, size_t *ret_len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "keyfleetctl: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(POLICY_MAX + 1);
    size_t n = buf != NULL ? fread(buf, 1, POLICY_MAX + 1, f) : 0;
    if (f != stdin)
        fclose(f);
    if (buf == NULL || n > POLICY_MAX) {
        fprintf(stderr, "keyfleetctl: %s: larger than %d bytes\n", path, POLICY_MAX);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', n) != NULL) {
        fprintf(stderr, "keyfleetctl: %s: not a text file\n", path);
        free(buf);
        return NULL;
    }
    *ret_len = n;
    return buf;
}

int kfctl_cmd_policy(kfctl *ctl, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    ProtobufCMessage *m = NULL;
    if (strcmp(sub, "get") == 0 && argc == 2) {
        Keyfleet__V1__GetPolicyRequest req = KEYFLEET__V1__GET_POLICY_REQUEST__INIT;
        if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/GetPolicy", &req.base,
                          &keyfleet__v1__get_policy_response__descriptor, &m) != 0)
            return 1;
        Keyfleet__V1__GetPolicyResponse *resp = (Keyfleet__V1__GetPolicyResponse *)m;
        printf("# policy version %llu\n%s", (unsigned long long)resp->version, resp->yaml);
        protobuf_c_message_free_unpacked(m, NULL);
        return 0;
    }
    bool totp_opt = argc == 5 && (strcmp(argv[3], "--totp") == 0 || strcmp(argv[3], "--totp-fd") == 0);
    if (strcmp(sub, "put") == 0 && (argc == 3 || totp_opt)) {
        char totp[KFCTL_TOTP_MAX + 1];
        bool fd = totp_opt && strcmp(argv[3], "--totp-fd") == 0;
        if (kfctl_totp_read(totp_opt && !fd ? argv[4] : NULL, fd ? argv[4] : NULL, totp) != 0)
            return KFCTL_EXIT_USAGE;
        size_t len;
        char *yaml = read_file(argv[2], &len);
        if (yaml == NULL)
            return 1;
        Keyfleet__V1__PutPolicyRequest req = KEYFLEET__V1__PUT_POLICY_REQUEST__INIT;
        req.yaml = yaml;
        req.totp_code = totp;
        int r = kfctl_call_once(ctl, "keyfleet.v1.AdminService/PutPolicy", &req.base,
                              &keyfleet__v1__put_policy_response__descriptor, &m);
        free(yaml);
        if (r != 0)
            return 1;
        Keyfleet__V1__PutPolicyResponse *resp = (Keyfleet__V1__PutPolicyResponse *)m;
        if (resp->pending_request_id[0] != '\0')
            printf("policy version %llu waits for approval: request %s needs %u operators in all (you are the "
                   "first); `keyfleetctl approve %s`\n", (unsigned long long)resp->version, resp->pending_request_id,
                   resp->approvals_needed, resp->pending_request_id);
        else
            printf("policy version %llu is in force\n", (unsigned long long)resp->version);
        protobuf_c_message_free_unpacked(m, NULL);
        return 0;
    }
    if (strcmp(sub, "check") == 0) {
        const char *source = "";
        int json = 0;
        static const struct option opts[] = {{"source", required_argument, NULL, 's'},
                                             {"json", no_argument, NULL, 'j'},
                                             {NULL, 0, NULL, 0}};
        int o;
        argc--;
        argv++;
        optind = 0;
        while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
            if (o == 'j')
                json = 1;
            else if (o == 's')
                source = optarg;
            else
                return kfctl_usage("policy");
        }
        if (optind + 2 == argc) {
            Keyfleet__V1__CheckPolicyRequest req = KEYFLEET__V1__CHECK_POLICY_REQUEST__INIT;
            req.node = argv[optind];
            req.volume_id = argv[optind + 1];
            req.source_address = (char *)source;
            if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/CheckPolicy", &req.base,
                              &keyfleet__v1__check_policy_response__descriptor, &m) != 0)
                return 1;
            Keyfleet__V1__CheckPolicyResponse *resp = (Keyfleet__V1__CheckPolicyResponse *)m;
            const char *d = resp->decision == KEYFLEET__V1__DECISION__DECISION_ALLOW     ? "allow"
                            : resp->decision == KEYFLEET__V1__DECISION__DECISION_PENDING ? "allow after approval"
                                                                                          : "deny";
            /* Scripts branch on the exit status: 0 allow, 3 allow after approval, 4 deny. */
            int rc = resp->decision == KEYFLEET__V1__DECISION__DECISION_ALLOW     ? 0
                     : resp->decision == KEYFLEET__V1__DECISION__DECISION_PENDING ? KFCTL_EXIT_APPROVAL
                                                                                   : KFCTL_EXIT_DENY;
            if (json) {
                json_t *out = json_pack("{s:s, s:s, s:s, s:i, s:b}", "decision",
                                      rc == 0 ? "allow" : rc == KFCTL_EXIT_APPROVAL ? "approval" : "deny", "rule",
                                      resp->rule, "why", resp->explanation, "approvals_needed",
                                      (int)resp->approvals_needed, "offline_fallback", resp->offline_fallback_allowed);
                if (kfctl_print_json(out) != 0)
                    rc = 1;
            } else {
                printf("decision: %s\nrule: %s\nwhy: %s\napprovals needed: %u\noffline TPM fallback: %s\n", d,
                       resp->rule, resp->explanation, resp->approvals_needed,
                       resp->offline_fallback_allowed ? "allowed" : "no");
            }
            protobuf_c_message_free_unpacked(m, NULL);
            return rc;
        }
    }
    kfctl_usage("policy");
    return KFCTL_EXIT_USAGE;
}

/* Prints "PCR N  HEX" lines of kf_tpm_pcrs text, marking those in changed. */
static void print_pcrs(const char *title, const char *text, int64_t at, const char *by, uint32_t changed)
{
    kf_tpm_pcrs p;
    if (text[0] == '\0' || kf_tpm_pcrs_parse(text, &p, NULL) != 0) {
        printf("%s: none\n", title);
        return;
    }
    char when[32] = "";
    time_t t = (time_t)at;
    struct tm tm;
    if (at > 0 && gmtime_r(&t, &tm) != NULL)
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("%s (%s%s%s):\n", title, when, by[0] ? ", by " : "", by);
    char text_one[KF_TPM_PCRS_TEXT_MAX];
    for (unsigned i = 0; i < 24; i++) {
        if (!(p.mask & (1u << i)))
            continue;
        kf_tpm_pcrs one = {.mask = 1u << i};
        memcpy(one.values[i], p.values[i], 32);
        kf_tpm_pcrs_format(&one, text_one);
        printf("  PCR %2u  %s%s\n", i, strchr(text_one, '=') + 1, (changed & (1u << i)) ? "  changed" : "");
    }
}

/* node attest show NAME | node attest accept NAME TOKEN --expect 'PCR=HEX ...' [--totp -|--totp-fd N]: the
 * node's measured-boot record; show prints a token, and accept applies only while the record
 * still matches it (what the operator looked at, not what the node quoted since), and only with
 * the values the operator expects for every changed PCR (review rev17, A2). */
static int node_attest(kfctl *ctl, int argc, char **argv)
{
    bool unhold = argc >= 5 && strcmp(argv[2], "unhold") == 0;
    bool accept = argc >= 5 && (strcmp(argv[2], "accept") == 0 || unhold);
    const char *expect = NULL, *totp_arg = NULL, *totp_fd = NULL;
    bool ok = argc == 4 && strcmp(argv[2], "show") == 0;
    if (accept) {
        ok = true;
        for (int i = 5; ok && i < argc; i += 2) {
            if (!unhold && i + 1 < argc && strcmp(argv[i], "--expect") == 0)
                expect = argv[i + 1];
            else if (i + 1 < argc && strcmp(argv[i], "--totp") == 0)
                totp_arg = argv[i + 1];
            else if (i + 1 < argc && strcmp(argv[i], "--totp-fd") == 0)
                totp_fd = argv[i + 1];
            else
                ok = false;
        }
        ok = ok && (expect != NULL || unhold);
    }
    if (!ok) {
        fprintf(stderr, "usage: keyfleetctl node attest show NAME | node attest accept NAME TOKEN --expect 'PCR=HEX ...' "
                        "[--totp -|--totp-fd N] | node attest unhold NAME TOKEN [--totp -|--totp-fd N]\n");
        return KFCTL_EXIT_USAGE;
    }
    char totp[KFCTL_TOTP_MAX + 1];
    if (kfctl_totp_read(totp_arg, totp_fd, totp) != 0)
        return KFCTL_EXIT_USAGE;
    if (accept) {
        Keyfleet__V1__AcceptNodeAttestationRequest req = KEYFLEET__V1__ACCEPT_NODE_ATTESTATION_REQUEST__INIT;
        req.node = argv[3];
        req.token = argv[4];
        req.expected = (char *)(expect != NULL ? expect : "");
        req.totp_code = totp;
        req.unhold = unhold;
        ProtobufCMessage *am = NULL;
        if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/AcceptNodeAttestation", &req.base,
                            &keyfleet__v1__accept_node_attestation_response__descriptor, &am) != 0)
            return 1;
        Keyfleet__V1__AcceptNodeAttestationResponse *resp = (Keyfleet__V1__AcceptNodeAttestationResponse *)am;
        if (resp->pending_request_id[0] != '\0')
            printf("%s of node %s held as request %s: %u approvals needed\n",
                   unhold ? "lifting the hold" : "acceptance of the PCR values", argv[3], resp->pending_request_id,
                   resp->approvals_needed);
        else if (unhold)
            printf("node %s: the hold is lifted and the held TPM state accepted\n", argv[3]);
        else
            printf("node %s: the PCR values shown are accepted\n", argv[3]);
        protobuf_c_message_free_unpacked(am, NULL);
        return 0;
    }
    Keyfleet__V1__GetNodeAttestationRequest get = KEYFLEET__V1__GET_NODE_ATTESTATION_REQUEST__INIT;
    get.node = argv[3];
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/GetNodeAttestation", &get.base,
                        &keyfleet__v1__get_node_attestation_response__descriptor, &m) != 0)
        return 1;
    Keyfleet__V1__GetNodeAttestationResponse *rec = (Keyfleet__V1__GetNodeAttestationResponse *)m;
    kf_tpm_pcrs a, s;
    uint32_t changed = rec->accepted[0] && rec->seen[0] && kf_tpm_pcrs_parse(rec->accepted, &a, NULL) == 0 &&
                               kf_tpm_pcrs_parse(rec->seen, &s, NULL) == 0
                           ? kf_tpm_pcrs_diff(&a, &s)
                           : 0;
    printf("node %s\n", argv[3]);
    if (rec->held[0] != '\0') {
        char at[32] = "?";
        time_t t = (time_t)rec->held_at;
        struct tm tm;
        if (rec->held_at > 0 && gmtime_r(&t, &tm) != NULL)
            strftime(at, sizeof(at), "%Y-%m-%dT%H:%M:%SZ", &tm);
        printf("HELD (%s, since %s): %s\n", rec->held_kind, at, rec->held);
        if (rec->held_clock[0] != '\0')
            printf("  TPM state of the quote that held it: %s\n", rec->held_clock);
        printf("  every key request of this node is refused; after investigation (is there a second machine with "
               "this TPM's state?): keyfleetctl node attest unhold %s %s%s\n",
               argv[3], rec->token,
               strcmp(rec->held_kind, "drift") == 0 ? " (or accept the new PCR values, which lifts a drift hold)" : "");
    }
    print_pcrs("accepted", rec->accepted, rec->accepted_at, rec->accepted_by, 0);
    if (rec->clock[0] != '\0')
        printf("TPM counters (highest quoted): %s\n", rec->clock);
    print_pcrs("last quote not accepted", rec->seen, rec->seen_at, "", changed);
    if (rec->seen[0] != '\0' && rec->seen_clock[0] != '\0')
        printf("  its TPM counters: %s%s\n", rec->seen_clock,
               rec->rollback ? "  BACKWARDS: the TPM's state was rolled back, or the TPM replaced" : "");
    if (rec->changed[0] != '\0')
        printf("changed: PCR %s\n", rec->changed);
    if (rec->seen[0] != '\0')
        printf("to accept these values, if they are the ones you expect (from the new kernel's or firmware's published "
               "measurements, or a known-good machine; not from this output): keyfleetctl node attest accept %s %s "
               "--expect 'PCR=HEX ...' (every changed PCR)\n",
               argv[3], rec->token);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

int kfctl_cmd_node(kfctl *ctl, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "attest") == 0)
        return node_attest(ctl, argc, argv);
    if (argc >= 2 && strcmp(argv[1], "list") == 0)
        return kfctl_node_list(ctl, argc, argv);
    if (argc >= 2 && strcmp(argv[1], "unrevoke") == 0)
        return kfctl_node_unrevoke(ctl, argc, argv);
    if (argc >= 2 && strcmp(argv[1], "wipe") == 0)
        return kfctl_node_wipe(ctl, argc, argv);
    if (argc < 3 || argc > 4 || strcmp(argv[1], "revoke") != 0) {
        kfctl_usage("node");
        return KFCTL_EXIT_USAGE;
    }
    Keyfleet__V1__RevokeNodeRequest req = KEYFLEET__V1__REVOKE_NODE_REQUEST__INIT;
    req.node = argv[2];
    req.reason = argc == 4 ? argv[3] : (char *)"";
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/RevokeNode", &req.base,
                      &keyfleet__v1__revoke_node_response__descriptor, &m) != 0)
        return 1;
    protobuf_c_message_free_unpacked(m, NULL);
    printf("node %s revoked: it gets no more keys\n", req.node);
    return 0;
}

int kfctl_cmd_kms(kfctl *ctl, int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "rotate") != 0) {
        kfctl_usage("kms");
        return KFCTL_EXIT_USAGE;
    }
    Keyfleet__V1__RotateKmsRequest req = KEYFLEET__V1__ROTATE_KMS_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/RotateKms", &req.base,
                      &keyfleet__v1__rotate_kms_response__descriptor, &m) != 0)
        return 1;
    Keyfleet__V1__RotateKmsResponse *resp = (Keyfleet__V1__RotateKmsResponse *)m;
    printf("%s KMS now wraps with key version %u; older versions still unwrap\n", resp->backend, resp->new_version);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
