/* kf_pb_alloc: a message unpacked with the wiping allocator leaves nothing behind when freed.
 * The test heap under it records each block's size and, at free, checks every byte is zero
 * and that the secret is nowhere in it. The control runs the same check under an allocator that
 * does not wipe, and must see the secret: so the check can fail, and the wipe is what passes it. */
#include <setjmp.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "keyfleet/v1/node.pb-c.h"
#include "kf_pb_alloc.h"

#define MAX_BLOCKS 64

static const char secret[] = "s3cret-id-0123456789abcdef0123456789abcdef";

static struct {
    void *p[MAX_BLOCKS];
    size_t size[MAX_BLOCKS];
    size_t live, allocs, frees;
    size_t nonzero_frees; /* blocks freed with any byte still set */
    size_t secret_frees;  /* blocks freed with the secret still in them */
} heap;

static void *heap_alloc(size_t size)
{
    void *p = malloc(size);
    if (p == NULL || heap.live == MAX_BLOCKS)
        return p;
    heap.p[heap.live] = p;
    heap.size[heap.live++] = size;
    heap.allocs++;
    return p;
}

static bool holds_secret(const uint8_t *p, size_t size)
{
    size_t n = strlen(secret);
    for (size_t i = 0; i + n <= size; i++)
        if (memcmp(p + i, secret, n) == 0)
            return true;
    return false;
}

static void heap_free(void *p)
{
    for (size_t i = 0; i < heap.live; i++) {
        if (heap.p[i] != p)
            continue;
        const uint8_t *b = p;
        bool zero = true;
        for (size_t k = 0; k < heap.size[i]; k++)
            zero = zero && b[k] == 0;
        heap.nonzero_frees += !zero;
        heap.secret_frees += holds_secret(b, heap.size[i]);
        heap.frees++;
        heap.p[i] = heap.p[--heap.live];
        heap.size[i] = heap.size[heap.live];
        break;
    }
    free(p);
}

static const kf_pb_heap recording = {heap_alloc, heap_free};

/* protobuf-c's own behaviour, on the same heap: no wipe. */
static void *plain_alloc(void *data, size_t size)
{
    (void)data;
    return heap_alloc(size);
}

static void plain_free(void *data, void *p)
{
    (void)data;
    if (p != NULL)
        heap_free(p);
}

static int reset(void **state)
{
    (void)state;
    memset(&heap, 0, sizeof(heap));
    return 0;
}

static uint8_t *packed_login(size_t *len)
{
    Keyfleet__V1__LoginRequest req = KEYFLEET__V1__LOGIN_REQUEST__INIT;
    req.role_id = "5b1e8f3a-2c4d-4e6f-8a9b-0c1d2e3f4a5b";
    req.secret_id = (char *)secret;
    *len = keyfleet__v1__login_request__get_packed_size(&req);
    uint8_t *buf = malloc(*len);
    assert_non_null(buf);
    keyfleet__v1__login_request__pack(&req, buf);
    return buf;
}

/* Unpacks a LoginRequest with a, checks the secret arrived, frees it with a. */
static void unpack_and_free(ProtobufCAllocator *a)
{
    size_t len = 0;
    uint8_t *buf = packed_login(&len);
    Keyfleet__V1__LoginRequest *m = keyfleet__v1__login_request__unpack(a, len, buf);
    free(buf);
    assert_non_null(m);
    assert_string_equal(m->secret_id, secret);
    assert_true(heap.allocs >= 2); /* the message and at least the secret id */
    keyfleet__v1__login_request__free_unpacked(m, a);
    assert_int_equal(heap.frees, heap.allocs);
    assert_int_equal(heap.live, 0);
}

static void test_free_wipes_every_block(void **state)
{
    (void)state;
    ProtobufCAllocator a = kf_pb_wiping_allocator_on(&recording);
    unpack_and_free(&a);
    assert_int_equal(heap.secret_frees, 0);
    assert_int_equal(heap.nonzero_frees, 0);
}

static void test_control_without_wipe_the_secret_stays(void **state)
{
    (void)state;
    ProtobufCAllocator a = {plain_alloc, plain_free, NULL};
    unpack_and_free(&a);
    assert_int_equal(heap.secret_frees, 1);
    assert_true(heap.nonzero_frees >= 1);
}

static void test_blocks_aligned_and_sized(void **state)
{
    (void)state;
    ProtobufCAllocator a = kf_pb_wiping_allocator_on(&recording);
    size_t sizes[] = {0, 1, 7, 16, 4096};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        uint8_t *p = a.alloc(a.allocator_data, sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % alignof(max_align_t), 0);
        memset(p, 0xa5, sizes[i]); /* ASan: the whole size is ours */
        a.free(a.allocator_data, p);
    }
    a.free(a.allocator_data, NULL);
    assert_int_equal(heap.frees, 5);
    assert_int_equal(heap.nonzero_frees, 0);
    assert_null(a.alloc(a.allocator_data, SIZE_MAX));
}

/* The allocator the coordinator uses: malloc underneath (ASan checks the header arithmetic). */
static void test_default_heap_round_trip(void **state)
{
    (void)state;
    size_t len = 0;
    uint8_t *buf = packed_login(&len);
    Keyfleet__V1__LoginRequest *m = keyfleet__v1__login_request__unpack(&kf_pb_wiping_allocator, len, buf);
    free(buf);
    assert_non_null(m);
    assert_string_equal(m->secret_id, secret);
    keyfleet__v1__login_request__free_unpacked(m, &kf_pb_wiping_allocator);
    assert_int_equal(heap.allocs, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_free_wipes_every_block, reset),
        cmocka_unit_test_setup(test_control_without_wipe_the_secret_stays, reset),
        cmocka_unit_test_setup(test_blocks_aligned_and_sized, reset),
        cmocka_unit_test_setup(test_default_heap_round_trip, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
