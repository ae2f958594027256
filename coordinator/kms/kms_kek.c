/* KEK files of the local KMS: kek-N.key in a directory, 32 bytes, mode 0600. What keyfleetctl
 * init needs to write the first one, without the daemon's KMS library (kms_local.c uses them). */
#include "kms/kms_kek.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "kf_secmem.h"

/* A KEK version as written here: canonical decimal, 1..KFD_KEK_MAX_VERSIONS. strtoul would also
 * take a sign, leading blanks and zeros, so "v+1", "v 1" and "v01" would all name version 1: one
 * key, many spellings. Sets *ret_end to the first character after the digits. */
int kfd_kek_parse_version(const char *p, uint32_t *ret_version, const char **ret_end)
{
    uint32_t v = 0;
    const char *q = p;
    if (*q < '1' || *q > '9')
        return -EINVAL;
    for (; *q >= '0' && *q <= '9'; q++) {
        if (v > (UINT32_MAX - (uint32_t)(*q - '0')) / 10)
            return -EINVAL;
        v = v * 10 + (uint32_t)(*q - '0');
    }
    if (v > KFD_KEK_MAX_VERSIONS)
        return -EINVAL;
    *ret_version = v;
    *ret_end = q;
    return 0;
}

/* Writes key as DIR/kek-VERSION.key (0600, never over an existing file) and makes it durable. */
static int write_kek(const char *dir, uint32_t version, const uint8_t key[KFD_KEK_LEN], kf_err *err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/kek-%u.key", dir, version);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
    ssize_t n = write(fd, key, KFD_KEK_LEN);
    int synced = fsync(fd);
    close(fd);
    if (n != KFD_KEK_LEN || synced != 0) {
        unlink(path);
        return kf_err_set(err, -EIO, "%s: write failed", path);
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

int kfd_kek_write_new(const char *const *dirs, size_t n, uint32_t version, kf_err *err)
{
    uint8_t key[KFD_KEK_LEN];
    if (RAND_priv_bytes(key, sizeof(key)) != 1)
        return kf_err_set(err, -EIO, "no randomness for a KEK");
    int r = 0;
    size_t done = 0;
    while (r == 0 && done < n)
        if ((r = write_kek(dirs[done], version, key, err)) == 0)
            done++;
    kf_wipe(key, sizeof(key));
    for (size_t i = 0; r != 0 && i < done; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/kek-%u.key", dirs[i], version);
        unlink(path);
    }
    return r;
}

/* Versions present in dir, by scanning kek-N.key names (kms_kek.h). */
int kfd_kek_scan(const char *dir, uint32_t *ret_max, bool present[KFD_KEK_MAX_VERSIONS + 1], kf_err *err)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return kf_err_set(err, -errno, "%s: %s", dir, strerror(errno));
    struct dirent *e;
    *ret_max = 0;
    while ((e = readdir(d)) != NULL) {
        uint32_t v = 0;
        const char *end = NULL;
        /* Only the names write_kek makes: kek-01.key or kek-+1.key is not version 1. */
        if (strncmp(e->d_name, "kek-", 4) != 0 || kfd_kek_parse_version(e->d_name + 4, &v, &end) != 0 ||
            strcmp(end, ".key") != 0)
            continue;
        present[v] = true;
        if (v > *ret_max)
            *ret_max = v;
    }
    closedir(d);
    return 0;
}

int kfd_kms_local_init_shared(const char *const *dirs, size_t n, kf_err *err)
{
    static bool present[KFD_KEK_MAX_VERSIONS + 1];
    size_t empty = 0;
    for (size_t i = 0; i < n; i++) {
        if (mkdir(dirs[i], 0700) != 0 && errno != EEXIST)
            return kf_err_set(err, -errno, "%s: %s", dirs[i], strerror(errno));
        memset(present, 0, sizeof(present));
        uint32_t max = 0;
        int r = kfd_kek_scan(dirs[i], &max, present, err);
        if (r != 0)
            return r;
        if (max == 0)
            empty++;
        else if (n > 1) /* copies of different keys would decrypt nothing of each other's */
            return kf_err_set(err, -EEXIST, "%s already holds a KEK; a shared one needs empty directories", dirs[i]);
    }
    return empty == n ? kfd_kek_write_new(dirs, n, 1, err) : 0;
}

int kfd_kms_local_init(const char *dir, kf_err *err)
{
    return kfd_kms_local_init_shared(&dir, 1, err);
}
