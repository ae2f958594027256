/* The local KMS: wrap/unwrap round trip, the AAD binds the volume id, malformed and forged
 * ciphertexts are refused (versions only in canonical decimal), rotation keeps old versions
 * opening, rewrap moves to the newest, and a KEK file others may read or write is refused. */
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

#include "kms/kms.h"
#include "kms/kms_local.h"
#include "kms/kms_kek.h"

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
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(kfd_kms_local_open(NULL, empty, &k, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "exactly 32 bytes"));
}

/* The version in "kf:local:vN:" is canonical decimal only: every other spelling of 1 is a
 * malformed wrapped key, not version 1 (issue #22, item 7). */
static void test_noncanonical_version(void **state)
{
    (void)state;
    char dir[400];
    snprintf(dir, sizeof(dir), "%s/canon", tmpdir);
    assert_int_equal(kfd_kms_local_init(dir, NULL), 0);
    kfd_kms *k = NULL;
    assert_int_equal(kfd_kms_local_open(NULL, dir, &k, NULL), 0);
    result gen = {0}, un = {0};
    k->ops->generate(k, "vol-c", capture, &gen);
    assert_int_equal(strncmp(gen.wrapped, "kf:local:v1:", 12), 0);
    assert_int_equal(gen.status, 0);
    const char *blob = gen.wrapped + strlen("kf:local:v1:");
    const char *forms[] = {"+1", " 1", "\t1", "01", "001", "-1", "1 ", "0", "4294967297", "18446744073709551617",
                           "99999999999999999999", ""};
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        char w[300];
        snprintf(w, sizeof(w), "kf:local:v%s:%s", forms[i], blob);
        un.status = 0;
        k->ops->unwrap(k, "vol-c", w, capture, &un);
        if (un.status != -EINVAL)
            fail_msg("version '%s' gave status %d, want -EINVAL", forms[i], un.status);
        result rw = {0};
        k->ops->rewrap(k, "vol-c", w, capture, &rw);
        if (rw.status != -EINVAL)
            fail_msg("rewrap of version '%s' gave status %d, want -EINVAL", forms[i], rw.status);
    }
    /* The canonical form still opens. */
    k->ops->unwrap(k, "vol-c", gen.wrapped, capture, &un);
    assert_int_equal(un.status, 0);
    assert_memory_equal(un.key, gen.key, 32);
    k->ops->destroy(k);
}

/* Only kek-N.key with N canonical names a KEK: kek-01.key or kek-+1.key is not version 1. */
static void test_noncanonical_kek_name(void **state)
{
    (void)state;
    char dir[400], from[500], to[500];
    snprintf(dir, sizeof(dir), "%s/names", tmpdir);
    assert_int_equal(kfd_kms_local_init(dir, NULL), 0);
    snprintf(from, sizeof(from), "%s/kek-1.key", dir);
    const char *names[] = {"kek-01.key", "kek-+1.key", "kek- 1.key", "kek-4294967297.key"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(to, sizeof(to), "%s/%s", dir, names[i]);
        assert_int_equal(rename(from, to), 0);
        kfd_kms *k = NULL;
        kf_err err = {0};
        if (kfd_kms_local_open(NULL, dir, &k, &err) != -ENOENT)
            fail_msg("%s was loaded as a KEK", names[i]);
        assert_int_equal(rename(to, from), 0);
    }
}

/* Like sshd with a readable private key: a KEK file that anyone but its owner may read or write
 * is refused at load, naming the file, its mode and the fix. */
static void test_kek_mode_refused(void **state)
{
    (void)state;
    char path[400];
    snprintf(path, sizeof(path), "%s/kek-1.key", kek_dir);
    const mode_t modes[] = {0640, 0604, 0660, 0620, 0602, 0644, 0610};
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        assert_int_equal(chmod(path, modes[i]), 0);
        kfd_kms *k = NULL;
        kf_err err = {0};
        int r = kfd_kms_local_open(NULL, kek_dir, &k, &err);
        if (k != NULL)
            k->ops->destroy(k);
        if (r != -EACCES)
            fail_msg("mode %04o gave %d, want -EACCES", (unsigned)modes[i], r);
        char want[64];
        snprintf(want, sizeof(want), "mode %04o", (unsigned)modes[i]);
        assert_non_null(strstr(err.msg, path));
        assert_non_null(strstr(err.msg, want));
        assert_non_null(strstr(err.msg, "chmod 600"));
    }
    /* 0600 and 0400 are fine. */
    const mode_t ok[] = {0400, 0600};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_int_equal(chmod(path, ok[i]), 0);
        kfd_kms *k = NULL;
        assert_int_equal(kfd_kms_local_open(NULL, kek_dir, &k, NULL), 0);
        k->ops->destroy(k);
    }
}

/* A KEK copied in after a rotation elsewhere (sync) is held to the same rule. */
static void test_synced_kek_mode_refused(void **state)
{
    (void)state;
    char dir[400], src[500], dst[500];
    snprintf(dir, sizeof(dir), "%s/sync", tmpdir);
    assert_int_equal(kfd_kms_local_init(dir, NULL), 0);
    kfd_kms *k = NULL;
    assert_int_equal(kfd_kms_local_open(NULL, dir, &k, NULL), 0);
    snprintf(src, sizeof(src), "%s/kek-1.key", dir);
    snprintf(dst, sizeof(dst), "%s/kek-2.key", dir);
    char cmd[1600];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 0644 '%s'", src, dst, dst);
    assert_int_equal(system(cmd), 0);
    kf_err err = {0};
    assert_int_equal(k->ops->sync(k, 2, &err), -EACCES);
    assert_non_null(strstr(err.msg, "chmod 600"));
    assert_int_equal(chmod(dst, 0600), 0);
    assert_int_equal(k->ops->sync(k, 2, &err), 0);
    kfd_kms_info info;
    k->ops->describe(k, &info);
    assert_int_equal(info.latest_version, 2);
    k->ops->destroy(k);
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
        cmocka_unit_test(test_noncanonical_version),
        cmocka_unit_test(test_noncanonical_kek_name),
        cmocka_unit_test(test_kek_mode_refused),
        cmocka_unit_test(test_synced_kek_mode_refused),
    };
    return cmocka_run_group_tests_name("kms_local", tests, setup, tmpdir_teardown);
}
