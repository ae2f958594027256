/* libFuzzer: the keyfleet LUKS2 token JSON, which an evil maid can edit on the disk, through the
 * one parser the agent, the keyscript and the token plugin share; with and without the header's
 * UUID to match. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "luks2_token.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > KFA_TOKEN_JSON_MAX + 16)
        return 0;
    static char json[KFA_TOKEN_JSON_MAX + 16];
    memcpy(json, data + 1, size - 1);
    json[size - 1] = '\0';
    kfa_token t;
    kf_err err = {0};
    const char *uuid = (data[0] & 1) ? "5f0c2a9e-1b2c-4d5e-8f90-0123456789ab" : NULL;
    if (kfa_token_parse(json, uuid, &t, &err) == 0)
        kfa_token_clear(&t);
    (void)kfa_wrapped_check(json, NULL, &err);
    return 0;
}
