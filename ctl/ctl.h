/* keyfleetctl: shared state of the subcommands. */
#ifndef KFCTL_CTL_H
#define KFCTL_CTL_H

#include <jansson.h>
#include <stdbool.h>

#include "kf_rpc_client.h"
#include "kf_yaml.h"

#define KFCTL_EXIT_USAGE 2

/* Prints the usage of cmd (main.c's table; the whole CLI's when NULL) to stderr; returns
 * KFCTL_EXIT_USAGE. */
int kfctl_usage(const char *cmd);

typedef struct kfctl {
    const char *config_path; /* keyfleetctl.yaml */
    kf_strlist servers;      /* from --server or the config */
    char *cert, *key, *ca;
} kfctl;

/* Loads the config (if not yet): servers, cert, key, ca. Prints the error and returns -1. */
int kfctl_client_config(kfctl *ctl);
/* Loads the config (if not yet) and opens a client; prints the error and returns NULL on failure. */
kf_rpc_client *kfctl_client(kfctl *ctl);
/* Calls method; prints a Connect error as "keyfleetctl: CODE: message". Returns 0 on OK. */
int kfctl_call(kfctl *ctl, kf_rpc_client *c, const char *method, const ProtobufCMessage *req,
               const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **ret_resp);

/* Opens a client, makes one call, closes it. Returns 0 on OK (*ret_resp set), -1 otherwise
 * (the error was printed). */
int kfctl_call_once(kfctl *ctl, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **ret_resp);

/* Prints o as one line of compact JSON and releases it; -1 (printed) when it cannot. */
int kfctl_print_json(json_t *o);
/* For a command whose only option is --json (argv[0] is the command): sets *ret_json; a usage
 * error (printed, KFCTL_EXIT_USAGE) for anything else. */
int kfctl_json_flag(int argc, char **argv, const char *cmd, int *ret_json);

/* Exit status of policy check (keyfleetctl(8)): allow is 0. */
#define KFCTL_EXIT_APPROVAL 3
#define KFCTL_EXIT_DENY 4

/* totp_input.c: the TOTP code of --totp ARG / --totp-fd FD_ARG (NULL when not given) into out:
 * ARG '-' reads one line from stdin, FD_ARG one from that descriptor; a literal code in ARG is
 * refused (argv is visible to every local user). 0 (out "" when neither is given) or -EINVAL /
 * -ENODATA, printed. Every command that takes --totp reads it here. */
#define KFCTL_TOTP_MAX 16
int kfctl_totp_read(const char *arg, const char *fd_arg, char out[KFCTL_TOTP_MAX + 1]);

int kfctl_cmd_init(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_cert(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_status(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_pending(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_approve(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_deny(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_audit(kfctl *ctl, int argc, char **argv);
/* audit's subcommands (cmd_audit_proof.c): argv[0] is the subcommand; -1 when it is none. */
int kfctl_audit_sub(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_policy(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_node(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_volume(kfctl *ctl, int argc, char **argv);
/* cmd_lifecycle.c: argv[0] is node or volume, argv[1] the subcommand. */
/* volume recovery-key VOLUME [--request ID] [--totp -|--totp-fd N] (cmd_recovery.c); argv[0] is "recovery-key". */
int kfctl_volume_recovery_key(kfctl *ctl, int argc, char **argv);
/* node list [--json] (cmd_approval.c; "node" itself is in cmd_policy.c). */
int kfctl_node_list(kfctl *ctl, int argc, char **argv);
int kfctl_node_unrevoke(kfctl *ctl, int argc, char **argv);
int kfctl_node_wipe(kfctl *ctl, int argc, char **argv);
int kfctl_volume_show(kfctl *ctl, int argc, char **argv);
int kfctl_volume_retire(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_kms(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_approle(kfctl *ctl, int argc, char **argv);
int kfctl_cmd_cluster(kfctl *ctl, int argc, char **argv);

#endif
