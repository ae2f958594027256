/* keyfleetctl init DIR: a fleet CA, a coordinator and an operator certificate, and the configs
 * that tie them together, ready for `keyfleetd -c DIR/keyfleetd.yaml`. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "ca.h"
#include "ctl.h"
#include "kms.h"

static int write_text(const char *path, const char *text, kf_err *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len);
    int r = (n == (ssize_t)len && close(fd) == 0) ? 0 : -EIO;
    if (r != 0)
        return kf_err_set(err, r, "%s: write failed", path);
    return 0;
}

static void join(char *buf, size_t size, const char *dir, const char *name)
{
    snprintf(buf, size, "%s/%s", dir, name);
}

int kfctl_cmd_init(kfctl *ctl, int argc, char **argv)
{
    (void)ctl;
    const char *name = "coordinator-1", *operator_name = "admin", *listen = "127.0.0.1:7443";
    static const struct option opts[] = {{"name", required_argument, NULL, 'n'},
                                         {"operator", required_argument, NULL, 'o'},
                                         {"listen", required_argument, NULL, 'l'},
                                         {NULL, 0, NULL, 0}};
    int c;
    optind = 0; /* 0, not 1: glibc then resets its permutation state */
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            name = optarg;
            break;
        case 'o':
            operator_name = optarg;
            break;
        case 'l':
            listen = optarg;
            break;
        default:
            return KFCTL_EXIT_USAGE;
        }
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "usage: keyfleetctl init DIR [--name COORDINATOR] [--operator NAME] [--listen HOST:PORT]\n");
        return KFCTL_EXIT_USAGE;
    }
    const char *dir = argv[optind];
    if (!kf_name_valid(name, strlen(name)) || !kf_name_valid(operator_name, strlen(operator_name))) {
        fprintf(stderr, "keyfleetctl: names must be 1..63 of [A-Za-z0-9._-], starting alphanumeric\n");
        return KFCTL_EXIT_USAGE;
    }
    const char *colon = strrchr(listen, ':');
    char host[64] = "";
    if (colon == NULL || (size_t)(colon - listen) >= sizeof(host) || atoi(colon + 1) < 0 || atoi(colon + 1) > 65535) {
        fprintf(stderr, "keyfleetctl: --listen must be HOST:PORT\n");
        return KFCTL_EXIT_USAGE;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "keyfleetctl: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char p[6][4096];
    join(p[0], sizeof(p[0]), dir, "ca.crt");
    join(p[1], sizeof(p[1]), dir, "ca.key");
    if (access(p[1], F_OK) == 0) {
        fprintf(stderr, "keyfleetctl: %s already holds a fleet CA; refusing to overwrite it\n", dir);
        return 1;
    }
    kf_err err = {0};
    if (kfctl_ca_create(p[0], p[1], "keyfleet fleet CA", &err) != 0)
        goto fail;

    /* The coordinator's certificate also names where clients reach it. */
    const char *sans[3] = {"DNS:localhost", "IP:127.0.0.1", NULL};
    size_t n_sans = 2;
    char extra[96];
    struct in_addr a4;
    if (strcmp(host, "127.0.0.1") != 0 && strcmp(host, "0.0.0.0") != 0 && host[0] != '\0') {
        snprintf(extra, sizeof(extra), "%s:%s", inet_pton(AF_INET, host, &a4) == 1 ? "IP" : "DNS", host);
        sans[n_sans++] = extra;
    }
    kfctl_cert_opts copts = {.kind = KF_PEER_COORDINATOR, .name = name, .days = 825,
                             .extra_sans = sans, .n_extra_sans = n_sans};
    join(p[2], sizeof(p[2]), dir, "coordinator.crt");
    join(p[3], sizeof(p[3]), dir, "coordinator.key");
    if (kfctl_cert_issue(p[0], p[1], &copts, p[2], p[3], false, &err) != 0)
        goto fail;
    kfctl_cert_opts oopts = {.kind = KF_PEER_OPERATOR, .name = operator_name, .days = 365};
    join(p[4], sizeof(p[4]), dir, "operator.crt");
    join(p[5], sizeof(p[5]), dir, "operator.key");
    if (kfctl_cert_issue(p[0], p[1], &oopts, p[4], p[5], false, &err) != 0)
        goto fail;

    char cfg[2048], path[4096];
    snprintf(cfg, sizeof(cfg),
             "# keyfleetd configuration written by keyfleetctl init. Relative paths are\n"
             "# relative to this file.\n"
             "name: %s\n"
             "listen:\n"
             "  - \"%s\"\n"
             "port_file: keyfleetd.port\n"
             "state_dir: state\n"
             "tls:\n"
             "  cert: coordinator.crt\n"
             "  key: coordinator.key\n"
             "  ca: ca.crt\n"
             "  client_auth: required\n"
             "log_level: info\n",
             name, listen);
    join(path, sizeof(path), dir, "keyfleetd.yaml");
    if (write_text(path, cfg, &err) != 0)
        goto fail;
    snprintf(cfg, sizeof(cfg),
             "# keyfleetctl configuration written by keyfleetctl init.\n"
             "coordinators:\n"
             "  - \"%s\"\n"
             "cert: operator.crt\n"
             "key: operator.key\n"
             "ca: ca.crt\n",
             strcmp(host, "0.0.0.0") == 0 ? "127.0.0.1:7443" : listen);
    join(path, sizeof(path), dir, "keyfleetctl.yaml");
    if (write_text(path, cfg, &err) != 0)
        goto fail;
    join(path, sizeof(path), dir, "state");
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        kf_err_set(&err, -errno, "%s: %s", path, strerror(errno));
        goto fail;
    }
    /* The local KMS's first key-encryption key, mode 0600. */
    join(path, sizeof(path), dir, "state/kek");
    if (kfd_kms_local_init(path, &err) != 0)
        goto fail;
    printf("initialised %s: fleet CA, coordinator '%s', operator '%s', local KEK\n"
           "start:   keyfleetd -c %s/keyfleetd.yaml\n"
           "operate: keyfleetctl -c %s/keyfleetctl.yaml status\n",
           dir, name, operator_name, dir, dir);
    return 0;
fail:
    fprintf(stderr, "keyfleetctl: init: %s\n", err.msg);
    return 1;
}
