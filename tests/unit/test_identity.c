/* Identity parsing: keyfleet://KIND/NAME URIs, and certificates issued by keyfleetctl's CA code. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/pem.h>

#include "ca.h"
#include "kf_identity.h"

#include "kf_test_tmpdir.h"

static int setup(void **state)
{
    if (tmpdir_setup(state) != 0)
        return -1;
    char cert[256], key[256];
    snprintf(cert, sizeof(cert), "%s/ca.crt", tmpdir);
    snprintf(key, sizeof(key), "%s/ca.key", tmpdir);
    return kfctl_ca_create(cert, key, "test CA", NULL);
}

static void parse_ok(const char *uri, kf_peer_kind kind, const char *name)
{
    kf_identity id;
    kf_err err = {0};
    assert_int_equal(kf_identity_from_uri(uri, strlen(uri), &id, &err), 0);
    assert_int_equal(id.kind, kind);
    assert_string_equal(id.name, name);
}

static void parse_bad(const char *uri)
{
    kf_identity id;
    kf_err err = {0};
    assert_int_equal(kf_identity_from_uri(uri, strlen(uri), &id, &err), -EINVAL);
    assert_true(err.msg[0] != '\0');
}

static void test_uri_parsing(void **state)
{
    (void)state;
    parse_ok("keyfleet://node/web-01", KF_PEER_NODE, "web-01");
    parse_ok("keyfleet://operator/alice", KF_PEER_OPERATOR, "alice");
    parse_ok("keyfleet://coordinator/c1.dc2", KF_PEER_COORDINATOR, "c1.dc2");
    parse_bad("keyfleet://admin/alice");
    parse_bad("keyfleet://node/");
    parse_bad("keyfleet://node");
    parse_bad("https://node/x");
    parse_bad("keyfleet://node/a/b");
    parse_bad("keyfleet://node/-dash-first");
    parse_bad("keyfleet://node/sp ace");
    parse_bad("keyfleet://node/0123456789012345678901234567890123456789012345678901234567890123");
    /* An embedded NUL must not cut the name short. */
    kf_identity id;
    assert_int_equal(kf_identity_from_uri("keyfleet://node/a\0b", 19, &id, NULL), -EINVAL);
}

static X509 *issue(kf_peer_kind kind, const char *name)
{
    char ca_cert[256], ca_key[256], cert[256], key[256];
    snprintf(ca_cert, sizeof(ca_cert), "%s/ca.crt", tmpdir);
    snprintf(ca_key, sizeof(ca_key), "%s/ca.key", tmpdir);
    snprintf(cert, sizeof(cert), "%s/%s.crt", tmpdir, name);
    snprintf(key, sizeof(key), "%s/%s.key", tmpdir, name);
    kfctl_cert_opts o = {.kind = kind, .name = name, .days = 30};
    kf_err err = {0};
    assert_int_equal(kfctl_cert_issue(ca_cert, ca_key, &o, cert, key, false, &err), 0);
    FILE *f = fopen(cert, "r");
    assert_non_null(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(x);
    return x;
}

static void test_cert_identity(void **state)
{
    (void)state;
    X509 *x = issue(KF_PEER_NODE, "db-7");
    kf_identity id;
    assert_int_equal(kf_identity_from_cert(x, &id, NULL), 0);
    assert_int_equal(id.kind, KF_PEER_NODE);
    assert_string_equal(id.name, "db-7");
    char uri[128];
    assert_int_equal(kf_identity_uri(&id, uri, sizeof(uri)), 0);
    assert_string_equal(uri, "keyfleet://node/db-7");
    X509_free(x);

    x = issue(KF_PEER_OPERATOR, "bob");
    assert_int_equal(kf_identity_from_cert(x, &id, NULL), 0);
    assert_int_equal(id.kind, KF_PEER_OPERATOR);
    X509_free(x);

    /* The CA certificate itself names no keyfleet identity. */
    char ca_cert[256];
    snprintf(ca_cert, sizeof(ca_cert), "%s/ca.crt", tmpdir);
    FILE *f = fopen(ca_cert, "r");
    x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    kf_err err = {0};
    assert_int_equal(kf_identity_from_cert(x, &id, &err), -EACCES);
    X509_free(x);
}

static void test_issue_rejects_bad_names(void **state)
{
    (void)state;
    char ca_cert[256], ca_key[256], out[256];
    snprintf(ca_cert, sizeof(ca_cert), "%s/ca.crt", tmpdir);
    snprintf(ca_key, sizeof(ca_key), "%s/ca.key", tmpdir);
    snprintf(out, sizeof(out), "%s/x", tmpdir);
    kfctl_cert_opts o = {.kind = KF_PEER_NODE, .name = "bad/name", .days = 30};
    kf_err err = {0};
    assert_int_equal(kfctl_cert_issue(ca_cert, ca_key, &o, out, out, false, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "bad/name"));
    /* The key file must not be overwritten by a second issue without force. */
    o.name = "db-7";
    snprintf(out, sizeof(out), "%s/db-7.key", tmpdir);
    assert_int_equal(kfctl_cert_issue(ca_cert, ca_key, &o, out, out, false, &err), -EEXIST);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uri_parsing),
        cmocka_unit_test(test_cert_identity),
        cmocka_unit_test(test_issue_rejects_bad_names),
    };
    return cmocka_run_group_tests_name("identity", tests, setup, tmpdir_teardown);
}
