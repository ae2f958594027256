/* libFuzzer: the YAML reader under keyfleetd.yaml, agent.yaml and policies (kf_yaml: libfyaml's
 * events into a tree of nodes that keep their line and column), and keyfleetd.yaml through the
 * daemon's own config loader (from a file in a scratch folder, as it reads its config). */
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "fuzz_file.h"
#include "kf_yaml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kf_yaml_doc *doc = NULL;
    kf_err err = {0};
    if (kf_yaml_parse_string("fuzz", (const char *)data, size, &doc, &err) == 0)
        kf_yaml_free(doc);
    const char *path = fuzz_write_file("keyfleetd.yaml", data, size);
    if (path == NULL)
        return 0;
    kfd_config *cfg = NULL;
    if (kfd_config_load(path, &cfg, &err) == 0)
        kfd_config_free(cfg);
    return 0;
}
