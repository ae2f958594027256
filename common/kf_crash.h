/* A last log line when a process dies of a fatal signal: keyfleetd is not dumpable (no core
 * files, as they would hold keys), so without this a crash leaves no trace at all. */
#ifndef KF_CRASH_H
#define KF_CRASH_H

/* For SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT: writes
 *   prog=P level=error event=crashed signal=N
 * and a backtrace (addresses and symbols only, no memory contents) to stderr, then dies of the
 * same signal. Does nothing in sanitizer builds, whose own reports say more. */
void kf_crash_handler_install(const char *program);

#endif
