#include "zfs_props.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luks2_token.h"

/* Splits tab/newline separated output in place; at most max fields. */
static size_t split(char *s, char **fields, size_t max)
{
    size_t n = 0;
    char *save = NULL;
    for (char *t = strtok_r(s, "\t\n", &save); t != NULL && n < max; t = strtok_r(NULL, "\t\n", &save))
        fields[n++] = t;
    return n;
}

int kfa_zfs_parse_probe(kfa_volume *v, char *out, kf_err *err)
{
    /* Lines "PROPERTY\tVALUE", each property named at most once. A keyfleet property not set on
     * the dataset itself (inherited from a parent, filtered out by -s local,none) reads as
     * unset. A value holding a tab or a newline (a property an evil maid wrote) makes a line
     * that is not two fields or names no probed property: an error, never a shifted field. */
    enum { NPROPS = 8 };
    static const char *const names[NPROPS] = {"guid", "keystatus", "encryptionroot", KFA_ZFS_PROP_ID,
                                              KFA_ZFS_PROP_WRAPPED, KFA_ZFS_PROP_TPM, KFA_ZFS_PROP_NEXT,
                                              KFA_ZFS_PROP_TPM_NEXT};
    char *f[NPROPS] = {NULL, NULL, NULL, "-", "-", "-", "-", "-"};
    bool seen[NPROPS] = {false};
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        char *tab = strchr(line, '\t');
        if (tab == NULL || tab[1] == '\0' || strchr(tab + 1, '\t') != NULL)
            return kf_err_set(err, -EIO, "zfs get %s: unexpected output", v->path);
        *tab = '\0';
        size_t i = 0;
        while (i < NPROPS && strcmp(line, names[i]) != 0)
            i++;
        if (i == NPROPS || seen[i])
            return kf_err_set(err, -EIO, "zfs get %s: unexpected output", v->path);
        seen[i] = true;
        f[i] = tab + 1;
    }
    if (f[0] == NULL || f[1] == NULL || f[2] == NULL)
        return kf_err_set(err, -EIO, "zfs get %s: unexpected output", v->path);
    free(v->wrapped_next);
    v->wrapped_next = NULL;
    free(v->tpm_part_next);
    v->tpm_part_next = NULL;
    v->tpm_part_next_ours = false;
    size_t glen = strlen(f[0]);
    if (glen == 0 || glen > 20 || strspn(f[0], "0123456789") != glen)
        return kf_err_set(err, -EIO, "zfs get %s: the guid is not a number", v->path);
    snprintf(v->id, sizeof(v->id), "%s", f[0]);
    v->unlocked = strcmp(f[1], "available") == 0;
    if (strcmp(f[3], "-") == 0 && strcmp(f[4], "-") == 0)
        return 0; /* not enrolled */
    int r;
    if (strcmp(f[2], v->path) != 0)
        return kf_err_set(err, -EBADMSG, "%s: keyfleet metadata on a dataset that is not an encryption root", v->path);
    if (strcmp(f[3], v->id) != 0)
        return kf_err_set(err, -EBADMSG, "%s: " KFA_ZFS_PROP_ID " is %.64s, not this dataset's GUID %s", v->path, f[3],
                          v->id);
    if ((r = kfa_wrapped_check(f[4], NULL, err)) != 0) {
        kf_err_wrap(err, "%s: " KFA_ZFS_PROP_WRAPPED " holds no valid wrapped key", v->path);
        return r;
    }
    if (strcmp(f[5], "-") != 0 && (r = kfa_tpm_blob_check(f[5], err)) != 0) {
        kf_err_wrap(err, "%s: " KFA_ZFS_PROP_TPM " holds no valid TPM-sealed copy", v->path);
        return r;
    }
    bool has_next = strcmp(f[6], "-") != 0;
    if (has_next && (r = kfa_wrapped_check(f[6], NULL, err)) != 0) {
        kf_err_wrap(err, "%s: " KFA_ZFS_PROP_NEXT " holds no valid wrapped key", v->path);
        return r;
    }
    /* A rotation's next TPM part: a TPM part's syntax, whatever else is there. */
    bool has_tpm_next = strcmp(f[7], "-") != 0;
    if (has_tpm_next && (strncmp(f[7], "kftpmnet1:", 10) != 0 || kfa_tpm_blob_check(f[7], err) != 0)) {
        kf_err_set(err, -EBADMSG, "%s: " KFA_ZFS_PROP_TPM_NEXT " holds no valid TPM part", v->path);
        return -EBADMSG;
    }
    /* Read only where it belongs: beside wrapped-next, for a dataset whose key has a TPM part. */
    bool part = strcmp(f[5], "-") != 0 && strncmp(f[5], "kftpmnet1:", 10) == 0;
    has_tpm_next = has_tpm_next && has_next && part;
    char *wrapped = strdup(f[4]), *tpm = strcmp(f[5], "-") != 0 ? strdup(f[5]) : NULL;
    char *next = has_next ? strdup(f[6]) : NULL, *tpm_next = has_tpm_next ? strdup(f[7]) : NULL;
    if (wrapped == NULL || (tpm == NULL && strcmp(f[5], "-") != 0) || (has_next && next == NULL) ||
        (has_tpm_next && tpm_next == NULL)) {
        free(wrapped);
        free(tpm);
        free(next);
        free(tpm_next);
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    free(v->wrapped);
    free(v->tpm_blob);
    free(v->tpm_part);
    v->wrapped = wrapped;
    /* The property holds a whole copy (kftpm1:) or a tpm_and_network TPM part (kftpmnet1:). */
    v->tpm_blob = part ? NULL : tpm;
    v->tpm_part = part ? tpm : NULL;
    v->wrapped_next = next;
    v->tpm_part_next = tpm_next;
    return 0;
}

int kfa_zfs_parse_list(char *out, size_t nf, bool (*keep)(char **fields, const void *arg), const void *arg,
                       char ***ret_names, size_t *ret_n, kf_err *err)
{
    *ret_names = NULL;
    *ret_n = 0;
    char *f[9];
    if (nf == 0 || nf + 1 > sizeof(f) / sizeof(f[0]))
        return kf_err_set(err, -EINVAL, "zfs list: %zu properties, at most %zu", nf, sizeof(f) / sizeof(f[0]) - 1);
    char **names = NULL, *save = NULL;
    size_t n = 0;
    int r = 0;
    for (char *line = strtok_r(out, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        if (split(line, f, nf + 1) != nf || !keep(f, arg))
            continue;
        char **nv = realloc(names, (n + 1) * sizeof(*nv));
        if (nv != NULL)
            names = nv;
        if (nv == NULL || (names[n] = strdup(f[0])) == NULL) {
            r = kf_err_set(err, -ENOMEM, "out of memory");
            break;
        }
        n++;
    }
    if (r != 0) {
        for (size_t i = 0; i < n; i++)
            free(names[i]);
        free(names);
        return r;
    }
    *ret_names = names;
    *ret_n = n;
    return 0;
}
