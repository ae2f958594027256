/* Not klib's khash.h: just enough of its names for <h2o/http2_internal.h> (h2o 2.2.5) to declare
 * h2o_http2_conn_t, which front/h2guard.c reads. h2o's stream table is only ever held by pointer
 * there, so its type can stay incomplete; the one inline function that would look a stream up
 * (h2o_http2_conn_get_stream) finds nothing with these definitions and must not be called.
 * Only front/h2guard.c has this folder on its include path (coordinator/CMakeLists.txt). */
#ifndef KFD_H2O_KHASH_STUB_H
#define KFD_H2O_KHASH_STUB_H

typedef unsigned int khint_t;
typedef khint_t khiter_t;

#define khash_t(name) kh_##name##_t
#define KHASH_MAP_INIT_INT64(name, khval_t) typedef struct kh_##name##_s kh_##name##_t;
#define kh_get(name, h, k) ((void)(h), (void)(k), (khiter_t)0)
#define kh_end(h) ((void)(h), (khiter_t)0)
#define kh_val(h, x) ((void)(h), (void)(x), NULL)

#endif
