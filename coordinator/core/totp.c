#include "core/totp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <liboath/oath.h>

#include "kf_cleanup.h"
#include "kf_secmem.h"
#include "store/store_guard.h"

/* Reads OPERATOR.b32 from dir. Returns 0 with the secret, -ENOENT when there is none, -EINVAL
 * for a file that is not base32, or another negative errno. */
static int load_secret(const char *dir, const char *op, kf_secbuf **ret)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.b32", dir, op);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -ENOENT : -errno;
    kf_secbuf *text = kf_secbuf_new(256);
    ssize_t n = text != NULL ? read(fd, text->data, 255) : -1;
    close(fd);
    while (n > 0 && (text->data[n - 1] == '\n' || text->data[n - 1] == '\r' || text->data[n - 1] == ' '))
        n--;
    if (n <= 0) {
        kf_secbuf_free(text);
        return -EINVAL;
    }
    char *raw = NULL;
    size_t raw_len = 0;
    int rc = oath_base32_decode((const char *)text->data, (size_t)n, &raw, &raw_len);
    kf_secbuf_free(text);
    if (rc != OATH_OK || raw_len == 0) {
        free(raw);
        return -EINVAL;
    }
    kf_secbuf *secret = kf_secbuf_new(raw_len);
    if (secret != NULL)
        memcpy(secret->data, raw, raw_len);
    kf_wipe(raw, raw_len);
    free(raw);
    if (secret == NULL)
        return -ENOMEM;
    *ret = secret;
    return 0;
}

/* 30 s steps, one step either side. 0 with the matched step, or -EPERM. */
static int validate(const kf_secbuf *secret, const char *code, int64_t now, int64_t *ret_step)
{
    int pos = 0;
    uint64_t counter = 0;
    int rc = strlen(code) == 6 ? oath_totp_validate3((const char *)secret->data, secret->len, (time_t)now,
                                                     OATH_TOTP_DEFAULT_TIME_STEP_SIZE, 0, 1, &pos, &counter, code)
                               : OATH_INVALID_OTP;
    if (rc < 0)
        return -EPERM;
    /* The step the code belongs to, so the same code is never accepted twice. */
    *ret_step = (int64_t)counter;
    return 0;
}

int kfd_totp_gate(kfd_store *store, const char *totp_dir, const char *op, const char *code, bool required,
                  int64_t now, int64_t *ret_step, char *why, size_t why_size)
{
    *ret_step = 0;
    uint32_t failures = 0;
    int64_t locked_until = 0;
    if (kfd_store_totp_failures(store, op, &failures, &locked_until) != 0) {
        snprintf(why, why_size, "state store unavailable");
        return -EIO;
    }
    if (locked_until > now) {
        snprintf(why, why_size, "operator %s is locked out of approving for %lld s after %d wrong TOTP codes", op,
                 (long long)(locked_until - now), KFD_TOTP_MAX_FAILURES);
        return -EACCES;
    }
    if (totp_dir == NULL) {
        if (!required)
            return 0;
        snprintf(why, why_size, "this approval requires TOTP and the coordinator has no approvals.totp_dir");
        return -EACCES;
    }
    KF_CLEANUP(kf_secbuf_freep) kf_secbuf *secret = NULL;
    int r = load_secret(totp_dir, op, &secret);
    if (r == -ENOENT) {
        /* A missing file must not switch the second factor off. */
        snprintf(why, why_size, "operator %s has no TOTP secret (%s.b32) in the TOTP directory", op, op);
        return -EACCES;
    }
    if (r != 0) {
        snprintf(why, why_size, "TOTP secret of operator %s unreadable", op);
        return -EIO;
    }
    if (code[0] == '\0') {
        snprintf(why, why_size, "a TOTP code is required (--totp)");
        return -EINVAL;
    }
    r = validate(secret, code, now, ret_step);
    if (r != 0)
        snprintf(why, why_size, "wrong TOTP code (%u of %d in a row before a %d s lockout)", failures + 1,
                 KFD_TOTP_MAX_FAILURES, KFD_TOTP_LOCKOUT_S);
    return r;
}
