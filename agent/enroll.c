/* keyfleet-agent enroll VOLUME: a new key for the volume from a coordinator, stored in its
 * keyfleet token (LUKS2) or property (ZFS). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "agent.h"
#include "boot.h"
#include "commands.h"
#include "kf_log.h"
#include "kf_secmem.h"
#include "tpm2.h"
#include "tpm_net.h"

#define AUTH_MAX 1024
#define LABELS_MAX 32
/* A note at enroll for a LUKS2 digest at or above this many PBKDF2 iterations (docs/operations.md).
 * The count, not a timing, decides, so a loaded machine cannot trigger it: the cheap format gives
 * LUKS2's minimum, 1000, and a benchmarked one (125 ms) gives far more than this on any CPU. */
#define KFA_COSTLY_DIGEST_ITERATIONS 10000

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

/* enroll's options: --auth-file FILE, --recovery-key and --label KEY=VALUE (at most LABELS_MAX,
 * pointing into argv). 0 with optind at the volume, or the exit status of a usage error. */
typedef struct enroll_args {
    const char *auth_file;
    bool recovery;
    Keyfleet__V1__Label labels[LABELS_MAX], *lp[LABELS_MAX];
    size_t n_labels;
} enroll_args;

static int parse_args(int argc, char **argv, enroll_args *a)
{
    static const struct option opts[] = {{"label", required_argument, NULL, 'l'},
                                         {"auth-file", required_argument, NULL, 'a'},
                                         {"recovery-key", no_argument, NULL, 'r'},
                                         {NULL, 0, NULL, 0}};
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'a') {
            a->auth_file = optarg;
        } else if (o == 'r') {
            a->recovery = true;
        } else if (o == 'l') {
            char *eq = strchr(optarg, '=');
            if (eq == NULL || eq == optarg || a->n_labels == LABELS_MAX) {
                fprintf(stderr, "keyfleet-agent: --label takes KEY=VALUE (at most %d)\n", LABELS_MAX);
                return KFA_EXIT_USAGE;
            }
            *eq = '\0';
            keyfleet__v1__label__init(&a->labels[a->n_labels]);
            a->labels[a->n_labels].key = optarg;
            a->labels[a->n_labels].value = eq + 1;
            a->lp[a->n_labels] = &a->labels[a->n_labels];
            a->n_labels++;
        } else {
            return kfa_usage("enroll");
        }
    }
    if (optind + 1 != argc)
        return kfa_usage("enroll");
    return 0;
}

/* Policy allows an offline copy: seals it to this TPM under the PCRs policy names and stores it
 * on the volume. What to add to the "enrolled" line; a failure is a warning, not an error. */
static const char *store_offline_copy(kfa_ctx *ctx, kfa_volume *v, const kf_enrolled *e)
{
    const char *fallback;
    char *blob = NULL;
    kf_err terr = {0};
    if (kfa_seal_copy(ctx, e, &blob, &terr) == 0 && v->drv->store_tpm(ctx->cfg, v, blob, &terr) == 0) {
        fallback = "; TPM-sealed copy stored for offline unlock";
    } else {
        kf_log_warn("tpm_seal_failed", "volume=%s error=%s", kf_log_q(v->path), kf_log_q(terr.msg));
        fallback = "; no TPM copy (see the warning): this volume needs a coordinator to unlock";
    }
    free(blob);
    return fallback;
}

int kfa_cmd_enroll(kfa_ctx *ctx, int argc, char **argv)
{
    enroll_args args = {0};
    int usage = parse_args(argc, argv, &args);
    if (usage != 0)
        return usage;
    kfa_volume v;
    kf_err err = {0};
    kf_secbuf *auth = NULL, *tpmnet_key = NULL;
    kf_enrolled e = {0};
    int rc = 1;
    if (kfa_resolve_volume(ctx->cfg, argv[optind], &v, &err) != 0) {
        fprintf(stderr, "keyfleet-agent: %s\n", err.msg);
        return KFA_EXIT_USAGE;
    }
    int r = v.drv->probe(ctx->cfg, &v, &err);
    if (r == -ENOENT && v.kind == KFA_VOL_ZFS) {
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
    if (v.kind == KFA_VOL_LUKS2 && (auth = read_auth(args.auth_file, &err)) == NULL)
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
    if (a < 0 || kf_node_enroll(ctx->client, kfa_receiver(ctx), ctx->me.name, &ref, args.lp, args.n_labels, request_id,
                                a == 0 ? &quote : NULL, &e, &st, &err) != 0)
        goto out;
    if (st.code != KF_CONNECT_OK) {
        kf_err_set(&err, -EACCES, "coordinator refused: %s: %s", kf_connect_code_name(st.code), st.message);
        goto out;
    }
    /* require: [tpm_and_network]: the keyslot takes HKDF of a TPM part and e.key, and the TPM
     * part's blob is stored with the wrapped key; nothing is enrolled without a TPM. */
    if (e.tpm_and_network && kfa_tpmnet_enroll(ctx, &e, v.id, &v.tpm_part, &tpmnet_key, &err) != 0) {
        kf_err_wrap(&err, "policy requires TPM and network for %s", v.path);
        goto out;
    }
    if (v.drv->enroll(ctx->cfg, &v, tpmnet_key != NULL ? tpmnet_key : e.key, e.wrapped, auth, &err) != 0)
        goto out;
    kfa_state_record(ctx->cfg, v.id, "enrolled", "");
    const char *fallback = tpmnet_key != NULL             ? "; TPM and network both required (no offline unlock)"
                           : e.offline_fallback_allowed ? store_offline_copy(ctx, &v, &e)
                                                        : "";
    printf("enrolled %s %s (volume id %s)%s\n", v.drv->name, v.path, v.id, fallback);
    if (args.recovery) {
        /* The volume is enrolled whatever happens here; a failed escrow is retried with
         * recovery-key add. The keyslot key opens the volume to add the recovery keyslot. */
        const char *how = "";
        if (kfa_recovery_add(ctx, &v, tpmnet_key != NULL ? tpmnet_key : e.key, false, &how, &err) != 0) {
            fprintf(stderr, "keyfleet-agent: enroll: %s (the volume is enrolled; retry with keyfleet-agent "
                            "recovery-key add %s)\n", err.msg, argv[optind]);
            rc = KFA_EXIT_SOME;
            goto done;
        }
        printf("%s %s: %s (escrowed)\n", v.drv->name, v.path, how);
    }
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
done:
    kf_enrolled_clear(&e);
    kf_secbuf_free(auth);
    kf_secbuf_free(tpmnet_key);
    kfa_volume_clear(&v);
    return rc;
}
