/* Small fixed-size secrets (a connection's sealing state) packed into locked, non-dumpable
 * chunks from kf_secbuf, so that ten thousand connections do not each lock a page of their own.
 * Objects are zeroed when handed out and wiped when given back. Thread-safe. */
#ifndef KF_SECSLAB_H
#define KF_SECSLAB_H

#include <stddef.h>

typedef struct kf_secslab kf_secslab;

/* obj_size is rounded up to 16 bytes; at most max_objs objects are live at once. NULL on ENOMEM. */
kf_secslab *kf_secslab_new(size_t obj_size, size_t max_objs);
/* A zeroed object, or NULL when max_objs are live (or memory ran out): callers fall back. */
void *kf_secslab_alloc(kf_secslab *s);
/* Wipes p and keeps it for the next alloc. NULL is allowed. */
void kf_secslab_free(kf_secslab *s, void *p);
/* Objects handed out now. */
size_t kf_secslab_live(const kf_secslab *s);
/* Frees every chunk (live objects included, wiped). NULL is allowed. */
void kf_secslab_destroy(kf_secslab *s);

#endif
