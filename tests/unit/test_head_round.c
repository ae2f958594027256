/* The tally of a new leader's audit-head confirmation (core/head_round.c; docs/audit.md). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "core/head_round.h"
#include "store/store_audit.h"

static kfd_audit_head own = {.seq = 5};
static kfd_audit_head other = {.seq = 5};

static Keyfleet__V1__AuditHeadResponse answer(const kfd_audit_head *h)
{
    Keyfleet__V1__AuditHeadResponse r = KEYFLEET__V1__AUDIT_HEAD_RESPONSE__INIT;
    r.known = true;
    r.seq = h->seq;
    r.root = (ProtobufCBinaryData){sizeof(h->root), (uint8_t *)h->root};
    r.chain = (ProtobufCBinaryData){sizeof(h->chain), (uint8_t *)h->chain};
    return r;
}

static void setup_heads(void)
{
    memset(own.root, 1, sizeof(own.root));
    memset(own.chain, 2, sizeof(own.chain));
    memset(other.root, 3, sizeof(other.root));
    memset(other.chain, 4, sizeof(other.chain));
}

static void test_majority_decides(void **state)
{
    (void)state;
    setup_heads();
    kfd_head_round r = {0};
    kfd_head_tag t = kfd_head_round_pass(&r, 3, 77, 3, &own);
    assert_int_equal(kfd_head_round_verdict(&r), KFD_HEAD_UNDECIDED);
    Keyfleet__V1__AuditHeadResponse same = answer(&own), diff = answer(&other);
    assert_int_equal(kfd_head_round_count(&r, t, &same), KFD_HEAD_AGREES);
    assert_int_equal(kfd_head_round_verdict(&r), KFD_HEAD_CONFIRMED);

    t = kfd_head_round_pass(&r, 3, 78, 3, &own);
    assert_int_equal(kfd_head_round_count(&r, t, &diff), KFD_HEAD_DIFFERS);
    assert_int_equal(kfd_head_round_verdict(&r), KFD_HEAD_UNDECIDED);
    assert_int_equal(kfd_head_round_count(&r, t, &diff), KFD_HEAD_DIFFERS);
    assert_int_equal(kfd_head_round_verdict(&r), KFD_HEAD_OUTVOTED);
}

/* Review of #17: one peer's "vouched" answer does not decide; two of three do. */
static void test_one_vouched_answer_is_not_enough(void **state)
{
    (void)state;
    setup_heads();
    kfd_head_round r = {0};
    kfd_head_tag t = kfd_head_round_pass(&r, 3, 77, 3, &own);
    Keyfleet__V1__AuditHeadResponse diff = answer(&other);
    diff.vouched = true;
    assert_int_equal(kfd_head_round_count(&r, t, &diff), KFD_HEAD_DIFFERS);
    assert_int_equal(kfd_head_round_verdict(&r), KFD_HEAD_UNDECIDED);
    /* Five voters: two vouched disagreements are still a minority. */
    t = kfd_head_round_pass(&r, 3, 78, 5, &own);
    kfd_head_round_count(&r, t, &diff);
    kfd_head_round_count(&r, t, &diff);
    assert_int_equal(kfd_head_round_verdict(&r), KFD_HEAD_UNDECIDED);
    kfd_head_round_count(&r, t, &diff);
    assert_int_equal(kfd_head_round_verdict(&r), KFD_HEAD_OUTVOTED);
}

