/* Policy: validation errors name policy:line:column; evaluation is first match, deny by default. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kf_tpm_evidence.h"

#include "core/policy.h"

static kfd_policy *parse_ok(const char *yaml)
{
    kfd_policy *p = NULL;
    kf_err err = {0};
    int r = kfd_policy_parse("policy", yaml, strlen(yaml), &p, &err);
    if (r != 0)
        fail_msg("policy did not parse: %s", err.msg);
    return p;
}

static void parse_bad(const char *yaml, const char *want)
{
    kfd_policy *p = NULL;
    kf_err err = {0};
    assert_int_equal(kfd_policy_parse("policy", yaml, strlen(yaml), &p, &err), -EINVAL);
    assert_null(p);
    if (strstr(err.msg, want) == NULL)
        fail_msg("error '%s' does not contain '%s'", err.msg, want);
}

static const char POLICY[] = "groups:\n"
                             "  db: [\"db-*\", pg-1]\n"
                             "rules:\n"
                             "  - name: stolen-disks\n"
                             "    match: {volumes: {ids: [vol-stolen]}}\n"
                             "    effect: deny\n"
                             "  - name: prod-db\n"
                             "    match:\n"
                             "      volumes: {names: [\"tank/db*\"], labels: {env: prod}}\n"
                             "      nodes: {groups: [db], cidrs: [10.1.0.0/16, \"fd00::/8\"]}\n"
                             "    effect: allow\n"
                             "    approval: {approvers: 2, auto_approve: {from: \"22:00\", to: \"02:00\"}}\n"
                             "    rate_limit: {per_minute: 10}\n"
                             "  - name: web\n"
                             "    match: {nodes: {names: [\"web-*\"]}}\n"
                             "    effect: allow\n"
                             "    offline_fallback: true\n";

static kfd_policy_decision eval(const kfd_policy *p, const char *node, const char *source, const char *vol,
                                const char *name, const char *env, int64_t now)
{
    kfd_label labels[1] = {{"env", env}};
    kfd_policy_input in = {.node = node, .source = source, .volume_id = vol, .volume_name = name,
                           .labels = labels, .n_labels = env != NULL ? 1 : 0, .now = now};
    kfd_policy_decision d;
    kfd_policy_evaluate(p, &in, &d);
    return d;
}

#define NOON 1795435200 /* 2026-11-23T12:00:00Z */

static void test_first_match_and_default_deny(void **state)
{
    (void)state;
    kfd_policy *p = parse_ok(POLICY);
    assert_int_equal(kfd_policy_rule_count(p), 3);

    kfd_policy_decision d = eval(p, "db-1", "10.1.2.3", "vol-9", "tank/db1", "prod", NOON);
    assert_true(d.allow);
    assert_string_equal(d.rule, "prod-db");
    assert_int_equal(d.approvals, 2);
    assert_false(d.auto_approved);
    assert_int_equal(d.rate_per_minute, 10);
    assert_int_equal(d.rate_burst, 10);
    assert_int_equal(d.pending_ttl_s, 15 * 60);
    assert_non_null(strstr(d.explanation, "node in group 'db'"));
    assert_non_null(strstr(d.explanation, "after human approval"));

    /* Enrollment: the same rule allows, but its approval gates release, not enrollment. */
    kfd_label env[1] = {{"env", "prod"}};
    kfd_policy_input enroll = {.node = "db-1", .source = "10.1.2.3", .volume_id = "vol-9", .volume_name = "tank/db1",
                               .labels = env, .n_labels = 1, .now = NOON, .enrolling = true};
    kfd_policy_decision e;
    kfd_policy_evaluate(p, &enroll, &e);
    assert_true(e.allow);
    assert_int_equal(e.approvals, 0);
    assert_null(strstr(e.explanation, "after human approval"));
    assert_non_null(strstr(e.explanation, "(its approval applies to release)"));

    /* The deny rule comes first, whatever else matches. */
    d = eval(p, "db-1", "10.1.2.3", "vol-stolen", "tank/db1", "prod", NOON);
    assert_false(d.allow);
    assert_string_equal(d.rule, "stolen-disks");

    /* Each selector must hold: wrong label, network, name or group falls through to default deny. */
    assert_false(eval(p, "db-1", "10.1.2.3", "v", "tank/db1", "dev", NOON).allow);
    assert_false(eval(p, "db-1", "10.2.0.1", "v", "tank/db1", "prod", NOON).allow);
    assert_false(eval(p, "db-1", "", "v", "tank/db1", "prod", NOON).allow);
    assert_false(eval(p, "db-1", "10.1.2.3", "v", "tank/web", "prod", NOON).allow);
    d = eval(p, "app-1", "10.1.2.3", "v", "tank/db1", "prod", NOON);
    assert_false(d.allow);
    assert_string_equal(d.rule, "default-deny");
    assert_true(eval(p, "pg-1", "fd00::1", "v", "tank/db1", "prod", NOON).allow);

    d = eval(p, "web-7", NULL, "v", "", NULL, NOON);
    assert_true(d.allow);
    assert_true(d.offline_fallback);
    assert_int_equal(d.approvals, 0);
    kfd_policy_free(p);
}

