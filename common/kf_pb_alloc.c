#include "kf_pb_alloc.h"

#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>

#include <openssl/crypto.h>

/* The size header keeps the payload aligned for any type protobuf-c stores in it. */
#define HEADER_SIZE (alignof(max_align_t) > sizeof(size_t) ? alignof(max_align_t) : sizeof(size_t))

static const kf_pb_heap libc_heap = {malloc, free};

static const kf_pb_heap *heap_of(void *data)
{
    return data != NULL ? data : &libc_heap;
}

static void *wiping_alloc(void *data, size_t size)
{
    if (size > SIZE_MAX - HEADER_SIZE)
        return NULL;
    uint8_t *block = heap_of(data)->alloc(HEADER_SIZE + size);
    if (block == NULL)
        return NULL;
    *(size_t *)block = size;
    return block + HEADER_SIZE;
}

static void wiping_free(void *data, void *p)
{
    if (p == NULL)
        return;
    uint8_t *block = (uint8_t *)p - HEADER_SIZE;
    /* The header goes too: a wiped block says nothing, not even how long the secret was. */
    OPENSSL_cleanse(block, HEADER_SIZE + *(size_t *)block);
    heap_of(data)->free(block);
}

ProtobufCAllocator kf_pb_wiping_allocator = {wiping_alloc, wiping_free, NULL};

ProtobufCAllocator kf_pb_wiping_allocator_on(const kf_pb_heap *heap)
{
    return (ProtobufCAllocator){wiping_alloc, wiping_free, (void *)heap};
}
