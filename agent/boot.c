/* Boot unlock in an initramfs (boot.h). The keyscript runs the prompt and the agent side by side,
 * as clevis runs its askpass helper beside cryptroot's, but hands the key to cryptroot on stdout
 * (the keyscript contract: binary-safe, no FIFO, no crypttab rewrite). */
#include "boot.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "kf_log.h"
#include "kf_recovery.h"
#include "tpm_net.h"
#include "kf_time.h"

#define ASKPASS_DEFAULT "/lib/cryptsetup/askpass"
#define MARKER_DIR "/run/keyfleet"
#define ANSWER_MAX 4096

/* ------------------------------------------------------------------ initramfs-files */

static void put(const char *kind, const char *value)
{
    if (value != NULL && value[0] != '\0')
        printf("%s\t%s\n", kind, value);
}

/* The TCTI library a "NAME:conf" or "NAME" TCTI string loads (tctildr's naming rule). */
static void put_tcti(const char *tcti)
{
    char name[64];
    size_t n = strcspn(tcti, ":");
    if (n == 0 || n >= sizeof(name))
        return;
    memcpy(name, tcti, n);
    name[n] = '\0';
    if (strncmp(name, "libtss2-tcti-", 13) == 0)
        printf("lib\t%s\n", name);
    else
        printf("lib\tlibtss2-tcti-%s.so.0\n", name);
}

int kfa_cmd_initramfs_files(const kfa_config *cfg, int argc, char **argv)
{
    (void)argv;
    if (argc != 1) {
        kfa_usage("initramfs-files");
        return KFA_EXIT_USAGE;
    }
    put("file", cfg->path);
    put("file", cfg->cert);
    put("file", cfg->key);
    put("file", cfg->tpm_key);
    put("file", cfg->ca);
    put("file", cfg->role_id_file);
    put("file", cfg->secret_id_file);
    put("file", cfg->secret_id_tpm_file);
    put("lib", "libcryptsetup.so.12");
    bool tpm = cfg->secret_id_tpm_file != NULL || cfg->tpm_key != NULL;
    /* zfs goes in for a configured ZFS volume, or for discovery on a host that has zfs. */
    bool zfs = cfg->zfs_discover && cfg->zfs_command != NULL && access(cfg->zfs_command, X_OK) == 0;
    for (size_t i = 0; i < cfg->n_volumes; i++)
        zfs |= cfg->volumes[i].kind == KFA_VOL_ZFS;
    /* A volume enrolled with offline fallback may hold a TPM copy whatever the config says:
     * the TPM stack goes in whenever a TCTI is configured. */
    tpm |= cfg->tpm_tcti != NULL && cfg->tpm_tcti[0] != '\0';
    if (tpm) {
        put("lib", "libtss2-esys.so.0");
        put("lib", "libtss2-mu.so.0");
        put("lib", "libtss2-rc.so.0");
        put("lib", "libtss2-tctildr.so.0");
        put_tcti(cfg->tpm_tcti != NULL ? cfg->tpm_tcti : "device");
    }
    if (cfg->tpm_key != NULL) {
        /* The tpm2 provider is an OpenSSL module, loaded from OpenSSL's module directory at the
         * same path in the initramfs; it links tpm2-tss itself (copied with it) and loads the
         * TCTI through tctildr, by soname (listed above). */
        char module[512];
        snprintf(module, sizeof(module), "%s/tpm2.so", OPENSSL_info(OPENSSL_INFO_MODULES_DIR));
        put("module", module);
        put("lib", "libtss2-sys.so.1");
    }
    if (zfs)
        put("exec", cfg->zfs_command);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------ keyscript: the agent's side */

/* The console is what a person at the prompt reads: one plain line, not a log record. */
static void say(const char *volume, const char *what, const char *detail)
{
    fprintf(stderr, "keyfleet: %s: %s%s\n", volume, what, detail);
}

/* Gets the key of the LUKS2 device at source and checks that it opens it (no activation:
 * cryptroot activates). 0 with *ret_key, or a negative errno with err saying why. */
static int fetch_key(kfa_ctx *ctx, const char *source, kf_secbuf **ret_key, const char **ret_how, kf_err *err)
{
    kfa_volume v = {.kind = KFA_VOL_LUKS2, .drv = &kfa_luks2_driver, .keyslot = -1, .token = -1};
    if (strlen(source) >= sizeof(v.path))
        return kf_err_set(err, -EINVAL, "device name too long");
    snprintf(v.path, sizeof(v.path), "%s", source);
    int r = kfa_identify(ctx, err);
    if (r == 0)
        r = v.drv->probe(ctx->cfg, &v, err);
    if (r == 0 && v.wrapped == NULL)
        r = kf_err_set(err, -ENOENT, "%s has no keyfleet token (not enrolled)", source);
    kf_released rel = {0};
    kf_secbuf *key = NULL;
    if (r == 0) {
        r = kfa_release(ctx, &v, &rel, err);
        if (r == 0)
            r = kfa_tpmnet_combine(ctx, &v, &rel.key, err); /* tpm_and_network: the TPM's part too */
        if (r == 0) {
            key = rel.key;
            rel.key = NULL;
            *ret_how = v.tpm_part != NULL ? "released by a coordinator, with the TPM's part" : "released by a coordinator";
        } else if (r == -EHOSTUNREACH && v.tpm_blob != NULL) {
            kf_err terr = {0};
            r = kfa_unseal_offline(ctx, &v, err->msg, &key, &terr);
            if (r == 0)
                *ret_how = "unsealed from the TPM (no coordinator answered; reported at the next contact)";
            else
                kf_err_set(err, r, "%s; %s", err->msg, terr.msg);
        }
    }
    kf_released_clear(&rel);
    if (r == 0) {
        kfa_config verify = *ctx->cfg;
        verify.luks_activate = false;
        r = v.drv->unlock(&verify, &v, key, err);
    }
    kfa_volume_clear(&v);
    if (r != 0) {
        kf_secbuf_free(key);
        return r;
    }
    *ret_key = key;
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The agent child: exit 0 after writing the key to fd, else 1 with the reason on the console. */
static void agent_child(const char *config_path, const char *source, const char *volume, int fd)
{
    /* Whatever prints to stdout must not reach cryptsetup as key material. */
    dup2(STDERR_FILENO, STDOUT_FILENO);
    kf_err err = {0};
    kfa_ctx ctx = {0};
    if (kfa_config_load(config_path, &ctx.cfg, &err) != 0) {
        say(volume, "cannot unlock through keyfleet: ", err.msg);
        _exit(1);
    }
    ctx.deadline = kf_monotonic_ms() + ctx.cfg->deadline_ms;
    char secs[24];
    snprintf(secs, sizeof(secs), "%llu", (unsigned long long)(ctx.cfg->deadline_ms / 1000));
    say(volume, "asking the coordinators for the key; the passphrase prompt stays open; seconds left: ", secs);
    kf_secbuf *key = NULL;
    const char *how = "";
    int r = fetch_key(&ctx, source, &key, &how, &err);
    if (r != 0) {
        say(volume, "not unlocked through keyfleet: ", err.msg);
        _exit(1);
    }
    r = write_all(fd, key->data, key->len);
    kf_secbuf_free(key);
    if (r != 0)
        _exit(1);
    say(volume, how, "");
    _exit(0);
}

/* ------------------------------------------------------------------ keyscript: the prompt and the race */

typedef struct side {
    pid_t pid;
    int fd;
    kf_secbuf *buf;
    bool done;
} side;

static pid_t spawn(int *ret_fd, void (*child)(void *), void *arg)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        if (dup2(p[1], STDOUT_FILENO) < 0)
            _exit(127);
        child(arg);
        _exit(127);
    }
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return -1;
    }
    *ret_fd = p[0];
    return pid;
}