static void test_auto_approve_window(void **state)
{
    (void)state;
    kfd_policy *p = parse_ok(POLICY);
    /* 23:30 and 01:59 are inside 22:00-02:00 (across midnight); 02:00 is not. */
    kfd_policy_decision d = eval(p, "db-1", "10.1.2.3", "v", "tank/db1", "prod", NOON + 11 * 3600 + 1800);
    assert_true(d.auto_approved);
    assert_int_equal(d.approvals, 0);
    assert_true(eval(p, "db-1", "10.1.2.3", "v", "tank/db1", "prod", NOON + 13 * 3600 + 59 * 60).auto_approved);
    assert_false(eval(p, "db-1", "10.1.2.3", "v", "tank/db1", "prod", NOON + 14 * 3600).auto_approved);
    kfd_policy_free(p);
}

static void test_empty_policy_denies(void **state)
{
    (void)state;
    kfd_policy *p = parse_ok("");
    assert_false(eval(p, "n", NULL, "v", "", NULL, NOON).allow);
    kfd_policy_free(p);
    kfd_policy_decision d;
    kfd_policy_input in = {.node = "n", .volume_id = "v"};
    kfd_policy_evaluate(NULL, &in, &d);
    assert_false(d.allow);
}

/* A node wipe needs two operators by default, admin.wipe_approvers or admin.approvers if larger. */
static void test_wipe_approvers(void **state)
{
    (void)state;
    assert_int_equal(kfd_policy_wipe_approvers(NULL), 2);
    kfd_policy *p = parse_ok("");
    assert_int_equal(kfd_policy_wipe_approvers(p), 2);
    kfd_policy_free(p);
    p = parse_ok("admin: {approvers: 3}\n");
    assert_int_equal(kfd_policy_wipe_approvers(p), 3);
    kfd_policy_free(p);
    p = parse_ok("admin: {approvers: 1, wipe_approvers: 1}\n");
    assert_int_equal(kfd_policy_wipe_approvers(p), 1);
    kfd_policy_free(p);
}

static void test_validation_errors(void **state)
{
    (void)state;
    parse_bad("rules:\n  - name: a\n    effect: permit\n", "policy:3:13: effect must be allow or deny");
    parse_bad("rules:\n  - name: a\n    effect: allow\n    colour: red\n", "policy:4:5: unknown key 'colour'");
    parse_bad("rules:\n  - effect: allow\n", "policy:2:5: missing required key 'name'");
    parse_bad("rules:\n  - {name: a, effect: allow}\n  - {name: a, effect: deny}\n", "duplicate rule name 'a'");
    parse_bad("rules:\n  - name: ok\n    effect: deny\n  - name: recovery\n    effect: allow\n",
              "policy:4:11: rule name 'recovery' is reserved");
    parse_bad("rules:\n  - {name: admin, effect: allow}\n", "rule name 'admin' is reserved");
    parse_bad("admin: {approvers: 1, wipe_approvers: 0}\n", "expected an integer from 1 to 16");
    parse_bad("rules:\n  - name: a\n    effect: allow\n    match: {nodes: {groups: [nope]}}\n",
              "policy:4:29: unknown group 'nope'");
    parse_bad("rules:\n  - name: a\n    effect: allow\n    match: {nodes: {cidrs: [300.1.1.1/8]}}\n",
              "is not an address/prefix");
    parse_bad("rules:\n  - name: a\n    effect: deny\n    approval: {approvers: 1}\n",
              "approval only makes sense with effect: allow");
    parse_bad("rules:\n  - name: a\n    effect: allow\n    approval: {approvers: 0}\n", "expected an integer from 1 to 16");
    parse_bad("rules:\n  - name: a\n    effect: allow\n    approval: {approvers: 1, auto_approve: {from: 25:00, to: 01:00}}\n",
              "expected HH:MM");
    parse_bad("rules:\n  - name: a\n    effect: allow\n    approval: {approvers: 1, timeout: 1s}\n",
              "timeout must be from 10s to 168h");
    parse_bad("rules: {a: b}\n", "policy:1:8: rules must be a list");
    parse_bad("rules:\n  - name: a\n    effect: allow\n    match: {volumes: {labels: [x]}}\n", "labels must be a mapping");
}

