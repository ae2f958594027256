/* For fuzz targets whose code under test reads a file: writes the input to NAME in an empty
 * scratch folder of the process's own, so relative paths in it (cert, key, files a loader reads)
 * resolve there and find nothing, as on a host without them. Returns the path, or NULL. */
#ifndef KF_FUZZ_FILE_H
#define KF_FUZZ_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static const char *fuzz_write_file(const char *name, const uint8_t *data, size_t size)
{
    static char dir[64], path[160];
    if (dir[0] == '\0') {
        snprintf(dir, sizeof(dir), "/tmp/kf-fuzz-XXXXXX");
        if (mkdtemp(dir) == NULL) {
            dir[0] = '\0';
            return NULL;
        }
    }
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return NULL;
    bool written = fwrite(data, 1, size, f) == size;
    return fclose(f) == 0 && written ? path : NULL;
}

#endif
