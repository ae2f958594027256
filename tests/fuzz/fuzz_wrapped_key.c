/* libFuzzer: the wrapped-key text a node sends (Release.wrapped_key) and that sits on the disk
 * (LUKS2 token, ZFS property), parsed for each backend as the KMS layer parses it. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kms/kms_wrapped.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const backends[] = {"local", "vault", "azure"};
    if (size < 1 || size > 8192)
        return 0;
    char text[8193];
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    kfd_wrapped w;
    (void)kfd_wrapped_parse(text, backends[data[0] % 3], &w);
    return 0;
}
