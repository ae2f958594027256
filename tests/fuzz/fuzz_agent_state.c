/* libFuzzer: the agent's status file (agent/state.c), which sits on the node's disk, where an
 * attacker or a crash may have changed it. The queued reports are read into a Heartbeat as the
 * agent sends it, which the coordinator's checks must accept (kf_node_check.h): one report it
 * refuses would fail every later heartbeat. Then the readers and the writers that edit the file
 * in place (one input in 32: they fsync). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "fuzz_file.h"
#include "kf_node_check.h"
#include "state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_file("state.json", data, size);
    if (path == NULL)
        return 0;
    kfa_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.state_file = (char *)path;
    kfa_state_reports s;
    if (kfa_state_reports_read(path, &s) == 0) {
        Keyfleet__V1__HeartbeatRequest req = KEYFLEET__V1__HEARTBEAT_REQUEST__INIT;
        req.n_offline_unlocks = s.n_send;
        req.offline_unlocks = s.ptrs;
        req.n_dead_man_locks = s.n_dead_man;
        req.dead_man_locks = s.dlp;
        char why[160];
        if (kf_check_heartbeat(&req, why, sizeof(why)) != NULL)
            abort();
        uint8_t out[1 << 17];
        if (protobuf_c_message_get_packed_size(&req.base) <= sizeof(out))
            protobuf_c_message_pack(&req.base, out);
        if (size % 32 == 0) {
            kfa_state_drop_reported(&cfg, "offline_pending", s.offline, s.n_offline);
            kfa_state_drop_reported(&cfg, "dead_man_pending", s.dead_man, s.n_dead_man);
        }
    }
    kfa_state_reports_free(&s);
    char method[32];
    int64_t at;
    kfa_state_lookup(&cfg, "0b9c6a2e-1f3d-4c5b-9a8e-7d6c5b4a3f21", method, sizeof(method), &at);
    uint64_t after;
    kfa_state_dead_man_get(&cfg, &after, &at);
    if (size % 32 == 0) {
        kfa_volume v;
        memset(&v, 0, sizeof(v));
        v.kind = KFA_VOL_LUKS2;
        strcpy(v.id, "0b9c6a2e-1f3d-4c5b-9a8e-7d6c5b4a3f21");
        strcpy(v.path, "/dev/vdb");
        (void)kfa_state_queue_offline(&cfg, &v, "fuzz");
        (void)kfa_state_queue_dead_man(&cfg, 1, 2, 3, 4, 5);
        (void)kfa_state_record(&cfg, v.id, "tpm", NULL);
        (void)kfa_state_dead_man_contact(&cfg, 60, 1700000000);
    }
    return 0;
}
