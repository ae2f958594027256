/* Running helper commands (zfs) without a shell: arguments as a vector, secrets only on stdin. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "volume.h"

#define OUT_MAX (1u << 20)

int kfa_run(char *const argv[], const uint8_t *input, size_t input_len, char **ret_out, char *errbuf,
            size_t errbuf_size)
{
    int in[2], out[2], errp[2];
    if (pipe2(in, O_CLOEXEC) != 0)
        return -errno;
    if (pipe2(out, O_CLOEXEC) != 0) {
        close(in[0]);
        close(in[1]);
        return -errno;
    }
    if (pipe2(errp, O_CLOEXEC) != 0) {
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        return -errno;
    }
    pid_t pid = fork();
    if (pid < 0) {
        int e = -errno;
        close(in[0]), close(in[1]), close(out[0]), close(out[1]), close(errp[0]), close(errp[1]);
        return e;
    }
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(errp[1], 2);
        execv(argv[0], argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    close(errp[1]);
    signal(SIGPIPE, SIG_IGN);
    size_t off = 0;
    while (off < input_len) {
        ssize_t n = write(in[1], input + off, input_len - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(in[1]);
    char *buf = malloc(OUT_MAX + 1);
    size_t len = 0, elen = 0;
    struct pollfd fds[2] = {{out[0], POLLIN, 0}, {errp[0], POLLIN, 0}};
    int open_fds = 2;
    while (open_fds > 0 && poll(fds, 2, -1) > 0) {
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char tmp[4096];
            ssize_t n = read(fds[i].fd, tmp, sizeof(tmp));
            if (n <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            if (i == 0 && buf != NULL && len + (size_t)n <= OUT_MAX) {
                memcpy(buf + len, tmp, (size_t)n);
                len += (size_t)n;
            } else if (i == 1 && errbuf != NULL && elen + 1 < errbuf_size) {
                size_t c = (size_t)n < errbuf_size - elen - 1 ? (size_t)n : errbuf_size - elen - 1;
                memcpy(errbuf + elen, tmp, c);
                elen += c;
            }
        }
    }
    if (errbuf != NULL && errbuf_size > 0) {
        errbuf[elen] = '\0';
        char *nl = strchr(errbuf, '\n');
        if (nl != NULL)
            *nl = '\0';
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (buf != NULL)
        buf[len] = '\0';
    if (ret_out != NULL)
        *ret_out = buf;
    else
        free(buf);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return -EINTR;
}
