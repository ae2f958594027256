/* TOTP codes for keyfleetctl, read from stdin (--totp -) or a file descriptor (--totp-fd N)
 * rather than argv, where any local user sees them in ps while the code is still valid. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"

/* One line of at most 16 characters from fd, without its newline. */
static int read_line(int fd, char out[KFCTL_TOTP_MAX + 1])
{
    size_t n = 0;
    for (;;) {
        char ch;
        ssize_t r = read(fd, &ch, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || ch == '\n')
            break;
        if (ch == '\r')
            continue;
        if (n == KFCTL_TOTP_MAX)
            return -EINVAL;
        out[n++] = ch;
    }
    out[n] = '\0';
    return n > 0 ? 0 : -ENODATA;
}

int kfctl_totp_read(const char *arg, const char *fd_arg, char out[KFCTL_TOTP_MAX + 1])
{
    out[0] = '\0';
    int fd = -1;
    if (fd_arg != NULL) {
        char *end = NULL;
        long v = strtol(fd_arg, &end, 10);
        if (end == fd_arg || *end != '\0' || v < 0 || v > 1023) {
            fprintf(stderr, "keyfleetctl: --totp-fd takes a file descriptor number\n");
            return -EINVAL;
        }
        fd = (int)v;
    } else if (arg != NULL && strcmp(arg, "-") == 0) {
        fd = STDIN_FILENO;
    } else if (arg != NULL) {
        fprintf(stderr, "keyfleetctl: --totp takes '-' (the code on stdin) or use --totp-fd N: a code in the "
                        "command line is visible to every local user\n");
        return -EINVAL;
    } else {
        return 0;
    }
    if (fd == STDIN_FILENO && isatty(fd))
        fprintf(stderr, "TOTP code: ");
    int r = read_line(fd, out);
    if (r != 0)
        fprintf(stderr, "keyfleetctl: no TOTP code on %s\n", fd_arg != NULL ? "--totp-fd" : "stdin");
    return r;
}
