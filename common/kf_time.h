/* The monotonic clock in milliseconds, for deadlines and intervals (never for timestamps). */
#ifndef KF_TIME_H
#define KF_TIME_H

#include <stdint.h>

uint64_t kf_monotonic_ms(void);
/* CPU time this thread has used, in milliseconds: what a computation costs, whatever else the
 * machine is doing meanwhile. */
uint64_t kf_thread_cpu_ms(void);

#endif
