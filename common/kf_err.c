#include "kf_err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

int kf_err_set(kf_err *err, int code, const char *fmt, ...)
{
    if (err == NULL)
        return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return code;
}

int kf_err_wrap(kf_err *err, const char *fmt, ...)
{
    if (err == NULL)
        return -EIO;
    char prefix[KF_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    /* Shift the old message right and put the prefix in front; truncation is acceptable. */
    size_t plen = strnlen(prefix, sizeof(prefix) - 1);
    size_t olen = strnlen(err->msg, sizeof(err->msg) - 1);
    if (plen + 2 >= sizeof(err->msg))
        plen = sizeof(err->msg) - 3;
    size_t keep = olen < sizeof(err->msg) - plen - 3 ? olen : sizeof(err->msg) - plen - 3;
    memmove(err->msg + plen + 2, err->msg, keep);
    memcpy(err->msg, prefix, plen);
    err->msg[plen] = ':';
    err->msg[plen + 1] = ' ';
    err->msg[plen + 2 + keep] = '\0';
    if (err->code == 0)
        err->code = -EIO;
    return err->code;
}

int kf_err_openssl(kf_err *err, int code, const char *what)
{
    char reason[256] = "no detail";
    unsigned long e = ERR_peek_last_error();
    if (e != 0)
        ERR_error_string_n(e, reason, sizeof(reason));
    ERR_clear_error();
    return kf_err_set(err, code, "%s: %s", what, reason);
}

void kf_err_clear(kf_err *err)
{
    if (err != NULL) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}