/* A node under a loose rule must not take, with another node's wrapped key, what the enrolling
 * node may only have with approval: the stricter decision wins. */
/* require: [tpm_key]: the rule allows only a caller whose certificate vouches for a TPM key; any
 * other caller is denied by that rule (not passed on to a looser rule below it). */
/* require: [attested]: only a request whose quote matched the node's accepted PCR values; the
 * denial says why (the changed PCRs) and no looser rule below takes the request. */
static void test_require_attested(void **state)
{
    (void)state;
    kfd_policy *p = parse_ok("rules:\n"
                             "  - name: measured\n"
                             "    match: {nodes: {names: [\"srv-*\"]}}\n"
                             "    effect: allow\n"
                             "    require: [tpm_key, attested]\n"
                             "  - name: everyone\n"
                             "    match: {nodes: {names: [\"*\"]}}\n"
                             "    effect: allow\n");
    kfd_policy_input in = {.node = "srv-1", .volume_id = "vol-a", .now = NOON, .tpm_key = true, .attested = true};
    kfd_policy_decision d;
    kfd_policy_evaluate(p, &in, &d);
    assert_true(d.allow);
    in.attested = false;
    in.attest_why = "PCR 4 changed since the values accepted";
    kfd_policy_evaluate(p, &in, &d);
    assert_false(d.allow);
    assert_string_equal(d.rule, "measured");
    assert_non_null(strstr(d.explanation, "requires measured-boot attestation"));
    assert_non_null(strstr(d.explanation, "PCR 4 changed"));
    in.attested = true;
    in.tpm_key = false;
    kfd_policy_evaluate(p, &in, &d);
    assert_false(d.allow);
    kfd_policy_free(p);
    parse_bad("rules:\n  - name: a\n    effect: deny\n    require: [attested]\n", "require only makes sense");
}

