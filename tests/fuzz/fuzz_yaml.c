/* libFuzzer: the YAML reader under keyfleetd.yaml, agent.yaml and policies (kf_yaml: libfyaml's
 * events into a tree of nodes that keep their line and column), and keyfleetd.yaml through the
 * daemon's own config loader (from a file in a scratch folder, as it reads its config). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdlib.h>

#include "config/config.h"
#include "kf_yaml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kf_yaml_doc *doc = NULL;
    kf_err err = {0};
    if (kf_yaml_parse_string("fuzz", (const char *)data, size, &doc, &err) == 0)
        kf_yaml_free(doc);
    /* A file in an empty folder of its own: relative paths in the config (cert, key, files the
     * loader reads) resolve there and find nothing, as on a host without them. */
    static char dir[64], path[96];
    if (dir[0] == '\0') {
        snprintf(dir, sizeof(dir), "/tmp/kf-fuzz-yaml-XXXXXX");
        if (mkdtemp(dir) == NULL)
            return 0;
        snprintf(path, sizeof(path), "%s/keyfleetd.yaml", dir);
    }
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return 0;
    bool written = fwrite(data, 1, size, f) == size;
    if (fclose(f) != 0 || !written)
        return 0;
    kfd_config *cfg = NULL;
    if (kfd_config_load(path, &cfg, &err) == 0)
        kfd_config_free(cfg);
    return 0;
}
