/* ZFS through the zfs command, called by its absolute path (zfs.command). The dataset GUID is
 * the volume id; user properties org.keyfleet:wrapped-key and org.keyfleet:volume-id hold the
 * metadata and move with the pool (zpool export/import). Keys are raw 32 bytes
 * (keyformat=raw, keylocation=prompt) and reach zfs only on its stdin. A key rotation in progress
 * keeps the new wrapped key in org.keyfleet:wrapped-next until the dataset's key is changed and
 * wrapped-key points at it (docs/agent.md, "Key rotation"); for a tpm_and_network dataset, the new
 * key's TPM part waits beside it in org.keyfleet:tpm-next, staged in the same command. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "volume.h"
#include "zfs_props.h"

#define PROP_WRAPPED KFA_ZFS_PROP_WRAPPED
#define PROP_ID KFA_ZFS_PROP_ID
#define PROP_TPM KFA_ZFS_PROP_TPM
#define PROP_NEXT KFA_ZFS_PROP_NEXT
#define PROP_TPM_NEXT KFA_ZFS_PROP_TPM_NEXT

static int zfs(const kfa_config *cfg, const char *const *args, const kf_secbuf *key, char **ret_out, kf_err *err)
{
    char *argv[16];
    size_t n = 0;
    argv[n++] = cfg->zfs_command;
    for (; args[n - 1] != NULL && n < 15; n++)
        argv[n] = (char *)args[n - 1];
    argv[n] = NULL;
    char errbuf[256] = "";
    int r = kfa_run(argv, key != NULL ? key->data : NULL, key != NULL ? key->len : 0, ret_out, errbuf, sizeof(errbuf));
    if (r < 0)
        return kf_err_set(err, r, "%s: cannot run: %s", cfg->zfs_command, strerror(-r));
    if (r == 127)
        return kf_err_set(err, -ENOENT, "%s: cannot execute", cfg->zfs_command);
    if (r != 0) {
        if (ret_out != NULL) {
            free(*ret_out);
            *ret_out = NULL;
        }
        return kf_err_set(err, -EIO, "zfs %s %s: %s", args[0], args[1] != NULL ? args[1] : "",
                          errbuf[0] ? errbuf : "failed");
    }
    return 0;
}

static int zfs_probe(const kfa_config *cfg, kfa_volume *v, kf_err *err)
{
    const char *args[] = {"get", "-H", "-p", "-o", "property,value", "-s", "local,none", KFA_ZFS_PROBE_PROPS, v->path,
                          NULL};
    char *out = NULL;
    kf_err e = {0};
    int r = zfs(cfg, args, NULL, &out, &e);
    if (r != 0) {
        if (strstr(e.msg, "does not exist") != NULL)
            return kf_err_set(err, -ENOENT, "%s: no such dataset", v->path);
        *err = e;
        return r;
    }
    r = kfa_zfs_parse_probe(v, out, err);
    free(out);
    return r;
}

/* tpm_blob (NULL: left as it is) is set in the same command, so the TPM copy never names another
 * key than wrapped-key. */
static int set_props(const kfa_config *cfg, kfa_volume *v, const char *wrapped, const char *tpm_blob, kf_err *err)
{
    char p1[KFA_WRAPPED_MAX + 64], p2[200], p3[KFA_WRAPPED_MAX + 64];
    snprintf(p1, sizeof(p1), PROP_WRAPPED "=%s", wrapped);
    snprintf(p2, sizeof(p2), PROP_ID "=%s", v->id);
    snprintf(p3, sizeof(p3), PROP_TPM "=%s", tpm_blob != NULL ? tpm_blob : "");
    const char *args[] = {"set", p1, p2, tpm_blob != NULL ? p3 : v->path, tpm_blob != NULL ? v->path : NULL, NULL};
    return zfs(cfg, args, NULL, NULL, err);
}

int kfa_zfs_create(const kfa_config *cfg, const char *dataset, kf_err *err)
{
    kf_secbuf *tmp = kf_secbuf_new(32);
    if (tmp == NULL || RAND_priv_bytes(tmp->data, 32) != 1) {
        kf_secbuf_free(tmp);
        return kf_err_set(err, -EIO, "no randomness");
    }
    const char *args[] = {"create", "-o", "encryption=on", "-o", "keyformat=raw", "-o", "keylocation=prompt",
                          dataset, NULL};
    int r = zfs(cfg, args, tmp, NULL, err);
    kf_secbuf_free(tmp);
    return r;
}

