/* Which volumes a command acts on: a spec (luks:PATH, zfs:DATASET, a configured path or spec)
 * resolved against the config, or every configured volume plus discovered ZFS encryption roots.
 * Shared by the commands in main.c and by watch.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"

/* A LUKS2 path from the command line, absolute and without ".", ".." or doubled slashes, so that
 * the volume's name (and its match against the config) does not depend on the working directory
 * or the spelling: ./data.luks, data.luks and /srv/./data.luks are one volume. Symlinks are kept
 * (/dev/disk/by-uuid/... names the volume better than /dev/sdb1). */
static int normalize_path(const char *in, char *out, size_t size)
{
    char buf[4096];
    if (in[0] == '/') {
        if (snprintf(buf, sizeof(buf), "%s", in) >= (int)sizeof(buf))
            return -ENAMETOOLONG;
    } else {
        char cwd[2048];
        if (getcwd(cwd, sizeof(cwd)) == NULL)
            return -errno;
        if (snprintf(buf, sizeof(buf), "%s/%s", cwd, in) >= (int)sizeof(buf))
            return -ENAMETOOLONG;
    }
    size_t n = 0;
    for (char *save = NULL, *c = strtok_r(buf, "/", &save); c != NULL; c = strtok_r(NULL, "/", &save)) {
        if (strcmp(c, ".") == 0)
            continue;
        if (strcmp(c, "..") == 0) {
            while (n > 0 && out[n - 1] != '/')
                n--;
            if (n > 0)
                n--; /* the slash before the removed component */
            continue;
        }
        size_t len = strlen(c);
        if (n + 1 + len + 1 > size)
            return -ENAMETOOLONG;
        out[n++] = '/';
        memcpy(out + n, c, len);
        n += len;
    }
    if (n == 0)
        out[n++] = '/';
    out[n] = '\0';
    return 0;
}

int kfa_resolve_volume(const kfa_config *cfg, const char *spec, kfa_volume *v, kf_err *err)
{
    memset(v, 0, sizeof(*v));
    v->keyslot = v->token = -1;
    const char *path = spec;
    if (strncmp(spec, "luks:", 5) == 0) {
        v->kind = KFA_VOL_LUKS2;
        path = spec + 5;
    } else if (strncmp(spec, "zfs:", 4) == 0) {
        v->kind = KFA_VOL_ZFS;
        path = spec + 4;
    } else {
        size_t i = 0;
        while (i < cfg->n_volumes && strcmp(cfg->volumes[i].path, spec) != 0 &&
               (cfg->volumes[i].spec == NULL || strcmp(cfg->volumes[i].spec, spec) != 0))
            i++;
        if (i == cfg->n_volumes)
            return kf_err_set(err, -EINVAL, "'%s' is not a configured volume; say luks:PATH or zfs:DATASET", spec);
        v->kind = cfg->volumes[i].kind;
        path = cfg->volumes[i].path;
        if (cfg->volumes[i].name != NULL)
            snprintf(v->name, sizeof(v->name), "%s", cfg->volumes[i].name);
    }
    if (path[0] == '\0' || strlen(path) >= sizeof(v->path))
        return kf_err_set(err, -EINVAL, "'%s': empty or too long", spec);
    if (v->kind == KFA_VOL_LUKS2) {
        int r = normalize_path(path, v->path, sizeof(v->path));
        if (r != 0)
            return kf_err_set(err, r, "'%s': %s", spec, strerror(-r));
    } else {
        snprintf(v->path, sizeof(v->path), "%s", path);
    }
    v->drv = v->kind == KFA_VOL_LUKS2 ? &kfa_luks2_driver : &kfa_zfs_driver;
    return 0;
}

/* Volumes to act on: the named ones, or every configured and discovered one. */
int kfa_collect_volumes(kfa_ctx *ctx, int n_specs, char **specs, bool locked_only, kfa_volume **ret, size_t *ret_n)
{
    kf_err err = {0};
    size_t cap = (size_t)n_specs + ctx->cfg->n_volumes + 64, n = 0;
    kfa_volume *vs = calloc(cap, sizeof(*vs));
    if (vs == NULL)
        return -ENOMEM;
    if (n_specs > 0) {
        for (int i = 0; i < n_specs; i++) {
            if (kfa_resolve_volume(ctx->cfg, specs[i], &vs[n], &err) != 0) {
                fprintf(stderr, "keyfleet-agent: %s\n", err.msg);
                free(vs);
                return -EINVAL;
            }
            n++;
        }
    } else {
        for (size_t i = 0; i < ctx->cfg->n_volumes; i++) {
            char spec[600];
            snprintf(spec, sizeof(spec), "%s:%s", ctx->cfg->volumes[i].kind == KFA_VOL_LUKS2 ? "luks" : "zfs",
                     ctx->cfg->volumes[i].path);
            kfa_resolve_volume(ctx->cfg, spec, &vs[n], &err);
            if (ctx->cfg->volumes[i].name != NULL)
                snprintf(vs[n].name, sizeof(vs[n].name), "%s", ctx->cfg->volumes[i].name);
            n++;
        }
        char **names = NULL;
        size_t k = 0;
        if (ctx->cfg->zfs_discover && access(ctx->cfg->zfs_command, X_OK) == 0 &&
            kfa_zfs_discover(ctx->cfg, locked_only, &names, &k, &err) == 0) {
            for (size_t i = 0; i < k; i++) {
                bool dup = false;
                for (size_t j = 0; j < n && !dup; j++)
                    dup = vs[j].kind == KFA_VOL_ZFS && strcmp(vs[j].path, names[i]) == 0;
                if (!dup && n < cap) {
                    char spec[600];
                    snprintf(spec, sizeof(spec), "zfs:%s", names[i]);
                    kfa_resolve_volume(ctx->cfg, spec, &vs[n++], &err);
                }
                free(names[i]);
            }
            free(names);
        }
    }
    *ret = vs;
    *ret_n = n;
    return 0;
}
