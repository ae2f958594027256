/* libFuzzer: the response header lines the coordinator's HTTPS client keeps (Location,
 * Retry-After) from a KMS or a webhook endpoint, line by line as curl hands them over
 * (coordinator/kms/http.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kfd_http_headers hd = {.retry_after_s = 0};
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl != NULL ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        kfd_http_header_line(&hd, p, n);
        if (strlen(hd.location) >= sizeof(hd.location) || hd.retry_after_s > 86400)
            abort();
        p += n;
    }
    char v[64];
    size_t n = size < sizeof(v) - 1 ? size : sizeof(v) - 1;
    memcpy(v, data, n);
    v[n] = '\0';
    if (kfd_http_retry_after(v) > 86400)
        abort();
    return 0;
}
