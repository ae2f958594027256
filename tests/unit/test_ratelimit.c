/* Token buckets per node (core/ratelimit.c): the burst, the refill, and a node's bucket kept
 * when the fleet has more nodes than the table has slots (review rev26, R8). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/ratelimit.h"

static void test_burst_then_refill(void **state)
{
    (void)state;
    kfd_ratelimit *rl = kfd_ratelimit_new();
    assert_non_null(rl);
    for (int i = 0; i < 3; i++)
        assert_int_equal(kfd_ratelimit_take(rl, "n1", 60, 3, 1000), 0);
    assert_true(kfd_ratelimit_take(rl, "n1", 60, 3, 1000) > 0);
    assert_int_equal(kfd_ratelimit_take(rl, "n2", 60, 3, 1000), 0); /* another node's own bucket */
    assert_int_equal(kfd_ratelimit_take(rl, "n1", 60, 3, 2001), 0); /* one token a second */
    assert_true(kfd_ratelimit_take(rl, "n1", 60, 3, 2001) > 0);
    assert_int_equal(kfd_ratelimit_take(rl, "n1", 0, 0, 2001), 0); /* no limit */
    kfd_ratelimit_free(rl);
}

static uint32_t home(const char *node)
{
    uint32_t h = 2166136261u;
    for (const char *p = node; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return h % 8192;
}

/* 9000 nodes seen (more than the table's 8192 slots), then two nodes with the same home slot
 * taking turns: each keeps its own bucket, so each gets its burst and then waits. The table
 * kept every node it had seen, and these two took the home slot from each other at every call,
 * each finding a full bucket: 10 of 10 allowed. */
static void test_more_nodes_than_slots(void **state)
{
    (void)state;
    kfd_ratelimit *rl = kfd_ratelimit_new();
    assert_non_null(rl);
    char name[32];
    for (int i = 0; i < 9000; i++) {
        snprintf(name, sizeof(name), "fleet-%d", i);
        assert_int_equal(kfd_ratelimit_take(rl, name, 60, 1, 0), 0);
    }
    char other[32] = "";
    for (int i = 0; i < 1000000 && other[0] == '\0'; i++) {
        snprintf(name, sizeof(name), "other-%d", i);
        if (home(name) == home("target"))
            snprintf(other, sizeof(other), "%s", name);
    }
    assert_true(other[0] != '\0');
    int target_allowed = 0, other_allowed = 0;
    for (int i = 0; i < 10; i++) { /* at 5 s every fleet bucket is full again; these refill once a minute */
        target_allowed += kfd_ratelimit_take(rl, "target", 1, 2, 5000 + i) == 0;
        other_allowed += kfd_ratelimit_take(rl, other, 1, 2, 5000 + i) == 0;
    }
    assert_int_equal(target_allowed, 2);
    assert_int_equal(other_allowed, 2);
    kfd_ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refill),
        cmocka_unit_test(test_more_nodes_than_slots),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
