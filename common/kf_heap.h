/* Start-up tuning of malloc for short-lived processes (the agent at boot). */
#ifndef KF_HEAP_H
#define KF_HEAP_H

#include <stddef.h>

/* Makes every thread allocate from one arena that keeps its memory, serves requests up to
 * 8 MiB from it (libcryptsetup's 256 KiB keyslot buffers included), and grows it now by bytes,
 * populated with a single madvise(MADV_POPULATE_WRITE). First touches of fresh heap pages then
 * cost no page faults: the agent took about 280 of its 680 faults there, and a fault costs
 * 12 us on virtual machines like the project's (docs/performance.md). Best effort: on kernels
 * before 5.14 the pages are simply faulted in later. Call first thing in main. */
void kf_heap_reserve(size_t bytes);

#endif
