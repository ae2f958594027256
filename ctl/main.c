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
               "  cert issue KIND NAME issue a node, operator or coordinator certificate\n"
               "  status               show the coordinator's health\n");
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
    if (strcmp(cmd, "init") == 0)
        rc = kfctl_cmd_init(&ctl, sub_argc, sub_argv);
    else if (strcmp(cmd, "cert") == 0)
        rc = kfctl_cmd_cert(&ctl, sub_argc, sub_argv);
    else if (strcmp(cmd, "status") == 0)
        rc = kfctl_cmd_status(&ctl, sub_argc, sub_argv);
    else {
        fprintf(stderr, "keyfleetctl: unknown command '%s'\n", cmd);
        usage(stderr);
    }
    kf_strlist_free(&ctl.servers);
    free(ctl.cert);
    free(ctl.key);
    free(ctl.ca);
    return rc;
}
