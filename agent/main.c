/* keyfleet-agent: enrolls this node's encrypted volumes with a coordinator and unlocks them at
 * boot. Exit status of unlock: 0 all unlocked, 1 none, 3 some; 2 for usage or config errors.
 * This file is the command line and the dispatch; each command is a file of its own (enroll.c,
 * unlock.c, rewrap.c, status.c, seal_secret_id.c, rotate.c, recover.c, recovery_key.c, watch.c, boot.c, identity.c). */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "boot.h"
#include "commands.h"
#include "identity.h"
#include "kf_cli.h"
#include "kf_heap.h"
#include "kf_log.h"
#include "kf_secmem.h"
#include "kf_time.h"

static const kf_cli_cmd commands_help[] = {
    {"enroll", "enroll VOLUME [--label k=v]... [--auth-file FILE] [--recovery-key]\n"
               "       VOLUME is luks:PATH, zfs:DATASET or a configured volume (a relative PATH is made\n"
               "       absolute). LUKS2 needs an existing passphrase: --auth-file, or on stdin.\n"
               "       --recovery-key: also escrow a recovery key (as recovery-key add)"},
    {"unlock", "unlock [--all | VOLUME...]\n"
               "       exit 0: all unlocked, 1: none, 3: some"},
    {"status", "status [--json]\n"
               "       each volume's key status and last unlock, whether a coordinator answers, whether it\n"
               "       reports this node revoked, and the dead-man switch as keyfleet-agent watch left it\n"
               "       (window, last contact, locked)"},
    {"rewrap", "rewrap [--wait]\n"
               "       store each volume's key rewrapped under the newest KMS key; exit as unlock.\n"
               "       A volume whose release needs approval fails at once, leaving no request;\n"
               "       --wait asks for the approval and waits for it, with a countdown"},
    {"rotate", "rotate [--tpm] --all | VOLUME...\n"
               "       replace each volume's keyfleet key with a new one (resumes an interrupted rotation);\n"
               "       a TPM copy of the old key is replaced where policy allows; --tpm: also seal one for\n"
               "       a volume that has none; exit as unlock"},
    {"recovery-key", "recovery-key add VOLUME...\n"
                     "       escrow a new recovery key with the coordinator (LUKS2: a keyslot of its own, the\n"
                     "       one it replaces killed; ZFS: the dataset's key); docs/recovery.md"},
    {"recover", "recover VOLUME\n"
                "       break glass: open VOLUME with its recovery key, typed on stdin (docs/recovery.md);\n"
                "       no coordinator, identity or TPM needed; reported at the next contact"},
    {"identity", "identity create NAME [--key FILE] [--csr FILE]\n"
                 "       makes an ECC P-256 key in the TPM (tpm.tcti), a certificate request, and the TPM's\n"
                 "       evidence that the key is in it (FILE.evidence); FILE defaults: identity.tpm_key of\n"
                 "       the config, and that path + \".csr\"\n"
                 "identity activate CREDENTIAL [--cert FILE]\n"
                 "       opens the certificate keyfleetctl sealed to this TPM; FILE defaults to identity.cert"},
    {"seal-secret-id", "seal-secret-id --out FILE\n"
                       "       seal an AppRole secret id (on stdin) to this TPM, for identity.secret_id_tpm_file"},
    {"watch", "watch [--count N]\n"
              "       heartbeat every watch_interval; lock every volume while a coordinator says lock\n"
              "       (the node was revoked)"},
    {"check-config", "check-config\n"
                     "       validate the config (and the certificate it names), then exit: 0 ok, 2 not"},
    {"initramfs-files", "initramfs-files\n"
                        "       list what an initramfs needs for this config (KIND<TAB>PATH)"},
    {"keyscript", "keyscript [--askpass PROGRAM]\n"
                  "       cryptroot keyscript: the key of $CRYPTTAB_SOURCE on stdout, from a coordinator or\n"
                  "       the passphrase prompt, whichever answers first"},
};

const kf_cli kfa_cli = {
    .program = "keyfleet-agent",
    .options = "[-c FILE] COMMAND ...\n"
               "  -c, --config FILE     agent config (default /etc/keyfleet/agent.yaml)\n"
               "  -h, --help            this usage; --version: the version\n"
               "exit status: 0 ok, 1 failed, 2 usage or config error, 3 (unlock, rewrap, rotate) some volumes\n",
    .cmds = commands_help,
    .n_cmds = sizeof(commands_help) / sizeof(commands_help[0]),
};

int kfa_usage(const char *cmd) { return kf_cli_usage_error(&kfa_cli, cmd); }

/* The node's identity from its certificate, parsed once by the TLS context. */
static int resolve_identity(kfa_ctx *ctx, kf_err *err)
{
    if (kfa_client(ctx, err) != 0 || kf_rpc_client_identity(ctx->client, &ctx->me, err) != 0 ||
        ctx->me.kind != KF_PEER_NODE) {
        fprintf(stderr, "keyfleet-agent: %s: %s\n", ctx->cfg->cert,
                err->msg[0] ? err->msg : "not a node certificate (keyfleet://node/NAME)");
        return -EINVAL;
    }
    return 0;
}

static void *identity_thread(void *arg)
{
    kfa_identity_job *job = arg;
    job->r = resolve_identity(job->ctx, &job->err);
    kf_err ignored = {0}; /* a failed connect is retried, and reported, by the release loop */
    if (job->r == 0)
        kf_rpc_client_connect(job->ctx->client, &ignored);
    return NULL;
}

int kfa_await_identity(kfa_identity_job *job)
{
    pthread_join(job->thread, NULL);
    job->started = false;
    return job->r;
}

