#include "kf_connect.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

static const struct {
    const char *name;
    int http;
} codes[KF_CONNECT_CODE_COUNT] = {
    [KF_CONNECT_OK] = {"ok", 200},
    [KF_CONNECT_CANCELED] = {"canceled", 499},
    [KF_CONNECT_UNKNOWN] = {"unknown", 500},
    [KF_CONNECT_INVALID_ARGUMENT] = {"invalid_argument", 400},
    [KF_CONNECT_DEADLINE_EXCEEDED] = {"deadline_exceeded", 504},
    [KF_CONNECT_NOT_FOUND] = {"not_found", 404},
    [KF_CONNECT_ALREADY_EXISTS] = {"already_exists", 409},
    [KF_CONNECT_PERMISSION_DENIED] = {"permission_denied", 403},
    [KF_CONNECT_RESOURCE_EXHAUSTED] = {"resource_exhausted", 429},
    [KF_CONNECT_FAILED_PRECONDITION] = {"failed_precondition", 400},
    [KF_CONNECT_ABORTED] = {"aborted", 409},
    [KF_CONNECT_OUT_OF_RANGE] = {"out_of_range", 400},
    [KF_CONNECT_UNIMPLEMENTED] = {"unimplemented", 501},
    [KF_CONNECT_INTERNAL] = {"internal", 500},
    [KF_CONNECT_UNAVAILABLE] = {"unavailable", 503},
    [KF_CONNECT_DATA_LOSS] = {"data_loss", 500},
    [KF_CONNECT_UNAUTHENTICATED] = {"unauthenticated", 401},
};

const char *kf_connect_code_name(kf_connect_code code)
{
    if ((unsigned)code >= KF_CONNECT_CODE_COUNT)
        return "unknown";
    return codes[code].name;
}

int kf_connect_code_http_status(kf_connect_code code)
{
    if ((unsigned)code >= KF_CONNECT_CODE_COUNT)
        return 500;
    return codes[code].http;
}

kf_connect_code kf_connect_code_parse(const char *name)
{
    for (int i = 1; i < KF_CONNECT_CODE_COUNT; i++)
        if (strcmp(codes[i].name, name) == 0)
            return (kf_connect_code)i;
    return KF_CONNECT_UNKNOWN;
}

kf_connect_code kf_connect_code_from_http(int status)
{
    switch (status) {
    case 400:
        return KF_CONNECT_INTERNAL; /* per the Connect spec: a 400 without a code is internal */
    case 401:
        return KF_CONNECT_UNAUTHENTICATED;
    case 403:
        return KF_CONNECT_PERMISSION_DENIED;
    case 404:
        return KF_CONNECT_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return KF_CONNECT_UNAVAILABLE;
    default:
        return KF_CONNECT_UNKNOWN;
    }
}

kf_connect_code kf_connect_code_from_errno(int err)
{
    switch (err) {
    case 0:
        return KF_CONNECT_OK;
    case -EINVAL:
    case -EBADMSG:
    case -EMSGSIZE:
        return KF_CONNECT_INVALID_ARGUMENT;
    case -ENOENT:
        return KF_CONNECT_NOT_FOUND;
    case -EEXIST:
        return KF_CONNECT_ALREADY_EXISTS;
    case -EACCES:
    case -EPERM:
        return KF_CONNECT_PERMISSION_DENIED;
    case -EAGAIN:
    case -EBUSY:
        return KF_CONNECT_RESOURCE_EXHAUSTED;
    case -ETIMEDOUT:
        return KF_CONNECT_DEADLINE_EXCEEDED;
    case -ENOSYS:
    case -EOPNOTSUPP:
        return KF_CONNECT_UNIMPLEMENTED;
    case -EIO:
    case -ENOSPC:
    case -EROFS:
    case -ENOTCONN:
    case -ECONNREFUSED:
    case -EHOSTUNREACH:
        return KF_CONNECT_UNAVAILABLE;
    case -ECANCELED:
        return KF_CONNECT_CANCELED;
    default:
        return KF_CONNECT_INTERNAL;
    }
}

char *kf_connect_error_json(kf_connect_code code, const char *message)
{
    json_t *o = json_pack("{s:s, s:s}", "code", kf_connect_code_name(code), "message", message ? message : "");
    if (o == NULL)
        return NULL;
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    return s;
}

int kf_connect_error_parse(const char *body, size_t len, kf_connect_code *ret_code, char **ret_message)
{
    json_error_t jerr;
    json_t *o = json_loadb(body, len, 0, &jerr);
    if (o == NULL)
        return -EINVAL;
    const char *code = NULL, *message = "";
    int r = -EINVAL;
    if (json_unpack(o, "{s:s, s?:s}", "code", &code, "message", &message) == 0) {
        char *m = strdup(message);
        if (m != NULL) {
            *ret_code = kf_connect_code_parse(code);
            *ret_message = m;
            r = 0;
        } else {
            r = -ENOMEM;
        }
    }
    json_decref(o);
    return r;
}
