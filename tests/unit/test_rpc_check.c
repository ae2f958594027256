/* The request checks of Login, CreateSecretId, QueryAudit, ProveConsistency and PutPolicy, and
 * those moved out of the GetRole, UnrevokeNode, RetireVolume, WipeNode, RevealRecoveryKey and
 * EnrollRecoveryKey handlers (coordinator/rpc/rpc_check.c), which run before any store lookup
 * and which tests/fuzz/fuzz_rpc_request.c reaches through kfd_request_check_for. Each refusal has a valid
 * request next to it, and each message names the field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/policy.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/node.pb-c.h"
#include "rpc/rpc_check.h"

#define ROLE_ID "0f1e2d3c-4b5a-4697-8877-665544332211"
#define SECRET "kfs.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklm-_09"

static void refused(const char *bad, const char *field)
{
    if (bad == NULL)
        fail_msg("a request with a bad %s was accepted", field);
    if (strstr(bad, field) == NULL)
        fail_msg("the refusal '%s' does not name %s", bad, field);
}

static const char *login(const char *role_id, const char *secret_id)
{
    Keyfleet__V1__LoginRequest req = KEYFLEET__V1__LOGIN_REQUEST__INIT;
    req.role_id = (char *)role_id;
    req.secret_id = (char *)secret_id;
    return kfd_check_login(&req);
}

static void test_login(void **state)
{
    (void)state;
    assert_int_equal(strlen(SECRET), KFD_SECRET_ID_LEN);
    assert_null(login(ROLE_ID, SECRET));
    refused(login("", SECRET), "role_id");
    refused(login(ROLE_ID "0", SECRET), "role_id");
    refused(login("0f1e2d3c-4b5a-4697-8877-66554433221", SECRET), "role_id");
    refused(login("0f1e2d3c-4b5a-4697-8877x665544332211", SECRET), "role_id");
    refused(login("0F1E2D3C-4B5A-4697-8877-665544332211", SECRET), "role_id");
    refused(login("0f1e2d3c-4b5a-4697-8877-66554433221g", SECRET), "role_id");
    refused(login(ROLE_ID, ""), "secret_id");
    refused(login(ROLE_ID, SECRET "A"), "secret_id");
    refused(login(ROLE_ID, "kft.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklm-_09"), "secret_id");
    refused(login(ROLE_ID, "kfs.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklm-_0="), "secret_id");
    refused(login(ROLE_ID, "kfs.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklm-_0\n"), "secret_id");
}

static const char *secret_id(const char *role, const char *totp)
{
    Keyfleet__V1__CreateSecretIdRequest req = KEYFLEET__V1__CREATE_SECRET_ID_REQUEST__INIT;
    req.role_name = (char *)role;
    req.totp_code = (char *)totp;
    return kfd_check_create_secret_id(&req);
}

static void test_create_secret_id(void **state)
{
    (void)state;
    assert_null(secret_id("web-role", ""));
    assert_null(secret_id("web-role", "123456"));
    refused(secret_id("", ""), "role_name");
    refused(secret_id("web role", ""), "role_name");
    refused(secret_id("../x", ""), "role_name");
    refused(secret_id("web-role", "12345678901234567"), "totp_code");
}

static void test_query_audit(void **state)
{
    (void)state;
    Keyfleet__V1__QueryAuditRequest req = KEYFLEET__V1__QUERY_AUDIT_REQUEST__INIT;
    assert_null(kfd_check_query_audit(&req));
    req.node = (char *)"node-1";
    req.volume_id = (char *)"3f6c0d1e-guid";
    req.action = (char *)"release";
    req.decision = KEYFLEET__V1__DECISION__DECISION_ERROR;
    req.limit = KFD_AUDIT_QUERY_LIMIT_MAX;
    Keyfleet__V1__Timestamp since = KEYFLEET__V1__TIMESTAMP__INIT, until = KEYFLEET__V1__TIMESTAMP__INIT;
    since.seconds = until.seconds = 1700000000;
    req.since = &since;
    req.since_present_case = KEYFLEET__V1__QUERY_AUDIT_REQUEST__SINCE_PRESENT_SINCE;
    req.until = &until;
    req.until_present_case = KEYFLEET__V1__QUERY_AUDIT_REQUEST__UNTIL_PRESENT_UNTIL;
    assert_null(kfd_check_query_audit(&req));

    Keyfleet__V1__QueryAuditRequest bad = req;
    bad.node = (char *)"node 1";
    refused(kfd_check_query_audit(&bad), "node");
    bad = req;
    char long_id[130];
    memset(long_id, 'v', 129);
    long_id[129] = '\0';
    bad.volume_id = long_id;
    refused(kfd_check_query_audit(&bad), "volume_id");
    bad.volume_id = (char *)"vol\x01";
    refused(kfd_check_query_audit(&bad), "volume_id");
    bad = req;
    bad.action = (char *)"release\n";
    refused(kfd_check_query_audit(&bad), "action");
    bad = req;
    bad.decision = (Keyfleet__V1__Decision)5;
    refused(kfd_check_query_audit(&bad), "decision");
    bad = req;
    bad.limit = KFD_AUDIT_QUERY_LIMIT_MAX + 1;
    refused(kfd_check_query_audit(&bad), "limit");
    Keyfleet__V1__Timestamp later = since;
    later.seconds++;
    bad = req;
    bad.since = &later;
    refused(kfd_check_query_audit(&bad), "since");
    bad.until_present_case = KEYFLEET__V1__QUERY_AUDIT_REQUEST__UNTIL_PRESENT__NOT_SET;
    assert_null(kfd_check_query_audit(&bad)); /* since alone is any time */
}

