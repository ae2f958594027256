#include "kf_time.h"

#include <time.h>

static uint64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t kf_monotonic_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

uint64_t kf_thread_cpu_ms(void) { return clock_ms(CLOCK_THREAD_CPUTIME_ID); }