static int zfs_enroll(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *key, const char *wrapped,
                      const kf_secbuf *auth, kf_err *err)
{
    (void)auth;
    if (!v->unlocked)
        return kf_err_set(err, -EPERM, "%s: load its current key first (zfs load-key); change-key needs it", v->path);
    const char *change[] = {"change-key", "-o", "keyformat=raw", "-o", "keylocation=prompt", v->path, NULL};
    int r = zfs(cfg, change, key, NULL, err);
    if (r != 0)
        return r;
    /* Seal, then verify: a dry-run load-key must accept the new key. */
    const char *check[] = {"load-key", "-n", "-L", "prompt", v->path, NULL};
    if ((r = zfs(cfg, check, key, NULL, err)) != 0)
        return kf_err_wrap(err, "%s: the new key did not verify", v->path);
    /* A tpm_and_network TPM part goes with the wrapped key, in one command. */
    if ((r = set_props(cfg, v, wrapped, v->tpm_part, err)) != 0)
        return r;
    free(v->wrapped);
    v->wrapped = strdup(wrapped);
    return 0;
}

static int zfs_unlock(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *key, kf_err *err)
{
    const char *load[] = {"load-key", "-L", "prompt", v->path, NULL};
    kf_err e = {0};
    int r = zfs(cfg, load, key, NULL, &e);
    if (r != 0) {
        if (strstr(e.msg, "ncorrect key") != NULL)
            return kf_err_set(err, -EKEYREJECTED, "%s: the released key does not open the dataset", v->path);
        *err = e;
        return r;
    }
    v->unlocked = true;
    if (cfg->zfs_mount) {
        const char *mount[] = {"mount", v->path, NULL};
        if ((r = zfs(cfg, mount, NULL, NULL, err)) != 0)
            return kf_err_wrap(err, "key loaded, but mounting failed");
    }
    return 0;
}

static int zfs_store_wrapped(const kfa_config *cfg, kfa_volume *v, const char *wrapped, kf_err *err)
{
    int r = set_props(cfg, v, wrapped, NULL, err);
    if (r == 0) {
        free(v->wrapped);
        v->wrapped = strdup(wrapped);
    }
    return r;
}

/* Runs `zfs list -H -o PROPS` (nf properties, the name first) and returns the names of the
 * datasets whose fields keep() accepts. */
static int list_names(const kfa_config *cfg, const char *props, size_t nf,
                      bool (*keep)(char **fields, const void *arg), const void *arg, char ***ret_names,
                      size_t *ret_n, kf_err *err)
{
    *ret_names = NULL;
    *ret_n = 0;
    const char *args[] = {"list", "-H", "-o", props, NULL};
    char *out = NULL;
    int r = zfs(cfg, args, NULL, &out, err);
    if (r != 0)
        return r;
    r = kfa_zfs_parse_list(out, nf, keep, arg, ret_names, ret_n, err);
    free(out);
    return r;
}

/* name, encryptionroot, keystatus, volume id: an encryption root with keyfleet metadata. */
static bool is_enrolled_root(char **f, const void *arg)
{
    bool locked_only = *(const bool *)arg;
    return strcmp(f[0], f[1]) == 0 && (!locked_only || strcmp(f[2], "unavailable") == 0) && strcmp(f[3], "-") != 0;
}

int kfa_zfs_discover(const kfa_config *cfg, bool locked_only, char ***ret_names, size_t *ret_n, kf_err *err)
{
    return list_names(cfg, "name,encryptionroot,keystatus," PROP_ID, 4, is_enrolled_root, &locked_only, ret_names,
                      ret_n, err);
}

static int zfs_store_tpm(const kfa_config *cfg, kfa_volume *v, const char *blob, kf_err *err)
{
    if (v->tpm_part != NULL) /* the one property holds the TPM part: no whole copy may exist */
        return kf_err_set(err, -EPERM, "%s needs TPM and network (require: [tpm_and_network]): no TPM copy of its "
                          "key can be stored", v->path);
    char prop[4096 + 64];
    snprintf(prop, sizeof(prop), PROP_TPM "=%s", blob);
    const char *args[] = {"set", prop, v->path, NULL};
    int r = zfs(cfg, args, NULL, NULL, err);
    if (r == 0) {
        free(v->tpm_blob);
        v->tpm_blob = strdup(blob);
    }
    return r;
}

/* name, encryptionroot, mounted: a mounted dataset under the encryption root arg. */
static bool is_mounted_under(char **f, const void *arg)
{
    return strcmp(f[1], (const char *)arg) == 0 && strcmp(f[2], "yes") == 0;
}

static int by_name_desc(const void *a, const void *b) { return strcmp(*(char *const *)b, *(char *const *)a); }

/* The kill switch: every mounted dataset under this encryption root is unmounted, children
 * first (forced: the node was revoked), then the key is unloaded. */
