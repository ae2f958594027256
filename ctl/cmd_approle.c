/* keyfleetctl approle create NAME --node NODE [--cidr C]... [--group G] [--token-ttl D]
 *                              [--secret-id-ttl D] [--secret-id-uses N]
 *                   | show NAME [--json] | secret-id NAME [--out FILE] [--totp -|--totp-fd N] | revoke NAME */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "kf_secmem.h"
#include "kf_yaml.h"

#define MAX_CIDRS 16

static void print_role(const Keyfleet__V1__Role *r)
{
    printf("name: %s\nrole_id: %s\nnode: %s\n", r->name, r->role_id, r->node_name);
    if (r->node_group[0])
        printf("group: %s\n", r->node_group);
    printf("bound_cidrs:");
    for (size_t i = 0; i < r->n_bound_cidrs; i++)
        printf(" %s", r->bound_cidrs[i]);
    printf("%s\ntoken_ttl: %us\nsecret_id_ttl: %us%s\nsecret_id_uses: %u%s\n", r->n_bound_cidrs ? "" : " any",
           r->token_ttl_seconds, r->secret_id_ttl_seconds, r->secret_id_ttl_seconds ? "" : " (no expiry)",
           r->secret_id_num_uses, r->secret_id_num_uses ? "" : " (unlimited)");
}

static int parse_seconds(const char *what, const char *s, uint32_t *ret)
{
    uint64_t ms;
    if (kf_parse_duration_ms(s, &ms) != 0 || ms / 1000 > UINT32_MAX) {
        fprintf(stderr, "keyfleetctl: %s '%s' is not a duration like 20m or 24h\n", what, s);
        return -1;
    }
    *ret = (uint32_t)(ms / 1000);
    return 0;
}

static int create(kfctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {{"node", required_argument, NULL, 'n'},
                                         {"cidr", required_argument, NULL, 'c'},
                                         {"group", required_argument, NULL, 'g'},
                                         {"token-ttl", required_argument, NULL, 't'},
                                         {"secret-id-ttl", required_argument, NULL, 's'},
                                         {"secret-id-uses", required_argument, NULL, 'u'},
                                         {"totp", required_argument, NULL, 'T'},
                                         {"totp-fd", required_argument, NULL, 'F'},
                                         {NULL, 0, NULL, 0}};
    Keyfleet__V1__Role role = KEYFLEET__V1__ROLE__INIT;
    const char *totp_arg = NULL, *totp_fd = NULL;
    char *cidrs[MAX_CIDRS];
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (o) {
        case 'n':
            role.node_name = optarg;
            break;
        case 'g':
            role.node_group = optarg;
            break;
        case 'c':
            if (role.n_bound_cidrs == MAX_CIDRS) {
                fprintf(stderr, "keyfleetctl: at most %d --cidr\n", MAX_CIDRS);
                return KFCTL_EXIT_USAGE;
            }
            cidrs[role.n_bound_cidrs++] = optarg;
            break;
        case 't':
            if (parse_seconds("--token-ttl", optarg, &role.token_ttl_seconds) != 0)
                return KFCTL_EXIT_USAGE;
            break;
        case 's':
            if (parse_seconds("--secret-id-ttl", optarg, &role.secret_id_ttl_seconds) != 0)
                return KFCTL_EXIT_USAGE;
            break;
        case 'u':
            role.secret_id_num_uses = (uint32_t)strtoul(optarg, &end, 10);
            if (end == optarg || *end != '\0') {
                fprintf(stderr, "keyfleetctl: --secret-id-uses needs a number (0: unlimited)\n");
                return KFCTL_EXIT_USAGE;
            }
            break;
        case 'T':
            totp_arg = optarg;
            break;
        case 'F':
            totp_fd = optarg;
            break;
        default:
            return KFCTL_EXIT_USAGE;
        }
    }
    if (optind != argc - 1 || role.node_name[0] == '\0') {
        kfctl_usage("approle");
        return KFCTL_EXIT_USAGE;
    }
    char totp[KFCTL_TOTP_MAX + 1];
    if (kfctl_totp_read(totp_arg, totp_fd, totp) != 0)
        return KFCTL_EXIT_USAGE;
    role.name = argv[optind];
    role.bound_cidrs = cidrs;
    Keyfleet__V1__CreateRoleRequest req = KEYFLEET__V1__CREATE_ROLE_REQUEST__INIT;
    req.role = &role;
    req.totp_code = totp;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/CreateRole", &req.base,
                        &keyfleet__v1__create_role_response__descriptor, &m) != 0)
        return 1;
    Keyfleet__V1__CreateRoleResponse *resp = (Keyfleet__V1__CreateRoleResponse *)m;
    if (resp->pending_request_id[0] != '\0')
        printf("role %s waits for approval: request %s needs %u operators in all (you are the first)\n", role.name,
               resp->pending_request_id, resp->approvals_needed);
    else
        print_role(resp->role);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

static int print_role_json(const Keyfleet__V1__Role *r)
{
    json_t *cidrs = json_array();
    for (size_t i = 0; i < r->n_bound_cidrs; i++)
        json_array_append_new(cidrs, json_string(r->bound_cidrs[i]));
    return kfctl_print_json(json_pack("{s:s, s:s, s:s, s:s, s:o, s:i, s:i, s:i}", "name", r->name, "role_id",
                                      r->role_id, "node", r->node_name, "group", r->node_group, "bound_cidrs", cidrs,
                                      "token_ttl_seconds", (int)r->token_ttl_seconds, "secret_id_ttl_seconds",
                                      (int)r->secret_id_ttl_seconds, "secret_id_uses", (int)r->secret_id_num_uses));
}

