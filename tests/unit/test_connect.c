/* Connect error codes: names, HTTP statuses, errno mapping and the JSON body both ways; the
 * host:port addresses clients dial. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kf_connect.h"
#include "kf_hostport.h"

static void test_http_statuses(void **state)
{
    (void)state;
    static const struct {
        kf_connect_code code;
        const char *name;
        int http;
    } want[] = {
        {KF_CONNECT_INVALID_ARGUMENT, "invalid_argument", 400}, {KF_CONNECT_UNAUTHENTICATED, "unauthenticated", 401},
        {KF_CONNECT_PERMISSION_DENIED, "permission_denied", 403}, {KF_CONNECT_NOT_FOUND, "not_found", 404},
        {KF_CONNECT_ALREADY_EXISTS, "already_exists", 409}, {KF_CONNECT_FAILED_PRECONDITION, "failed_precondition", 400},
        {KF_CONNECT_RESOURCE_EXHAUSTED, "resource_exhausted", 429}, {KF_CONNECT_UNAVAILABLE, "unavailable", 503},
        {KF_CONNECT_UNIMPLEMENTED, "unimplemented", 501}, {KF_CONNECT_INTERNAL, "internal", 500},
        {KF_CONNECT_DEADLINE_EXCEEDED, "deadline_exceeded", 504}, {KF_CONNECT_ABORTED, "aborted", 409},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        assert_string_equal(kf_connect_code_name(want[i].code), want[i].name);
        assert_int_equal(kf_connect_code_http_status(want[i].code), want[i].http);
        assert_int_equal(kf_connect_code_parse(want[i].name), want[i].code);
    }
    assert_int_equal(kf_connect_code_parse("no_such_code"), KF_CONNECT_UNKNOWN);
    assert_string_equal(kf_connect_code_name((kf_connect_code)999), "unknown");
}

static void test_errno_mapping(void **state)
{
    (void)state;
    assert_int_equal(kf_connect_code_from_errno(0), KF_CONNECT_OK);
    assert_int_equal(kf_connect_code_from_errno(-EINVAL), KF_CONNECT_INVALID_ARGUMENT);
    assert_int_equal(kf_connect_code_from_errno(-ENOENT), KF_CONNECT_NOT_FOUND);
    assert_int_equal(kf_connect_code_from_errno(-EACCES), KF_CONNECT_PERMISSION_DENIED);
    assert_int_equal(kf_connect_code_from_errno(-ENOSPC), KF_CONNECT_UNAVAILABLE);
    assert_int_equal(kf_connect_code_from_errno(-EROFS), KF_CONNECT_UNAVAILABLE);
    assert_int_equal(kf_connect_code_from_errno(-EAGAIN), KF_CONNECT_RESOURCE_EXHAUSTED);
    assert_int_equal(kf_connect_code_from_errno(-ENOMEM), KF_CONNECT_INTERNAL);
    assert_int_equal(kf_connect_code_from_http(503), KF_CONNECT_UNAVAILABLE);
    assert_int_equal(kf_connect_code_from_http(404), KF_CONNECT_UNIMPLEMENTED);
}

static void test_json_roundtrip(void **state)
{
    (void)state;
    char *json = kf_connect_error_json(KF_CONNECT_PERMISSION_DENIED, "node \"n1\" is revoked\n");
    assert_non_null(json);
    assert_string_equal(json, "{\"code\":\"permission_denied\",\"message\":\"node \\\"n1\\\" is revoked\\n\"}");
    kf_connect_code code;
    char *msg = NULL;
    assert_int_equal(kf_connect_error_parse(json, strlen(json), &code, &msg), 0);
    assert_int_equal(code, KF_CONNECT_PERMISSION_DENIED);
    assert_string_equal(msg, "node \"n1\" is revoked\n");
    free(msg);
    free(json);
}

static void test_json_parse_rejects_garbage(void **state)
{
    (void)state;
    kf_connect_code code;
    char *msg = NULL;
    assert_int_equal(kf_connect_error_parse("not json", 8, &code, &msg), -EINVAL);
    assert_int_equal(kf_connect_error_parse("{\"message\":\"x\"}", 15, &code, &msg), -EINVAL);
    assert_int_equal(kf_connect_error_parse("{\"code\":5}", 10, &code, &msg), -EINVAL);
    assert_int_equal(kf_connect_error_parse("{\"code\":\"unavailable\"}", 22, &code, &msg), 0);
    assert_int_equal(code, KF_CONNECT_UNAVAILABLE);
    assert_string_equal(msg, "");
    free(msg);
}

static void test_hostport_split(void **state)
{
    (void)state;
    char host[16], port[8];
    assert_true(kf_hostport_split("127.0.0.1:7443", host, sizeof(host), port, sizeof(port)));
    assert_string_equal(host, "127.0.0.1");
    assert_string_equal(port, "7443");
    assert_true(kf_hostport_split("[::1]:443", host, sizeof(host), port, sizeof(port)));
    assert_string_equal(host, "::1");
    assert_string_equal(port, "443");
    assert_true(kf_hostport_split("kf.example:1", host, sizeof(host), port, sizeof(port)));
    assert_string_equal(host, "kf.example");
    static const char *const bad[] = {"nocolon", ":443", "host:", "[::1]443", "[::1", "[]:443",
                                      "a-very-long-host-name:1", "host:12345678"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(kf_hostport_split(bad[i], host, sizeof(host), port, sizeof(port)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_statuses),
        cmocka_unit_test(test_hostport_split),
        cmocka_unit_test(test_errno_mapping),
        cmocka_unit_test(test_json_roundtrip),
        cmocka_unit_test(test_json_parse_rejects_garbage),
    };
    return cmocka_run_group_tests_name("connect", tests, NULL, NULL);
}
