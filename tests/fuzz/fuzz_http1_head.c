/* libFuzzer: what an HTTP/1.1 client sends before its request head ends, through the check
 * keyfleetd's HTTP/1.1 guard runs on every read (front/h1guard.c, kfd_h1_head_check), against a
 * plain reference: input within the limits is accepted, input past them refused. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "front/h1guard.h"

/* The reference: lines up to the first blank one after a non-blank one, all in the first
 * KFD_H1_HEAD_MAX bytes. */
static const char *reference(const uint8_t *p, size_t len)
{
    size_t lines = 0, start = 0, end = len < KFD_H1_HEAD_MAX ? len : KFD_H1_HEAD_MAX;
    for (size_t i = 0; i < end; i++) {
        if (p[i] != '\n')
            continue;
        size_t n = i - start - (i > start && p[i - 1] == '\r');
        start = i + 1;
        if (n == 0 && lines > 0)
            return NULL;
        if (n != 0 && ++lines > KFD_H1_HEAD_LINES)
            return "lines";
    }
    return len > KFD_H1_HEAD_MAX ? "bytes" : NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The guard sees the socket's input buffer, which is not NUL-terminated: an exact copy. */
    char *copy = malloc(size ? size : 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    size_t lines;
    const char *got = kfd_h1_head_check(copy, size, &lines), *want = reference(data, size);
    if ((got == NULL) != (want == NULL) || (got != NULL && strcmp(got, want) != 0) || lines > KFD_H1_HEAD_LINES + 1)
        abort();
    free(copy);
    return 0;
}
