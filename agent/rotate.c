/* keyfleet-agent rotate VOLUME...|--all: replaces each volume's keyfleet key with a new one
 * (NodeService.RotateKey), in steps that each leave a volume the old key or the new one opens
 * (docs/agent.md, "Key rotation"):
 *   release the current key K1; BEGIN: the new key K2 and its wrapped form W2 (tpm_and_network:
 *   W2 is the new coordinator part, and K2 = HKDF(a new TPM part || it)); stage K2 beside
 *   K1 (LUKS2: a keyslot and a token marked rotating; ZFS: org.keyfleet:wrapped-next, with the new
 *   TPM part in org.keyfleet:tpm-next); retire
 *   K1 after checking that K2 opens (LUKS2: kill its keyslot, drop its token; ZFS: change-key,
 *   wrapped-key := W2); COMMIT W2 (the coordinator then refuses K1); clear the rotating mark.
 * A run on a volume left half-way resumes: with a rotation staged, from the retire step (the
 * coordinator releases W2 while it is the rotation in progress); with the old key gone, from
 * COMMIT. A repeated BEGIN returns the same K2, so a run cut off before staging starts over. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "agent.h"
#include "kf_log.h"
#include "tpm_net.h"

#ifdef KF_TEST_HOOKS
void kfa_test_crash_point(const char *step)
{
    const char *want = getenv("KEYFLEET_TEST_CRASH_AFTER");
    if (want != NULL && strcmp(want, step) == 0) {
        fprintf(stderr, "keyfleet-agent: test crash after %s\n", step);
        fflush(NULL);
        _exit(86);
    }
    const char *pause = getenv("KEYFLEET_TEST_PAUSE_AFTER"), *file = getenv("KEYFLEET_TEST_PAUSE_FILE");
    if (pause != NULL && file != NULL && strcmp(pause, step) == 0) {
        int fd = open(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0)
            close(fd);
        for (int i = 0; i < 600 && access(file, F_OK) == 0; i++)
            usleep(100 * 1000);
    }
}
#endif

/* One rotation of a volume at a time on this machine (two runs interleaving their steps could
 * leave it on a key the coordinator has retired): an flock on rotate-ID.lock beside the state
 * file, held until the run ends (closing *ret_fd releases it; so does the process's death). A
 * second run is refused at once rather than queued behind a run that may be stuck. */
