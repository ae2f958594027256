/* Errors: functions return 0 or a negative errno value; where the caller needs to know why,
 * they also fill a kf_err whose message callers can prefix with their own context. */
#ifndef KF_ERR_H
#define KF_ERR_H

#include <stddef.h>

#define KF_ERR_MSG_MAX 512

typedef struct kf_err {
    int code; /* negative errno, 0 when unset */
    char msg[KF_ERR_MSG_MAX];
} kf_err;

/* Sets err (when non-NULL) to code and a formatted message; returns code. */
int kf_err_set(kf_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prefixes the existing message with "context: "; returns err->code (or -EIO if unset). */
int kf_err_wrap(kf_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Adds the pending OpenSSL error queue text to err ("what: reason"), clears the queue; returns code. */
int kf_err_openssl(kf_err *err, int code, const char *what);

void kf_err_clear(kf_err *err);

#endif
