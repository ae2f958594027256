/* keyfleetctl: the operator CLI. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "kf_cli.h"
#include "kf_log.h"
#include "kf_secmem.h"

static const kf_cli_cmd commands_help[] = {
    {"init", "init DIR [--name COORDINATOR] [--listen HOST:PORT] [--operator NAME]\n"
             "         [--state-dir DIR] [--owner USER] [--ca-dir DIR]\n"
             "       create a fleet CA, the coordinator and operator certificates and the configs in DIR;\n"
             "       packaged: init /etc/keyfleet --state-dir /var/lib/keyfleet --owner keyfleet --ca-dir /root/keyfleet-ca\n"
             "init DIR [--operator NAME] [--ca-dir DIR] --peer NAME=HOST[:PORT] (3, 5 or 7 times)\n"
             "       the same for a cluster: one directory per replica"},
    {"cert", "cert issue node|operator|coordinator NAME [--dir DIR] [--out PREFIX] [--days N] [--backdate DAYS]\n"
             "         [--san DNS:host|IP:addr]... [--csr FILE] [--force] [--tpm-evidence FILE [--ek-ca FILE]...]\n"
             "       --days N (default 365) must exceed --backdate DAYS: an already expired certificate is refused\n"
             "                   (--allow-expired: for tests of that refusal)\n"
             "       --csr FILE: certify the key of a request (keyfleet-agent identity create: a key in the\n"
             "                   node's TPM) instead of making a key; only the certificate is written\n"
             "       --tpm-evidence FILE: check that the request's key is in a TPM (TPM2_Certify by an AK,\n"
             "                   the EK certificate against --ek-ca), mark the certificate as TPM-bound and\n"
             "                   write it sealed to that TPM (PREFIX.crt.tpmcred) for identity activate\n"
             "cert revoke SERIAL | --cert FILE [--reason TEXT]\n"
             "       refuse a certificate from now on"},
    {"status", "status [--json]\n"
               "       the coordinator's health; exit 1 when it is not ready"},
    {"pending", "pending [--json]\n"
                "       release requests and held changes waiting for approval"},
    {"approve", "approve REQUEST_ID [--totp -] [--totp-fd N] [--comment TEXT]\n"
                "       --totp - reads the code from stdin, --totp-fd N from that descriptor"},
    {"deny", "deny REQUEST_ID [--reason TEXT] [--totp -] [--totp-fd N]\n"
             "       where the request's approvals need TOTP, its denial does too"},
    {"audit", "audit [--node N] [--volume ID] [--action A] [--decision D] [--since T] [--until T] [--json]\n"
              "audit verify [--anchor FILE]... [--stream FILE [--ca FILE]] [--max-unsigned N]\n"
              "       check the audit log, its signed checkpoints and anchors; more than N records (2000)\n"
              "       after the newest checkpoint fail\n"
              "audit checkpoint [--json]\n"
              "       the newest signed checkpoint (save it as an anchor)\n"
              "audit prove REQUEST_ID [--checkpoint FILE]\n"
              "audit verify-proof FILE [--anchor CHECKPOINT] [--ca FILE]\n"
              "audit prove-consistency OLD_CHECKPOINT [NEW_CHECKPOINT]\n"
              "audit verify-consistency FILE [--ca FILE]"},
    {"policy", "policy get | put FILE [--totp -|--totp-fd N] | check NODE VOLUME_ID [--source IP] [--json]\n"
               "       check exits 0 on allow, 3 on allow after approval, 4 on deny"},
    {"node", "node list [--json]\n"
             "       known nodes: state, last heartbeat, dead-man window (PAST when silent longer),\n"
             "       last request, identity, certificate expiry and serial, volumes\n"
             "node revoke NAME [REASON]\n"
             "node unrevoke NAME [--reason TEXT] [--totp -|--totp-fd N]\n"
             "       held for approval under the policy's admin.approvers, like a policy put\n"
             "node wipe NAME [--volumes ID,...] [--reason TEXT] [--totp -|--totp-fd N] [--erase-all-keyslots|--cancel]\n"
             "       remote crypto-erase, held for approval by admin.wipe_approvers operators\n"
             "       (default 2, or admin.approvers if more): the volumes (all of the\n"
             "       node's when none are named) are retired, their escrowed recovery keys dropped,\n"
             "       and at its next heartbeat the agent destroys keyfleet's keyslots (the recovery\n"
             "       keyslot too) and TPM copies; pending in volume show until then;\n"
             "       --cancel (held the same way) drops erases the node has not confirmed; the\n"
             "       volumes stay retired;\n"
             "       --erase-all-keyslots (LUKS2 luksErase, where policy wipe.erase_all_keyslots\n"
             "       allows it) removes the passphrase keyslots too: the data is unrecoverable\n"
             "node attest show|accept|unhold NAME [--totp -|--totp-fd N]\n"
             "       measured-boot PCR values: show them, accept the last quoted ones"},
    {"volume", "volume list [--json]\n"
               "       enrolled volumes: node, key age, a key rotation in progress\n"
               "volume show ID|NAME [--json]\n"
               "volume retire ID [--reason TEXT]\n"
               "       its key is refused from then on (not reversible)\n"
               "volume recovery-key VOLUME_ID [--request ID] [--totp -] [--totp-fd N]\n"
               "       break glass: propose revealing the volume's recovery key (held for approval), then\n"
               "       print it once approved (--request; a fresh TOTP code where admin.totp is set,\n"
               "       read from stdin or the descriptor, never the command line); the node replaces\n"
               "       it at its next contact"},
    {"kms", "kms rotate\n"
            "       new KMS key version for new wraps; older versions still unwrap"},
    {"approle", "approle create NAME --node NODE [--cidr C]... [--group G] [--token-ttl D] [--secret-id-ttl D]\n"
                "         [--secret-id-uses N] [--totp -|--totp-fd N]\n"
                "approle show NAME [--json]\n"
                "approle secret-id NAME [--out FILE] [--totp -|--totp-fd N]\n"
                "approle revoke NAME [--secret-id ACCESSOR | --token TOKEN_ID]"},
    {"cluster", "cluster status [--json] | add NAME --raft HOST:PORT --rpc HOST:PORT | remove NAME"},
};

const kf_cli kfctl_cli = {
    .program = "keyfleetctl",
    .options = "[-c FILE] [--server HOST:PORT]... COMMAND ...\n"
               "  -c, --config FILE    client config (default /etc/keyfleet/keyfleetctl.yaml)\n"
               "      --server ADDR    coordinator address (repeatable; overrides the config)\n"
               "      --cert/--key/--ca FILE   operator credentials (override the config)\n"
               "  -h, --help           this usage; --version: the version\n"
               "exit status: 0 ok, 1 failed (the coordinator refused or was unreachable), 2 usage error\n",
    .cmds = commands_help,
    .n_cmds = sizeof(commands_help) / sizeof(commands_help[0]),
};

int kfctl_usage(const char *cmd) { return kf_cli_usage_error(&kfctl_cli, cmd); }

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
    /* It handles private keys and secrets (init, cert issue, AppRole): no core dumps, and no
     * ptrace or /proc reads by the user's other processes. */
    if (kf_process_harden() != 0)
        kf_log_warn("harden_failed", "what=dumpable");
    kfctl ctl = {.config_path = "/etc/keyfleet/keyfleetctl.yaml"};
    /* --version, --help and `help COMMAND`, before the global options are parsed: the command
     * is the first word that is not an option or an option's argument. */
    static const char *const with_arg[] = {"-c", "--config", "--server", "--cert", "--key", "--ca", NULL};
    int first = kf_cli_command_index(argc, argv, with_arg);
    int answered = kf_cli_answer(&kfctl_cli, argc, argv, first);
    if (answered >= 0)
        return answered;
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"server", required_argument, NULL, 's'},
                                         {"cert", required_argument, NULL, 'C'},
                                         {"key", required_argument, NULL, 'K'},
                                         {"ca", required_argument, NULL, 'A'},
                                         {NULL, 0, NULL, 0}};
    int c, rc = KFCTL_EXIT_USAGE;
    /* '+': stop at the command so its own options are left for it. */
    while ((c = getopt_long(argc, argv, "+c:", opts, NULL)) != -1) {
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
        default:
            return kfctl_usage(NULL);
        }
    }
    if (optind >= argc)
        return kfctl_usage(NULL);
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
        kfctl_usage(NULL);
    }
    kf_strlist_free(&ctl.servers);
    free(ctl.cert);
    free(ctl.key);
    free(ctl.ca);
    return rc;
}