/* golden_pcrs: a rule's values for every node it matches decide, not each node's own. */
static void test_golden_pcrs(void **state)
{
    (void)state;
    char yaml[1024];
    snprintf(yaml, sizeof(yaml),
             "rules:\n"
             "  - name: fleet-a\n"
             "    match: {nodes: {names: [\"srv-*\"]}}\n"
             "    effect: allow\n"
             "    require: [tpm_key, attested]\n"
             "    golden_pcrs: [\"0=%064d\", \"7=%s\"]\n",
             0, "7777777777777777777777777777777777777777777777777777777777777777");
    kfd_policy *p = parse_ok(yaml);
    kf_tpm_pcrs q = {.mask = (1u << 0) | (1u << 4) | (1u << 7)};
    memset(q.values[0], 0, 32);
    memset(q.values[4], 0x44, 32);
    memset(q.values[7], 0x77, 32);
    /* The node's own accepted values do not matter (attested false), the rule's do. */
    kfd_policy_input in = {.node = "srv-1", .volume_id = "vol-a", .now = NOON, .tpm_key = true, .attested = false,
                           .attest_why = "PCR 4 changed", .quoted = &q};
    kfd_policy_decision d;
    kfd_policy_evaluate(p, &in, &d);
    assert_true(d.allow);
    q.values[7][31] ^= 1;
    kfd_policy_evaluate(p, &in, &d);
    assert_false(d.allow);
    assert_non_null(strstr(d.explanation, "PCR 7 differs from the rule's golden_pcrs"));
    q.values[7][31] ^= 1;
    q.mask &= ~(1u << 0); /* a quote without a golden PCR */
    kfd_policy_evaluate(p, &in, &d);
    assert_false(d.allow);
    assert_non_null(strstr(d.explanation, "PCR 0 differs"));
    in.quoted = NULL; /* no quote that held */
    kfd_policy_evaluate(p, &in, &d);
    assert_false(d.allow);
    kfd_policy_free(p);
    parse_bad("rules:\n  - name: a\n    effect: allow\n    require: [attested]\n    golden_pcrs: [\"7=00\"]\n",
              "golden_pcrs lists PCR=VALUE");
    parse_bad("rules:\n  - name: a\n    effect: allow\n    golden_pcrs: "
              "[\"7=0000000000000000000000000000000000000000000000000000000000000000\"]\n",
              "only makes sense with require: [attested]");
    /* Clear errors (E): what is wrong with the value; resettable PCRs are never golden. */
    parse_bad("rules:\n  - name: a\n    effect: allow\n    require: [attested]\n    golden_pcrs: [\"7=0x00\"]\n",
              "PCR 7: expected exactly 64 hex digits");
    parse_bad("rules:\n  - name: a\n    effect: allow\n    require: [attested]\n    golden_pcrs: "
              "[\"16=0000000000000000000000000000000000000000000000000000000000000001\"]\n",
              "PCRs 16..23 can be reset");
    parse_bad("rules:\n  - name: a\n    effect: allow\n    require: [attested]\n    golden_pcrs: "
              "[\"7=0000000000000000000000000000000000000000000000000000000000000001 "
              "8=0000000000000000000000000000000000000000000000000000000000000001\"]\n",
              "is not one PCR=VALUE");
}

/* attestation: the PCRs every quote must cover (default 0, 2, 4, 7) and the rollback mode. */
static void test_attestation_section(void **state)
{
    (void)state;
    kfd_attest_policy a = kfd_policy_attestation(NULL);
    assert_int_equal(a.pcrs, KF_TPM_DEFAULT_PCRS);
    assert_false(a.rollback_audit);
    kfd_policy *p = parse_ok("rules: []\n");
    a = kfd_policy_attestation(p);
    assert_int_equal(a.pcrs, KF_TPM_DEFAULT_PCRS);
    assert_false(a.rollback_audit);
    kfd_policy_free(p);
    p = parse_ok("attestation: {pcrs: [0, 2, 4, 7, 8, 9, 15], rollback: audit}\nrules: []\n");
    a = kfd_policy_attestation(p);
    assert_int_equal(a.pcrs, KF_TPM_DEFAULT_PCRS | (1u << 8) | (1u << 9) | (1u << 15));
    assert_true(a.rollback_audit);
    kfd_policy_free(p);
    p = parse_ok("attestation: {rollback: deny}\n");
    assert_int_equal(kfd_policy_attestation(p).pcrs, KF_TPM_DEFAULT_PCRS);
    kfd_policy_free(p);
    parse_bad("attestation: {pcrs: [0, 16]}\n", "attestation.pcrs lists PCRs 0..15");
    parse_bad("attestation: {pcrs: [23]}\n", "16..23 can be reset");
    parse_bad("attestation: {pcrs: [7, 7]}\n", "each once");
    parse_bad("attestation: {pcrs: [\"07\"]}\n", "attestation.pcrs lists PCRs 0..15");
    parse_bad("attestation: {pcrs: [\"-1\"]}\n", "attestation.pcrs lists PCRs 0..15");
    parse_bad("attestation: {pcrs: []}\n", "at least one PCR");
    parse_bad("attestation: {rollback: maybe}\n", "deny or audit");
    parse_bad("attestation: {pcr: [0]}\n", "pcr");
}

