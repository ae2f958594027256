/* libFuzzer: a Connect error body ({"code":"...","message":"..."}) as the agent and keyfleetctl
 * read it from a coordinator, or from whatever answers at its address (common/kf_connect.c).
 * What parses must come back the same through keyfleetd's writer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kf_connect.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kf_connect_code code;
    char *message = NULL;
    if (kf_connect_error_parse((const char *)data, size, &code, &message) != 0)
        return 0;
    if ((unsigned)code >= KF_CONNECT_CODE_COUNT)
        abort();
    (void)kf_connect_code_http_status(code);
    char *json = kf_connect_error_json(code, message);
    if (json != NULL) {
        kf_connect_code code2;
        char *message2 = NULL;
        if (kf_connect_error_parse(json, strlen(json), &code2, &message2) != 0 || code2 != code ||
            strcmp(message, message2) != 0)
            abort();
        free(message2);
        free(json);
    }
    free(message);
    return 0;
}
