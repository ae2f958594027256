/* keyfleetctl init DIR: a fleet CA, an operator certificate, and one coordinator (in DIR) or a
 * cluster of them (--peer, one directory each under DIR, sharing one local KEK), with the
 * configs that tie them together, ready for `keyfleetd -c .../keyfleetd.yaml`. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ca.h"
#include "ctl.h"
#include "kms/kms_kek.h"
#include "peer_spec.h"

#define MAX_PEERS 7

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

static int copy_text(const char *from, const char *to, kf_err *err)
{
    char buf[16384];
    FILE *f = fopen(from, "r");
    size_t n = f != NULL ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    bool whole = f != NULL && !ferror(f) && feof(f);
    if (f != NULL)
        fclose(f);
    if (!whole)
        return kf_err_set(err, -EIO, "%s: cannot read it", from);
    buf[n] = '\0';
    return write_text(to, buf, err);
}

#define DIR_MAX 2048 /* DIR, checked first, so every path below fits in 4096 */

static void join(char *buf, size_t size, const char *dir, const char *name)
{
    size_t a = strnlen(dir, size - 2); /* room for '/' and the NUL */
    size_t b = strnlen(name, size - a - 2);
    memcpy(buf, dir, a);
    buf[a] = '/';
    memcpy(buf + a + 1, name, b);
    buf[a + 1 + b] = '\0';
}

/* mkdir -p, each new level 0700 (the fleet directory holds the CA key). */
static int make_dir(const char *path, kf_err *err)
{
    char p[4096];
    if (snprintf(p, sizeof(p), "%s", path) >= (int)sizeof(p))
        return kf_err_set(err, -ENAMETOOLONG, "%s: path too long", path);
    for (char *s = p + 1; *s != '\0'; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST)
            return kf_err_set(err, -errno, "%s: %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0700) != 0 && errno != EEXIST)
        return kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
    return 0;
}

/* The state directory of the coordinator configured in dir: state_dir as keyfleetd.yaml names it
 * (absolute, or relative to dir). */
static void state_path(char *buf, size_t size, const char *dir, const char *state_dir)
{
    if (state_dir[0] == '/')
        snprintf(buf, size, "%s", state_dir);
    else
        join(buf, size, dir, state_dir);
}

/* One coordinator in dir: its certificate (naming host too, where clients and peers reach it),
 * keyfleetd.yaml and its state directory (state_dir: "state" in dir, or an absolute path such as
 * the packaged /var/lib/keyfleet; the port file goes there too, as keyfleetd may not write its
 * config directory). cluster is the YAML of its cluster: section, or "". */
static int write_coordinator(const char *dir, const char *ca_crt, const char *ca_key, const char *ca_rel,
                             const char *name, const char *listen, const char *host, bool numeric,
                             const char *cluster, const char *state_dir, kf_err *err)
{
    const char *sans[3] = {"DNS:localhost", "IP:127.0.0.1", NULL};
    size_t n_sans = 2;
    char extra[300];
    if (host[0] != '\0' && strcmp(host, "127.0.0.1") != 0 && strcmp(host, "0.0.0.0") != 0) {
        size_t hl = strlen(host);
        if (host[0] == '[') /* a SAN names an IPv6 address without brackets */
            snprintf(extra, sizeof(extra), "IP:%.*s", (int)(hl - 2), host + 1);
        else
            snprintf(extra, sizeof(extra), "%s:%s", numeric ? "IP" : "DNS", host);
        sans[n_sans++] = extra;
    }
    kfctl_cert_opts copts = {.kind = KF_PEER_COORDINATOR, .name = name, .days = 825,
                             .extra_sans = sans, .n_extra_sans = n_sans};
    char crt[4096], key[4096], path[4096];
    join(crt, sizeof(crt), dir, "coordinator.crt");
    join(key, sizeof(key), dir, "coordinator.key");
    int r = kfctl_cert_issue(ca_crt, ca_key, &copts, crt, key, false, err);
    if (r != 0)
        return r;
    char cfg[4096];
    int len = snprintf(cfg, sizeof(cfg),
                       "# keyfleetd configuration written by keyfleetctl init. Relative paths are\n"
                       "# relative to this file.\n"
                       "name: %s\n"
                       "listen:\n"
                       "  - \"%s\"\n"
                       "port_file: %s%skeyfleetd.port\n"
                       "state_dir: %s\n"
                       "tls:\n"
                       "  cert: coordinator.crt\n"
                       "  key: coordinator.key\n"
                       "  ca: %s\n"
                       "  client_auth: required\n"
                       "log_level: info\n"
                       "%s",
                       name, listen, state_dir[0] == '/' ? state_dir : "", state_dir[0] == '/' ? "/" : "", state_dir,
                       ca_rel, cluster);
    if (len < 0 || (size_t)len >= sizeof(cfg))
        return kf_err_set(err, -E2BIG, "%s: the configuration does not fit", name);
    join(path, sizeof(path), dir, "keyfleetd.yaml");
    if ((r = write_text(path, cfg, err)) != 0)
        return r;
    state_path(path, sizeof(path), dir, state_dir);
    return make_dir(path, err);
}

/* The cluster: section every replica shares: the member list (a Raft bootstrap needs the same
 * one everywhere). */
static int cluster_yaml(const kfctl_peer *peers, size_t n, char *buf, size_t size, kf_err *err)
{
    size_t off = (size_t)snprintf(buf, size, "cluster:\n  peers:\n");
    for (size_t i = 0; i < n && off < size; i++) {
        char raft[300], rpc[300];
        kfctl_peer_addr(&peers[i], true, raft, sizeof(raft));
        kfctl_peer_addr(&peers[i], false, rpc, sizeof(rpc));
        off += (size_t)snprintf(buf + off, size - off, "    - {name: %s, raft: \"%s\", rpc: \"%s\"}\n", peers[i].name,
                                raft, rpc);
    }
    return off < size ? 0 : kf_err_set(err, -E2BIG, "the cluster section does not fit");
}

static int write_replicas(const char *dir, const char *ca_crt, const char *ca_key, const kfctl_peer *peers, size_t n,
                          kf_err *err)
{
    char cluster[4096];
    int r = cluster_yaml(peers, n, cluster, sizeof(cluster), err);
    for (size_t i = 0; r == 0 && i < n; i++) {
        const kfctl_peer *p = &peers[i];
        char rdir[4096], path[4096], listen[300], section[4600];
        join(rdir, sizeof(rdir), dir, p->name);
        if ((r = make_dir(rdir, err)) != 0)
            break;
        join(path, sizeof(path), rdir, "ca.crt");
        if ((r = copy_text(ca_crt, path, err)) != 0)
            break;
        /* keyfleetd binds numeric addresses only: a replica known by name listens on all. */
        if (p->numeric) {
            kfctl_peer_addr(p, false, listen, sizeof(listen));
            snprintf(section, sizeof(section), "%s", cluster);
        } else {
            snprintf(listen, sizeof(listen), "0.0.0.0:%d", p->rpc_port);
            snprintf(section, sizeof(section), "%s  raft_listen: \"0.0.0.0:%d\"\n", cluster, p->rpc_port + 1);
        }
        r = write_coordinator(rdir, ca_crt, ca_key, "ca.crt", p->name, listen, p->host, p->numeric, section, "state",
                              err);
    }
    return r;
}

static uid_t owner_uid;
static gid_t owner_gid;

static int chown_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return chown(path, owner_uid, owner_gid) == 0 ? 0 : -errno;
}