/* Review of #17: a late answer to an earlier pass, check or term counts for nothing. */
static void test_stale_answers_ignored(void **state)
{
    (void)state;
    setup_heads();
    kfd_head_round r = {0};
    Keyfleet__V1__AuditHeadResponse diff = answer(&other);
    kfd_head_tag old_term = kfd_head_round_pass(&r, 3, 77, 3, &own);
    kfd_head_tag old_round = kfd_head_round_pass(&r, 4, 90, 3, &own);
    kfd_head_tag old_pass = kfd_head_round_pass(&r, 4, 91, 3, &own);
    kfd_head_tag t = kfd_head_round_pass(&r, 4, 91, 3, &own);
    assert_int_equal(t.pass, old_pass.pass + 1);
    assert_int_equal(kfd_head_round_count(&r, old_term, &diff), KFD_HEAD_IGNORED);
    assert_int_equal(kfd_head_round_count(&r, old_round, &diff), KFD_HEAD_IGNORED);
    assert_int_equal(kfd_head_round_count(&r, old_pass, &diff), KFD_HEAD_IGNORED);
    assert_int_equal(r.disagree, 0);
    assert_int_equal(kfd_head_round_verdict(&r), KFD_HEAD_UNDECIDED);
    assert_int_equal(kfd_head_round_count(&r, t, &diff), KFD_HEAD_DIFFERS);
}

/* Answers that are no evidence: none, unknown, from a diverged replica, or from one whose log is
 * a snapshot it installed (it would only echo the leader that sent it). */
static void test_non_witnesses_ignored(void **state)
{
    (void)state;
    setup_heads();
    kfd_head_round r = {0};
    kfd_head_tag t = kfd_head_round_pass(&r, 3, 77, 3, &own);
    Keyfleet__V1__AuditHeadResponse same = answer(&own);
    same.restored = true;
    assert_int_equal(kfd_head_round_count(&r, t, &same), KFD_HEAD_IGNORED);
    same.restored = false;
    same.diverged_seq = 4;
    assert_int_equal(kfd_head_round_count(&r, t, &same), KFD_HEAD_IGNORED);
    same.diverged_seq = 0;
    same.known = false;
    assert_int_equal(kfd_head_round_count(&r, t, &same), KFD_HEAD_IGNORED);
    assert_int_equal(kfd_head_round_count(&r, t, NULL), KFD_HEAD_IGNORED);
    assert_int_equal(kfd_head_round_verdict(&r), KFD_HEAD_UNDECIDED);
}

/* Review rev17, R2: the same audit log with other replicated state (an edited revocation,
 * policy or accepted PCR values) is another head; digests of another schema version are not
 * compared, nor are they when either side has none. */
static void test_state_digest_compared(void **state)
{
    (void)state;
    setup_heads();
    kfd_audit_head mine = own, theirs = own;
    mine.state_version = theirs.state_version = 12;
    memset(mine.state, 5, sizeof(mine.state));
    memset(theirs.state, 6, sizeof(theirs.state));
    kfd_head_round r = {0};
    kfd_head_tag t = kfd_head_round_pass(&r, 3, 77, 3, &mine);
    Keyfleet__V1__AuditHeadResponse a = answer(&own);
    a.state = (ProtobufCBinaryData){sizeof(theirs.state), theirs.state};
    a.state_version = 12;
    assert_int_equal(kfd_head_round_count(&r, t, &a), KFD_HEAD_DIFFERS);
    a.state.len = 0; /* a digest missing where the version says there is one */
    assert_int_equal(kfd_head_round_count(&r, t, &a), KFD_HEAD_DIFFERS);
    assert_int_equal(kfd_head_round_verdict(&r), KFD_HEAD_OUTVOTED);

    t = kfd_head_round_pass(&r, 3, 78, 3, &mine);
    a.state = (ProtobufCBinaryData){sizeof(mine.state), mine.state};
    assert_int_equal(kfd_head_round_count(&r, t, &a), KFD_HEAD_AGREES);
    a.state = (ProtobufCBinaryData){sizeof(theirs.state), theirs.state};
    a.state_version = 11; /* a replica on another schema: its digest is not comparable */
    assert_int_equal(kfd_head_round_count(&r, t, &a), KFD_HEAD_AGREES);
    a.state_version = 0;
    assert_int_equal(kfd_head_round_count(&r, t, &a), KFD_HEAD_AGREES);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_majority_decides),
        cmocka_unit_test(test_one_vouched_answer_is_not_enough),
        cmocka_unit_test(test_stale_answers_ignored),
        cmocka_unit_test(test_non_witnesses_ignored),
        cmocka_unit_test(test_state_digest_compared),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
