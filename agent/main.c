/* keyfleet-agent: enrolls this node's encrypted volumes with a coordinator and unlocks them at
 * boot. Exit status of unlock: 0 all unlocked, 1 none, 3 some; 2 for usage or config errors. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/sha.h>

#include "agent.h"
#include "kf_cli.h"
#include "boot.h"
#include "identity.h"
#include "kf_heap.h"
#include "kf_time.h"
#include "kf_log.h"
#include "kf_secmem.h"
#include "tpm2.h"

#define AUTH_MAX 1024
#define LABELS_MAX 32
/* A note at enroll for a LUKS2 digest at or above this many PBKDF2 iterations (docs/operations.md).
 * The count, not a timing, decides, so a loaded machine cannot trigger it: the cheap format gives
 * LUKS2's minimum, 1000, and a benchmarked one (125 ms) gives far more than this on any CPU. */
#define KFA_COSTLY_DIGEST_ITERATIONS 10000

static const kf_cli_cmd commands_help[] = {
    {"enroll", "enroll VOLUME [--label k=v]... [--auth-file FILE]\n"
               "       VOLUME is luks:PATH, zfs:DATASET or a configured volume (a relative PATH is made\n"
               "       absolute). LUKS2 needs an existing passphrase: --auth-file, or on stdin."},
    {"unlock", "unlock [--all | VOLUME...]\n"
               "       exit 0: all unlocked, 1: none, 3: some"},
    {"status", "status [--json]\n"
               "       each volume's key status and last unlock, whether a coordinator answers, and whether\n"
               "       it reports this node revoked"},
    {"rewrap", "rewrap [--wait]\n"
               "       store each volume's key rewrapped under the newest KMS key; exit as unlock.\n"
               "       A volume whose release needs approval fails at once, leaving no request;\n"
               "       --wait asks for the approval and waits for it, with a countdown"},
    {"rotate", "rotate --all | VOLUME...\n"
               "       replace each volume's keyfleet key with a new one (resumes an interrupted rotation);\n"
               "       exit as unlock"},
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

/* Resolves VOLUME into a volume with its driver. */
/* Reads an existing LUKS passphrase from a file (exact bytes) or stdin (one trailing newline
 * dropped) into secure memory. */
static kf_secbuf *read_auth(const char *file, kf_err *err)
{
    int fd = file != NULL ? open(file, O_RDONLY | O_CLOEXEC) : 0;
    if (fd < 0) {
        kf_err_set(err, -errno, "%s: %s", file, strerror(errno));
        return NULL;
    }
    kf_secbuf *b = kf_secbuf_new(AUTH_MAX + 1);
    size_t len = 0;
    ssize_t n;
    while (b != NULL && len <= AUTH_MAX && (n = read(fd, b->data + len, AUTH_MAX + 1 - len)) > 0)
        len += (size_t)n;
    if (fd != 0)
        close(fd);
    if (b == NULL || len == 0 || len > AUTH_MAX) {
        kf_secbuf_free(b);
        kf_err_set(err, -EINVAL, "the existing passphrase must be 1..%d bytes", AUTH_MAX);
        return NULL;
    }
    if (file == NULL && b->data[len - 1] == '\n')
        len--;
    b->len = len;
    return b;
}

/* Enrollment request ids are derived from node and volume, so a retried enrollment gets the
 * same key back instead of failing half-way. */
static void enroll_request_id(const char *node, const char *volume_id, char out[33])
{
    uint8_t h[SHA256_DIGEST_LENGTH];
    char in[256];
    int n = snprintf(in, sizeof(in), "keyfleet-enroll\n%s\n%s", node, volume_id);
    SHA256((const uint8_t *)in, (size_t)n, h);
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
}

static int cmd_enroll(kfa_ctx *ctx, int argc, char **argv)
{
    const char *auth_file = NULL;
    Keyfleet__V1__Label labels[LABELS_MAX], *lp[LABELS_MAX];
    size_t n_labels = 0;
    static const struct option opts[] = {{"label", required_argument, NULL, 'l'},
                                         {"auth-file", required_argument, NULL, 'a'},
                                         {NULL, 0, NULL, 0}};
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'a') {
            auth_file = optarg;
        } else if (o == 'l') {
            char *eq = strchr(optarg, '=');
            if (eq == NULL || eq == optarg || n_labels == LABELS_MAX) {
                fprintf(stderr, "keyfleet-agent: --label takes KEY=VALUE (at most %d)\n", LABELS_MAX);
                return KFA_EXIT_USAGE;
            }
            *eq = '\0';
            keyfleet__v1__label__init(&labels[n_labels]);
            labels[n_labels].key = optarg;
            labels[n_labels].value = eq + 1;
            lp[n_labels] = &labels[n_labels];
            n_labels++;
        } else {
            return kfa_usage("enroll");
        }
    }
    if (optind + 1 != argc)
        return kfa_usage("enroll");
    kfa_volume v;
    kf_err err = {0};
    kf_secbuf *auth = NULL;
    kf_enrolled e = {0};
    int rc = 1;
    if (kfa_resolve_volume(ctx->cfg, argv[optind], &v, &err) != 0) {
        fprintf(stderr, "keyfleet-agent: %s\n", err.msg);
        return KFA_EXIT_USAGE;
    }
    int r = v.drv->probe(ctx->cfg, &v, &err);
    if (r == -ENOENT && v.kind == KFA_VOL_ZFS) {
        int kfa_zfs_create(const kfa_config *cfg, const char *dataset, kf_err *err);
        r = kfa_zfs_create(ctx->cfg, v.path, &err);
        if (r == 0)
            r = v.drv->probe(ctx->cfg, &v, &err);
    }
    if (r != 0)
        goto out;
    if (v.wrapped != NULL) {
        kf_err_set(&err, -EEXIST, "%s is already enrolled (volume id %s)", v.path, v.id);
        goto out;
    }
    if (v.kind == KFA_VOL_LUKS2 && (auth = read_auth(auth_file, &err)) == NULL)
        goto out;
    if (kfa_connect(ctx, &err) != 0)
        goto out;
    Keyfleet__V1__VolumeRef ref = KEYFLEET__V1__VOLUME_REF__INIT;
    ref.id = v.id;
    ref.kind = v.kind == KFA_VOL_LUKS2 ? KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2
                                       : KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS;
    ref.name = v.path;
    char request_id[33];
    enroll_request_id(ctx->me.name, v.id, request_id);
    kf_rpc_status st;
    kfa_quote q;
    Keyfleet__V1__TpmQuote quote;
    int a = kfa_attest(ctx, "Enroll", v.id, request_id, &q, &quote, &err);
    if (a < 0 || kf_node_enroll(ctx->client, kfa_receiver(ctx), ctx->me.name, &ref, lp, n_labels, request_id,
                                a == 0 ? &quote : NULL, &e, &st, &err) != 0)
        goto out;
    if (st.code != KF_CONNECT_OK) {
        kf_err_set(&err, -EACCES, "coordinator refused: %s: %s", kf_connect_code_name(st.code), st.message);
        goto out;
    }
    if (v.drv->enroll(ctx->cfg, &v, e.key, e.wrapped, auth, &err) != 0)
        goto out;
    kfa_state_record(ctx->cfg, v.id, "enrolled", "");
    const char *fallback = "";
    if (e.offline_fallback_allowed) {
        /* Policy allows an offline copy: seal it to this TPM under the PCRs policy names. */
        const uint32_t *pcrs = e.n_tpm_pcrs > 0 ? e.tpm_pcrs : ctx->cfg->tpm_pcrs;
        size_t n_pcrs = e.n_tpm_pcrs > 0 ? e.n_tpm_pcrs : ctx->cfg->n_tpm_pcrs;
        char *blob = NULL;
        kf_err terr = {0};
        kfa_client_close_for_tpm(ctx);
        if (kfa_tpm_seal(ctx->cfg->tpm_tcti, pcrs, n_pcrs, e.key, &blob, KFA_TPM_TIMEOUT_MS, &terr) == 0 &&
            v.drv->store_tpm(ctx->cfg, &v, blob, &terr) == 0) {
            fallback = "; TPM-sealed copy stored for offline unlock";
        } else {
            kf_log_warn("tpm_seal_failed", "volume=%s error=%s", kf_log_q(v.path), kf_log_q(terr.msg));
            fallback = "; no TPM copy (see the warning): this volume needs a coordinator to unlock";
        }
        free(blob);
    }
    printf("enrolled %s %s (volume id %s)%s\n", v.drv->name, v.path, v.id, fallback);
    /* The keyfleet keyslot costs a few ms to open; the digest, set when the volume was formatted,
     * can cost far more, and every boot unlock pays it too. */
    if (v.digest_iterations >= KFA_COSTLY_DIGEST_ITERATIONS)
        printf("note: %s has a costly LUKS2 digest (PBKDF2-%s, %u iterations, set when it was formatted): opening it "
               "took %u ms of CPU, and every boot unlock pays it. docs/operations.md, \"Formatting LUKS2 volumes for a "
               "fast unlock\"\n",
               v.path, v.digest_hash, v.digest_iterations, v.enroll_verify_ms);
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "keyfleet-agent: enroll: %s\n", err.msg);
    kf_enrolled_clear(&e);
    kf_secbuf_free(auth);
    kfa_volume_clear(&v);
    return rc;
}

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

