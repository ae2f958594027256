#include "cluster/raft_entry.h"

#include <errno.h>
#include <string.h>

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

size_t kfd_raft_entry_size(size_t len) { return (KFD_RAFT_ENTRY_HEADER + len + 7) & ~(size_t)7; }

void kfd_raft_entry_fill(uint8_t *p, const uint8_t *packed, size_t len)
{
    memset(p, 0, kfd_raft_entry_size(len));
    put_u32(p, KFD_RAFT_ENTRY_FORMAT);
    put_u32(p + 4, (uint32_t)len);
    memcpy(p + KFD_RAFT_ENTRY_HEADER, packed, len);
}

Keyfleet__V1__StateCommand *kfd_raft_entry_decode(const uint8_t *p, size_t len)
{
    if (len < KFD_RAFT_ENTRY_HEADER || get_u32(p) != KFD_RAFT_ENTRY_FORMAT)
        return NULL;
    uint32_t n = get_u32(p + 4);
    if (n > len - KFD_RAFT_ENTRY_HEADER)
        return NULL;
    return keyfleet__v1__state_command__unpack(NULL, n, p + KFD_RAFT_ENTRY_HEADER);
}

void kfd_raft_snapshot_header_fill(uint8_t hdr[KFD_RAFT_SNAPSHOT_HEADER], uint64_t index)
{
    memcpy(hdr, KFD_RAFT_SNAPSHOT_MAGIC, 8);
    put_u64(hdr + 8, index);
}

int kfd_raft_snapshot_header(const uint8_t *p, size_t len, uint64_t *ret_index)
{
    if (len < KFD_RAFT_SNAPSHOT_HEADER || memcmp(p, KFD_RAFT_SNAPSHOT_MAGIC, 8) != 0)
        return -EBADMSG;
    *ret_index = get_u64(p + 8);
    return 0;
}
