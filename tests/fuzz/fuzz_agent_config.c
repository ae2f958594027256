/* libFuzzer: agent.yaml through the agent's loader, which the initramfs hook and the token
 * plugin also use (from a file in a scratch folder, so relative paths find nothing). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char dir[64], path[96];
    if (dir[0] == '\0') {
        snprintf(dir, sizeof(dir), "/tmp/kf-fuzz-agent-XXXXXX");
        if (mkdtemp(dir) == NULL)
            return 0;
        snprintf(path, sizeof(path), "%s/agent.yaml", dir);
    }
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return 0;
    bool written = fwrite(data, 1, size, f) == size;
    if (fclose(f) != 0 || !written)
        return 0;
    kfa_config *cfg = NULL;
    kf_err err = {0};
    if (kfa_config_load(path, &cfg, &err) == 0)
        kfa_config_free(cfg);
    return 0;
}
