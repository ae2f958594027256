/* The local KMS: wrap/unwrap round trip, the AAD binds the volume id, malformed and forged
 * ciphertexts are refused, rotation keeps old versions opening, rewrap moves to the newest. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "kms.h"

#include "kf_test_tmpdir.h"
static char kek_dir[300];

static int setup(void **state)
{
    if (tmpdir_setup(state) != 0)
        return -1;
    snprintf(kek_dir, sizeof(kek_dir), "%s/kek", tmpdir);
    return kfd_kms_local_init(kek_dir, NULL);
}

typedef struct result {
    int status;
    uint8_t key[32];
    char wrapped[256];
    uint32_t version, latest;
    bool stale;
} result;

static void capture(void *arg, const kfd_kms_result *res)
{
    result *r = arg;
    r->status = res->status;
    if (res->plaintext != NULL)
        memcpy(r->key, res->plaintext->data, 32);
    if (res->wrapped != NULL)
        snprintf(r->wrapped, sizeof(r->wrapped), "%s", res->wrapped);
    r->version = res->key_version;
    r->latest = res->latest_version;
    r->stale = res->stale;
}

static void test_roundtrip_and_binding(void **state)
{
    (void)state;
    kfd_kms *k = NULL;
    assert_int_equal(kfd_kms_local_open(NULL, kek_dir, &k, NULL), 0);
    struct stat st;
    char path[400];
    snprintf(path, sizeof(path), "%s/kek-1.key", kek_dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    result gen = {0}, un = {0};
    k->ops->generate(k, "vol-1", capture, &gen);
    assert_int_equal(gen.status, 0);
    assert_int_equal(strncmp(gen.wrapped, "kf:local:v1:", 12), 0);
    k->ops->unwrap(k, "vol-1", gen.wrapped, capture, &un);
    assert_int_equal(un.status, 0);
    assert_memory_equal(un.key, gen.key, 32);
    assert_int_equal(un.version, 1);

    /* Another volume id: the AAD does not match. */
    k->ops->unwrap(k, "vol-2", gen.wrapped, capture, &un);
    assert_int_equal(un.status, -EBADMSG);

    /* Forged: one base64 character changed. */
    char forged[256];
    snprintf(forged, sizeof(forged), "%s", gen.wrapped);
    forged[30] = forged[30] == 'A' ? 'B' : 'A';
    k->ops->unwrap(k, "vol-1", forged, capture, &un);
    assert_int_equal(un.status, -EBADMSG);

    /* Malformed: truncated, wrong prefix, unknown version, garbage. */
    char cut[256];
    snprintf(cut, sizeof(cut), "%.40s", gen.wrapped);
    const char *bad[] = {cut, "vault:v1:abc", "kf:local:v7:AAAA", "kf:local:vx:AAAA", "kf:local:v1:!!!!", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        k->ops->unwrap(k, "vol-1", bad[i], capture, &un);
        assert_int_equal(un.status, -EINVAL);
    }
    k->ops->destroy(k);
}

static void test_rotation(void **state)
{
    (void)state;
    kfd_kms *k = NULL;
    assert_int_equal(kfd_kms_local_open(NULL, kek_dir, &k, NULL), 0);
    result v1 = {0}, un = {0}, rw = {0};
    k->ops->generate(k, "vol-r", capture, &v1);
    result rot = {0};
    k->ops->rotate(k, capture, &rot);
    assert_int_equal(rot.status, 0);
    assert_int_equal(rot.version, 2);
    kfd_kms_info info;
    k->ops->describe(k, &info);
    assert_int_equal(info.latest_version, 2);

    k->ops->unwrap(k, "vol-r", v1.wrapped, capture, &un);
    assert_int_equal(un.status, 0);
    assert_int_equal(un.version, 1);
    assert_int_equal(un.latest, 2);
    assert_true(un.stale);
    k->ops->rewrap(k, "vol-r", v1.wrapped, capture, &rw);
    assert_int_equal(rw.status, 0);
    assert_int_equal(strncmp(rw.wrapped, "kf:local:v2:", 12), 0);
    k->ops->unwrap(k, "vol-r", rw.wrapped, capture, &un);
    assert_memory_equal(un.key, v1.key, 32);
    k->ops->destroy(k);

    /* A fresh open loads both versions from disk. */
    assert_int_equal(kfd_kms_local_open(NULL, kek_dir, &k, NULL), 0);
    k->ops->unwrap(k, "vol-r", v1.wrapped, capture, &un);
    assert_int_equal(un.status, 0);
    k->ops->destroy(k);
}

static void test_missing_or_bad_kek(void **state)
{
    (void)state;
    kfd_kms *k = NULL;
    kf_err err = {0};
    char empty[400];
    snprintf(empty, sizeof(empty), "%s/empty", tmpdir);
    mkdir(empty, 0700);
    assert_int_equal(kfd_kms_local_open(NULL, empty, &k, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "run keyfleetctl init"));
    char path[500];
    snprintf(path, sizeof(path), "%s/kek-1.key", empty);
    FILE *f = fopen(path, "w");
    fputs("short", f);
    fclose(f);
    assert_int_equal(kfd_kms_local_open(NULL, empty, &k, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "exactly 32 bytes"));
}

static bool read_kek(const char *dir, uint8_t out[KFD_DATA_KEY_LEN])
{
    char path[500];
    snprintf(path, sizeof(path), "%s/kek-1.key", dir);
    FILE *f = fopen(path, "rb");
    bool ok = f != NULL && fread(out, 1, KFD_DATA_KEY_LEN, f) == KFD_DATA_KEY_LEN;
    if (f != NULL)
        fclose(f);
    return ok;
}

/* keyfleetctl init --peer: one KEK for every replica, or none when any already holds one. */
static void test_shared_init(void **state)
{
    (void)state;
    kf_err err = {0};
    char a[400], b[400], c[400];
    snprintf(a, sizeof(a), "%s/shared-a", tmpdir);
    snprintf(b, sizeof(b), "%s/shared-b", tmpdir);
    snprintf(c, sizeof(c), "%s/shared-c", tmpdir);
    const char *two[] = {a, b};
    assert_int_equal(kfd_kms_local_init_shared(two, 2, &err), 0);
    uint8_t ka[KFD_DATA_KEY_LEN], kb[KFD_DATA_KEY_LEN], zero[KFD_DATA_KEY_LEN] = {0};
    assert_true(read_kek(a, ka));
    assert_true(read_kek(b, kb));
    assert_memory_equal(ka, kb, sizeof(ka));
    assert_memory_not_equal(ka, zero, sizeof(ka));
    struct stat st;
    char path[500];
    snprintf(path, sizeof(path), "%s/kek-1.key", b);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* c is empty, a is not: refused, and c gets nothing. */
    const char *mixed[] = {c, a};
    assert_int_equal(kfd_kms_local_init_shared(mixed, 2, &err), -EEXIST);
    assert_non_null(strstr(err.msg, "already holds a KEK"));
    assert_false(read_kek(c, kb));
    /* One directory keeps its KEK (keyfleetctl init's single-coordinator path). */
    assert_int_equal(kfd_kms_local_init(a, &err), 0);
    assert_true(read_kek(a, kb));
    assert_memory_equal(ka, kb, sizeof(ka));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_and_binding),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_missing_or_bad_kek),
        cmocka_unit_test(test_shared_init),
    };
    return cmocka_run_group_tests_name("kms_local", tests, setup, tmpdir_teardown);
}