/* At boot the TLS set-up (context, certificate, handshake) and reading the volumes' LUKS
 * headers take about as long as each other; unlock does them at once, on two threads. The
 * helper thread touches only ctx->client and ctx->me until it is joined. */
typedef struct identity_job {
    kfa_ctx *ctx;
    pthread_t thread;
    bool started;
    int r;
    kf_err err;
} identity_job;

static void *identity_thread(void *arg)
{
    identity_job *job = arg;
    job->r = resolve_identity(job->ctx, &job->err);
    kf_err ignored = {0}; /* a failed connect is retried, and reported, by the release loop */
    if (job->r == 0)
        kf_rpc_client_connect(job->ctx->client, &ignored);
    return NULL;
}

static int await_identity(identity_job *job)
{
    pthread_join(job->thread, NULL);
    job->started = false;
    return job->r;
}

/* The offline fallback: no coordinator answered before the deadline, and policy allowed a
 * TPM-sealed copy at enrollment. Recorded, and reported to a coordinator on the next contact. */
static int unlock_from_tpm(kfa_ctx *ctx, kfa_volume *v, const char *why, kf_err *err)
{
    kf_secbuf *key = NULL;
    int r = kfa_unseal_offline(ctx, v, why, &key, err);
    if (r != 0)
        return kf_err_wrap(err, "%s", v->path);
    r = v->drv->unlock(ctx->cfg, v, key, err);
    kf_secbuf_free(key);
    if (r != 0)
        return r;
    printf("%s %s: unlocked from the TPM (no coordinator answered; will be reported)\n", v->drv->name, v->path);
    return 0;
}