/* Exits without running the libraries' exit handlers: what was secret is wiped by now, and
 * OpenSSL's and libcryptsetup's teardown of their caches cost about 1 ms per boot unlock here.
 * Sanitizer builds exit normally, so LeakSanitizer still checks every run in the tests. */
static int finish(int rc)
{
#if !defined(__SANITIZE_ADDRESS__)
    fflush(NULL);
    _exit(rc);
#endif
    return rc;
}

int main(int argc, char **argv)
{
    kf_heap_reserve(1u << 20);
    kf_log_set_program("keyfleet-agent");
    if (kf_process_harden() != 0)
        kf_log_warn("harden_failed", "what=dumpable");
    const char *config_path = "/etc/keyfleet/agent.yaml";
    /* --version, --help and `help COMMAND` before the config is read (it may not exist yet). */
    static const char *const with_arg[] = {"-c", "--config", NULL};
    int answered = kf_cli_answer(&kfa_cli, argc, argv, kf_cli_command_index(argc, argv, with_arg));
    if (answered >= 0)
        return answered;
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'}, {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "+c:", opts, NULL)) != -1) {
        if (c == 'c')
            config_path = optarg;
        else
            return kfa_usage(NULL);
    }
    if (optind >= argc)
        return kfa_usage(NULL);
    /* Before the config is read: a broken config must still leave the passphrase prompt. */
    if (strcmp(argv[optind], "keyscript") == 0)
        return finish(kfa_cmd_keyscript(config_path, argc - optind, argv + optind));
    kf_err err = {0};
    kfa_ctx ctx = {0};
    if (kfa_config_load(config_path, &ctx.cfg, &err) != 0) {
        fprintf(stderr, "keyfleet-agent: %s\n", err.msg);
        return KFA_EXIT_USAGE;
    }
    ctx.deadline = kf_monotonic_ms() + ctx.cfg->deadline_ms;
    ctx.live = isatty(STDERR_FILENO) == 1;
    ctx.erase = kfa_erase_ordered;
    const char *cmd = argv[optind];
    int sub_argc = argc - optind, rc;
    if (strcmp(cmd, "initramfs-files") == 0) {
        rc = kfa_cmd_initramfs_files(ctx.cfg, sub_argc, argv + optind);
        kfa_config_free(ctx.cfg);
        return finish(rc);
    }
    if (strcmp(cmd, "recover") == 0) {
        /* Before the identity is resolved: break glass, when the TPM holding it may be gone. */
        rc = kfa_cmd_recover(ctx.cfg, sub_argc, argv + optind);
        kfa_config_free(ctx.cfg);
        return finish(rc);
    }
    if (strcmp(cmd, "identity") == 0) {
        /* Before the identity is resolved: its certificate does not exist yet. */
        rc = kfa_cmd_identity(ctx.cfg, sub_argc, argv + optind);
        kfa_config_free(ctx.cfg);
        return finish(rc);
    }
    if (strcmp(cmd, "check-config") == 0) {
        /* Config management validates a rendered file with this before installing it. */
        rc = optind + 1 == argc && (ctx.cfg->cert == NULL || resolve_identity(&ctx, &err) == 0) ? 0 : KFA_EXIT_USAGE;
        if (rc == 0)
            printf("%s: ok\n", config_path);
        kf_rpc_client_free(ctx.client);
        kfa_config_free(ctx.cfg);
        return rc;
    }
    char **sub_argv = argv + optind;
    kfa_identity_job job = {.ctx = &ctx};
    if (ctx.cfg->cert == NULL) {
        ctx.me.kind = KF_PEER_NODE; /* AppRole: the name comes with the login */
    } else if (strcmp(cmd, "unlock") == 0 && pthread_create(&job.thread, NULL, identity_thread, &job) == 0) {
        job.started = true; /* cmd_unlock reads the volumes meanwhile, then joins */
    } else if (resolve_identity(&ctx, &err) != 0) {
        kfa_config_free(ctx.cfg);
        return KFA_EXIT_USAGE;
    }
    if (strcmp(cmd, "enroll") == 0)
        rc = kfa_cmd_enroll(&ctx, sub_argc, sub_argv);
    else if (strcmp(cmd, "unlock") == 0)
        rc = kfa_cmd_unlock(&ctx, sub_argc, sub_argv, job.started ? &job : NULL);
    else if (strcmp(cmd, "status") == 0)
        rc = kfa_cmd_status(&ctx, sub_argc, sub_argv);
    else if (strcmp(cmd, "rewrap") == 0)
        rc = kfa_cmd_rewrap(&ctx, sub_argc, sub_argv);
    else if (strcmp(cmd, "rotate") == 0)
        rc = kfa_rotate(&ctx, sub_argc, sub_argv);
    else if (strcmp(cmd, "recovery-key") == 0)
        rc = kfa_cmd_recovery_key(&ctx, sub_argc, sub_argv);
    else if (strcmp(cmd, "watch") == 0)
        rc = kfa_watch(&ctx, sub_argc, sub_argv);
    else if (strcmp(cmd, "seal-secret-id") == 0)
        rc = kfa_cmd_seal_secret_id(&ctx, sub_argc, sub_argv);
    else {
        fprintf(stderr, "keyfleet-agent: unknown command '%s'\n", cmd);
        rc = kfa_usage(NULL);
    }
    for (size_t i = 0; i < ctx.n_recovery_replace; i++)
        free(ctx.recovery_replace[i]);
    kf_seal_receiver_free(ctx.receiver);
    kf_rpc_client_free(ctx.client);
    kfa_config_free(ctx.cfg);
    return finish(rc);
}
