#include "kf_heap.h"

#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older glibc headers lack it */
#endif

#define MMAP_THRESHOLD (8u << 20)

void kf_heap_reserve(size_t bytes)
{
    if (bytes == 0 || bytes >= MMAP_THRESHOLD)
        return;
    mallopt(M_ARENA_MAX, 1);
    mallopt(M_MMAP_THRESHOLD, (int)MMAP_THRESHOLD);
    mallopt(M_TRIM_THRESHOLD, (int)(4 * MMAP_THRESHOLD));
    /* Grow the main arena by bytes, then hand the block back: it stays in the arena (no trim). */
    uint8_t *p = malloc(bytes);
    if (p == NULL)
        return;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t start = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t end = (uintptr_t)sbrk(0);
    if (end > start && end - start <= 2 * (uintptr_t)bytes)
        (void)madvise((void *)start, end - start, MADV_POPULATE_WRITE);
    free(p);
}