static int unlock_with(kfa_ctx *ctx, kfa_volume *v, kf_err *err);

static void swap_next(kfa_volume *v)
{
    char *w = v->wrapped;
    int slot = v->keyslot;
    v->wrapped = v->wrapped_next;
    v->keyslot = v->next_keyslot;
    v->wrapped_next = w;
    v->next_keyslot = slot;
}

/* Unlocks one probed volume; returns 0 when it is unlocked afterwards. A volume with a key
 * rotation staged (interrupted) opens with the old key or, failing that, the new one. */
static int unlock_one(kfa_ctx *ctx, kfa_volume *v, kf_err *err)
{
    if (v->wrapped == NULL)
        return kf_err_set(err, -ENOENT, "%s is not enrolled", v->path);
    if (v->unlocked) {
        printf("%s %s: already unlocked\n", v->drv->name, v->path);
        return 0;
    }
    int r = unlock_with(ctx, v, err);
    if (r == 0 || v->wrapped_next == NULL || r == -EHOSTUNREACH || r == -ETIMEDOUT || v->unlocked)
        return r;
    kf_log_info("unlock_rotation_key", "volume=%s after=%s", kf_log_q(v->path), kf_log_q(err->msg));
    swap_next(v);
    kf_err next_err = {0};
    if ((r = unlock_with(ctx, v, &next_err)) != 0) {
        swap_next(v);
        char first[240];
        snprintf(first, sizeof(first), "%.239s", err->msg);
        return kf_err_set(err, r, "%s; with the rotation in progress: %.240s", first, next_err.msg);
    }
    swap_next(v); /* v describes the volume as stored, for what follows (rewrap) */
    return 0;
}

