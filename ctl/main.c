/* keyfleetctl: the operator CLI. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "kf_log.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: keyfleetctl [-c FILE] [--server HOST:PORT]... COMMAND ...\n"
               "  -c, --config FILE    client config (default /etc/keyfleet/keyfleetctl.yaml)\n"
               "      --server ADDR    coordinator address (repeatable; overrides the config)\n"
               "      --cert/--key/--ca FILE   operator credentials (override the config)\n"
               "commands:\n"
               "  init DIR             create a fleet CA, certificates and configs in DIR\n"
               "  init DIR --peer NAME=HOST[:PORT] (3, 5 or 7 times)   the same for a cluster\n"
               "  cert issue KIND NAME issue a node, operator or coordinator certificate\n"
               "  cert revoke SERIAL|--cert FILE [--reason TEXT]  refuse a certificate from now on\n"
               "  status               show the coordinator's health\n"
               "  pending              list release requests waiting for approval\n"
               "  approve ID [--totp CODE] [--comment TEXT]\n"
               "  deny ID [--reason TEXT]\n"
               "  audit [--node N] [--volume ID] [--action A] [--decision D] [--since T] [--until T] [--json]\n"
               "  audit verify [--anchor FILE]...  check the audit log, its signed checkpoints and anchors\n"
               "  audit checkpoint [--json]        the newest signed checkpoint (save it as an anchor)\n"
               "  audit prove REQUEST_ID | verify-proof FILE | prove-consistency OLD [NEW] | verify-consistency FILE\n"
               "  policy get | put FILE | check NODE VOLUME_ID [--source IP]\n"
               "  node revoke NAME [REASON]\n"
               "  volume list [--json] enrolled volumes: node, key age, a key rotation in progress\n"
               "  kms rotate           new KMS key version for new wraps\n"
               "  cluster status | cluster add NAME --raft HOST:PORT --rpc HOST:PORT | cluster remove NAME\n"
               "  approle create NAME --node NODE [--cidr C]... [--token-ttl D] [--secret-id-ttl D]\n"
               "          [--secret-id-uses N] | show NAME | secret-id NAME [--out FILE] [--totp CODE] | revoke NAME\n"
               "          [--secret-id ACCESSOR | --token TOKEN_ID]\n");
}

static int add_server(kf_strlist *l, const char *s)
{
    char **v = realloc(l->v, (l->n + 2) * sizeof(char *));
    if (v == NULL)
        return -1;
    l->v = v;
    if ((v[l->n] = strdup(s)) == NULL)
        return -1;
    l->n++;
    v[l->n] = NULL;
    return 0;
}

int main(int argc, char **argv)
{
    kf_log_set_program("keyfleetctl");
    kfctl ctl = {.config_path = "/etc/keyfleet/keyfleetctl.yaml"};
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"server", required_argument, NULL, 's'},
                                         {"cert", required_argument, NULL, 'C'},
                                         {"key", required_argument, NULL, 'K'},
                                         {"ca", required_argument, NULL, 'A'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c, rc = KFCTL_EXIT_USAGE;
    /* '+': stop at the command so its own options are left for it. */
    while ((c = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            ctl.config_path = optarg;
            break;
        case 's':
            if (add_server(&ctl.servers, optarg) != 0)
                return 1;
            break;
        case 'C':
            ctl.cert = strdup(optarg);
            break;
        case 'K':
            ctl.key = strdup(optarg);
            break;
        case 'A':
            ctl.ca = strdup(optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return KFCTL_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return KFCTL_EXIT_USAGE;
    }
    const char *cmd = argv[optind];
    int sub_argc = argc - optind;
    char **sub_argv = argv + optind;
    static const struct {
        const char *name;
        int (*fn)(kfctl *, int, char **);
    } commands[] = {
        {"init", kfctl_cmd_init},       {"cert", kfctl_cmd_cert},       {"status", kfctl_cmd_status},
        {"pending", kfctl_cmd_pending}, {"approve", kfctl_cmd_approve}, {"deny", kfctl_cmd_deny},
        {"audit", kfctl_cmd_audit},     {"policy", kfctl_cmd_policy},   {"node", kfctl_cmd_node},
        {"kms", kfctl_cmd_kms},         {"approle", kfctl_cmd_approle}, {"cluster", kfctl_cmd_cluster},
        {"volume", kfctl_cmd_volume},
    };
    size_t i = 0;
    while (i < sizeof(commands) / sizeof(commands[0]) && strcmp(commands[i].name, cmd) != 0)
        i++;
    if (i < sizeof(commands) / sizeof(commands[0])) {
        rc = commands[i].fn(&ctl, sub_argc, sub_argv);
    } else {
        fprintf(stderr, "keyfleetctl: unknown command '%s'\n", cmd);
        usage(stderr);
    }
    kf_strlist_free(&ctl.servers);
    free(ctl.cert);
    free(ctl.key);
    free(ctl.ca);
    return rc;
}