/* --owner: keyfleetd runs as that user (keyfleetd.service: User=keyfleet). It reads the config
 * directory and the coordinator key through the user's group (root:GROUP, 0750 and 0640; the
 * operator's key stays root's alone), and owns its state directory, KEK included. */
static int apply_owner(const char *dir, const char *state, kf_err *err)
{
    char path[4096];
    const struct {
        const char *name;
        mode_t mode;
    } group_readable[] = {{"", 0750}, {"coordinator.key", 0640}};
    for (size_t i = 0; i < sizeof(group_readable) / sizeof(group_readable[0]); i++) {
        if (group_readable[i].name[0] != '\0')
            join(path, sizeof(path), dir, group_readable[i].name);
        else
            snprintf(path, sizeof(path), "%s", dir);
        if (chown(path, (uid_t)-1, owner_gid) != 0 || chmod(path, group_readable[i].mode) != 0)
            return kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
    }
    int r = nftw(state, chown_entry, 16, FTW_PHYS);
    if (r != 0)
        return kf_err_set(err, r < 0 ? r : -EIO, "%s: cannot give it to its owner: %s", state,
                          strerror(r < 0 ? -r : errno));
    return 0;
}

/* What init was asked for: one coordinator (peers none) or a cluster of n_peers. */
typedef struct init_args {
    const char *name, *operator_name, *listen;
    const char *state_dir, *owner, *ca_dir;
    kfctl_peer *peers;
    size_t n_peers;
    const char *dir;
    char host[64];
    const char *port;
} init_args;