static int unlock_with(kfa_ctx *ctx, kfa_volume *v, kf_err *err)
{
    int r;
    kf_released rel;
    if ((r = kfa_release(ctx, v, &rel, err)) != 0) {
        if (r == -EHOSTUNREACH && v->tpm_blob != NULL)
            return unlock_from_tpm(ctx, v, err->msg, err);
        return r;
    }
    ctx->reachable = true;
    if (rel.key_overdue)
        kf_log_warn("key_overdue", "volume=%s hint=\"older than the policy's max_key_age: keyfleet-agent rotate it\"",
                    kf_log_q(v->path));
    r = v->drv->unlock(ctx->cfg, v, rel.key, err);
    if (r == 0 && rel.rewrapped != NULL) {
        kf_err werr = {0};
        if (v->drv->store_wrapped(ctx->cfg, v, rel.rewrapped, &werr) == 0)
            kf_log_info("rewrapped", "volume=%s", kf_log_q(v->path));
        else
            kf_log_warn("rewrap_store_failed", "volume=%s error=%s", kf_log_q(v->path), kf_log_q(werr.msg));
    }
    if (r == 0) {
        char detail[128];
        snprintf(detail, sizeof(detail), "request=%s audit_seq=%llu", rel.request_id,
                 (unsigned long long)rel.audit_seq);
        kfa_state_record(ctx->cfg, v->id, "coordinator", detail);
        printf("%s %s: unlocked%s\n", v->drv->name, v->path,
               v->kind == KFA_VOL_LUKS2 && !ctx->cfg->luks_activate ? " (key verified; activation disabled)" : "");
    }
    kf_released_clear(&rel);
    return r;
}

static int cmd_unlock(kfa_ctx *ctx, int argc, char **argv, identity_job *job)
{
    int all = argc >= 2 && strcmp(argv[1], "--all") == 0;
    kfa_volume *vs = NULL;
    size_t n = 0;
    int rc = KFA_EXIT_USAGE;
    if (all && argc != 2)
        kfa_usage("unlock");
    else if (kfa_collect_volumes(ctx, all ? 0 : argc - 1, argv + 1, true, &vs, &n) == 0)
        rc = 0;
    /* The volumes' headers are read while the helper thread sets up TLS and connects. */
    kf_err *probe_err = rc == 0 ? calloc(n + 1, sizeof(*probe_err)) : NULL;
    int *probe_r = rc == 0 ? calloc(n + 1, sizeof(*probe_r)) : NULL;
    if (rc == 0 && (probe_err == NULL || probe_r == NULL))
        rc = KFA_EXIT_USAGE;
    for (size_t i = 0; rc == 0 && i < n; i++)
        probe_r[i] = vs[i].drv->probe(ctx->cfg, &vs[i], &probe_err[i]);
    if (job != NULL && await_identity(job) != 0)
        rc = KFA_EXIT_USAGE;
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        kf_err err = {0};
        if (rc == 0 && probe_r[i] != 0)
            fprintf(stderr, "keyfleet-agent: unlock: %s\n", probe_err[i].msg);
        else if (rc == 0 && unlock_one(ctx, &vs[i], &err) == 0)
            ok++;
        else if (rc == 0)
            fprintf(stderr, "keyfleet-agent: unlock: %s\n", err.msg);
        kfa_volume_clear(&vs[i]);
    }
    free(vs);
    free(probe_err);
    free(probe_r);
    if (rc != 0)
        return rc;
    if (ctx->reachable)
        kfa_report_offline(ctx);
    if (n == 0)
        fprintf(stderr, "keyfleet-agent: no volumes to unlock\n");
    return ok == n && n > 0 ? KFA_EXIT_ALL : ok == 0 ? KFA_EXIT_NONE : KFA_EXIT_SOME;
}

