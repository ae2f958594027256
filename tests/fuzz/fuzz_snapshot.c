/* libFuzzer: a Raft snapshot, as a replica checks it before it may replace its database
 * (fsm_restore: the header, then kfd_store_check_image on the sqlite image: its audit chain,
 * tree and checkpoints must verify and extend the replica's own log). A snapshot comes from the
 * leader, so a compromised coordinator chooses every byte.
 * The first input byte picks the mode: 0, the rest is the whole image; otherwise the rest is a
 * list of patches (offset: u32 LE, length: u8, bytes) to a valid image made at start (three audit
 * records), checked by a replica holding its first two records (odd byte) or none (even). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "cluster/raft_entry.h"
#include "store/store.h"
#include "store/store_apply.h"
#include "store/store_audit.h"
#include "store/store_snapshot.h"

static kfd_store *replica_empty, *replica_two;
static unsigned char *base;
static size_t base_len;
static char dir[64];
static const char *const names[] = {"leader.db", "replica-two.db", "replica-empty.db"};

/* The scratch folder goes when the run ends (not after a crash, when it may help). */
static void remove_scratch(void)
{
    kfd_store_close(replica_empty);
    kfd_store_close(replica_two);
    replica_empty = replica_two = NULL;
    sqlite3_free(base);
    base = NULL;
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        for (size_t k = 0; k < sizeof(suffixes) / sizeof(suffixes[0]); k++) {
            char path[160];
            snprintf(path, sizeof(path), "%s/%s%s", dir, names[i], suffixes[k]);
            unlink(path);
        }
    }
    rmdir(dir);
}

static kfd_store *open_store(const char *name)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    kfd_store *s = NULL;
    kf_err err = {0};
    if (kfd_store_open(path, &s, &err) != 0 || s == NULL)
        abort();
    return s;
}

static void append(kfd_store *s, const char *action)
{
    Keyfleet__V1__Timestamp ts = KEYFLEET__V1__TIMESTAMP__INIT;
    ts.seconds = 1795435200;
    Keyfleet__V1__AuditEntry e = KEYFLEET__V1__AUDIT_ENTRY__INIT;
    e.time = &ts;
    e.action = (char *)action;
    e.node = "web-1";
    e.reason = "fuzz seed";
    e.decision = KEYFLEET__V1__DECISION__DECISION_ALLOW;
    Keyfleet__V1__CmdAppendAudit c = KEYFLEET__V1__CMD_APPEND_AUDIT__INIT;
    c.audit = &e;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
    cmd.append_audit = &c;
    kfd_apply_result res;
    kf_err err = {0};
    if (kfd_store_apply(s, &cmd, &res, &err) != 0)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    snprintf(dir, sizeof(dir), "/tmp/kf-fuzz-XXXXXX");
    if (mkdtemp(dir) == NULL)
        abort();
    atexit(remove_scratch);
    kfd_store *leader = open_store(names[0]);
    replica_two = open_store(names[1]);
    replica_empty = open_store(names[2]);
    static const char *const actions[] = {"login_failed", "revoke_node", "put_policy"};
    for (int i = 0; i < 3; i++) {
        append(leader, actions[i]);
        if (i < 2)
            append(replica_two, actions[i]);
    }
    kf_err err = {0};
    if (kfd_store_serialize(leader, &base, &base_len, &err) != 0)
        abort();
    kfd_store_close(leader);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 1u << 20)
        return 0;
    uint64_t index = 0;
    (void)kfd_raft_snapshot_header(data, size, &index);
    unsigned char *image;
    size_t len;
    if (data[0] == 0) {
        len = size - 1;
        if ((image = malloc(len > 0 ? len : 1)) == NULL)
            return 0;
        memcpy(image, data + 1, len);
    } else {
        len = base_len;
        if ((image = malloc(len)) == NULL)
            return 0;
        memcpy(image, base, len);
        for (size_t i = 1; i + 5 <= size;) {
            uint32_t off = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8 | (uint32_t)data[i + 2] << 16 |
                           (uint32_t)data[i + 3] << 24;
            size_t n = data[i + 4];
            i += 5;
            for (size_t k = 0; k < n && i < size; k++, i++)
                image[(off + k) % len] = data[i];
        }
    }
    kfd_image_check check;
    kf_err err = {0};
    if (kfd_store_check_image(data[0] & 1 ? replica_two : replica_empty, image, len, &check, &err) == 0)
        kfd_audit_free_record(check.newest);
    free(image);
    return 0;
}
