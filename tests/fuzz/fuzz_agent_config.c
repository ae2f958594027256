/* libFuzzer: agent.yaml through the agent's loader, which the initramfs hook and the token
 * plugin also use (from a file in a scratch folder, so relative paths find nothing). */
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_file("agent.yaml", data, size);
    if (path == NULL)
        return 0;
    kfa_config *cfg = NULL;
    kf_err err = {0};
    if (kfa_config_load(path, &cfg, &err) == 0)
        kfa_config_free(cfg);
    return 0;
}
