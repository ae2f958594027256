/* Scope-bound cleanup, in systemd's style (_cleanup_ in src/basic/macro.h): a variable declared
 *   KF_CLEANUP(kf_secbuf_freep) kf_secbuf *key = kf_secbuf_new(32);
 * is wiped and freed on every way out of its scope, so early returns need no free of their own.
 * The function gets a pointer to the variable; it must accept NULL in it. GCC and Clang. */
#ifndef KF_CLEANUP_H
#define KF_CLEANUP_H

#include <stdlib.h>

#define KF_CLEANUP(f) __attribute__((cleanup(f)))

/* For malloc'ed memory that holds no secret. */
static inline void kf_freep(void *p)
{
    free(*(void **)p);
}

#endif
