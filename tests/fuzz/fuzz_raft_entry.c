/* libFuzzer: a Raft log entry, as a replica reads it from its own log at every start and from
 * the leader (AppendEntries): decoded (cluster/raft_entry.c), then applied to a store as
 * fsm_apply does, at the next index (an undecodable entry is applied as NULL, which the store
 * records as a failed result). One store for the run, in a scratch folder; a store that failed
 * is replaced by a new one. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cluster/raft_entry.h"
#include "store/store.h"
#include "store/store_apply.h"

static kfd_store *store;
static uint64_t next_index = 1;
static char dir[64];
static unsigned n;

/* The scratch folder goes when the run ends (not after a crash, when it may help). */
static void remove_scratch(void)
{
    if (store != NULL)
        kfd_store_close(store);
    store = NULL;
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (unsigned i = 0; i < n; i++) {
        for (size_t k = 0; k < sizeof(suffixes) / sizeof(suffixes[0]); k++) {
            char path[160];
            snprintf(path, sizeof(path), "%s/store-%u.db%s", dir, i, suffixes[k]);
            unlink(path);
        }
    }
    rmdir(dir);
}

static void open_store(void)
{
    if (dir[0] == '\0') {
        snprintf(dir, sizeof(dir), "/tmp/kf-fuzz-XXXXXX");
        if (mkdtemp(dir) == NULL)
            abort();
        atexit(remove_scratch);
    }
    if (store != NULL)
        kfd_store_close(store);
    char path[128];
    snprintf(path, sizeof(path), "%s/store-%u.db", dir, n++);
    kf_err err = {0};
    store = NULL;
    if (kfd_store_open(path, &store, &err) != 0 || store == NULL)
        abort();
    next_index = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    if (store == NULL || kfd_store_failed(store))
        open_store();
    Keyfleet__V1__StateCommand *cmd = kfd_raft_entry_decode(data, size);
    const Keyfleet__V1__StateCommand *cmds[1] = {cmd};
    int status = 0;
    kfd_apply_result res = {0};
    kf_err err = {0};
    (void)kfd_store_apply_batch(store, cmds, 1, next_index++, &status, &res, &err);
    if (cmd != NULL)
        keyfleet__v1__state_command__free_unpacked(cmd, NULL);
    return 0;
}
