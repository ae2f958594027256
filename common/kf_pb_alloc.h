/* A protobuf-c allocator that wipes every block it frees: messages unpacked with it (a Login's
 * secret id, a token in an answer) leave no copy behind in the ordinary heap. */
#ifndef KF_PB_ALLOC_H
#define KF_PB_ALLOC_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

/* What the wiping allocator sits on: malloc and free unless a test swaps them. */
typedef struct kf_pb_heap {
    void *(*alloc)(size_t size);
    void (*free)(void *block);
} kf_pb_heap;

/* Each block carries its size in a header; free wipes header and payload with OPENSSL_cleanse
 * before handing the block to the heap. Pass the same allocator to unpack and free_unpacked. */
extern ProtobufCAllocator kf_pb_wiping_allocator;

/* The same allocator on another heap (tests check what reaches heap->free). */
ProtobufCAllocator kf_pb_wiping_allocator_on(const kf_pb_heap *heap);

#endif