static int cmd_rewrap(kfa_ctx *ctx, int argc, char **argv)
{
    bool wait = argc == 2 && strcmp(argv[1], "--wait") == 0;
    if (argc != 1 && !wait)
        return kfa_usage("rewrap");
    /* Rewrapping is housekeeping: unless told to wait, a volume held for approval is said at
     * once, and no pending request is left for operators to find (docs/agent.md). */
    ctx->no_pending = !wait;
    kfa_volume *vs = NULL;
    size_t n = 0, ok = 0;
    if (kfa_collect_volumes(ctx, 0, NULL, false, &vs, &n) != 0)
        return KFA_EXIT_USAGE;
    for (size_t i = 0; i < n; i++) {
        kf_err err = {0};
        kf_released rel = {0};
        int r = vs[i].drv->probe(ctx->cfg, &vs[i], &err);
        if (r == 0 && vs[i].wrapped == NULL)
            r = kf_err_set(&err, -ENOENT, "%s is not enrolled", vs[i].path);
        if (r == 0)
            r = kfa_release(ctx, &vs[i], &rel, &err);
        if (r == 0 && rel.rewrapped != NULL)
            r = vs[i].drv->store_wrapped(ctx->cfg, &vs[i], rel.rewrapped, &err);
        if (r == 0) {
            printf("%s %s: %s\n", vs[i].drv->name, vs[i].path, rel.rewrapped != NULL ? "rewrapped" : "already current");
            ok++;
        } else {
            /* The coordinator's refusal says "needs N approval(s) ... no request was made". */
            bool held = ctx->no_pending && strstr(err.msg, "no request was made") != NULL;
            fprintf(stderr, "keyfleet-agent: rewrap: %s%s\n", err.msg,
                    held ? "\n  run keyfleet-agent rewrap --wait to ask for the approval and wait for it; the next "
                           "unlock stores the rewrapped key too"
                         : "");
        }
        kf_released_clear(&rel);
        kfa_volume_clear(&vs[i]);
    }
    free(vs);
    return ok == n ? KFA_EXIT_ALL : ok == 0 ? KFA_EXIT_NONE : KFA_EXIT_SOME;
}

static int cmd_status(kfa_ctx *ctx, int argc, char **argv)
{
    int json = argc == 2 && strcmp(argv[1], "--json") == 0;
    if (argc > 1 + json)
        return kfa_usage("status");
    kfa_volume *vs = NULL;
    size_t n = 0;
    if (kfa_collect_volumes(ctx, 0, NULL, false, &vs, &n) != 0)
        return KFA_EXIT_USAGE;
    kf_err err = {0};
    long http = 0;
    char *body = NULL;
    bool reachable = kfa_connect(ctx, &err) == 0 && kf_rpc_get(ctx->client, "/healthz", &http, &body, &err) == 0 &&
                     http == 200;
    free(body);
    /* A heartbeat (it also reports offline unlocks): a revoked node is told to lock. */
    bool revoked = false;
    kf_err herr = {0};
    if (reachable && kfa_heartbeat(ctx, true, &revoked, &herr) != 0)
        revoked = false;
    json_t *arr = json_array();
    if (!json)
        printf("coordinators: %s%s\n%-6s %-38s %-28s %-12s %-12s %s\n", reachable ? "reachable" : "unreachable",
               revoked ? "; this node is REVOKED: coordinators release no keys to it (keyfleetctl node unrevoke)" : "",
               "KIND", "ID", "NAME", "KEY", "LAST-UNLOCK", "WHEN");
    for (size_t i = 0; i < n; i++) {
        kfa_volume *v = &vs[i];
        kf_err perr = {0};
        int r = v->drv->probe(ctx->cfg, v, &perr);
        const char *key = r != 0 ? "error" : v->wrapped == NULL ? "not-enrolled" : v->unlocked ? "unlocked" : "locked";
        char method[32], when[32] = "-";
        int64_t at = 0;
        kfa_state_lookup(ctx->cfg, v->id, method, sizeof(method), &at);
        if (at > 0) {
            time_t t = (time_t)at;
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        }
        if (json)
            json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "kind", v->drv->name, "id", v->id,
                                                 "name", v->path, "key", key, "last_unlock", method, "when", when));
        else
            printf("%-6s %-38s %-28s %-12s %-12s %s\n", v->drv->name, v->id[0] ? v->id : "-", v->path, key,
                   method[0] ? method : "-", when);
        kfa_volume_clear(v);
    }
    if (json) {
        json_t *o = json_pack("{s:b, s:b, s:o}", "coordinators_reachable", reachable, "node_revoked", revoked,
                              "volumes", arr);
        char *s = json_dumps(o, JSON_COMPACT);
        printf("%s\n", s != NULL ? s : "{}");
        free(s);
        json_decref(o);
    } else {
        json_decref(arr);
    }
    free(vs);
    return 0;
}