static const char *consistency(uint64_t old_size, uint64_t new_size)
{
    Keyfleet__V1__ProveConsistencyRequest req = KEYFLEET__V1__PROVE_CONSISTENCY_REQUEST__INIT;
    req.old_size = old_size;
    req.new_size = new_size;
    return kfd_check_prove_consistency(&req);
}

static void test_prove_consistency(void **state)
{
    (void)state;
    assert_null(consistency(1, 0));
    assert_null(consistency(7, 7));
    assert_null(consistency(UINT64_MAX, 0)); /* against the newest checkpoint: the handler's */
    refused(consistency(0, 0), "old_size");
    refused(consistency(0, 5), "old_size");
    refused(consistency(6, 5), "old_size");
}

static const char *put_policy(const char *yaml, const char *totp, bool *got)
{
    Keyfleet__V1__PutPolicyRequest req = KEYFLEET__V1__PUT_POLICY_REQUEST__INIT;
    req.yaml = (char *)yaml;
    req.totp_code = (char *)totp;
    kfd_policy *parsed = (kfd_policy *)&req; /* must be overwritten */
    static char buf[KF_ERR_MSG_MAX];
    const char *bad = kfd_check_put_policy(&req, &parsed, buf, sizeof(buf));
    *got = parsed != NULL;
    kfd_policy_free(bad == NULL ? parsed : NULL);
    return bad;
}

static void test_put_policy(void **state)
{
    (void)state;
    bool got;
    assert_null(put_policy("rules:\n  - {name: a, effect: allow}\n", "", &got));
    assert_true(got);
    const char *bad = put_policy("rules: [", "", &got);
    assert_non_null(bad);
    assert_false(got);
    refused(put_policy("rules: []\n", "12345678901234567", &got), "totp_code");
    assert_false(got);
}

/* The checks that were inline in their handlers, before any lookup, now reachable by the fuzzer. */
static void test_inline_checks_moved(void **state)
{
    (void)state;
    Keyfleet__V1__GetRoleRequest role = KEYFLEET__V1__GET_ROLE_REQUEST__INIT;
    role.name = (char *)"web-role";
    assert_null(kfd_check_get_role(&role));
    role.name = (char *)"web role";
    refused(kfd_check_get_role(&role), "role name");

    Keyfleet__V1__UnrevokeNodeRequest unrevoke = KEYFLEET__V1__UNREVOKE_NODE_REQUEST__INIT;
    unrevoke.node = (char *)"n3";
    assert_null(kfd_check_unrevoke_node(&unrevoke));
    unrevoke.totp_code = (char *)"12345678901234567";
    refused(kfd_check_unrevoke_node(&unrevoke), "totp_code");
    unrevoke.totp_code = (char *)"";
    unrevoke.node = (char *)"";
    refused(kfd_check_unrevoke_node(&unrevoke), "node");

    Keyfleet__V1__RetireVolumeRequest retire = KEYFLEET__V1__RETIRE_VOLUME_REQUEST__INIT;
    retire.volume_id = (char *)"vol-1";
    assert_null(kfd_check_retire_volume(&retire));
    retire.volume_id = (char *)"";
    refused(kfd_check_retire_volume(&retire), "volume_id");

    Keyfleet__V1__WipeNodeRequest wipe = KEYFLEET__V1__WIPE_NODE_REQUEST__INIT;
    char *ids[101];
    for (size_t i = 0; i < 101; i++)
        ids[i] = (char *)"vol-1";
    wipe.node = (char *)"n3";
    wipe.volume_ids = ids;
    wipe.n_volume_ids = 100;
    assert_null(kfd_check_wipe_node(&wipe));
    wipe.n_volume_ids = 101;
    refused(kfd_check_wipe_node(&wipe), "volume ids");
    wipe.n_volume_ids = 2;
    ids[1] = (char *)"";
    refused(kfd_check_wipe_node(&wipe), "volume ids");
    ids[1] = (char *)"vol-2";
    wipe.cancel = true;
    assert_null(kfd_check_wipe_node(&wipe));
    wipe.erase_all_keyslots = true;
    refused(kfd_check_wipe_node(&wipe), "--erase-all-keyslots");

    uint8_t key[32] = {0};
    Keyfleet__V1__RevealRecoveryKeyRequest reveal = KEYFLEET__V1__REVEAL_RECOVERY_KEY_REQUEST__INIT;
    reveal.volume_id = (char *)"vol-1";
    assert_null(kfd_check_reveal_recovery_key(&reveal)); /* a proposal: no request id, no key */
    reveal.request_id = (char *)"0123456789abcdef";
    refused(kfd_check_reveal_recovery_key(&reveal), "ephemeral_public_key");
    reveal.ephemeral_public_key = (ProtobufCBinaryData){.len = 32, .data = key};
    assert_null(kfd_check_reveal_recovery_key(&reveal));
    reveal.request_id = (char *)"short";
    refused(kfd_check_reveal_recovery_key(&reveal), "request_id");

    Keyfleet__V1__VolumeRef vol = KEYFLEET__V1__VOLUME_REF__INIT;
    vol.id = (char *)"vol-1";
    vol.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2;
    Keyfleet__V1__EnrollRecoveryKeyRequest escrow = KEYFLEET__V1__ENROLL_RECOVERY_KEY_REQUEST__INIT;
    escrow.volume = &vol;
    escrow.request_id = (char *)"0123456789abcdef";
    assert_null(kfd_check_enroll_recovery_key(&escrow));
    escrow.request_id = (char *)"";
    refused(kfd_check_enroll_recovery_key(&escrow), "request_id");
    escrow.volume = NULL;
    assert_non_null(kfd_check_enroll_recovery_key(&escrow));
}