typedef struct askpass_arg {
    const char *program;
    const char *prompt;
} askpass_arg;

static void run_askpass(void *arg)
{
    const askpass_arg *a = arg;
    execl(a->program, a->program, a->prompt, (char *)NULL);
    fprintf(stderr, "keyfleet: cannot run %s: %s\n", a->program, strerror(errno));
}

typedef struct agent_arg {
    const char *config_path, *source, *volume;
} agent_arg;

static void run_agent(void *arg)
{
    const agent_arg *a = arg;
    int fd = dup(STDOUT_FILENO); /* the pipe: agent_child points stdout at the console */
    if (fd < 0)
        _exit(127);
    agent_child(a->config_path, a->source, a->volume, fd);
}

/* Reads what is there; true at end of file. */
static bool drain(side *s)
{
    for (;;) {
        if (s->buf->len == s->buf->cap) {
            s->buf->len = 0; /* longer than any key or passphrase: refuse it */
            return true;
        }
        ssize_t n = read(s->fd, s->buf->data + s->buf->len, s->buf->cap - s->buf->len);
        if (n > 0) {
            s->buf->len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return n == 0 || errno != EAGAIN;
    }
}

static int exit_status(pid_t pid)
{
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* A recovery key typed at the prompt (docs/recovery.md) goes on in its canonical form, which is
 * the keyslot's passphrase, so the forgiving reading `keyfleet-agent recover` gives (case, O/I/L,
 * spaces) holds at boot too. Anything that does not read as one (every group and the whole-key
 * check) goes on as typed. */
static void canonical_recovery(const char *volume, kf_secbuf *buf)
{
    if (buf->len == 0 || buf->len >= buf->cap || buf->cap <= KF_RECOVERY_TEXT_LEN)
        return;
    kf_secbuf *key = kf_secbuf_new(KF_RECOVERY_KEY_LEN);
    if (key == NULL)
        return;
    buf->data[buf->len] = '\0';
    if (kf_recovery_decode((const char *)buf->data, key->data, NULL) == 0) {
        kf_wipe(buf->data, buf->len);
        kf_recovery_encode(key->data, (char *)buf->data);
        buf->len = KF_RECOVERY_TEXT_LEN;
        say(volume, "a recovery key was typed; passed on in its canonical form", "");
    }
    kf_secbuf_free(key);
}

/* SIGTERM, then SIGKILL after a second: askpass may hold the console and not stop at once. */
static void stop(side *s)
{
    if (s->pid > 0 && !s->done) {
        kill(s->pid, SIGTERM);
        for (int i = 0; i < 20; i++) {
            if (waitpid(s->pid, NULL, WNOHANG) == s->pid) {
                s->done = true;
                return;
            }
            usleep(50 * 1000);
        }
        kill(s->pid, SIGKILL);
        exit_status(s->pid);
    }
    s->done = true;
}

static void marker_path(char *out, size_t size, const char *volume)
{
    char safe[96];
    size_t i = 0;
    for (; volume[i] != '\0' && i < sizeof(safe) - 1; i++)
        safe[i] = (volume[i] == '/' || volume[i] == '.') ? '_' : volume[i];
    safe[i] = '\0';
    snprintf(out, size, "%s/keyscript-%s.agent", MARKER_DIR, safe);
}

int kfa_cmd_keyscript(const char *config_path, int argc, char **argv)
{
    static const struct option opts[] = {{"askpass", required_argument, NULL, 'a'}, {NULL, 0, NULL, 0}};
    const char *askpass = ASKPASS_DEFAULT;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        if (c != 'a') {
            kfa_usage("keyscript");
            return KFA_EXIT_USAGE;
        }
        askpass = optarg;
    }
    const char *source = getenv("CRYPTTAB_SOURCE");
    const char *volume = getenv("CRYPTTAB_NAME");
    if (volume == NULL || volume[0] == '\0')
        volume = source != NULL ? source : "volume";
    char prompt[256];
    snprintf(prompt, sizeof(prompt), "Please unlock disk %s: ", volume);
    /* A key of ours that cryptroot then refused must not win every retry against the person. */
    char marker[160];
    marker_path(marker, sizeof(marker), volume);
    bool agent_tried = access(marker, F_OK) == 0;
    signal(SIGPIPE, SIG_IGN);

    side sides[2] = {{.pid = -1, .fd = -1}, {.pid = -1, .fd = -1}};
    side *person = &sides[0], *agent = &sides[1];
    askpass_arg aa = {askpass, prompt};
    person->pid = spawn(&person->fd, run_askpass, &aa);
    person->done = person->pid < 0;
    agent->done = true;
    if (source == NULL || source[0] == '\0') {
        fprintf(stderr, "keyfleet: no CRYPTTAB_SOURCE: not run by cryptroot; only the prompt is offered\n");
    } else if (agent_tried) {
        say(volume, "the key keyfleet gave was refused before; only the prompt is offered", "");
    } else {
        agent_arg ga = {config_path, source, volume};
        agent->pid = spawn(&agent->fd, run_agent, &ga);
        agent->done = agent->pid < 0;
    }
    for (int i = 0; i < 2; i++) {
        sides[i].buf = kf_secbuf_new(ANSWER_MAX);
        if (sides[i].buf == NULL)
            stop(&sides[i]);
        else
            sides[i].buf->len = 0;
        if (sides[i].fd >= 0)
            fcntl(sides[i].fd, F_SETFL, O_NONBLOCK);
    }
    side *winner = NULL;
    while (winner == NULL && !(person->done && agent->done)) {
        struct pollfd pf[2];
        nfds_t n = 0;
        side *of[2];
        for (int i = 0; i < 2; i++)
            if (!sides[i].done) {
                pf[n] = (struct pollfd){.fd = sides[i].fd, .events = POLLIN};
                of[n++] = &sides[i];
            }
        if (poll(pf, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (nfds_t i = 0; i < n && winner == NULL; i++) {
            side *s = of[i];
            if (pf[i].revents == 0 || !drain(s))
                continue;
            s->done = true;
            int status = exit_status(s->pid);
            if (s->buf->len > 0 && (s == person || status == 0))
                winner = s;
        }
    }
    int rc = 1;
    if (winner != NULL) {
        stop(winner == person ? agent : person);
        if (winner == agent) {
            mkdir(MARKER_DIR, 0700);
            int fd = open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
            if (fd >= 0)
                close(fd);
        }
        if (winner == person)
            canonical_recovery(volume, winner->buf);
        rc = write_all(STDOUT_FILENO, winner->buf->data, winner->buf->len) == 0 ? 0 : 1;
    } else {
        stop(person);
        stop(agent);
    }
    for (int i = 0; i < 2; i++) {
        kf_secbuf_free(sides[i].buf);
        if (sides[i].fd >= 0)
            close(sides[i].fd);
    }
    return rc;
}
