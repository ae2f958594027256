#include "kf_log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static kf_log_level min_level = KF_LOG_INFO;
static const char *program = "keyfleet";

#define BUFFER_BYTES (64 * 1024)
static pthread_mutex_t buffer_lock = PTHREAD_MUTEX_INITIALIZER;
static char buffer[BUFFER_BYTES];
static volatile size_t buffered_len;
static bool buffering;

void kf_log_set_level(kf_log_level level) { min_level = level; }

static void write_all(const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* stderr is gone: nothing better to do with a log line */
        p += n;
        len -= (size_t)n;
    }
}

static void flush_locked(void)
{
    write_all(buffer, buffered_len);
    buffered_len = 0;
}

void kf_log_flush(void)
{
    pthread_mutex_lock(&buffer_lock);
    flush_locked();
    pthread_mutex_unlock(&buffer_lock);
}

void kf_log_flush_from_signal(void)
{
    size_t len = buffered_len;
    if (len <= BUFFER_BYTES)
        write_all(buffer, len);
    buffered_len = 0;
}

void kf_log_set_buffered(bool on)
{
    static bool registered;
    if (on && !registered) {
        registered = true;
        atexit(kf_log_flush);
    }
    kf_log_flush();
    buffering = on;
}
void kf_log_set_program(const char *name) { program = name; }

static kf_log_sink sink;
static void *sink_userdata;

void kf_log_set_sink(kf_log_sink fn, void *userdata)
{
    sink = fn;
    sink_userdata = userdata;
}

int kf_log_level_parse(const char *s, kf_log_level *ret)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(s, names[i]) == 0) {
            *ret = (kf_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *kf_log_quote(char *buf, size_t size, const char *s, size_t len)
{
    size_t o = 0;
    if (size < 3) {
        if (size > 0)
            buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char tmp[5];
        size_t n;
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            n = 2;
        } else if (c < 0x20 || c >= 0x7f) {
            snprintf(tmp, sizeof(tmp), "\\x%02x", c);
            n = 4;
        } else {
            tmp[0] = (char)c;
            n = 1;
        }
        if (o + n + 2 > size)
            break;
        memcpy(buf + o, tmp, n);
        o += n;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

const char *kf_log_q(const char *s)
{
    static _Thread_local char bufs[4][512];
    static _Thread_local unsigned next;
    char *b = bufs[next++ % 4];
    if (s == NULL)
        s = "";
    return kf_log_quote(b, sizeof(bufs[0]), s, strlen(s));
}

void kf_log(kf_log_level level, const char *event, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    if (level < min_level)
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ prog=%s level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, program, names[level], event);
    if (n < 0)
        return;
    size_t o = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    if (fmt != NULL && fmt[0] != '\0' && o + 2 < sizeof(line)) {
        line[o++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + o, sizeof(line) - o, fmt, ap);
        va_end(ap);
        if (m > 0)
            o += (size_t)m < sizeof(line) - o ? (size_t)m : sizeof(line) - o - 1;
    }
    /* One event, one line, whatever the fields held. */
    for (size_t i = 0; i < o; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    if (sink != NULL) {
        line[o] = '\0';
        const char *ev = strstr(line, " event=");
        sink(level, ev != NULL ? ev + 1 : line, sink_userdata);
        return;
    }
    line[o++] = '\n';
    if (!buffering) {
        write_all(line, o);
        return;
    }
    pthread_mutex_lock(&buffer_lock);
    if (buffered_len + o > BUFFER_BYTES)
        flush_locked();
    memcpy(buffer + buffered_len, line, o);
    buffered_len += o;
    if (level >= KF_LOG_WARN)
        flush_locked();
    pthread_mutex_unlock(&buffer_lock);
}