static int parse_args(int argc, char **argv, init_args *a)
{
    static kfctl_peer peers[MAX_PEERS];
    static const struct option opts[] = {{"name", required_argument, NULL, 'n'},
                                         {"operator", required_argument, NULL, 'o'},
                                         {"listen", required_argument, NULL, 'l'},
                                         {"peer", required_argument, NULL, 'p'},
                                         {"state-dir", required_argument, NULL, 's'},
                                         {"owner", required_argument, NULL, 'u'},
                                         {"ca-dir", required_argument, NULL, 'a'},
                                         {NULL, 0, NULL, 0}};
    kf_err err = {0};
    int c;
    a->operator_name = "admin";
    a->peers = peers;
    optind = 0; /* 0, not 1: glibc then resets its permutation state */
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            a->name = optarg;
            break;
        case 'o':
            a->operator_name = optarg;
            break;
        case 'l':
            a->listen = optarg;
            break;
        case 's':
            a->state_dir = optarg;
            break;
        case 'u':
            a->owner = optarg;
            break;
        case 'a':
            a->ca_dir = optarg;
            break;
        case 'p':
            if (a->n_peers == MAX_PEERS) {
                fprintf(stderr, "keyfleetctl: at most %d --peer\n", MAX_PEERS);
                return KFCTL_EXIT_USAGE;
            }
            if (kfctl_peer_parse(optarg, &peers[a->n_peers++], &err) != 0) {
                fprintf(stderr, "keyfleetctl: %s\n", err.msg);
                return KFCTL_EXIT_USAGE;
            }
            break;
        default:
            kfctl_usage("init");
            return KFCTL_EXIT_USAGE;
        }
    }
    if (optind + 1 != argc) {
        kfctl_usage("init");
        return KFCTL_EXIT_USAGE;
    }
    a->dir = argv[optind];
    return 0;
}

/* --owner: the user must exist, and only root can give it files. */
static int check_owner(const char *owner)
{
    struct passwd *pw = getpwnam(owner);
    if (pw == NULL) {
        fprintf(stderr, "keyfleetctl: --owner %s: no such user (the keyfleetd package makes 'keyfleet'; by hand: "
                        "systemd-sysusers keyfleet.conf)\n", owner);
        return KFCTL_EXIT_USAGE;
    }
    owner_uid = pw->pw_uid;
    owner_gid = pw->pw_gid;
    if (geteuid() != 0) {
        fprintf(stderr, "keyfleetctl: --owner %s: only root can give files to another user\n", owner);
        return KFCTL_EXIT_USAGE;
    }
    return 0;
}

/* The options that go together, the paths' and names' limits, the cluster's size; fills in the
 * defaults and the listener's host and port. */
static int check_args(init_args *a)
{
    kf_err err = {0};
    if (a->n_peers > 0 && (a->name != NULL || a->listen != NULL || a->state_dir != NULL || a->owner != NULL)) {
        fprintf(stderr, "keyfleetctl: --peer names every coordinator and its address; --name and --listen are for one, "
                        "as are --state-dir and --owner (each replica's directory is copied to its host)\n");
        return KFCTL_EXIT_USAGE;
    }
    if (a->state_dir != NULL && (a->state_dir[0] != '/' || strlen(a->state_dir) > DIR_MAX)) {
        fprintf(stderr, "keyfleetctl: --state-dir must be an absolute path of at most %d characters, such as "
                        "/var/lib/keyfleet\n", DIR_MAX);
        return KFCTL_EXIT_USAGE;
    }
    if (a->ca_dir != NULL && (a->ca_dir[0] == '\0' || strlen(a->ca_dir) > DIR_MAX)) {
        fprintf(stderr, "keyfleetctl: --ca-dir must be 1..%d characters\n", DIR_MAX);
        return KFCTL_EXIT_USAGE;
    }
    if (a->owner != NULL && check_owner(a->owner) != 0)
        return KFCTL_EXIT_USAGE;
    /* An even count survives no more failures than one fewer, and a split can stall it. */
    if (a->n_peers > 0 && a->n_peers % 2 == 0) {
        fprintf(stderr, "keyfleetctl: %zu coordinators: a cluster needs 3, 5 or 7 (an even number survives no more "
                        "failures than one fewer)\n", a->n_peers);
        return KFCTL_EXIT_USAGE;
    }
    if (a->n_peers == 1) {
        fprintf(stderr, "keyfleetctl: one --peer: for a single coordinator use --name and --listen\n");
        return KFCTL_EXIT_USAGE;
    }
    if (kfctl_peers_check(a->peers, a->n_peers, &err) != 0) {
        fprintf(stderr, "keyfleetctl: %s\n", err.msg);
        return KFCTL_EXIT_USAGE;
    }
    if (a->name == NULL)
        a->name = "coordinator-1";
    if (a->listen == NULL)
        a->listen = "127.0.0.1:7443";
    if (a->dir[0] == '\0' || strlen(a->dir) > DIR_MAX) {
        fprintf(stderr, "keyfleetctl: DIR must be 1..%d characters\n", DIR_MAX);
        return KFCTL_EXIT_USAGE;
    }
    if (!kf_name_valid(a->name, strlen(a->name)) || !kf_name_valid(a->operator_name, strlen(a->operator_name))) {
        fprintf(stderr, "keyfleetctl: names must be 1..63 of [A-Za-z0-9._-], starting alphanumeric\n");
        return KFCTL_EXIT_USAGE;
    }
    if (kfctl_listen_parse(a->listen, a->host, sizeof(a->host)) != 0) {
        fprintf(stderr, "keyfleetctl: --listen must be IPV4:PORT or [IPV6]:PORT (keyfleetd binds numeric addresses)\n");
        return KFCTL_EXIT_USAGE;
    }
    a->port = strrchr(a->listen, ':') + 1;
    return 0;
}

