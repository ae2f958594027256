/* kf_dlopen_all: loads a library and all the named symbols, or nothing (every slot reset, the
 * library closed), with an error that names what is missing. libm stands in for libcryptsetup. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "kf_dlopen.h"
#include "kf_err.h"

KF_DLSYM(cos);
KF_DLSYM(sqrt);
KF_DLSYM_DEFINE(cos);
KF_DLSYM_DEFINE(sqrt);

static void test_loads_every_symbol(void **state)
{
    (void)state;
    void *handle = NULL;
    kf_err err = {0};
    assert_int_equal(kf_dlopen_all(&handle, "libm.so.6", &err, KF_DLSYM_ARG(cos), KF_DLSYM_ARG(sqrt), NULL), 0);
    assert_non_null(handle);
    assert_true(sym_cos(0.0) == 1.0);
    assert_true(sym_sqrt(16.0) == 4.0);
    /* Loaded once: a second call keeps the handle and the slots. */
    void *first = handle;
    assert_int_equal(kf_dlopen_all(&handle, "libm.so.6", &err, KF_DLSYM_ARG(cos), NULL), 0);
    assert_ptr_equal(handle, first);
}

static void test_missing_library(void **state)
{
    (void)state;
    void *handle = NULL;
    kf_err err = {0};
    assert_int_equal(kf_dlopen_all(&handle, "libkeyfleet-absent.so.0", &err, KF_DLSYM_ARG(cos), NULL), -ENOENT);
    assert_null(handle);
    assert_non_null(strstr(err.msg, "cannot load libkeyfleet-absent.so.0"));
}

static void test_missing_symbol_keeps_nothing(void **state)
{
    (void)state;
    void *handle = NULL, *absent = NULL;
    kf_err err = {0};
    sym_cos = NULL;
    sym_sqrt = NULL;
    int r = kf_dlopen_all(&handle, "libm.so.6", &err, KF_DLSYM_ARG(cos), &absent, "kf_no_such_function",
                          KF_DLSYM_ARG(sqrt), NULL);
    assert_int_equal(r, -ENOENT);
    assert_null(handle);
    assert_null(sym_cos); /* resolved before the miss, then reset */
    assert_null(absent);
    assert_null(sym_sqrt);
    assert_non_null(strstr(err.msg, "libm.so.6 lacks kf_no_such_function"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loads_every_symbol),
        cmocka_unit_test(test_missing_library),
        cmocka_unit_test(test_missing_symbol_keeps_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
