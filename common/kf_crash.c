#include "kf_crash.h"
#include "kf_log.h"

#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define KF_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KF_SANITIZED 1
#endif
#endif

#ifndef KF_SANITIZED
static char crash_line[160];
static size_t crash_prefix_len;

static void write_all(const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

/* Only async-signal-safe calls, apart from backtrace(), which was loaded at install time. */
static void on_fatal(int sig)
{
    char num[16];
    size_t n = 0;
    for (int v = sig; n == 0 || v > 0; v /= 10)
        num[sizeof(num) - 1 - n++] = (char)('0' + v % 10);
    kf_log_flush_from_signal(); /* the lines before the crash first */
    write_all(crash_line, crash_prefix_len);
    write_all(num + sizeof(num) - n, n);
    write_all("\n", 1);
    void *frames[48];
    int depth = backtrace(frames, 48);
    backtrace_symbols_fd(frames, depth, STDERR_FILENO);
    raise(sig); /* SA_RESETHAND: the default action now */
}

void kf_crash_handler_install(const char *program)
{
    snprintf(crash_line, sizeof(crash_line), "prog=%s level=error event=crashed signal=", program);
    crash_prefix_len = strlen(crash_line);
    void *warm[1];
    backtrace(warm, 1); /* loads libgcc_s now, not inside the handler */
    static char altstack[64 * 1024];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack)};
    sigaltstack(&ss, NULL); /* a stack overflow still gets its line */
    struct sigaction sa = {.sa_handler = on_fatal, .sa_flags = SA_RESETHAND | SA_ONSTACK | SA_NODEFER};
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaction(sigs[i], &sa, NULL);
}
#else
void kf_crash_handler_install(const char *program) { (void)program; }
#endif