/* keyfleetctl.yaml: every coordinator, and the operator's identity. keyfleetctl reaches every
 * coordinator; a wildcard listener is reached on loopback. */
static int write_ctl_config(const init_args *a, kf_err *err)
{
    char cfg[4096], addr[300], path[4096];
    size_t off = (size_t)snprintf(cfg, sizeof(cfg), "# keyfleetctl configuration written by keyfleetctl init.\n"
                                                    "coordinators:\n");
    for (size_t i = 0; i < (a->n_peers > 0 ? a->n_peers : 1) && off < sizeof(cfg); i++) {
        if (a->n_peers > 0)
            kfctl_peer_addr(&a->peers[i], false, addr, sizeof(addr));
        else if (strcmp(a->host, "0.0.0.0") == 0)
            snprintf(addr, sizeof(addr), "127.0.0.1:%s", a->port);
        else
            snprintf(addr, sizeof(addr), "%s", a->listen);
        off += (size_t)snprintf(cfg + off, sizeof(cfg) - off, "  - \"%s\"\n", addr);
    }
    if (off >= sizeof(cfg) ||
        (size_t)snprintf(cfg + off, sizeof(cfg) - off, "cert: operator.crt\nkey: operator.key\nca: ca.crt\n") >=
            sizeof(cfg) - off)
        return kf_err_set(err, -E2BIG, "keyfleetctl.yaml does not fit");
    join(path, sizeof(path), a->dir, "keyfleetctl.yaml");
    return write_text(path, cfg, err);
}

/* The coordinator's directory (or each replica's) and the local KMS's first key-encryption key,
 * mode 0600; the replicas of a cluster share it. */
static int write_coordinators(const init_args *a, const char *ca_crt, const char *ca_key, kf_err *err)
{
    char kek_dirs[MAX_PEERS][4096], path[4096];
    const char *kek_of[MAX_PEERS];
    if (a->n_peers == 0) {
        if (write_coordinator(a->dir, ca_crt, ca_key, "ca.crt", a->name, a->listen, a->host, true, "",
                              a->state_dir != NULL ? a->state_dir : "state", err) != 0)
            return -1;
        state_path(path, sizeof(path), a->dir, a->state_dir != NULL ? a->state_dir : "state");
        join(kek_dirs[0], sizeof(kek_dirs[0]), path, "kek");
        kek_of[0] = kek_dirs[0];
    } else {
        if (write_replicas(a->dir, ca_crt, ca_key, a->peers, a->n_peers, err) != 0)
            return -1;
        for (size_t i = 0; i < a->n_peers; i++) {
            char rdir[4096];
            join(rdir, sizeof(rdir), a->dir, a->peers[i].name);
            join(kek_dirs[i], sizeof(kek_dirs[i]), rdir, "state/kek");
            kek_of[i] = kek_dirs[i];
        }
    }
    return kfd_kms_local_init_shared(kek_of, a->n_peers > 0 ? a->n_peers : 1, err);
}