/* seal-secret-id --out FILE: the AppRole secret id on stdin, sealed to this TPM under the
 * configured PCRs (seal, then verify), written to a new 0600 file. */
static int cmd_seal_secret_id(kfa_ctx *ctx, int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], "--out") != 0) {
        kfa_usage("seal-secret-id");
        return KFA_EXIT_USAGE;
    }
    kf_err err = {0};
    kf_secbuf *secret = NULL;
    char *blob = NULL;
    int r = kf_secbuf_read_fd(STDIN_FILENO, "stdin", 128, &secret, &err);
    if (r == 0)
        r = kfa_tpm_seal(ctx->cfg->tpm_tcti, ctx->cfg->tpm_pcrs, ctx->cfg->n_tpm_pcrs, secret, &blob,
                         KFA_TPM_TIMEOUT_MS, &err);
    kf_secbuf_free(secret);
    int fd = r == 0 ? open(argv[2], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600) : -1;
    if (r == 0 && fd < 0)
        r = kf_err_set(&err, -errno, "%s: %s", argv[2], strerror(errno));
    if (r == 0) {
        size_t n = strlen(blob);
        if (write(fd, blob, n) != (ssize_t)n || write(fd, "\n", 1) != 1 || fsync(fd) != 0)
            r = kf_err_set(&err, -EIO, "%s: write failed", argv[2]);
    }
    if (fd >= 0)
        close(fd);
    if (r != 0 && fd >= 0)
        unlink(argv[2]);
    free(blob);
    if (r != 0) {
        fprintf(stderr, "keyfleet-agent: %s\n", err.msg);
        return 1;
    }
    printf("sealed the secret id to this TPM (PCRs");
    for (size_t i = 0; i < ctx->cfg->n_tpm_pcrs; i++)
        printf(" %u", ctx->cfg->tpm_pcrs[i]);
    printf(") in %s\n", argv[2]);
    return 0;
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
    const char *cmd = argv[optind];
    int sub_argc = argc - optind, rc;
    if (strcmp(cmd, "initramfs-files") == 0) {
        rc = kfa_cmd_initramfs_files(ctx.cfg, sub_argc, argv + optind);
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
    identity_job job = {.ctx = &ctx};
    if (ctx.cfg->cert == NULL) {
        ctx.me.kind = KF_PEER_NODE; /* AppRole: the name comes with the login */
    } else if (strcmp(cmd, "unlock") == 0 && pthread_create(&job.thread, NULL, identity_thread, &job) == 0) {
        job.started = true; /* cmd_unlock reads the volumes meanwhile, then joins */
    } else if (resolve_identity(&ctx, &err) != 0) {
        kfa_config_free(ctx.cfg);
        return KFA_EXIT_USAGE;
    }
    if (strcmp(cmd, "enroll") == 0)
        rc = cmd_enroll(&ctx, sub_argc, sub_argv);
    else if (strcmp(cmd, "unlock") == 0)
        rc = cmd_unlock(&ctx, sub_argc, sub_argv, job.started ? &job : NULL);
    else if (strcmp(cmd, "status") == 0)
        rc = cmd_status(&ctx, sub_argc, sub_argv);
    else if (strcmp(cmd, "rewrap") == 0)
        rc = cmd_rewrap(&ctx, sub_argc, sub_argv);
    else if (strcmp(cmd, "rotate") == 0)
        rc = kfa_rotate(&ctx, sub_argc, sub_argv);
    else if (strcmp(cmd, "watch") == 0)
        rc = kfa_watch(&ctx, sub_argc, sub_argv);
    else if (strcmp(cmd, "seal-secret-id") == 0)
        rc = cmd_seal_secret_id(&ctx, sub_argc, sub_argv);
    else {
        fprintf(stderr, "keyfleet-agent: unknown command '%s'\n", cmd);
        rc = kfa_usage(NULL);
    }
    kf_seal_receiver_free(ctx.receiver);
    kf_rpc_client_free(ctx.client);
    kfa_config_free(ctx.cfg);
    return finish(rc);
}