/* The table the fuzzer and nothing else goes through: each of these requests has its check. */
static void test_table(void **state)
{
    (void)state;
    char buf[KF_ERR_MSG_MAX];
    Keyfleet__V1__LoginRequest login_req = KEYFLEET__V1__LOGIN_REQUEST__INIT;
    Keyfleet__V1__CreateSecretIdRequest secret_req = KEYFLEET__V1__CREATE_SECRET_ID_REQUEST__INIT;
    Keyfleet__V1__QueryAuditRequest audit_req = KEYFLEET__V1__QUERY_AUDIT_REQUEST__INIT;
    audit_req.limit = KFD_AUDIT_QUERY_LIMIT_MAX + 1;
    Keyfleet__V1__ProveConsistencyRequest cons_req = KEYFLEET__V1__PROVE_CONSISTENCY_REQUEST__INIT;
    Keyfleet__V1__PutPolicyRequest policy_req = KEYFLEET__V1__PUT_POLICY_REQUEST__INIT;
    policy_req.yaml = (char *)"rules: [";
    Keyfleet__V1__GetRoleRequest role_req = KEYFLEET__V1__GET_ROLE_REQUEST__INIT;
    Keyfleet__V1__UnrevokeNodeRequest unrevoke_req = KEYFLEET__V1__UNREVOKE_NODE_REQUEST__INIT;
    Keyfleet__V1__RetireVolumeRequest retire_req = KEYFLEET__V1__RETIRE_VOLUME_REQUEST__INIT;
    Keyfleet__V1__WipeNodeRequest wipe_req = KEYFLEET__V1__WIPE_NODE_REQUEST__INIT;
    Keyfleet__V1__RevealRecoveryKeyRequest reveal_req = KEYFLEET__V1__REVEAL_RECOVERY_KEY_REQUEST__INIT;
    Keyfleet__V1__EnrollRecoveryKeyRequest escrow_req = KEYFLEET__V1__ENROLL_RECOVERY_KEY_REQUEST__INIT;
    const ProtobufCMessage *bad[] = {&login_req.base,    &secret_req.base,   &audit_req.base,    &cons_req.base,
                                     &policy_req.base,   &role_req.base,     &unrevoke_req.base, &retire_req.base,
                                     &wipe_req.base,     &reveal_req.base,   &escrow_req.base};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kf_request_check_fn fn = kfd_request_check_for(bad[i]->descriptor);
        if (fn == NULL)
            fail_msg("%s has no check", bad[i]->descriptor->name);
        if (fn(bad[i], buf, sizeof(buf)) == NULL)
            fail_msg("%s: a bad request passed the table's check", bad[i]->descriptor->name);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_login),          cmocka_unit_test(test_create_secret_id),
        cmocka_unit_test(test_query_audit),    cmocka_unit_test(test_prove_consistency),
        cmocka_unit_test(test_put_policy),     cmocka_unit_test(test_inline_checks_moved),
        cmocka_unit_test(test_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
