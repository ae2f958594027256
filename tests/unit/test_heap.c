/* kf_heap_reserve: after it, fresh heap memory (libcryptsetup-sized blocks included, and from
 * any thread) is touched without page faults. Counted with getrusage's minor faults. Skipped
 * under AddressSanitizer, whose allocator replaces malloc, and on kernels before 5.14. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <cmocka.h>

#include "kf_heap.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define BLOCK (256u << 10) /* libcryptsetup's keyslot buffer for a 512-bit key: 4000 stripes */
#define SLACK 12           /* faults allowed for stack pages and the like */

static long faults(int who)
{
    struct rusage ru;
    getrusage(who, &ru);
    return ru.ru_minflt;
}

/* Touches a fresh block and returns how many faults that took (in this thread). */
static long touch_block(void)
{
    long before = faults(RUSAGE_THREAD);
    uint8_t *p = malloc(BLOCK);
    assert_non_null(p);
    memset(p, 0xa5, BLOCK);
    long n = faults(RUSAGE_THREAD) - before;
    free(p);
    return n;
}

static void *thread_main(void *arg)
{
    *(long *)arg = touch_block();
    return NULL;
}

static int populate_supported(void)
{
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int ok = p != MAP_FAILED && madvise(p, 4096, MADV_POPULATE_WRITE) == 0;
    if (p != MAP_FAILED)
        munmap(p, 4096);
    return ok;
}

static void test_reserved_heap_does_not_fault(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    skip();
#endif
    if (!populate_supported())
        skip();
    kf_heap_reserve(1u << 20);
    /* Without the reserve each block is a fresh mmap: 64 faults. */
    assert_in_range(touch_block(), 0, SLACK);
    assert_in_range(touch_block(), 0, SLACK);
    /* Other threads allocate from the same, populated arena. */
    long in_thread = -1;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, thread_main, &in_thread), 0);
    pthread_join(th, NULL);
    assert_in_range(in_thread, 0, SLACK);
}

static void test_refuses_silly_sizes(void **state)
{
    (void)state;
    kf_heap_reserve(0);         /* nothing to do */
    kf_heap_reserve(64u << 20); /* above the mmap threshold: ignored, not an abort */
    void *p = malloc(16);
    assert_non_null(p);
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserved_heap_does_not_fault),
        cmocka_unit_test(test_refuses_silly_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
