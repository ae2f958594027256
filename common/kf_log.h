/* Logging: one line per event on stderr, as key=value fields:
 *   ts=2026-11-23T10:00:00.123Z level=info event=listening addr=127.0.0.1:7443
 * Callers pass the fields after the event name as a printf format. Values that may hold spaces or
 * come from the network go through kf_log_q(), which quotes and escapes them. Never pass a secret. */
#ifndef KF_LOG_H
#define KF_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { KF_LOG_DEBUG = 0, KF_LOG_INFO, KF_LOG_WARN, KF_LOG_ERROR } kf_log_level;

void kf_log_set_level(kf_log_level level);
/* Parses "debug", "info", "warn" or "error"; returns 0 or -EINVAL. */
int kf_log_level_parse(const char *s, kf_log_level *ret);
void kf_log_set_program(const char *name);

/* A daemon that logs per request turns buffering on and calls kf_log_flush() once per loop turn:
 * the lines of a turn then cost one write(2) instead of one each. Lines stay whole; warn and error
 * lines, a full buffer (64 KiB) and exit flush at once; kf_crash writes what is left. */
void kf_log_set_buffered(bool on);
void kf_log_flush(void);
/* For a fatal-signal handler: writes the buffer without taking its lock (async-signal-safe). */
void kf_log_flush_from_signal(void);

/* Sends each line elsewhere instead of stderr (NULL: back to stderr). The sink gets the level and
 * the line from "event=" on, without timestamp, program or newline. For code that runs inside
 * another program, such as the libcryptsetup token plugin, whose lines go to crypt_log. */
typedef void (*kf_log_sink)(kf_log_level level, const char *line, void *userdata);
void kf_log_set_sink(kf_log_sink sink, void *userdata);

void kf_log(kf_log_level level, const char *event, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define kf_log_debug(ev, ...) kf_log(KF_LOG_DEBUG, ev, __VA_ARGS__)
#define kf_log_info(ev, ...) kf_log(KF_LOG_INFO, ev, __VA_ARGS__)
#define kf_log_warn(ev, ...) kf_log(KF_LOG_WARN, ev, __VA_ARGS__)
#define kf_log_error(ev, ...) kf_log(KF_LOG_ERROR, ev, __VA_ARGS__)

/* Quotes s for a log value into buf: "..." with \" \\ and \xNN escapes, cut to fit. Returns buf. */
const char *kf_log_quote(char *buf, size_t size, const char *s, size_t len);

/* Convenience for one value per statement: a per-thread rotating set of buffers. */
const char *kf_log_q(const char *s);

#endif
