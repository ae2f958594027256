/* CIDR matching (coordinator/cidr.c), as policy rules and AppRole bound CIDRs use it: every
 * prefix that ends inside a byte (/12, /25, /33, /121) includes the last address inside and
 * excludes the first one outside, so a prefix that is compared only in whole bytes (/12 as /8,
 * /25 as /24) fails here. tests/integration/guards_approle.sh checks the same at AppRole Login. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "core/cidr.h"
#include "core/policy.h"

static kfd_cidr parse(const char *s)
{
    kfd_cidr c;
    if (kfd_cidr_parse(s, &c) != 0)
        fail_msg("'%s' did not parse", s);
    return c;
}

/* in: the last address inside the prefix; out: the next address, the first outside. */
static void edge(const char *cidr, const char *first, const char *in, const char *out)
{
    kfd_cidr c = parse(cidr);
    if (!kfd_cidr_contains(&c, first))
        fail_msg("%s should contain %s", cidr, first);
    if (!kfd_cidr_contains(&c, in))
        fail_msg("%s should contain %s", cidr, in);
    if (kfd_cidr_contains(&c, out))
        fail_msg("%s should not contain %s", cidr, out);
}

static void test_ipv4_partial_bytes(void **state)
{
    (void)state;
    edge("10.16.0.0/12", "10.16.0.0", "10.31.255.255", "10.32.0.0");
    /* Below the prefix too: 10.15.255.255 shares the first byte only. */
    edge("10.16.0.0/12", "10.16.0.0", "10.16.0.1", "10.15.255.255");
    edge("192.168.1.0/25", "192.168.1.0", "192.168.1.127", "192.168.1.128");
    edge("192.168.1.128/25", "192.168.1.128", "192.168.1.255", "192.168.1.127");
    edge("172.16.0.0/9", "172.0.0.0", "172.127.255.255", "172.128.0.0");
    edge("10.0.0.1/31", "10.0.0.0", "10.0.0.1", "10.0.0.2");
    /* Whole bytes and the extremes. */
    edge("10.1.0.0/16", "10.1.0.0", "10.1.255.255", "10.2.0.0");
    edge("10.0.0.7/32", "10.0.0.7", "10.0.0.7", "10.0.0.8");
    kfd_cidr all = parse("0.0.0.0/0");
    assert_true(kfd_cidr_contains(&all, "255.255.255.255"));
}

static void test_ipv6_partial_bytes(void **state)
{
    (void)state;
    edge("2001:db0::/28", "2001:db0::", "2001:dbf:ffff:ffff:ffff:ffff:ffff:ffff", "2001:dc0::");
    edge("fd00:1:2:3::/65", "fd00:1:2:3::", "fd00:1:2:3:7fff:ffff:ffff:ffff", "fd00:1:2:3:8000::");
    edge("2001:db8::/121", "2001:db8::", "2001:db8::7f", "2001:db8::80");
    edge("2001:db8::/12", "2000::", "200f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2010::");
    edge("2001:db8::1/128", "2001:db8::1", "2001:db8::1", "2001:db8::2");
}

static void test_families_do_not_mix(void **state)
{
    (void)state;
    kfd_cidr v4 = parse("10.0.0.0/8"), v6 = parse("::/0");
    assert_false(kfd_cidr_contains(&v4, "::ffff:10.0.0.1"));
    assert_false(kfd_cidr_contains(&v6, "10.0.0.1"));
    assert_false(kfd_cidr_contains(&v4, "not an address"));
}

static void test_bad_prefixes(void **state)
{
    (void)state;
    kfd_cidr c;
    const char *bad[] = {"10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/8x", "10.0.0/8", "", "/8"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (kfd_cidr_parse(bad[i], &c) != -EINVAL)
            fail_msg("'%s' should be refused", bad[i]);
}

/* The same edges through a policy rule's nodes.cidrs, as Release evaluates it. */
static void test_policy_rule_cidrs(void **state)
{
    (void)state;
    static const char yaml[] = "rules:\n"
                               "  - name: net12\n"
                               "    match: {nodes: {cidrs: [\"10.16.0.0/12\", \"fd00::/9\"]}}\n"
                               "    effect: allow\n"
                               "  - name: net25\n"
                               "    match: {nodes: {cidrs: [\"192.168.1.0/25\"]}}\n"
                               "    effect: allow\n";
    kfd_policy *p = NULL;
    kf_err err = {0};
    if (kfd_policy_parse("policy", yaml, sizeof(yaml) - 1, &p, &err) != 0)
        fail_msg("policy did not parse: %s", err.msg);
    const struct {
        const char *source;
        bool allow;
    } cases[] = {
        {"10.31.255.255", true}, {"10.32.0.0", false},  {"10.15.255.255", false}, {"192.168.1.127", true},
        {"192.168.1.128", false}, {"fd7f::1", true},    {"fd80::", false},        {"", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        kfd_policy_input in = {.node = "n1", .source = cases[i].source, .volume_id = "vol-1", .volume_name = "data"};
        kfd_policy_decision d;
        kfd_policy_evaluate(p, &in, &d);
        if (d.allow != cases[i].allow)
            fail_msg("source '%s': %s, want %s (%s)", cases[i].source, d.allow ? "allow" : "deny",
                     cases[i].allow ? "allow" : "deny", d.explanation);
    }
    kfd_policy_free(p);
}

/* The per-source key (review rev26 R9, limits.ipv6_source_prefix): IPv6 addresses of one prefix
 * share it, one bit past the prefix does not, IPv4 and v4-mapped addresses and the default /128
 * keep the whole address. */
static void test_source_key(void **state)
{
    (void)state;
    static const struct {
        const char *addr;
        unsigned prefix;
        const char *key;
    } cases[] = {
        {"2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::/64"},
        {"2001:db8:1:2::1", 64, "2001:db8:1:2::/64"},
        {"2001:db8:1:3::1", 64, "2001:db8:1:3::/64"},
        {"2001:db8:1:2:ffff::1", 56, "2001:db8:1::/56"},
        {"2001:db8:1:ff::1", 56, "2001:db8:1::/56"},
        {"2001:db8:1:100::1", 56, "2001:db8:1:100::/56"},
        {"2001:db8:1:2:8000::1", 65, "2001:db8:1:2:8000::/65"},
        {"2001:db8:1:2:7fff::1", 65, "2001:db8:1:2::/65"},
        {"2001:db8::5", 128, "2001:db8::5"},
        {"127.0.0.5", 64, "127.0.0.5"},
        {"::ffff:127.0.0.5", 64, "::ffff:127.0.0.5"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char key[64];
        kfd_source_key(cases[i].addr, cases[i].prefix, key, sizeof(key));
        if (strcmp(key, cases[i].key) != 0)
            fail_msg("%s /%u: key '%s', want '%s'", cases[i].addr, cases[i].prefix, key, cases[i].key);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4_partial_bytes), cmocka_unit_test(test_ipv6_partial_bytes),
        cmocka_unit_test(test_families_do_not_mix), cmocka_unit_test(test_bad_prefixes),
        cmocka_unit_test(test_policy_rule_cidrs), cmocka_unit_test(test_source_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
