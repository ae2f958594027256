/* Connect protocol (unary) error codes: names, HTTP statuses and the JSON error body.
 * Shared by keyfleetd (which writes them) and the clients (which read them). */
#ifndef KF_CONNECT_H
#define KF_CONNECT_H

#include <stddef.h>

typedef enum {
    KF_CONNECT_OK = 0,
    KF_CONNECT_CANCELED,
    KF_CONNECT_UNKNOWN,
    KF_CONNECT_INVALID_ARGUMENT,
    KF_CONNECT_DEADLINE_EXCEEDED,
    KF_CONNECT_NOT_FOUND,
    KF_CONNECT_ALREADY_EXISTS,
    KF_CONNECT_PERMISSION_DENIED,
    KF_CONNECT_RESOURCE_EXHAUSTED,
    KF_CONNECT_FAILED_PRECONDITION,
    KF_CONNECT_ABORTED,
    KF_CONNECT_OUT_OF_RANGE,
    KF_CONNECT_UNIMPLEMENTED,
    KF_CONNECT_INTERNAL,
    KF_CONNECT_UNAVAILABLE,
    KF_CONNECT_DATA_LOSS,
    KF_CONNECT_UNAUTHENTICATED,
    KF_CONNECT_CODE_COUNT
} kf_connect_code;

const char *kf_connect_code_name(kf_connect_code code);
int kf_connect_code_http_status(kf_connect_code code);
/* Returns the code for a name, or KF_CONNECT_UNKNOWN. */
kf_connect_code kf_connect_code_parse(const char *name);
/* The code a client infers from an HTTP status when the body names none (Connect spec). */
kf_connect_code kf_connect_code_from_http(int status);
/* Maps a negative errno from keyfleet code to the Connect code a caller should see. */
kf_connect_code kf_connect_code_from_errno(int err);

/* The JSON error body {"code":"...","message":"..."}; returns a malloc'ed string or NULL. */
char *kf_connect_error_json(kf_connect_code code, const char *message);
/* Parses an error body. Returns 0 and fills code and message (malloc'ed), or -EINVAL. */
int kf_connect_error_parse(const char *body, size_t len, kf_connect_code *ret_code, char **ret_message);

#endif
