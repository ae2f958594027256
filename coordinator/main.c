/* keyfleetd: the keyfleet coordinator. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/ssl.h>

#include "config/config.h"
#include "core/app.h"
#include "core/approvals.h"
#include "front/router.h"
#include "front/server.h"
#include "kf_cli.h"
#include "kf_crash.h"
#include "kf_log.h"
#include "kf_secmem.h"
#include "kms/kms_remote.h"
#include "preflight.h"
#include "privileges.h"
#include "rpc/rpc_table.h"

#define EXIT_CONFIG 2
#define TICK_MS 1000

/* Once a second: waiting requests past their deadline expire (on the leader), and a KMS key
 * version another replica rotated to is loaded once it is here. */
static void on_tick(uv_timer_t *t)
{
    kfd_approvals_expire(t->data);
    kfd_app_sync_kms(t->data);
    kfd_app_flush_sinks(t->data);
}

static void on_tick_closed(uv_handle_t *h) { (void)h; }

static const kf_cli kfd_cli = {
    .program = "keyfleetd",
    .options = "[-c FILE] [--check-config]\n"
               "  -c, --config FILE   configuration (default /etc/keyfleet/keyfleetd.yaml)\n"
               "      --check-config  validate the configuration and the files it names (TLS, KEKs), then exit\n"
               "  -h, --help          this usage; --version: the version\n"
               "exit status: 0 stopped by SIGTERM/SIGINT (or the config is valid), 1 failed, 2 config error\n",
};

/* Loads the config (with --check-config, also checks the files it names, then says so), sets the
 * log level and makes the state directory. -1 with *ret set when keyfleetd goes on, else the exit
 * status (*ret freed). */
static int load_config(const char *config_path, int check_only, kfd_config **ret)
{
    kf_err err = {0};
    kfd_config *cfg = NULL;
    if (kfd_config_load(config_path, &cfg, &err) != 0) {
        fprintf(stderr, "keyfleetd: %s\n", err.msg);
        return EXIT_CONFIG;
    }
    if (check_only && kfd_preflight(cfg, &err) != 0) {
        fprintf(stderr, "keyfleetd: %s: %s\n", config_path, err.msg);
        kfd_config_free(cfg);
        return EXIT_CONFIG;
    }
    if (check_only) {
        printf("%s: ok\n", config_path);
        kfd_config_free(cfg);
        return 0;
    }
    if (cfg->log_level != NULL) {
        kf_log_level lvl;
        if (kf_log_level_parse(cfg->log_level, &lvl) == 0)
            kf_log_set_level(lvl);
    }
    if (mkdir(cfg->state_dir, 0700) != 0 && errno != EEXIST) {
        kf_log_error("state_dir_failed", "path=%s error=%s", kf_log_q(cfg->state_dir), kf_log_q(strerror(errno)));
        kfd_config_free(cfg);
        return 1;
    }
    *ret = cfg;
    return -1;
}

int main(int argc, char **argv)
{
    kf_log_set_program("keyfleetd");
    kf_crash_handler_install("keyfleetd");
    /* Everything keyfleetd creates (the database with its -wal and -shm, snapshots, the port file)
     * is for its own user alone, whatever umask it was started with. */
    umask(077);
    kfd_json_wipe_on_free();
    const char *config_path = "/etc/keyfleet/keyfleetd.yaml";
    int check_only = 0;
    int answered = kf_cli_answer(&kfd_cli, argc, argv, argc);
    if (answered >= 0)
        return answered;
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"check-config", no_argument, NULL, 'C'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config_path = optarg;
            break;
        case 'C':
            check_only = 1;
            break;
        default:
            return kf_cli_usage_error(&kfd_cli, NULL);
        }
    }
    if (optind != argc)
        return kf_cli_usage_error(&kfd_cli, NULL);

    /* Not dumpable from the start; again after a privilege drop, which resets it. */
    if (kf_process_harden() != 0)
        kf_log_warn("harden_failed", "what=dumpable");
    signal(SIGPIPE, SIG_IGN);
    /* A file size limit must turn into a write error the store fails closed on, not a kill. */
    signal(SIGXFSZ, SIG_IGN);

    kfd_config *cfg = NULL;
    int exit_now = load_config(config_path, check_only, &cfg);
    if (exit_now >= 0)
        return exit_now;

    kf_err err = {0};
    uv_loop_t loop;
    uv_loop_init(&loop);
    kfd_server srv;
    kfd_app app = {0};
    uv_timer_t tick = {0};
    int rc = 1;
    if (kfd_server_init(&srv, &loop, cfg, &err) != 0) {
        kf_log_error("tls_setup_failed", "error=%s", kf_log_q(err.msg));
        goto out;
    }
    kfd_router_bind(&srv, kfd_methods, kfd_methods_count);
    if (kfd_app_open(&app, &loop, cfg, &err) != 0) {
        kf_log_error("start_failed", "error=%s", kf_log_q(err.msg));
        goto out;
    }
    uv_timer_init(&loop, &tick);
    tick.data = &app;
    uv_timer_start(&tick, on_tick, TICK_MS, TICK_MS);
    uv_unref((uv_handle_t *)&tick);
    srv.app = &app;
    if (kfd_server_listen(&srv, &err) != 0) {
        kf_log_error("listen_failed", "error=%s", kf_log_q(err.msg));
        goto out;
    }
    if (cfg->user != NULL) {
        if (kfd_drop_privileges(cfg->user, &err) != 0) {
            kf_log_error("privilege_drop_failed", "error=%s", kf_log_q(err.msg));
            goto out;
        }
        if (kf_process_harden() != 0) {
            kf_log_error("harden_failed", "what=dumpable");
            goto out;
        }
    }
    kf_log_info("started", "name=%s version=%s", cfg->name, KF_VERSION);
    rc = kfd_server_run(&srv);
out:
    kfd_app_close(&app);
    if (tick.loop != NULL) {
        uv_timer_stop(&tick);
        uv_close((uv_handle_t *)&tick, on_tick_closed);
    }
    srv.app = NULL;
    kfd_server_dispose(&srv);
    uv_loop_close(&loop);
    kfd_config_free(cfg);
    return rc;
}
