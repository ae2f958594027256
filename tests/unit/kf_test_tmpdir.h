/* A scratch folder per unit-test program: tmpdir_setup makes it, tmpdir_teardown removes it.
 * Include once per test file and pass both to cmocka_run_group_tests_name. */
#ifndef KF_TEST_TMPDIR_H
#define KF_TEST_TMPDIR_H

#include <stdio.h>
#include <stdlib.h>

static char tmpdir[64];

static int tmpdir_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/kf-unit-XXXXXX");
    return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int tmpdir_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

#endif