static int show(kfctl *ctl, const char *name, bool json)
{
    Keyfleet__V1__GetRoleRequest req = KEYFLEET__V1__GET_ROLE_REQUEST__INIT;
    req.name = (char *)name;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/GetRole", &req.base, &keyfleet__v1__get_role_response__descriptor,
                        &m) != 0)
        return 1;
    int rc = 0;
    if (json)
        rc = print_role_json(((Keyfleet__V1__GetRoleResponse *)m)->role) == 0 ? 0 : 1;
    else
        print_role(((Keyfleet__V1__GetRoleResponse *)m)->role);
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

/* The secret id is shown once: on stdout, or written to a new 0600 file with --out. */
static int secret_id(kfctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
                                         {"totp", required_argument, NULL, 't'},
                                         {"totp-fd", required_argument, NULL, 'f'},
                                         {NULL, 0, NULL, 0}};
    const char *out = NULL, *totp_arg = NULL, *totp_fd = NULL;
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'o')
            out = optarg;
        else if (o == 't')
            totp_arg = optarg;
        else if (o == 'f')
            totp_fd = optarg;
        else
            return KFCTL_EXIT_USAGE;
    }
    if (optind != argc - 1) {
        kfctl_usage("approle");
        return KFCTL_EXIT_USAGE;
    }
    char totp[KFCTL_TOTP_MAX + 1];
    if (kfctl_totp_read(totp_arg, totp_fd, totp) != 0)
        return KFCTL_EXIT_USAGE;
    int fd = -1;
    if (out != NULL && (fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0) {
        fprintf(stderr, "keyfleetctl: %s: %s\n", out, strerror(errno));
        return 1;
    }
    Keyfleet__V1__CreateSecretIdRequest req = KEYFLEET__V1__CREATE_SECRET_ID_REQUEST__INIT;
    req.role_name = argv[optind];
    req.totp_code = totp;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/CreateSecretId", &req.base,
                        &keyfleet__v1__create_secret_id_response__descriptor, &m) != 0) {
        if (fd >= 0) {
            close(fd);
            unlink(out);
        }
        return 1;
    }
    Keyfleet__V1__CreateSecretIdResponse *resp = (Keyfleet__V1__CreateSecretIdResponse *)m;
    int rc = 0;
    if (fd >= 0) {
        size_t n = strlen(resp->secret_id);
        if (write(fd, resp->secret_id, n) != (ssize_t)n || write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
            fprintf(stderr, "keyfleetctl: %s: write failed\n", out);
            rc = 1;
        }
        close(fd);
        printf("secret_id: written to %s\n", out);
    } else {
        printf("secret_id: %s\n", resp->secret_id);
    }
    printf("accessor: %s\nttl: %us\nuses: %u\n", resp->accessor, resp->ttl_seconds, resp->num_uses);
    if (resp->pending_request_id[0] != '\0')
        printf("the secret id waits for approval: request %s needs %u operators in all (you are the first); "
               "it logs in once approved\n",
               resp->pending_request_id, resp->approvals_needed);
    kf_wipe(resp->secret_id, strlen(resp->secret_id));
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

static int revoke_role(kfctl *ctl, const char *name)
{
    Keyfleet__V1__RevokeRoleRequest req = KEYFLEET__V1__REVOKE_ROLE_REQUEST__INIT;
    req.name = (char *)name;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/RevokeRole", &req.base,
                        &keyfleet__v1__revoke_role_response__descriptor, &m) != 0)
        return 1;
    protobuf_c_message_free_unpacked(m, NULL);
    printf("role %s revoked, with its secret ids and tokens\n", name);
    return 0;
}

/* approle revoke NAME --secret-id ACCESSOR | --token TOKEN_ID: one credential; the role stays. */
static int revoke_credential(kfctl *ctl, const char *name, const char *flag, const char *handle)
{
    Keyfleet__V1__RevokeRoleCredentialRequest req = KEYFLEET__V1__REVOKE_ROLE_CREDENTIAL_REQUEST__INIT;
    req.role_name = (char *)name;
    bool secret = strcmp(flag, "--secret-id") == 0;
    if (secret)
        req.secret_id_accessor = (char *)handle;
    else
        req.token_id = (char *)handle;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/RevokeRoleCredential", &req.base,
                        &keyfleet__v1__revoke_role_credential_response__descriptor, &m) != 0)
        return 1;
    protobuf_c_message_free_unpacked(m, NULL);
    printf("role %s: %s %s revoked\n", name, secret ? "secret id" : "token", handle);
    return 0;
}

int kfctl_cmd_approle(kfctl *ctl, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    if (strcmp(sub, "create") == 0)
        return create(ctl, argc - 1, argv + 1);
    if (strcmp(sub, "secret-id") == 0)
        return secret_id(ctl, argc - 1, argv + 1);
    if (strcmp(sub, "show") == 0 && argc == 3 && argv[2][0] != '-')
        return show(ctl, argv[2], false);
    if (strcmp(sub, "show") == 0 && argc == 4 && (strcmp(argv[2], "--json") == 0 || strcmp(argv[3], "--json") == 0))
        return show(ctl, strcmp(argv[2], "--json") == 0 ? argv[3] : argv[2], true);
    if (strcmp(sub, "revoke") == 0 && argc == 3)
        return revoke_role(ctl, argv[2]);
    if (strcmp(sub, "revoke") == 0 && argc == 5 && (strcmp(argv[3], "--secret-id") == 0 || strcmp(argv[3], "--token") == 0))
        return revoke_credential(ctl, argv[2], argv[3], argv[4]);
    kfctl_usage("approle");
    return KFCTL_EXIT_USAGE;
}
