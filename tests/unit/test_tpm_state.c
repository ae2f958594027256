/* The TPM state rule (coordinator/core/tpm_state.c, review rev17 A1): each rule at its edge, the
 * value just inside allowed and the one just outside refused, so a rule that is off by one, or
 * missing, fails here. tests/integration/agent_tpm_attest.sh shows it with two swtpm run from one
 * copied state. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/tpm_state.h"

#define AT 1800000000
#define CLOCK 5000000000ull

static kfd_tpm_state rec(void)
{
    return (kfd_tpm_state){.has = true, .reset_count = 7, .restart_count = 2, .has_clock = true, .clock = CLOCK,
                           .safe = true, .at = AT};
}

static kfd_tpm_verdict check(uint32_t reset, uint32_t restart, uint64_t clock, bool safe, int64_t now)
{
    kfd_tpm_state r = rec();
    kf_tpm_clock q = {.clock = clock, .reset_count = reset, .restart_count = restart, .safe = safe};
    char why[300];
    kfd_tpm_verdict v = kfd_tpm_state_check(&r, &q, now, why, sizeof(why));
    assert_true((v == KFD_TPM_STATE_OK) == (why[0] == '\0'));
    return v;
}

static void test_nothing_recorded(void **state)
{
    (void)state;
    kfd_tpm_state r = {0};
    kf_tpm_clock q = {.clock = 1, .reset_count = 0, .restart_count = 0, .safe = true};
    assert_int_equal(kfd_tpm_state_check(&r, &q, AT, NULL, 0), KFD_TPM_STATE_OK);
}

static void test_counters(void **state)
{
    (void)state;
    assert_int_equal(check(6, 9, CLOCK + 1000, true, AT + 10), KFD_TPM_STATE_COUNTERS_BACK);
    assert_int_equal(check(7, 1, CLOCK + 1000, true, AT + 10), KFD_TPM_STATE_COUNTERS_BACK);
    assert_int_equal(check(7, 2, CLOCK + 1000, true, AT + 10), KFD_TPM_STATE_OK);
    assert_int_equal(check(7, 3, CLOCK + 1000, true, AT + 10), KFD_TPM_STATE_OK);
    assert_int_equal(check(8, 0, CLOCK + 1000, true, AT + 10), KFD_TPM_STATE_OK);
}

/* Rule 2: within one reset/restart the clock never goes back, safe or not. */
static void test_same_counters_clock_back(void **state)
{
    (void)state;
    assert_int_equal(check(7, 2, CLOCK - 1, true, AT + 10), KFD_TPM_STATE_CLOCK_BACK);
    assert_int_equal(check(7, 2, CLOCK - 1, false, AT + 10), KFD_TPM_STATE_CLOCK_BACK);
    assert_int_equal(check(7, 2, CLOCK, true, AT + 10), KFD_TPM_STATE_OK);
}

/* Rule 3: across a reboot, back only by what a power loss loses (safe or not: libtpms says YES). */
static void test_reboot_clock_back(void **state)
{
    (void)state;
    assert_int_equal(check(8, 0, CLOCK, true, AT + 10), KFD_TPM_STATE_OK);
    assert_int_equal(check(8, 0, CLOCK - KF_TPM_CLOCK_NV_SLACK_MS, true, AT + 10), KFD_TPM_STATE_OK);
    assert_int_equal(check(8, 0, CLOCK - KF_TPM_CLOCK_NV_SLACK_MS, false, AT + 10), KFD_TPM_STATE_OK);
    assert_int_equal(check(8, 0, CLOCK - KF_TPM_CLOCK_NV_SLACK_MS - 1, false, AT + 10), KFD_TPM_STATE_CLOCK_BACK);
    assert_int_equal(check(8, 0, CLOCK - KF_TPM_CLOCK_NV_SLACK_MS - 1, true, AT + 10), KFD_TPM_STATE_CLOCK_BACK);
    assert_int_equal(check(7, 3, CLOCK - KF_TPM_CLOCK_NV_SLACK_MS - 1, false, AT + 10), KFD_TPM_STATE_CLOCK_BACK);
}

/* Rule 4: at most 5/4 of the time elapsed plus the slack ahead, at any counters. */
static void test_clock_jump(void **state)
{
    (void)state;
    uint64_t limit = 1000u * 1000u / 4u * 5u + KF_TPM_CLOCK_JUMP_SLACK_MS; /* 1000 s elapsed */
    assert_int_equal(check(7, 2, CLOCK + limit, true, AT + 1000), KFD_TPM_STATE_OK);
    assert_int_equal(check(7, 2, CLOCK + limit + 1, true, AT + 1000), KFD_TPM_STATE_CLOCK_JUMP);
    assert_int_equal(check(9, 0, CLOCK + limit + 1, true, AT + 1000), KFD_TPM_STATE_CLOCK_JUMP);
    /* a coordinator clock behind the record's time counts as no time elapsed */
    assert_int_equal(check(7, 2, CLOCK + KF_TPM_CLOCK_JUMP_SLACK_MS, true, AT - 50), KFD_TPM_STATE_OK);
    assert_int_equal(check(7, 2, CLOCK + KF_TPM_CLOCK_JUMP_SLACK_MS + 1, true, AT - 50), KFD_TPM_STATE_CLOCK_JUMP);
}

/* A node recorded before the clock was: counters only. */
static void test_no_recorded_clock(void **state)
{
    (void)state;
    kfd_tpm_state r = rec();
    r.has_clock = false;
    kf_tpm_clock q = {.clock = 0, .reset_count = 7, .restart_count = 2, .safe = true};
    assert_int_equal(kfd_tpm_state_check(&r, &q, AT, NULL, 0), KFD_TPM_STATE_OK);
    q.restart_count = 1;
    assert_int_equal(kfd_tpm_state_check(&r, &q, AT, NULL, 0), KFD_TPM_STATE_COUNTERS_BACK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_recorded),   cmocka_unit_test(test_counters),
        cmocka_unit_test(test_same_counters_clock_back), cmocka_unit_test(test_reboot_clock_back),
        cmocka_unit_test(test_clock_jump),         cmocka_unit_test(test_no_recorded_clock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