static int zfs_lock(const kfa_config *cfg, kfa_volume *v, bool *changed, kf_err *err)
{
    *changed = false;
    char **mounted = NULL;
    size_t n = 0;
    int r = list_names(cfg, "name,encryptionroot,mounted", 3, is_mounted_under, v->path, &mounted, &n, err);
    if (r != 0)
        return r;
    if (mounted != NULL)
        qsort(mounted, n, sizeof(*mounted), by_name_desc); /* a child sorts after its parent */
    for (size_t i = 0; r == 0 && i < n; i++) {
        const char *unmount[] = {"unmount", "-f", mounted[i], NULL};
        if ((r = zfs(cfg, unmount, NULL, NULL, err)) == 0)
            *changed = true;
    }
    for (size_t i = 0; i < n; i++)
        free(mounted[i]);
    free(mounted);
    if (r != 0)
        return kf_err_wrap(err, "%s: cannot unmount", v->path);
    if (v->unlocked) {
        const char *unload[] = {"unload-key", v->path, NULL};
        if ((r = zfs(cfg, unload, NULL, NULL, err)) != 0)
            return r;
        v->unlocked = false;
        *changed = true;
    }
    return 0;
}

/* wrapped-next (and, tpm_and_network, tpm-next: the new key's TPM part) in one command, before the
 * dataset's key changes: a run cut off after change-key finds both parts of the new key staged. */
static int zfs_rotate_stage(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *old_key,
                            const kf_secbuf *new_key, const char *wrapped, kf_err *err)
{
    (void)old_key, (void)new_key; /* change-key needs the loaded key, not the old one */
    if (v->tpm_part != NULL && v->tpm_part_next == NULL)
        return kf_err_set(err, -EINVAL, "%s: no TPM part for the new key to stage", v->path);
    char prop[KFA_WRAPPED_MAX + 64], tprop[4096 + 64];
    snprintf(prop, sizeof(prop), PROP_NEXT "=%s", wrapped);
    bool part = v->tpm_part != NULL;
    if (part && snprintf(tprop, sizeof(tprop), PROP_TPM_NEXT "=%s", v->tpm_part_next) >= (int)sizeof(tprop))
        return kf_err_set(err, -E2BIG, "%s: the new TPM part is too long", v->path);
    const char *args[] = {"set", prop, part ? tprop : v->path, part ? v->path : NULL, NULL};
    char *copy = strdup(wrapped);
    int r = copy != NULL ? zfs(cfg, args, NULL, NULL, err) : kf_err_set(err, -ENOMEM, "out of memory");
    if (r != 0) {
        free(copy);
        return r;
    }
    free(v->wrapped_next);
    v->wrapped_next = copy;
    v->tpm_part_next_ours = part;
    return 0;
}

static int zfs_rotate_retire(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *old_key, const kf_secbuf *new_key,
                             kf_err *err)
{
    if (new_key == NULL)
        return 0; /* nothing is left to remove once wrapped-key names the new key */
    if (v->wrapped_next == NULL)
        return kf_err_set(err, -EINVAL, "%s: no rotation in progress", v->path);
    if (!v->unlocked)
        return kf_err_set(err, -EPERM, "%s: load its key first (keyfleet-agent unlock); change-key needs it", v->path);
    const char *check[] = {"load-key", "-n", "-L", "prompt", v->path, NULL};
    kf_err e = {0};
    int r;
    /* tpm_and_network: the key changes only with the new TPM part staged (zfs_rotate_stage). */
    if (v->tpm_part != NULL && v->tpm_part_next == NULL)
        return kf_err_set(err, -EBADMSG, "%s: a rotation staged without " PROP_TPM_NEXT " (the new key's TPM part); "
                          "nothing changed", v->path);
    if (zfs(cfg, check, new_key, NULL, &e) != 0) { /* not yet changed (or cut off before) */
        /* Only the key this run replaces may be replaced: a stale run, whose rotation another
         * one finished and rotated past, must not put the dataset on a key already retired. */
        if (old_key == NULL || zfs(cfg, check, old_key, NULL, &e) != 0)
            return kf_err_set(err, -ESTALE,
                              "%s: the dataset's key is neither the key this rotation replaces nor its new key "
                              "(another rotation changed it); nothing changed, run rotate again",
                              v->path);
        /* tpm_and_network: the key changes only to a TPM part this run made; a staged one read
         * from the pool may be an evil maid's (she knows it): the caller stages a new one
         * (the dataset is still on the key it replaces, checked just above). */
        if (v->tpm_part != NULL && !v->tpm_part_next_ours)
            return kf_err_set(err, -EAGAIN, "%s: the staged TPM part was not made by this run", v->path);
        const char *change[] = {"change-key", "-o", "keyformat=raw", "-o", "keylocation=prompt", v->path, NULL};
        if ((r = zfs(cfg, change, new_key, NULL, err)) != 0)
            return r;
        kfa_test_crash_point("change-key");
        if ((r = zfs(cfg, check, new_key, NULL, err)) != 0)
            return kf_err_wrap(err, "%s: the new key did not verify", v->path);
    }
    /* wrapped-key and tpm-sealed (a new copy, or the new TPM part) in one command */
    const char *tpm = v->tpm_part != NULL ? v->tpm_part_next : v->tpm_blob_next;
    if ((r = set_props(cfg, v, v->wrapped_next, tpm, err)) != 0)
        return r;
    kfa_test_crash_point("wrapped");
    /* wrapped-next first: tpm-next left alone is ignored (zfs_props.h) */
    const char *drop[] = {"inherit", PROP_NEXT, v->path, NULL};
    if ((r = zfs(cfg, drop, NULL, NULL, err)) != 0)
        return r;
    free(v->wrapped);
    v->wrapped = v->wrapped_next;
    v->wrapped_next = NULL;
    if (v->tpm_part != NULL) {
        kfa_test_crash_point("wrapped-next-dropped");
        const char *drop_part[] = {"inherit", PROP_TPM_NEXT, v->path, NULL};
        if ((r = zfs(cfg, drop_part, NULL, NULL, err)) != 0)
            return r;
        free(v->tpm_part);
        v->tpm_part = v->tpm_part_next;
        v->tpm_part_next = NULL;
        return 0;
    }
    if (v->tpm_blob_next != NULL) { /* stored with wrapped-key above */
        free(v->tpm_blob);
        v->tpm_blob = v->tpm_blob_next;
        v->tpm_blob_next = NULL;
    } else if (v->tpm_blob != NULL) { /* it sealed the old key, which no longer opens the dataset */
        const char *drop_tpm[] = {"inherit", PROP_TPM, v->path, NULL};
        if (zfs(cfg, drop_tpm, NULL, NULL, err) == 0) {
            free(v->tpm_blob);
            v->tpm_blob = NULL;
        }
    }
    return 0;
}

