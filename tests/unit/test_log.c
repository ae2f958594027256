/* Logging: one line per event, and buffered mode (keyfleetd): info lines wait for kf_log_flush,
 * a warn line writes everything gathered so far, in order; unbuffered mode writes at once. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "kf_log.h"

#include "kf_test_tmpdir.h"

static int saved_stderr = -1;
static char path[128];

/* stderr goes to a file in the test's scratch folder, read back by written(). */
static int capture(void **state)
{
    if (tmpdir_setup(state) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/stderr.log", tmpdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    saved_stderr = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    return 0;
}

static int release(void **state)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    return tmpdir_teardown(state);
}

/* What has reached the file so far. */
static char *written(void)
{
    static char buf[1 << 20];
    int fd = open(path, O_RDONLY);
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static void test_unbuffered_writes_at_once(void **state)
{
    (void)state;
    kf_log_set_buffered(false);
    kf_log_info("first", "n=%d note=%s", 1, kf_log_q("two\nlines"));
    char *w = written();
    assert_non_null(strstr(w, "level=info event=first n=1 note=\"two\\x0alines\"\n"));
    assert_int_equal(count(w, "\n"), 1);
}

static void test_buffered_waits_for_flush(void **state)
{
    (void)state;
    kf_log_set_buffered(true);
    size_t before = strlen(written());
    for (int i = 0; i < 20; i++)
        kf_log_info("released", "i=%d", i);
    assert_int_equal(strlen(written()), before); /* nothing yet */
    kf_log_flush();
    char *w = written();
    assert_int_equal(count(w, "event=released"), 20);
    assert_true(strstr(w, "event=released i=0\n") < strstr(w, "event=released i=19\n"));

    kf_log_info("quiet", "k=1");
    kf_log_warn("loud", "k=2"); /* writes both, in order */
    w = written();
    assert_non_null(strstr(w, "event=quiet k=1\n"));
    assert_true(strstr(w, "event=quiet") < strstr(w, "event=loud"));

    /* More than the buffer holds: written as it fills, nothing lost, lines whole. */
    char big[1500];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    for (int i = 0; i < 100; i++)
        kf_log_info("big", "i=%d v=%s", i, big);
    kf_log_set_buffered(false); /* flushes */
    w = written();
    assert_int_equal(count(w, "event=big"), 100);
    assert_non_null(strstr(w, "event=big i=99 v=aaaa"));
    const char *p = w;
    for (const char *nl; (nl = strchr(p, '\n')) != NULL; p = nl + 1)
        assert_memory_equal(p, "ts=", 3); /* every line starts as a line */
}

int main(void)
{
    kf_log_set_program("test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unbuffered_writes_at_once),
        cmocka_unit_test(test_buffered_waits_for_flush),
    };
    return cmocka_run_group_tests_name("log", tests, capture, release);
}
