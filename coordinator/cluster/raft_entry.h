/* The bytes keyfleetd puts in Raft (docs/cluster.md): log entries and the snapshot header. A
 * replica reads them from its own disk at every start and from its peers (AppendEntries,
 * InstallSnapshot), so decoding checks every length. Fuzzed: tests/fuzz/fuzz_raft_entry.c. */
#ifndef KFD_RAFT_ENTRY_H
#define KFD_RAFT_ENTRY_H

#include <stddef.h>
#include <stdint.h>

#include "keyfleet/v1/state.pb-c.h"

#define KFD_RAFT_ENTRY_FORMAT 1
#define KFD_RAFT_ENTRY_HEADER 8 /* format (u32 LE), the command's length (u32 LE) */
#define KFD_RAFT_SNAPSHOT_MAGIC "KFSNAP01"
#define KFD_RAFT_SNAPSHOT_HEADER 16 /* the magic, the applied index (u64 LE); the sqlite image follows */

/* An entry's size for a packed command of len bytes: libraft 0.15 needs a multiple of 8. */
size_t kfd_raft_entry_size(size_t len);
/* Writes the entry for packed (len bytes) into p (kfd_raft_entry_size(len) bytes, zero-padded). */
void kfd_raft_entry_fill(uint8_t *p, const uint8_t *packed, size_t len);
/* The command in an entry, or NULL when the bytes are not one (free with
 * keyfleet__v1__state_command__free_unpacked(cmd, NULL)). */
Keyfleet__V1__StateCommand *kfd_raft_entry_decode(const uint8_t *p, size_t len);

void kfd_raft_snapshot_header_fill(uint8_t hdr[KFD_RAFT_SNAPSHOT_HEADER], uint64_t index);
/* The applied index a snapshot was taken at. 0, or -EBADMSG when it is not a keyfleet snapshot. */
int kfd_raft_snapshot_header(const uint8_t *p, size_t len, uint64_t *ret_index);

#endif