static int rotate_lock(const kfa_config *cfg, const kfa_volume *v, int *ret_fd, kf_err *err)
{
    size_t n = strlen(v->id);
    if (n == 0 || n > 64 || strspn(v->id, "0123456789abcdefABCDEF-") != n)
        return kf_err_set(err, -EINVAL, "%s: its id is not fit for a lock file name", v->path);
    char *copy = strdup(cfg->state_file);
    if (copy == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    const char *dir = dirname(copy);
    mkdir(dir, 0700);
    char path[4096];
    int len = snprintf(path, sizeof(path), "%s/rotate-%s.lock", dir, v->id);
    free(copy);
    if (len < 0 || (size_t)len >= sizeof(path))
        return kf_err_set(err, -ENAMETOOLONG, "%s: the lock file's path is too long", v->path);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return kf_err_set(err, -errno, "%s: cannot open %s: %s", v->path, path, strerror(errno));
    int r;
    while ((r = flock(fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR)
        ;
    if (r != 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            return kf_err_set(err, -EBUSY, "%s: another keyfleet-agent rotate is working on it; run again once it ends",
                              v->path);
        return kf_err_set(err, -e, "%s: cannot lock %s: %s", v->path, path, strerror(e));
    }
    *ret_fd = fd;
    return 0;
}

static Keyfleet__V1__VolumeRef volume_ref(const kfa_volume *v)
{
    Keyfleet__V1__VolumeRef ref = KEYFLEET__V1__VOLUME_REF__INIT;
    ref.id = (char *)v->id;
    ref.kind = v->kind == KFA_VOL_LUKS2 ? KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2
                                        : KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS;
    ref.name = (char *)v->path;
    return ref;
}

/* One RotateKey step; 0, or a negative errno with err naming the coordinator's answer. */
static int rotate_call(kfa_ctx *ctx, const kfa_volume *v, bool commit, const char *wrapped, kf_enrolled *ret,
                       kf_err *err)
{
    int r = kfa_connect(ctx, err);
    if (r != 0)
        return r;
    char request_id[33] = "";
    uint8_t raw[16];
    if (!commit) {
        if (RAND_bytes(raw, sizeof(raw)) != 1)
            return kf_err_set(err, -EIO, "no randomness for a request id");
        for (int i = 0; i < 16; i++)
            snprintf(request_id + 2 * i, 3, "%02x", raw[i]);
    }
    Keyfleet__V1__VolumeRef ref = volume_ref(v);
    kf_rpc_status st;
    /* Each step carries a quote, as a Release does (require: [attested]; review F5). */
    kfa_quote q;
    Keyfleet__V1__TpmQuote quote;
    int a = commit ? kfa_attest_keyless(ctx, "RotateKey", v->id, request_id, &q, &quote, err)
                   : kfa_attest(ctx, "RotateKey", v->id, request_id, &q, &quote, err);
    if (a < 0)
        return kf_err_wrap(err, "%s: RotateKey", v->path);
    r = kf_node_rotate(ctx->client, kfa_receiver(ctx), ctx->me.name, &ref, commit, request_id, wrapped,
                       a == 0 ? &quote : NULL, ret, &st, err);
    if (r != 0)
        return kf_err_wrap(err, "%s: RotateKey", v->path);
    if (st.code != KF_CONNECT_OK)
        return kf_err_set(err, st.code == KF_CONNECT_PERMISSION_DENIED ? -EACCES : -EPROTO,
                          "%s: coordinator refused the rotation (%s): %s: %s", v->path, commit ? "commit" : "begin",
                          kf_connect_code_name(st.code), st.message);
    return 0;
}

/* Whether the run seals a TPM copy of the new key: the volume had one, or (rotate --tpm) the
 * operator asks for one. */
static bool wants_tpm(const kfa_volume *v, bool add_tpm)
{
    /* tpm_and_network: the TPM holds a part, never a whole copy (tpm_net.h). */
    return (v->tpm_blob != NULL || add_tpm) && v->tpm_blob_next == NULL && v->tpm_part == NULL;
}

/* A volume that had a TPM copy gets one of the new key, to be stored with it, where BEGIN's
 * answer (e) says policy still allows one; otherwise its copy goes with the old key (review F3).
 * rotate --tpm gives one to a volume that has none (enrolled where policy did not allow one then,
 * or rotated by an agent that dropped it). A copy that cannot be sealed is not fatal: the
 * rotation goes on, and the warning says the volume now needs a coordinator to unlock. */
static void seal_next(kfa_ctx *ctx, kfa_volume *v, const kf_enrolled *e, bool add_tpm)
{
    if (!wants_tpm(v, add_tpm))
        return;
    kf_err terr = {0};
    if (!e->offline_fallback_allowed) {
        kf_log_warn(v->tpm_blob != NULL ? "tpm_copy_dropped" : "tpm_copy_not_allowed",
                    "volume=%s reason=\"the volume's rule does not allow offline_fallback\"", kf_log_q(v->path));
    } else if (kfa_seal_copy(ctx, e, &v->tpm_blob_next, &terr) != 0) {
        v->tpm_blob_next = NULL;
        kf_log_warn("tpm_seal_failed", "volume=%s error=%s hint=\"no TPM copy of the new key: this volume needs a "
                    "coordinator to unlock\"", kf_log_q(v->path), kf_log_q(terr.msg));
    }
}

/* The key of wrapped (v's key, or the rotation staged on it), released by a coordinator; for a
 * tpm_and_network volume combined with tpm_part, the TPM part that goes with wrapped. */
static int release_key(kfa_ctx *ctx, const kfa_volume *v, const char *wrapped, const char *tpm_part, kf_secbuf **ret,
                       kf_err *err)
{
    kfa_volume view = *v;
    view.wrapped = (char *)wrapped;
    view.tpm_part = (char *)tpm_part;
    kf_released rel;
    int r = kfa_release(ctx, &view, &rel, err);
    if (r != 0)
        return r;
    ctx->reachable = true;
    if (tpm_part != NULL && (r = kfa_tpmnet_combine(ctx, &view, &rel.key, err)) != 0) {
        kf_released_clear(&rel);
        return r;
    }
    *ret = rel.key;
    rel.key = NULL;
    kf_released_clear(&rel);
    return 0;
}

/* tpm_and_network: the new key's coordinator part (e->key) gets a new TPM part, sealed to this
 * TPM and staged with the new keyslot; e->key becomes the keyslot key HKDF(new TPM part ||
 * coordinator part). Nothing to do for a volume without a TPM part. */
static int new_tpm_part(kfa_ctx *ctx, kfa_volume *v, kf_enrolled *e, kf_err *err)
{
    if (v->tpm_part == NULL)
        return 0;
    kf_secbuf *key = NULL;
    free(v->tpm_part_next);
    v->tpm_part_next = NULL;
    int r = kfa_tpmnet_enroll(ctx, e, v->id, &v->tpm_part_next, &key, err);
    if (r != 0)
        return kf_err_wrap(err, "%s: a TPM part for the new key", v->path);
    kf_secbuf_free(e->key);
    e->key = key;
    return 0;
}

/* BEGIN (the new key, or the rotation in progress), its TPM part (tpm_and_network) or TPM copy,
 * and staged on the volume beside the key it replaces. */
static int begin_and_stage(kfa_ctx *ctx, kfa_volume *v, const kf_secbuf *old_key, kf_enrolled *e, bool add_tpm,
                           kf_err *err)
{
    int r = rotate_call(ctx, v, false, NULL, e, err);
    if (r == 0)
        r = new_tpm_part(ctx, v, e, err);
    if (r == 0) {
        kfa_test_crash_point("begin");
        seal_next(ctx, v, e, add_tpm);
        r = v->drv->rotate_stage(ctx->cfg, v, old_key, e->key, e->wrapped, err);
    }
    return r;
}

static int rotate_one(kfa_ctx *ctx, kfa_volume *v, bool add_tpm, const char **ret_how, kf_err *err)
{
    const kfa_config *cfg = ctx->cfg;
    kf_secbuf *old_key = NULL;
    kf_enrolled e = {0}, done = {0};
    int r = 0;
    *ret_how = "rotated";
    if (v->wrapped == NULL)
        return kf_err_set(err, -ENOENT, "%s is not enrolled", v->path);
    /* tpm_and_network: a rotation staged without the new key's TPM part has no way to its new
     * key (LUKS2 stages it in the token marked rotating, ZFS in org.keyfleet:tpm-next). */
    if (v->tpm_part != NULL && v->wrapped_next != NULL && v->tpm_part_next == NULL)
        return kf_err_set(err, -EBADMSG,
                          "%s needs TPM and network (require: [tpm_and_network]): its staged rotation has no TPM "
                          "part for the new key; nothing changed (docs/operations.md)",
                          v->path);
    if (v->kind == KFA_VOL_ZFS && !v->unlocked && !v->rotating)
        return kf_err_set(err, -EPERM, "%s: load its key first (keyfleet-agent unlock); zfs change-key needs it",
                          v->path);
    if (v->rotating) {
        *ret_how = "rotation resumed (commit)";
    } else if (v->wrapped_next != NULL) {
        *ret_how = "rotation resumed";
        if (wants_tpm(v, add_tpm)) {
            /* A TPM copy to replace (ZFS keeps the new one only in memory until retire): BEGIN
             * again, which answers with the rotation in progress and what policy allows now. */
            if ((r = rotate_call(ctx, v, false, NULL, &e, err)) == 0 && strcmp(e.wrapped, v->wrapped_next) != 0)
                r = kf_err_set(err, -ESTALE, "%s: the coordinator's rotation in progress is not the one staged on the "
                               "volume; nothing changed", v->path);
            if (r == 0)
                seal_next(ctx, v, &e, add_tpm);
        } else if ((r = release_key(ctx, v, v->wrapped_next, v->tpm_part != NULL ? v->tpm_part_next : NULL, &e.key,
                                    err)) == 0 &&
                   (e.wrapped = strdup(v->wrapped_next)) == NULL) {
            r = kf_err_set(err, -ENOMEM, "out of memory");
        }
        /* ZFS changes the key only while the dataset still has the one it replaces (for a
         * tpm_and_network dataset, with the TPM part stored beside wrapped-key). */
        if (r == 0 && v->kind == KFA_VOL_ZFS)
            r = release_key(ctx, v, v->wrapped, v->tpm_part, &old_key, err);
    } else {
        r = release_key(ctx, v, v->wrapped, v->tpm_part, &old_key, err);
        if (r == 0) {
            kfa_test_crash_point("release");
            r = begin_and_stage(ctx, v, old_key, &e, add_tpm, err);
        }
    }
    if (r == 0 && !v->rotating) {
        kfa_test_crash_point("stage");
        r = v->drv->rotate_retire(cfg, v, old_key, e.key, err);
        /* ZFS, tpm_and_network: the dataset is still on the old key, and the staged TPM part was
         * read from the pool, not made here (an evil maid may have written it): a new one is
         * staged in its place, and the key changes to that (zfs_rotate_retire; review rev26z R1). */
        if (r == -EAGAIN && v->kind == KFA_VOL_ZFS && v->tpm_part != NULL && !v->tpm_part_next_ours) {
            kf_log_info("rotation_restaged", "volume=%s reason=\"the staged TPM part was not made by this run\"",
                        kf_log_q(v->path));
            kf_enrolled_clear(&e);
            r = begin_and_stage(ctx, v, old_key, &e, add_tpm, err);
            if (r == 0)
                r = v->drv->rotate_retire(cfg, v, old_key, e.key, err);
        }
        if (r == 0)
            kfa_test_crash_point("retire");
    } else if (r == 0) {
        r = v->drv->rotate_retire(cfg, v, NULL, NULL, err);
    }
    kf_secbuf_free(old_key);
    if (r == 0)
        r = rotate_call(ctx, v, true, v->wrapped, &done, err);
    if (r == 0) {
        kfa_test_crash_point("commit");
        r = v->drv->rotate_finish(cfg, v, err);
    }
    kf_enrolled_clear(&e);
    kf_enrolled_clear(&done);
    return r;
}

int kfa_volume_lock(const kfa_config *cfg, const kfa_volume *v, int *ret_fd, kf_err *err)
{
    return rotate_lock(cfg, v, ret_fd, err);
}

int kfa_rotate_volume(kfa_ctx *ctx, kfa_volume *v, kf_err *err)
{
    int lock_fd = -1;
    const char *how = "";
    int r = rotate_lock(ctx->cfg, v, &lock_fd, err);
    if (r == 0)
        r = v->drv->probe(ctx->cfg, v, err);
    if (r == 0)
        r = rotate_one(ctx, v, false, &how, err);
    if (lock_fd >= 0)
        close(lock_fd);
    return r;
}

int kfa_rotate(kfa_ctx *ctx, int argc, char **argv)
{
    bool add_tpm = argc >= 2 && strcmp(argv[1], "--tpm") == 0;
    int first = add_tpm ? 2 : 1;
    bool all = argc == first + 1 && strcmp(argv[first], "--all") == 0;
    if (argc < first + 1 || (!all && strncmp(argv[first], "-", 1) == 0))
        return kfa_usage("rotate");
    kfa_volume *vs = NULL;
    size_t n = 0, ok = 0;
    if (kfa_collect_volumes(ctx, all ? 0 : argc - first, argv + first, false, &vs, &n) != 0)
        return KFA_EXIT_USAGE;
    for (size_t i = 0; i < n; i++) {
        kfa_volume *v = &vs[i];
        kf_err err = {0};
        const char *how = "";
        int lock_fd = -1;
        int r = v->drv->probe(ctx->cfg, v, &err);
        /* Probe again under the lock: a run that held it may have changed the volume. */
        if (r == 0 && v->wrapped != NULL && (r = rotate_lock(ctx->cfg, v, &lock_fd, &err)) == 0)
            r = v->drv->probe(ctx->cfg, v, &err);
        if (r == 0 && all && v->wrapped == NULL) {
            if (lock_fd >= 0)
                close(lock_fd);
            kfa_volume_clear(v);
            ok++; /* --all: a configured volume not enrolled has nothing to rotate */
            continue;
        }
        if (r == 0)
            r = rotate_one(ctx, v, add_tpm, &how, &err);
        if (r == 0) {
            kf_log_info("key_rotated", "volume=%s id=%s", kf_log_q(v->path), kf_log_q(v->id));
            printf("%s %s: %s\n", v->drv->name, v->path, how);
            ok++;
        } else {
            fprintf(stderr, "keyfleet-agent: rotate: %s\n", err.msg);
        }
        if (lock_fd >= 0)
            close(lock_fd);
        kfa_volume_clear(v);
    }
    free(vs);
    if (n == 0)
        fprintf(stderr, "keyfleet-agent: no volumes to rotate\n");
    return ok == n && n > 0 ? KFA_EXIT_ALL : ok == 0 ? KFA_EXIT_NONE : KFA_EXIT_SOME;
}