static void test_require_tpm_key(void **state)
{
    (void)state;
    kfd_policy *p = parse_ok("rules:\n"
                             "  - name: servers\n"
                             "    match: {nodes: {names: [\"srv-*\"]}}\n"
                             "    effect: allow\n"
                             "    offline_fallback: true\n"
                             "    require: [tpm_key]\n"
                             "  - name: everyone\n"
                             "    match: {nodes: {names: [\"*\"]}}\n"
                             "    effect: allow\n");
    kfd_policy_input in = {.node = "srv-1", .volume_id = "vol-a", .now = NOON, .tpm_key = true};
    kfd_policy_decision d;
    kfd_policy_evaluate(p, &in, &d);
    assert_true(d.allow);
    assert_true(d.offline_fallback);
    in.tpm_key = false;
    kfd_policy_evaluate(p, &in, &d);
    assert_false(d.allow);
    assert_false(d.offline_fallback);
    assert_string_equal(d.rule, "servers");
    assert_non_null(strstr(d.explanation, "requires a TPM-bound node key"));
    kfd_policy_evaluate_release(p, &in, "srv-2", &d);
    assert_false(d.allow);
    in.node = "laptop";
    kfd_policy_evaluate(p, &in, &d);
    assert_true(d.allow);
    /* Another node's volume moved to a TPM-less caller whose own rule is loose: the owner's
     * rule requires a TPM key, and the caller has none. */
    kfd_policy_evaluate_release(p, &in, "srv-2", &d);
    assert_false(d.allow);
    kfd_policy_free(p);
    parse_bad("rules:\n  - name: a\n    effect: allow\n    require: [tpm]\n", "unknown requirement 'tpm'");
    parse_bad("rules:\n  - name: a\n    effect: deny\n    require: [tpm_key]\n", "require only makes sense");
}

/* require: [tpm_and_network]: the decision says so (enroll makes a two-part key); never with an
 * offline fallback; a moved volume whose owner's rule requires it keeps requiring it. */
static void test_require_tpm_and_network(void **state)
{
    (void)state;
    kfd_policy *p = parse_ok("rules:\n"
                             "  - name: vault\n"
                             "    match: {nodes: {names: [\"srv-*\"]}}\n"
                             "    effect: allow\n"
                             "    require: [tpm_and_network]\n"
                             "  - name: everyone\n"
                             "    match: {nodes: {names: [\"*\"]}}\n"
                             "    effect: allow\n"
                             "    offline_fallback: true\n");
    kfd_policy_input in = {.node = "srv-1", .volume_id = "vol-a", .now = NOON, .enrolling = true};
    kfd_policy_decision d;
    kfd_policy_evaluate(p, &in, &d);
    assert_true(d.allow);
    assert_true(d.tpm_and_network);
    assert_false(d.offline_fallback);
    assert_non_null(strstr(d.explanation, "TPM and network, both required"));
    in.node = "laptop";
    kfd_policy_evaluate(p, &in, &d);
    assert_true(d.allow);
    assert_false(d.tpm_and_network);
    assert_true(d.offline_fallback);
    /* srv-2's volume released to laptop: the owner's rule binds too, so no fallback, two parts. */
    in.enrolling = false;
    kfd_policy_evaluate_release(p, &in, "srv-2", &d);
    assert_true(d.allow);
    assert_true(d.tpm_and_network);
    assert_false(d.offline_fallback);
    kfd_policy_free(p);
    parse_bad("rules:\n  - name: a\n    effect: allow\n    offline_fallback: true\n    require: [tpm_and_network]\n",
              "policy:4:23: offline_fallback: true contradicts require: [tpm_and_network]");
    parse_bad("rules:\n  - name: a\n    effect: deny\n    require: [tpm_and_network]\n", "require only makes sense");
    parse_bad("rules:\n  - name: a\n    effect: allow\n    require: [tpm_and_net]\n",
              "known: tpm_key, attested, tpm_and_network");
    /* offline_fallback: false says the same as leaving it out */
    kfd_policy_free(parse_ok("rules:\n  - name: a\n    effect: allow\n    offline_fallback: false\n"
                             "    require: [tpm_and_network]\n"));
}

