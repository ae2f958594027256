/* For fuzz targets whose code under test reads a file: writes the input to NAME in an empty
 * scratch folder of the process's own, so relative paths in it (cert, key, files a loader reads)
 * resolve there and find nothing, as on a host without them. Returns the path, or NULL. The
 * folder is removed when the run ends (not after a crash). */
#ifndef KF_FUZZ_FILE_H
#define KF_FUZZ_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <ftw.h>

static char fuzz_file_dir[64];

static int fuzz_file_remove(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void fuzz_file_cleanup(void) { nftw(fuzz_file_dir, fuzz_file_remove, 8, FTW_DEPTH | FTW_PHYS); }

static const char *fuzz_write_file(const char *name, const uint8_t *data, size_t size)
{
    static char path[160];
    if (fuzz_file_dir[0] == '\0') {
        snprintf(fuzz_file_dir, sizeof(fuzz_file_dir), "/tmp/kf-fuzz-XXXXXX");
        if (mkdtemp(fuzz_file_dir) == NULL) {
            fuzz_file_dir[0] = '\0';
            return NULL;
        }
        atexit(fuzz_file_cleanup);
    }
    snprintf(path, sizeof(path), "%s/%s", fuzz_file_dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return NULL;
    bool written = fwrite(data, 1, size, f) == size;
    return fclose(f) == 0 && written ? path : NULL;
}

#endif