static void print_single(const init_args *a, const char *state)
{
    printf("initialised %s: fleet CA, coordinator '%s', operator '%s', local KEK in %s/kek\n", a->dir, a->name,
           a->operator_name, state);
    if (a->owner != NULL)
        printf("owner:   %s reads %s (group %s) and owns %s\n", a->owner, a->dir,
               getgrgid(owner_gid) != NULL ? getgrgid(owner_gid)->gr_name : "?", state);
    if (a->ca_dir != NULL)
        printf("ca key:  %s/ca.key (keep it offline: cert issue --dir %s)\n", a->ca_dir, a->ca_dir);
    printf("start:   keyfleetd -c %s/keyfleetd.yaml%s\n"
           "operate: keyfleetctl -c %s/keyfleetctl.yaml status\n",
           a->dir, a->owner != NULL ? " (systemctl enable --now keyfleetd.service)" : "", a->dir);
}

static void print_cluster(const init_args *a)
{
    char addr[300];
    printf("initialised %s: fleet CA, operator '%s', %zu coordinators sharing one local KEK\n", a->dir,
           a->operator_name, a->n_peers);
    for (size_t i = 0; i < a->n_peers; i++) {
        kfctl_peer_addr(&a->peers[i], false, addr, sizeof(addr));
        printf("coordinator %s (%s): copy %s/%s/ to it, then keyfleetd -c .../keyfleetd.yaml\n", a->peers[i].name,
               addr, a->dir, a->peers[i].name);
    }
    printf("operate: keyfleetctl -c %s/keyfleetctl.yaml cluster status\n"
           "keep %s/ca.key off the coordinators: it issues every identity\n",
           a->dir, a->dir);
}

int kfctl_cmd_init(kfctl *ctl, int argc, char **argv)
{
    (void)ctl;
    init_args a = {0};
    kf_err err = {0};
    int r = parse_args(argc, argv, &a);
    if (r == 0)
        r = check_args(&a);
    if (r != 0)
        return r;
    const char *dir = a.dir, *ca_dir = a.ca_dir;
    kf_err derr = {0};
    if (make_dir(dir, &derr) != 0) {
        fprintf(stderr, "keyfleetctl: %s\n", derr.msg);
        return 1;
    }
    /* --ca-dir: the CA's key (and a copy of its certificate, for cert issue --dir) lives there,
     * apart from the coordinator's directory, which gets the certificate alone. */
    char ca_crt[4096], ca_key[4096], crt[4096], key[4096], path[4096];
    const char *ca_home = ca_dir != NULL ? ca_dir : dir;
    join(ca_crt, sizeof(ca_crt), ca_home, "ca.crt");
    join(ca_key, sizeof(ca_key), ca_home, "ca.key");
    join(path, sizeof(path), dir, "ca.crt");
    if (access(ca_key, F_OK) == 0 || access(path, F_OK) == 0) {
        fprintf(stderr, "keyfleetctl: %s already holds a fleet CA; refusing to overwrite it\n",
                access(ca_key, F_OK) == 0 ? ca_home : dir);
        return 1;
    }
    if (ca_dir != NULL && make_dir(ca_dir, &err) != 0)
        goto fail;
    if (kfctl_ca_create(ca_crt, ca_key, "keyfleet fleet CA", &err) != 0)
        goto fail;
    if (ca_dir != NULL && strcmp(ca_crt, path) != 0 && copy_text(ca_crt, path, &err) != 0)
        goto fail;
    kfctl_cert_opts oopts = {.kind = KF_PEER_OPERATOR, .name = a.operator_name, .days = 365};
    join(crt, sizeof(crt), dir, "operator.crt");
    join(key, sizeof(key), dir, "operator.key");
    if (kfctl_cert_issue(ca_crt, ca_key, &oopts, crt, key, false, &err) != 0)
        goto fail;
    if (write_ctl_config(&a, &err) != 0 || write_coordinators(&a, ca_crt, ca_key, &err) != 0)
        goto fail;
    if (a.n_peers > 0) {
        print_cluster(&a);
        return 0;
    }
    state_path(path, sizeof(path), dir, a.state_dir != NULL ? a.state_dir : "state");
    if (a.owner != NULL && apply_owner(dir, path, &err) != 0)
        goto fail;
    print_single(&a, path);
    return 0;
fail:
    fprintf(stderr, "keyfleetctl: init: %s\n", err.msg);
    return 1;
}
