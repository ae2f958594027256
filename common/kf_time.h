/* The monotonic clock in milliseconds, for deadlines and intervals (never for timestamps). */
#ifndef KF_TIME_H
#define KF_TIME_H

#include <stdint.h>

uint64_t kf_monotonic_ms(void);

#endif