static void test_release_of_another_nodes_volume(void **state)
{
    (void)state;
    kfd_policy *p = parse_ok("rules:\n"
                             "  - name: quarantine\n"
                             "    match: {nodes: {names: [\"old-*\"]}}\n"
                             "    effect: deny\n"
                             "  - name: two-person\n"
                             "    match: {nodes: {names: [\"app-*\"]}}\n"
                             "    effect: allow\n"
                             "    approval: {approvers: 2, totp: true}\n"
                             "  - name: open\n"
                             "    match: {nodes: {names: [\"web-*\", \"old-*\"]}}\n"
                             "    effect: allow\n"
                             "    offline_fallback: true\n");
    kfd_policy_input in = {.node = "web-1", .source = "10.0.0.1", .volume_id = "vol-a", .volume_name = "data",
                           .now = NOON};
    kfd_policy_decision d;
    kfd_policy_evaluate_release(p, &in, "app-1", &d);
    assert_true(d.allow);
    assert_int_equal(d.approvals, 2);
    assert_true(d.require_totp);
    assert_false(d.offline_fallback);
    assert_non_null(strstr(d.explanation, "enrolled by 'app-1'"));
    kfd_policy_evaluate_release(p, &in, "web-2", &d);
    assert_true(d.allow);
    assert_int_equal(d.approvals, 0);
    assert_true(d.offline_fallback);
    kfd_policy_evaluate_release(p, &in, "old-1", &d); /* the owner's rule denies */
    assert_false(d.allow);
    assert_string_equal(d.rule, "quarantine");
    kfd_policy_evaluate_release(p, &in, "web-1", &d); /* its own volume: only its rule */
    assert_int_equal(d.approvals, 0);
    assert_null(strstr(d.explanation, "enrolled by"));
    in.node = "app-2";
    kfd_policy_evaluate_release(p, &in, "web-1", &d); /* a stricter caller keeps its own rule */
    assert_int_equal(d.approvals, 2);
    kfd_policy_free(p);
}

/* Key lifecycle: max_key_age of the first rule matching the volume and its enrolling node (CIDRs
 * left out), else the lifecycle default; a rule without one gives its volumes the default. */
static void test_max_key_age(void **state)
{
    (void)state;
    kfd_policy *p = parse_ok("lifecycle: {max_key_age: 1095d}\n"
                             "rules:\n"
                             "  - name: db\n"
                             "    match: {volumes: {names: [\"tank/db*\"]}, nodes: {cidrs: [10.1.0.0/16]}}\n"
                             "    effect: allow\n"
                             "    max_key_age: 30d\n"
                             "  - name: quarantine\n"
                             "    match: {nodes: {names: [\"old-*\"]}}\n"
                             "    effect: deny\n"
                             "  - name: rest\n"
                             "    effect: allow\n"
                             "    max_key_age: 12h\n");
    kfd_key_age k;
    kfd_policy_input in = {.node = "db-1", .volume_id = "v1", .volume_name = "tank/db1", .now = NOON};
    kfd_policy_key_age(p, &in, NOON - 30 * 86400, &k); /* no source: CIDRs do not count */
    assert_int_equal(k.max_age_s, 30 * 86400);
    assert_string_equal(k.from, "db");
    assert_int_equal(k.age_s, 30 * 86400);
    assert_false(k.overdue); /* exactly its age: not yet */
    kfd_policy_key_age(p, &in, NOON - 30 * 86400 - 1, &k);
    assert_true(k.overdue);
    in.volume_name = "tank/www";
    kfd_policy_key_age(p, &in, NOON - 13 * 3600, &k);
    assert_int_equal(k.max_age_s, 12 * 3600);
    assert_string_equal(k.from, "rest");
    assert_true(k.overdue);
    in.node = "old-3"; /* its first match sets none: the fleet default */
    kfd_policy_key_age(p, &in, NOON - 13 * 3600, &k);
    assert_int_equal(k.max_age_s, 1095 * 86400);
    assert_string_equal(k.from, "lifecycle");
    assert_false(k.overdue);
    kfd_policy_key_age(p, &in, NOON + 60, &k); /* a clock behind the key's: age 0 */
    assert_int_equal(k.age_s, 0);
    kfd_policy_free(p);

    p = parse_ok("rules:\n  - {name: a, effect: allow}\n");
    kfd_policy_key_age(p, &in, 0, &k); /* no limit: never overdue */
    assert_int_equal(k.max_age_s, 0);
    assert_false(k.overdue);
    kfd_policy_free(p);
    kfd_policy_key_age(NULL, &in, 0, &k);
    assert_false(k.overdue);

    parse_bad("rules:\n  - {name: a, effect: allow, max_key_age: 0s}\n", "must be between");
    parse_bad("rules:\n  - {name: a, effect: allow, max_key_age: 3y}\n", "expected a duration");
    parse_bad("lifecycle: {}\n", "missing required key 'max_key_age'");
    parse_bad("lifecycle: {max_key_age: 1d, colour: red}\n", "unknown key 'colour'");
}