static int zfs_rotate_finish(const kfa_config *cfg, kfa_volume *v, kf_err *err)
{
    (void)cfg, (void)v, (void)err;
    return 0;
}

static int zfs_erase(const kfa_config *cfg, kfa_volume *v, bool all, char *ret_what, size_t what_size, kf_err *err)
{
    (void)all; /* keyfleet's raw wrapping key is the dataset's only one */
    static const char *const props[] = {PROP_NEXT, PROP_TPM, PROP_WRAPPED};
    /* tpm-sealed: a TPM copy, or a tpm_and_network TPM part (review rev26z R2) */
    bool had[] = {v->wrapped_next != NULL, v->tpm_blob != NULL || v->tpm_part != NULL, v->wrapped != NULL};
    size_t gone = 0;
    snprintf(ret_what, what_size, "nothing left to destroy");
    /* A rotation's next TPM part (read or not: one left behind is ignored by the probe), first:
     * read only beside a TPM part, it would be left for ever by an erase cut off after tpm-sealed
     * (review rev26z R3). */
    if (v->tpm_part != NULL || v->tpm_part_next != NULL) {
        const char *drop[] = {"inherit", PROP_TPM_NEXT, v->path, NULL};
        int r = zfs(cfg, drop, NULL, NULL, err);
        if (r != 0)
            return kf_err_wrap(err, "%s: cannot remove %s", v->path, PROP_TPM_NEXT);
    }
    for (size_t i = 0; i < sizeof(props) / sizeof(props[0]); i++) {
        if (!had[i])
            continue;
        const char *drop[] = {"inherit", props[i], v->path, NULL};
        int r = zfs(cfg, drop, NULL, NULL, err);
        if (r != 0)
            return kf_err_wrap(err, "%s: cannot remove %s", v->path, props[i]);
        gone++;
    }
    free(v->wrapped);
    free(v->tpm_blob);
    free(v->wrapped_next);
    free(v->tpm_blob_next);
    bool part = v->tpm_part != NULL;
    free(v->tpm_part);
    free(v->tpm_part_next);
    v->wrapped = v->tpm_blob = v->wrapped_next = v->tpm_blob_next = v->tpm_part = v->tpm_part_next = NULL;
    if (gone > 0)
        snprintf(ret_what, what_size, "zfs: %zu keyfleet propert%s removed (wrapped key%s%s)", gone,
                 gone == 1 ? "y" : "ies", had[1] ? (part ? ", TPM part" : ", TPM copy") : "",
                 had[0] ? ", rotation's key" : "");
    return 0;
}

const kfa_driver kfa_zfs_driver = {
    .name = "zfs",
    .probe = zfs_probe,
    .enroll = zfs_enroll,
    .unlock = zfs_unlock,
    .lock = zfs_lock,
    .store_wrapped = zfs_store_wrapped,
    .store_tpm = zfs_store_tpm,
    .erase = zfs_erase,
    .rotate_stage = zfs_rotate_stage,
    .rotate_retire = zfs_rotate_retire,
    .rotate_finish = zfs_rotate_finish,
};