/* Dead-man windows: per node group (the long form of a group), the shortest of a node's groups. */
static void test_dead_man(void **state)
{
    (void)state;
    kfd_policy *p = parse_ok("groups:\n"
                             "  edge: {nodes: [\"edge-*\"], dead_man: {after: 72h}}\n"
                             "  remote: {nodes: [\"edge-9\", \"far-*\"], dead_man: {after: 2d}}\n"
                             "  web: [\"web-*\"]\n"
                             "  plain: {nodes: [\"db-*\"]}\n"
                             "rules:\n"
                             "  - name: a\n"
                             "    match: {nodes: {groups: [edge, web, plain]}}\n"
                             "    effect: allow\n");
    assert_int_equal(kfd_policy_dead_man(p, "edge-1"), 72 * 3600);
    assert_int_equal(kfd_policy_dead_man(p, "edge-9"), 48 * 3600);
    assert_int_equal(kfd_policy_dead_man(p, "far-1"), 48 * 3600);
    assert_int_equal(kfd_policy_dead_man(p, "web-1"), 0);
    assert_int_equal(kfd_policy_dead_man(p, "db-1"), 0);
    kfd_policy_decision d = eval(p, "db-1", NULL, "v", "x", NULL, NOON); /* the long form is a group too */
    assert_true(d.allow);
    kfd_policy_free(p);
    assert_int_equal(kfd_policy_dead_man(NULL, "edge-1"), 0);

    parse_bad("groups:\n  g: {nodes: [a], dead_man: {after: 0s}}\n", "must be between");
    parse_bad("groups:\n  g: {nodes: [a], dead_man: {}}\n", "missing required key 'after'");
    parse_bad("groups:\n  g: {dead_man: {after: 1h}}\n", "missing required key 'nodes'");
    parse_bad("groups:\n  g: {nodes: [a], dead_man: {after: 1h, grace: 2h}}\n", "unknown key 'grace'");
}

/* What a heartbeat must show to count as contact (review rev26 R10): allow rules that select the
 * node by name or group; rules selecting only volumes, deny rules, and other nodes' rules do not. */
static void test_contact_requires(void **state)
{
    (void)state;
    kfd_policy *p = parse_ok("groups:\n"
                             "  vault: [\"vault-*\"]\n"
                             "rules:\n"
                             "  - {name: a, match: {nodes: {groups: [vault]}}, effect: allow, require: [attested]}\n"
                             "  - {name: b, match: {nodes: {names: [\"hsm-*\"]}}, effect: allow, require: [tpm_key]}\n"
                             "  - {name: c, match: {volumes: {names: [secret]}}, effect: allow, require: [attested]}\n"
                             "  - {name: d, match: {nodes: {names: [web-1]}}, effect: allow}\n");
    bool tpm_key = true, attested = true;
    kfd_policy_contact_requires(p, "vault-1", &tpm_key, &attested);
    assert_true(attested);
    assert_false(tpm_key);
    kfd_policy_contact_requires(p, "hsm-2", &tpm_key, &attested);
    assert_false(attested);
    assert_true(tpm_key);
    kfd_policy_contact_requires(p, "web-1", &tpm_key, &attested); /* rule c selects volumes only */
    assert_false(attested);
    assert_false(tpm_key);
    kfd_policy_free(p);
    kfd_policy_contact_requires(NULL, "vault-1", &tpm_key, &attested);
    assert_false(attested || tpm_key);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_match_and_default_deny),
        cmocka_unit_test(test_auto_approve_window),
        cmocka_unit_test(test_empty_policy_denies),
        cmocka_unit_test(test_wipe_approvers),
        cmocka_unit_test(test_validation_errors),
        cmocka_unit_test(test_release_of_another_nodes_volume),
        cmocka_unit_test(test_require_tpm_key),
        cmocka_unit_test(test_require_attested),
        cmocka_unit_test(test_require_tpm_and_network),
        cmocka_unit_test(test_golden_pcrs),
        cmocka_unit_test(test_attestation_section),
        cmocka_unit_test(test_max_key_age),
        cmocka_unit_test(test_dead_man), cmocka_unit_test(test_contact_requires),
    };
    return cmocka_run_group_tests_name("policy", tests, NULL, NULL);
}
