#include "cluster/replication.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <raft.h>
#include <raft/uv.h>
#include <sqlite3.h>

#include "kf_log.h"
#include "cluster/raft_entry.h"
#include "cluster/raft_transport.h"
#include "store/store_apply.h"
#include "store/store_audit.h"
#include "store/store_dispute.h"
#include "store/store_snapshot.h"

#define SNAPSHOT_HEADER KFD_RAFT_SNAPSHOT_HEADER
#define SNAPSHOT_BYTES_PER_ENTRY 4096
#define SNAPSHOT_THRESHOLD_CAP 262144
#define MONITOR_MS 25
#define CLOSE_WAIT_TURNS 100000
#define COMMIT_TIMEOUT_MS 5000u

struct kfd_repl {
    kfd_repl_env env;
    kfd_store *store;
    uv_loop_t *loop;
    uint64_t batches, batched_commands;
    struct raft raft;
    struct raft_io io;
    struct raft_uv_transport transport;
    struct raft_fsm fsm;
    char dir[4096];
    char self_address[320];
    bool io_inited, raft_inited, started, closed;
    uv_timer_t monitor;
    uv_check_t flush; /* commits the store's deferred transaction (see on_flush) */
    uint64_t tx_since; /* loop time when the open deferred transaction was first seen */
    unsigned snapshot_threshold; /* configured: the least number of entries between snapshots */
    raft_term ready_term; /* the term whose barrier has been applied: writes are safe */
    raft_term confirmed_term; /* the term in which a majority confirmed this leader's audit head */
    bool barrier_pending;
    raft_id last_leader;
    unsigned short last_state;
    /* The result of the entry just applied: libraft 0.15 calls the request's callback right
     * after fsm->apply, so one slot suffices; the index check catches anything else. */
    struct {
        raft_index index;
        int status;
        kfd_apply_result res;
        kf_err err;
    } last;
    uint64_t snapshots_taken, snapshots_restored, snapshots_refused;
    char peer_refusal[512]; /* the reason peer_check last gave (logged before the next call) */
    bool told_diverged, told_tail;
    unsigned transfers; /* leadership handed on while standing down (transfer_target) */
    uint64_t started_at; /* loop time at start */
    unsigned char *snap_img;
    uint8_t snap_hdr[SNAPSHOT_HEADER];
    struct raft_buffer snap_bufs[2];
    struct submit_req *inflight_head, *inflight_tail;
    uint64_t commits_timed_out;
    /* libraft 0.15's uv backend can fire its close callback twice (uvMaybeFireCloseCb does not
     * clear it), which frees raft's address twice: the real callback is wrapped to run once. */
    raft_time leader_lost_at; /* when the leader's connection last ended from its side */
    raft_term hurried_term;   /* the term whose election timeout was last shortened */
    void (*io_close_impl)(struct raft_io *io, raft_io_close_cb cb);
    raft_io_close_cb io_close_cb;
    bool io_close_fired;
    int (*snapshot_get_impl)(struct raft_io *io, struct raft_io_snapshot_get *req, raft_io_snapshot_get_cb cb);
    raft_term told_snapshot_held; /* the term in which a held snapshot was logged */
};

/* Closed replication state, kept reachable until exit: a late second close callback from
 * libraft must never find freed memory. */
static kfd_repl *retired;

typedef struct submit_req {
    struct raft_apply req;
    kfd_repl *r;
    kfd_repl_cb cb; /* NULL once answered by the deadline: raft's callback then only frees */
    void *arg;
    uint64_t deadline;
    struct submit_req *prev, *next; /* in flight, oldest first */
} submit_req;

static uint64_t now_ms(uv_loop_t *loop) { return uv_now(loop); }

static void inflight_remove(kfd_repl *r, submit_req *sr)
{
    if (sr->prev != NULL)
        sr->prev->next = sr->next;
    else
        r->inflight_head = sr->next;
    if (sr->next != NULL)
        sr->next->prev = sr->prev;
    else
        r->inflight_tail = sr->prev;
    sr->prev = sr->next = NULL;
}

/* A command that is not committed in time (no quorum, a disk that stopped taking writes) is
 * answered unavailable; raft's own callback, whenever it comes, then only frees the request.
 * It may still commit later: the audit then shows an attempt that was never answered. */
static void expire_inflight(kfd_repl *r)
{
    uint64_t now = now_ms(r->loop);
    while (r->inflight_head != NULL && r->inflight_head->deadline <= now) {
        submit_req *sr = r->inflight_head;
        inflight_remove(r, sr);
        kf_err err = {0};
        kfd_apply_result none = {0};
        kf_err_set(&err, -ETIMEDOUT, "not committed within %u ms; retry (is a quorum of coordinators up?)",
                   COMMIT_TIMEOUT_MS);
        kfd_repl_cb cb = sr->cb;
        sr->cb = NULL;
        r->commits_timed_out++;
        cb(sr->arg, -ETIMEDOUT, &none, &err);
    }
}

/* Review rev17d, D1: a disputed or diverged replica answers nothing it applied. The command is
 * recorded (it is in the Raft log, and each replica applied it by its own rows), but the answer
 * this replica's proposer would send may rest on rows another process wrote: a login's token, a
 * revealed recovery key, a created secret id. Only the checkpointer's own commands (which settle
 * the dispute) and a release (rpc_node.c withholds its key itself, `release_withheld`) pass. */
static void withhold_answer(kfd_repl *r, const Keyfleet__V1__StateCommand *cmd)
{
    if (r->last.status != 0 || cmd == NULL || !kfd_store_answers_withheld(r->store))
        return;
    switch (cmd->cmd_case) {
    case KEYFLEET__V1__STATE_COMMAND__CMD_AUDIT_HEAD_CHECK:
    case KEYFLEET__V1__STATE_COMMAND__CMD_CHECKPOINT:
    case KEYFLEET__V1__STATE_COMMAND__CMD_STATE_CHECK:
    case KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE:
        return;
    default:
        break;
    }
    r->last.status = -EAGAIN;
    kf_err_set(&r->last.err, -EAGAIN, "this coordinator's state is disputed or diverged: the command was recorded, "
               "its answer is withheld; retry (another replica answers)");
    kf_log_error("answer_withheld", "command=%d reason=\"this replica's state is disputed or diverged\"",
                 (int)cmd->cmd_case);
}

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    kfd_repl *r = fsm->data;
    raft_index index = raft_last_applied(&r->raft) + 1;
    Keyfleet__V1__StateCommand *cmd = kfd_raft_entry_decode(buf->base, buf->len);
    r->last.index = index;
    r->last.res = (kfd_apply_result){0};
    kf_err_clear(&r->last.err);
    if (index <= kfd_store_applied_index(r->store)) {
        /* A replay of what the store already holds (every restart replays the log). */
        r->last.status = 0;
    } else {
        const Keyfleet__V1__StateCommand *cmds[1] = {cmd};
        unsigned voters = 0;
        for (unsigned i = 0; i < r->raft.configuration.n; i++)
            voters += r->raft.configuration.servers[i].role == RAFT_VOTER;
        kfd_store_set_sole_voter(r->store, voters <= 1);
        kfd_store_apply_batch(r->store, cmds, 1, index, &r->last.status, &r->last.res, &r->last.err);
        r->batched_commands++;
        kf_err herr = {0};
        int hr = r->env.on_applied(r->env.arg, cmd, false, &herr);
        if (hr != 0 && r->last.status == 0) {
            r->last.status = hr;
            r->last.err = herr;
        }
        withhold_answer(r, cmd);
        if (cmd == NULL)
            kf_log_error("raft_entry_undecodable", "index=%llu bytes=%zu", (unsigned long long)index, buf->len);
    }
    if (cmd != NULL)
        keyfleet__v1__state_command__free_unpacked(cmd, NULL);
    *result = &r->last;
    /* Never an error: libraft stops applying for good after one. Failures are results. */
    return 0;
}

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    kfd_repl *r = fsm->data;
    kfd_store *s = r->store;
    /* The image must hold exactly what raft believes is applied, or a follower restored from it
     * would skip entries. A failed store never snapshots. */
    if (kfd_store_failed(s) || kfd_store_applied_index(s) != raft_last_applied(&r->raft))
        return RAFT_BUSY;
    size_t len = 0;
    kf_err err = {0};
    if (kfd_store_serialize(s, &r->snap_img, &len, &err) != 0) {
        kf_log_error("raft_snapshot_failed", "error=%s", kf_log_q(err.msg));
        return RAFT_NOMEM;
    }
    kfd_raft_snapshot_header_fill(r->snap_hdr, kfd_store_applied_index(s));
    r->snap_bufs[0] = (struct raft_buffer){.base = r->snap_hdr, .len = SNAPSHOT_HEADER};
    r->snap_bufs[1] = (struct raft_buffer){.base = r->snap_img, .len = len};
    *bufs = r->snap_bufs;
    *n_bufs = 2;
    r->snapshots_taken++;
    /* A snapshot copies the whole database, which grows with the audit log (about 1 KiB an
     * entry). Waiting for a quarter as many new entries as it holds keeps the copying per entry
     * constant (about 4 KiB) instead of growing with the database; the cap bounds the log
     * replayed at start. */
    size_t next = len / SNAPSHOT_BYTES_PER_ENTRY;
    if (next > SNAPSHOT_THRESHOLD_CAP)
        next = SNAPSHOT_THRESHOLD_CAP;
    if (next < r->snapshot_threshold)
        next = r->snapshot_threshold;
    raft_set_snapshot_threshold(&r->raft, (unsigned)next);
    kf_log_info("raft_snapshot", "index=%llu bytes=%zu next_after_entries=%zu",
                (unsigned long long)kfd_store_applied_index(s), len, next);
    return 0;
}

static int fsm_snapshot_finalize(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    kfd_repl *r = fsm->data;
    (void)bufs, (void)n_bufs;
    sqlite3_free(r->snap_img);
    r->snap_img = NULL;
    return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    kfd_repl *r = fsm->data;
    const uint8_t *p = buf->base;
    uint64_t index = 0;
    if (kfd_raft_snapshot_header(p, buf->len, &index) != 0) {
        kf_log_error("raft_restore_failed", "error=\"not a keyfleet snapshot\" bytes=%zu", buf->len);
        return RAFT_CORRUPT;
    }
    if (index <= kfd_store_applied_index(r->store)) {
        /* Our database already holds everything the snapshot does (the usual case at start). */
        raft_free(buf->base);
        return 0;
    }
    kf_err err = {0};
    /* A snapshot replaces everything: its audit log must verify and extend this replica's own
     * verified log, and its newest checkpoint must carry a coordinator's signature. */
    kfd_image_check check;
    int rc = kfd_store_check_image(r->store, p + SNAPSHOT_HEADER, buf->len - SNAPSHOT_HEADER, &check, &err);
    if (rc == 0 && check.newest == NULL && check.records > 0)
        rc = kf_err_set(&err, -EPERM, "snapshot holds %llu audit records and no signed checkpoint",
                        (unsigned long long)check.records);
    if (rc == 0 && r->env.check_snapshot != NULL)
        rc = r->env.check_snapshot(r->env.arg, &check, &err);
    kfd_audit_free_record(check.newest);
    if (rc != 0) {
        r->snapshots_refused++;
        kf_log_error("raft_snapshot_refused", "index=%llu error=%s action=\"keeping this replica's state\"",
                     (unsigned long long)index, kf_log_q(err.msg));
        return RAFT_CORRUPT;
    }
    rc = kfd_store_replace(r->store, p + SNAPSHOT_HEADER, buf->len - SNAPSHOT_HEADER, &err);
    if (rc != 0) {
        kf_log_error("raft_restore_failed", "index=%llu error=%s", (unsigned long long)index, kf_log_q(err.msg));
        return RAFT_IOERR;
    }
    raft_free(buf->base);
    kf_err herr = {0};
    r->env.on_applied(r->env.arg, NULL, true, &herr);
    r->snapshots_restored++;
    kf_log_info("raft_restored", "index=%llu", (unsigned long long)index);
    return 0;
}

static void on_barrier(struct raft_barrier *req, int status)
{
    kfd_repl *r = req->data;
    r->barrier_pending = false;
    if (status == 0 && raft_state(&r->raft) == RAFT_LEADER) {
        r->ready_term = r->raft.current_term;
        kf_log_info("raft_leader_ready", "term=%llu applied=%llu", (unsigned long long)r->raft.current_term,
                    (unsigned long long)raft_last_applied(&r->raft));
    }
    free(req);
}

static void hurry_after_loss(kfd_repl *r);

/* The deferred transaction is committed after FLUSH_INTERVAL_MS or FLUSH_MAX_COMMANDS, whichever
 * comes first. Each commit writes every page the batch dirtied (audit rows, their indexes, the
 * applied index) to the WAL, about 0.7 ms here: per loop turn that was 40 us of every release
 * under load. A crash loses nothing: the entries are in the Raft log and are applied again. */
#define FLUSH_INTERVAL_MS 50
#define FLUSH_MAX_COMMANDS 4096

static void on_flush(uv_check_t *h)
{
    kfd_repl *r = h->data;
    kfd_store *store = r->store;
    if (!kfd_store_tx_open(store)) {
        r->tx_since = 0;
        return;
    }
    uint64_t now = uv_now(r->loop);
    if (r->tx_since == 0)
        r->tx_since = now;
    if (now - r->tx_since < FLUSH_INTERVAL_MS && kfd_store_tx_commands(store) < FLUSH_MAX_COMMANDS)
        return;
    kf_err err = {0};
    r->batches++;
    r->tx_since = 0;
    if (kfd_store_flush(store, &err) != 0)
        kf_log_error("store_flush_failed", "error=%s", kf_log_q(err.msg));
}

/* The Raft transport's check of a member's certificate (review rev17, R1): the denylist and the
 * re-add rule hold at the Raft port as at the RPC port and for checkpoint signers, so a stolen
 * certificate that was revoked, or one from before its coordinator was removed and added back,
 * neither votes nor sends entries. A store that cannot answer refuses nothing more. */
static const char *peer_check(void *data, const char *name, const char *serial, int64_t not_before)
{
    kfd_repl *r = data;
    kf_err err = {0};
    if (kfd_store_coordinator_cert_ok(r->store, name, serial, not_before, &err) != -EPERM)
        return NULL;
    snprintf(r->peer_refusal, sizeof(r->peer_refusal), "%s", err.msg);
    return r->peer_refusal;
}

static void on_transferred(struct raft_transfer *req) { free(req); }

/* A replica whose audit log diverged, or whose store failed, never stands for leader: its
 * election timer is kept from running out (libraft 0.15 has no public way to stop a voter's
 * elections), and leadership it holds is handed to another voter. It still votes and applies, so
 * the cluster keeps its quorum. */
/* Records a replica held when it started but no checkpoint covers yet (at most 200 ms of them
 * before it stopped) are vouched for by nothing but its own database: edited while it was
 * stopped, they would pass its checks at start, and as leader it would sign them and make the
 * honest replicas look diverged. So with other voters about, it stands only once a checkpoint
 * covers them (the leader's next one), or after TAIL_HOLD_MS when no leader came (a whole
 * cluster restarting). */
#define TAIL_HOLD_MS 3000

static bool holding_for_tail(kfd_repl *r)
{
    if (!kfd_store_audit_tail_unsigned(r->store) || uv_now(r->loop) - r->started_at >= TAIL_HOLD_MS)
        return false;
    unsigned voters = 0;
    for (unsigned i = 0; i < r->raft.configuration.n; i++)
        voters += r->raft.configuration.servers[i].role == RAFT_VOTER;
    if (voters < 2)
        return false;
    if (!r->told_tail) {
        r->told_tail = true;
        kf_log_info("raft_holding_back", "reason=\"audit records not yet covered by a checkpoint\" max_ms=%d",
                    TAIL_HOLD_MS);
    }
    return true;
}

/* The voter a replica standing down hands leadership to: each attempt the next of the other
 * voters in turn. Not libraft's own pick (id 0), the first up-to-date voter in configuration
 * order: two replicas whose stores failed handed it to each other that way, the target taking
 * it at once (TimeoutNow) whatever its election timer said, while the healthy third never stood
 * (review rev40 F1). In turn, a healthy voter is reached within as many hands as there are. */
static raft_id transfer_target(kfd_repl *r)
{
    raft_id others[64];
    unsigned n = 0;
    for (unsigned i = 0; i < r->raft.configuration.n && n < 64; i++) {
        const struct raft_server *s = &r->raft.configuration.servers[i];
        if (s->id != r->raft.id && s->role == RAFT_VOTER)
            others[n++] = s->id;
    }
    return n == 0 ? 0 : others[r->transfers++ % n];
}

static void keep_out_of_elections(kfd_repl *r)
{
    /* A failed store (a write refused under another process's lock, a disk error) fails closed
     * until restart, so as leader it would answer every request `unavailable`: hand the cluster
     * to a replica that can serve, as a diverged one does. */
    bool failed = kfd_store_failed(r->store);
    if (!failed && kfd_store_audit_diverged(r->store, NULL) == 0) {
        if (holding_for_tail(r) && raft_state(&r->raft) != RAFT_LEADER)
            r->raft.election_timer_start = r->raft.io->time(r->raft.io);
        return;
    }
    if (!r->told_diverged) {
        r->told_diverged = true;
        kf_log_error("raft_standing_down", "reason=%s state=%d",
                     failed ? "\"state store failed\"" : "\"audit log diverged\"", raft_state(&r->raft));
    }
    unsigned short state = raft_state(&r->raft);
    if (state == RAFT_FOLLOWER || state == RAFT_CANDIDATE) {
        r->raft.election_timer_start = r->raft.io->time(r->raft.io);
    } else if (state == RAFT_LEADER && r->raft.transfer == NULL) {
        struct raft_transfer *req = calloc(1, sizeof(*req));
        if (req != NULL && raft_transfer(&r->raft, req, transfer_target(r), on_transferred) != 0)
            free(req);
    }
}

static void on_monitor(uv_timer_t *t)
{
    kfd_repl *r = t->data;
    expire_inflight(r);
    hurry_after_loss(r);
    keep_out_of_elections(r);
    unsigned short state = raft_state(&r->raft);
    raft_id leader = 0;
    const char *address = NULL;
    raft_leader(&r->raft, &leader, &address);
    if (state != r->last_state || leader != r->last_leader) {
        char name[64] = "-";
        if (leader != 0 && address != NULL)
            kfd_raft_address_field(address, "name", name, sizeof(name));
        kf_log_info("raft_state", "state=%s term=%llu leader=%s", state == RAFT_LEADER ? "leader"
                                                                   : state == RAFT_CANDIDATE ? "candidate"
                                                                   : state == RAFT_FOLLOWER  ? "follower"
                                                                                             : "unavailable",
                    (unsigned long long)r->raft.current_term, name);
        r->last_state = state;
        r->last_leader = leader;
    }
    if (state == RAFT_LEADER && r->ready_term != r->raft.current_term && !r->barrier_pending) {
        /* A new leader serves writes once everything committed before it is applied here. */
        struct raft_barrier *b = calloc(1, sizeof(*b));
        if (b == NULL)
            return;
        b->data = r;
        if (raft_barrier(&r->raft, b, on_barrier) == 0)
            r->barrier_pending = true;
        else
            free(b);
    }
}

static void on_applied(struct raft_apply *req, int status, void *result)
{
    submit_req *sr = (submit_req *)req;
    kfd_repl *r = sr->r;
    kf_err err = {0};
    kfd_apply_result none = {0};
    if (sr->cb == NULL) {
        free(sr); /* answered at its deadline already */
        return;
    }
    inflight_remove(r, sr);
    if (status != 0) {
        kf_err_set(&err, -EAGAIN, "not committed: %s; retry (the cluster may be electing a leader)",
                   raft_strerror(status));
        sr->cb(sr->arg, -EAGAIN, &none, &err);
    } else if (result != &r->last || r->last.index != req->index) {
        kf_log_error("raft_result_lost", "index=%llu", (unsigned long long)req->index);
        kf_err_set(&err, -EIO, "the command's result was lost; it may have been applied");
        sr->cb(sr->arg, -EIO, &none, &err);
    } else {
        sr->cb(sr->arg, r->last.status, &r->last.res, &r->last.err);
    }
    free(sr);
}

static bool leader_ready(kfd_repl *r, const char **why, char *leader_rpc, size_t size);

void kfd_repl_submit(kfd_repl *r, const uint8_t *packed, size_t len, kfd_repl_cb cb, void *arg)
{
    kf_err err = {0};
    kfd_apply_result none = {0};
    const char *why = NULL;
    char leader[280];
    if (r == NULL || r->closed || !leader_ready(r, &why, leader, sizeof(leader))) {
        kf_err_set(&err, -EAGAIN, "%s", why != NULL ? why : "replication stopped");
        cb(arg, -EAGAIN, &none, &err);
        return;
    }
    size_t total = kfd_raft_entry_size(len);
    submit_req *sr = calloc(1, sizeof(*sr));
    struct raft_buffer buf = {.base = raft_malloc(total), .len = total};
    if (sr == NULL || buf.base == NULL) {
        free(sr);
        raft_free(buf.base);
        kf_err_set(&err, -ENOMEM, "out of memory");
        cb(arg, -ENOMEM, &none, &err);
        return;
    }
    kfd_raft_entry_fill(buf.base, packed, len);
    sr->r = r;
    sr->cb = cb;
    sr->arg = arg;
    sr->deadline = now_ms(r->loop) + COMMIT_TIMEOUT_MS;
    int rc = raft_apply(&r->raft, &sr->req, &buf, 1, on_applied);
    if (rc == 0) {
        sr->prev = r->inflight_tail;
        if (r->inflight_tail != NULL)
            r->inflight_tail->next = sr;
        else
            r->inflight_head = sr;
        r->inflight_tail = sr;
    } else {
        raft_free(buf.base);
        free(sr);
        kf_err_set(&err, -EAGAIN, "not accepted: %s", raft_strerror(rc));
        cb(arg, -EAGAIN, &none, &err);
    }
}

bool kfd_repl_writable(kfd_repl *r, const char **why, char *leader_rpc, size_t size)
{
    if (!leader_ready(r, why, leader_rpc, size))
        return false;
    if (kfd_store_audit_disputed(r->store, NULL) != 0) {
        *why = "this replica's audit head or state is disputed; waiting for a majority of replicas to settle it";
        return false;
    }
    if (r->confirmed_term != r->raft.current_term) {
        *why = "newly elected leader is waiting for a majority of replicas to confirm its audit log; retry";
        return false;
    }
    return true;
}

/* The leader with every earlier entry applied: what proposals need (the confirmation of its
 * audit head is itself one). */
static bool leader_ready(kfd_repl *r, const char **why, char *leader_rpc, size_t size)
{
    leader_rpc[0] = '\0';
    if (r == NULL || r->closed || !r->started) {
        *why = "replication is not running";
        return false;
    }
    if (kfd_store_audit_diverged(r->store, NULL) != 0) {
        *why = "this replica's audit log diverged from the signed history; it serves nothing (operations.md)";
        return false;
    }
    if (raft_state(&r->raft) == RAFT_LEADER) {
        if (r->ready_term == r->raft.current_term)
            return true;
        *why = "newly elected leader is applying earlier entries; retry";
        return false;
    }
    raft_id id = 0;
    const char *address = NULL;
    raft_leader(&r->raft, &id, &address);
    if (id != 0 && address != NULL && kfd_raft_address_field(address, "rpc", leader_rpc, size)) {
        *why = "not the leader";
        return false;
    }
    *why = "no leader: the cluster is electing one or has lost its quorum";
    return false;
}

/* A leader whose audit head no majority confirmed sends no snapshot: its database may be a
 * forgery (rewritten while the cluster was stopped), and a lagging replica that installed it would
 * hold the forged history (docs/audit.md). raft aborts the send and tries again at a later
 * heartbeat, so the replica catches up once the head is confirmed. */
static int guarded_snapshot_get(struct raft_io *io, struct raft_io_snapshot_get *req, raft_io_snapshot_get_cb cb)
{
    kfd_repl *r = ((struct raft *)io->data)->data;
    if (raft_state(&r->raft) == RAFT_LEADER && r->confirmed_term != r->raft.current_term) {
        if (r->told_snapshot_held != r->raft.current_term) {
            r->told_snapshot_held = r->raft.current_term;
            kf_log_warn("raft_snapshot_held", "term=%llu reason=\"this leader's audit head is not confirmed yet\"",
                        (unsigned long long)r->raft.current_term);
        }
        return RAFT_BUSY;
    }
    return r->snapshot_get_impl(io, req, cb);
}

static void guarded_io_close_cb(struct raft_io *io)
{
    kfd_repl *r = ((struct raft *)io->data)->data;
    if (r->io_close_fired)
        return;
    r->io_close_fired = true;
    r->io_close_cb(io);
}

static void guarded_io_close(struct raft_io *io, raft_io_close_cb cb)
{
    kfd_repl *r = ((struct raft *)io->data)->data;
    r->io_close_cb = cb;
    r->io_close_impl(io, guarded_io_close_cb);
}

/* Shortens this follower's current randomized election timeout (a public field of struct raft
 * that libraft draws again at every reset) to a random 0..max_ms from now. */
static bool holding_for_tail(kfd_repl *r);

static void hurry_election(kfd_repl *r, unsigned max_ms, const char *why)
{
    if (kfd_store_audit_diverged(r->store, NULL) != 0 || holding_for_tail(r))
        return; /* does not stand (keep_out_of_elections) */
    raft_time now = r->raft.io->time(r->raft.io);
    raft_time elapsed = now - r->raft.election_timer_start;
    unsigned jitter = (unsigned)r->raft.io->random(r->raft.io, 0, (int)max_ms);
    r->hurried_term = r->raft.current_term;
    if (elapsed + jitter < r->raft.follower_state.randomized_election_timeout) {
        r->raft.follower_state.randomized_election_timeout = (unsigned)(elapsed + jitter);
        kf_log_info("raft_election_hurried", "reason=%s term=%llu election_in_ms=%u", why,
                    (unsigned long long)r->raft.current_term, jitter);
    }
}

/* The leader's connection ended from its side: on a crash the kernel closes its sockets at once,
 * so there is no need to wait out a whole election timeout of silence. The survivors stand for
 * election after a random 0..timeout/2, so rarely at the same moment. A partition sends no such
 * signal and takes the normal path. */
static void on_peer_lost(void *data, raft_id id)
{
    kfd_repl *r = data;
    /* Both connections with the leader end together: act on the first. */
    if (r->closed || raft_state(&r->raft) != RAFT_FOLLOWER || r->raft.follower_state.current_leader.id != id ||
        r->hurried_term == r->raft.current_term)
        return;
    r->leader_lost_at = r->raft.io->time(r->raft.io);
    /* Forget the leader too: a follower that still believes in it refuses (pre-)votes until its
     * own timeout, and the survivor with the longer log, which must win, would be refused. The
     * address string stays with raft, which frees or replaces it when a leader is known again. */
    r->raft.follower_state.current_leader.id = 0;
    hurry_election(r, r->raft.election_timeout / 2, "leader_connection_lost");
}

/* After a crash, two more ways to lose a whole election timeout, each hurried once per term for
 * two seconds after the loss: a follower left without a leader in a newer term (it refused a
 * candidate whose log was behind its own, so it is the one that must stand), and a candidate
 * whose vote split with the other survivor's (both then wait a full candidate timeout). */
static void hurry_after_loss(kfd_repl *r)
{
    unsigned short state = raft_state(&r->raft);
    if (r->leader_lost_at == 0 || r->hurried_term == r->raft.current_term)
        return;
    if (r->raft.io->time(r->raft.io) - r->leader_lost_at > 2000) {
        r->leader_lost_at = 0;
        return;
    }
    raft_time now = r->raft.io->time(r->raft.io);
    raft_time elapsed = now - r->raft.election_timer_start;
    if (state == RAFT_FOLLOWER && r->raft.follower_state.current_leader.id == 0) {
        hurry_election(r, r->raft.election_timeout / 4, "no_leader_after_loss");
    } else if (state == RAFT_CANDIDATE && !r->raft.candidate_state.in_pre_vote && elapsed >= 50) {
        /* 50 ms into a real election without winning it: the votes are in, and split. */
        unsigned jitter = (unsigned)r->raft.io->random(r->raft.io, 0, (int)r->raft.election_timeout / 2);
        r->hurried_term = r->raft.current_term;
        if (elapsed + jitter < r->raft.candidate_state.randomized_election_timeout) {
            r->raft.candidate_state.randomized_election_timeout = (unsigned)(elapsed + jitter);
            kf_log_info("raft_election_hurried", "reason=split_vote_after_loss term=%llu election_in_ms=%u",
                        (unsigned long long)r->raft.current_term, jitter);
        }
    }
}

static int mkdir_p(const char *dir)
{
    return mkdir(dir, 0700) == 0 || errno == EEXIST ? 0 : -errno;
}

static int bootstrap(kfd_repl *r, const kfd_config *cfg, kf_err *err)
{
    struct raft_configuration conf;
    raft_configuration_init(&conf);
    int rc = 0;
    char addr[320];
    if (!cfg->cluster.configured) {
        rc = raft_configuration_add(&conf, kfd_raft_id(cfg->name), r->self_address, RAFT_VOTER);
    } else {
        for (size_t i = 0; rc == 0 && i < cfg->cluster.n_peers; i++) {
            const kfd_cluster_peer *p = &cfg->cluster.peers[i];
            if (kfd_raft_address(addr, sizeof(addr), p->name, p->raft, p->rpc) != 0)
                rc = RAFT_NAMETOOLONG;
            else
                rc = raft_configuration_add(&conf, kfd_raft_id(p->name), addr, RAFT_VOTER);
        }
    }
    if (rc == 0)
        rc = raft_bootstrap(&r->raft, &conf);
    raft_configuration_close(&conf);
    if (rc == RAFT_CANTBOOTSTRAP)
        return 0; /* state exists: the persisted configuration rules from here on */
    if (rc != 0)
        return kf_err_set(err, -EIO, "raft bootstrap: %s", raft_strerror(rc));
    /* A new log over an existing database (an upgrade from before replication): its entries
     * start again at 1, so the old applied index must not hide them. */
    if (kfd_store_applied_index(r->store) != 0 && kfd_store_reset_applied(r->store, err) != 0)
        return kf_err_wrap(err, "raft bootstrap");
    kf_log_info("raft_bootstrapped", "members=%zu", cfg->cluster.configured ? cfg->cluster.n_peers : (size_t)1);
    return 0;
}

static int start(kfd_repl *r, kf_err *err);

int kfd_repl_open(const kfd_repl_env *env, kfd_repl **ret, kf_err *err)
{
    kfd_repl *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    r->env = *env;
    r->store = env->store;
    r->loop = env->loop;
    if (kfd_store_failed(r->store)) {
        /* Fail closed without raft: every write answers unavailable until a restart. */
        kf_log_error("raft_not_started", "reason=%s", kf_log_q(kfd_store_failure(r->store)));
        *ret = r;
        return 0;
    }
    int rc = start(r, err);
    if (rc != 0) {
        kfd_repl_close(r);
        return rc;
    }
    *ret = r;
    return 0;
}

static int start(kfd_repl *r, kf_err *err)
{
    const kfd_config *cfg = r->env.cfg;
    snprintf(r->dir, sizeof(r->dir), "%s/raft", cfg->state_dir);
    int rc = mkdir_p(r->dir);
    if (rc != 0)
        return kf_err_set(err, rc, "%s: %s", r->dir, strerror(-rc));
    const kfd_cluster_peer *me = NULL;
    for (size_t i = 0; i < cfg->cluster.n_peers; i++)
        if (strcmp(cfg->cluster.peers[i].name, cfg->name) == 0)
            me = &cfg->cluster.peers[i];
    const char *rpc = me != NULL ? me->rpc : cfg->listen.v[0];
    const char *raft_addr = me != NULL ? me->raft : cfg->cluster.raft_listen != NULL ? cfg->cluster.raft_listen : "-";
    if (kfd_raft_address(r->self_address, sizeof(r->self_address), cfg->name, raft_addr, rpc) != 0)
        return kf_err_set(err, -ENAMETOOLONG, "member address too long");

    kfd_raft_transport_opts topts = {.cert_file = cfg->tls_cert, .key_file = cfg->tls_key, .ca_file = cfg->tls_ca,
                                     .listen = cfg->cluster.raft_listen};
    if ((rc = kfd_raft_transport_init(&r->transport, r->loop, &topts, err)) != 0)
        return rc;
    kfd_raft_transport_on_peer_lost(&r->transport, on_peer_lost, r);
    kfd_raft_transport_set_peer_check(&r->transport, peer_check, r);
    if ((rc = raft_uv_init(&r->io, r->loop, r->dir, &r->transport)) != 0)
        return kf_err_set(err, -EIO, "raft io: %s (%s)", raft_strerror(rc), r->io.errmsg);
    r->io_inited = true;
    r->io_close_impl = r->io.close;
    r->io.close = guarded_io_close;
    r->snapshot_get_impl = r->io.snapshot_get;
    r->io.snapshot_get = guarded_snapshot_get;
    raft_uv_set_connect_retry_delay(&r->io, 200);
    /* 1 MiB segments instead of 8: a small state volume still has room, at one more file per
     * thousand or so commands. */
    raft_uv_set_segment_size(&r->io, 1024 * 1024);
    /* Snapshots are written as they are: LZ4 over the whole database was a twentieth of the warm
     * path's CPU, to save disk space that the state directory has (docs/cluster.md). */
    raft_uv_set_snapshot_compression(&r->io, false);
    r->fsm.version = 2;
    r->fsm.data = r;
    r->fsm.apply = fsm_apply;
    r->fsm.snapshot = fsm_snapshot;
    r->fsm.snapshot_finalize = fsm_snapshot_finalize;
    r->fsm.restore = fsm_restore;
    if ((rc = raft_init(&r->raft, &r->io, &r->fsm, kfd_raft_id(cfg->name), r->self_address)) != 0)
        return kf_err_set(err, -EIO, "raft init: %s", raft_errmsg(&r->raft));
    r->raft_inited = true;
    r->raft.data = r;
    kfd_raft_transport_set_members(&r->transport, &r->raft.configuration); /* Raft peers: members only */
    raft_set_election_timeout(&r->raft, (unsigned)cfg->cluster.election_timeout_ms);
    raft_set_heartbeat_timeout(&r->raft, (unsigned)cfg->cluster.heartbeat_ms);
    r->snapshot_threshold = cfg->cluster.snapshot_threshold;
    raft_set_snapshot_threshold(&r->raft, cfg->cluster.snapshot_threshold);
    raft_set_snapshot_trailing(&r->raft, cfg->cluster.snapshot_trailing);
    raft_set_pre_vote(&r->raft, true);
    if (!cfg->cluster.join && (rc = bootstrap(r, cfg, err)) != 0)
        return rc;
    /* Applied entries share one sqlite transaction for up to FLUSH_INTERVAL_MS: the Raft log
     * already made them durable, so per-entry commits would only cost syscalls. */
    kfd_store_set_deferred(r->store, true);
    uv_check_init(r->loop, &r->flush);
    r->flush.data = r;
    uv_check_start(&r->flush, on_flush);
    uv_unref((uv_handle_t *)&r->flush);
    if ((rc = raft_start(&r->raft)) != 0) /* libraft leaves a failed listen's reason in the transport */
        return kf_err_set(err, -EIO, "raft start: %s",
                          raft_errmsg(&r->raft)[0] != '\0' ? raft_errmsg(&r->raft) : r->transport.errmsg);
    r->started = true;
    r->started_at = uv_now(r->loop);
    uv_timer_init(r->loop, &r->monitor);
    r->monitor.data = r;
    uv_timer_start(&r->monitor, on_monitor, 0, MONITOR_MS);
    uv_unref((uv_handle_t *)&r->monitor);
    /* raft_last_applied is where libraft restarts (its snapshot); the store's index is what this
     * replica holds, the figure an operator compares between survivors (operations.md). */
    kf_log_info("raft_started", "id=%llu address=%s applied=%llu raft_snapshot_index=%llu",
                (unsigned long long)kfd_raft_id(cfg->name), kf_log_q(r->self_address),
                (unsigned long long)kfd_store_applied_index(r->store),
                (unsigned long long)raft_last_applied(&r->raft));
    return 0;
}

static void on_raft_closed(struct raft *raft)
{
    kfd_repl *r = raft->data;
    r->raft_inited = false;
}

static void on_monitor_closed(uv_handle_t *h) { (void)h; }

void kfd_repl_close(kfd_repl *r)
{
    if (r == NULL)
        return;
    r->closed = true;
    if (r->monitor.loop != NULL && !uv_is_closing((uv_handle_t *)&r->monitor)) {
        uv_timer_stop(&r->monitor);
        uv_close((uv_handle_t *)&r->monitor, on_monitor_closed);
    }
    if (r->flush.loop != NULL && !uv_is_closing((uv_handle_t *)&r->flush)) {
        uv_check_stop(&r->flush);
        uv_close((uv_handle_t *)&r->flush, on_monitor_closed);
    }
    if (r->raft_inited) {
        r->raft.data = r;
        raft_close(&r->raft, on_raft_closed);
        /* Bounded: raft's close finishes within a few loop turns once its I/O is cancelled. */
        for (int i = 0; i < CLOSE_WAIT_TURNS && r->raft_inited; i++)
            uv_run(r->loop, UV_RUN_ONCE);
    }
    if (r->started) {
        /* Not freed (see retired): raft's memory was released by its close; what is left is
         * small and goes with the process. */
        retired = r;
    } else {
        if (r->io_inited)
            raft_uv_close(&r->io);
        else
            kfd_raft_transport_release(&r->transport);
        free(r);
    }
}

uint64_t kfd_repl_leading_term(kfd_repl *r)
{
    if (r == NULL || r->closed || !r->started || raft_state(&r->raft) != RAFT_LEADER ||
        r->ready_term != r->raft.current_term || kfd_store_audit_diverged(r->store, NULL) != 0)
        return 0;
    return r->raft.current_term;
}

void kfd_repl_set_audit_confirmed(kfd_repl *r, uint64_t term)
{
    if (r != NULL && term == r->raft.current_term)
        r->confirmed_term = term;
}

void kfd_repl_clear_audit_confirmed(kfd_repl *r)
{
    if (r != NULL)
        r->confirmed_term = 0;
}

size_t kfd_repl_voters(kfd_repl *r, kfd_repl_voter *out, size_t max)
{
    size_t k = 0;
    for (unsigned i = 0; r != NULL && i < r->raft.configuration.n && k < max; i++) {
        const struct raft_server *s = &r->raft.configuration.servers[i];
        if (s->role != RAFT_VOTER)
            continue;
        kfd_repl_voter *v = &out[k++];
        memset(v, 0, sizeof(*v));
        v->self = s->id == r->raft.id;
        if (!kfd_raft_address_field(s->address, "name", v->name, sizeof(v->name)))
            snprintf(v->name, sizeof(v->name), "%llu", (unsigned long long)s->id);
        if (!kfd_raft_address_field(s->address, "rpc", v->rpc, sizeof(v->rpc)))
            v->rpc[0] = '\0';
    }
    return k;
}

void kfd_repl_status(kfd_repl *r, Keyfleet__V1__ClusterStatusResponse *resp, kfd_repl_status_buf *buf)
{
    raft_id leader = 0;
    const char *laddr = NULL;
    raft_leader(&r->raft, &leader, &laddr);
    buf->leader[0] = '\0';
    if (laddr != NULL)
        kfd_raft_address_field(laddr, "name", buf->leader, sizeof(buf->leader));
    resp->leader = buf->leader;
    resp->term = r->raft.current_term;
    bool is_leader = raft_state(&r->raft) == RAFT_LEADER;
    size_t n = r->raft.configuration.n < 9 ? r->raft.configuration.n : 9;
    for (size_t i = 0; i < n; i++) {
        const struct raft_server *s = &r->raft.configuration.servers[i];
        Keyfleet__V1__ClusterMember *m = &buf->members[i];
        keyfleet__v1__cluster_member__init(m);
        if (!kfd_raft_address_field(s->address, "name", buf->names[i], sizeof(buf->names[i])))
            snprintf(buf->names[i], sizeof(buf->names[i]), "%llu", (unsigned long long)s->id);
        if (!kfd_raft_address_field(s->address, "raft", buf->rafts[i], sizeof(buf->rafts[i])))
            buf->rafts[i][0] = '\0';
        if (!kfd_raft_address_field(s->address, "rpc", buf->rpcs[i], sizeof(buf->rpcs[i])))
            buf->rpcs[i][0] = '\0';
        m->id = s->id;
        m->name = buf->names[i];
        m->raft_address = buf->rafts[i];
        m->rpc_address = buf->rpcs[i];
        m->leader = s->id == leader;
        m->voter = s->role == RAFT_VOTER;
        if (s->id == r->raft.id)
            m->applied_index = raft_last_applied(&r->raft);
        else if (is_leader && r->raft.leader_state.progress != NULL)
            m->applied_index = r->raft.leader_state.progress[i].match_index; /* replicated, as the leader sees it */
        buf->ptrs[i] = m;
    }
    resp->members = buf->ptrs;
    resp->n_members = n;
}

typedef struct change_req {
    struct raft_change req;
    kfd_repl *r;
    raft_id id;
    bool promote; /* an add: assign the voter role once the spare is in */
    kfd_repl_change_cb cb;
    void *arg;
} change_req;

static void on_changed(struct raft_change *req, int status)
{
    change_req *cr = (change_req *)req;
    kf_err err = {0};
    if (status == 0 && cr->promote) {
        cr->promote = false;
        /* Promotion first catches the new member up, then makes it a voter. */
        int rc = raft_assign(&cr->r->raft, &cr->req, cr->id, RAFT_VOTER, on_changed);
        if (rc == 0)
            return;
        status = rc;
    }
    if (status != 0)
        kf_err_set(&err, -EAGAIN, "membership change failed: %s", raft_strerror(status));
    cr->cb(cr->arg, status != 0 ? -EAGAIN : 0, &err);
    free(cr);
}

static int change(kfd_repl *r, const char *name, const char *raft_addr, const char *rpc_addr, kfd_repl_change_cb cb,
                  void *arg, kf_err *err)
{
    const char *why;
    char leader[280];
    if (!kfd_repl_writable(r, &why, leader, sizeof(leader)))
        return kf_err_set(err, -EAGAIN, "%s", why);
    change_req *cr = calloc(1, sizeof(*cr));
    if (cr == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    cr->r = r;
    cr->id = kfd_raft_id(name);
    cr->cb = cb;
    cr->arg = arg;
    int rc;
    if (raft_addr != NULL) {
        char addr[320];
        if (kfd_raft_address(addr, sizeof(addr), name, raft_addr, rpc_addr) != 0) {
            free(cr);
            return kf_err_set(err, -EINVAL, "member address too long");
        }
        cr->promote = true;
        rc = raft_add(&r->raft, &cr->req, cr->id, addr, on_changed);
    } else {
        rc = raft_remove(&r->raft, &cr->req, cr->id, on_changed);
    }
    if (rc != 0) {
        free(cr);
        int e = rc == RAFT_DUPLICATEID || rc == RAFT_DUPLICATEADDRESS ? -EEXIST
                : rc == RAFT_BADID                                     ? -ENOENT
                : rc == RAFT_CANTCHANGE                                ? -EBUSY
                                                                       : -EAGAIN;
        return kf_err_set(err, e, "%s", raft_strerror(rc));
    }
    return 0;
}

int kfd_repl_check_change(kfd_repl *r, const char *name, const char *raft_addr, const char *rpc_addr, kf_err *err)
{
    const char *why;
    char leader[280];
    if (!kfd_repl_writable(r, &why, leader, sizeof(leader)))
        return kf_err_set(err, -EAGAIN, "%s", why);
    /* Also a new member still catching up before its promotion (review rev46, R46-5). */
    if (r->raft.configuration_uncommitted_index != 0 || r->raft.leader_state.change != NULL)
        return kf_err_set(err, -EBUSY, "another membership change is in progress");
    raft_id id = kfd_raft_id(name);
    char addr[320];
    if (raft_addr != NULL && kfd_raft_address(addr, sizeof(addr), name, raft_addr, rpc_addr) != 0)
        return kf_err_set(err, -EINVAL, "member address too long");
    bool member = false;
    for (unsigned i = 0; i < r->raft.configuration.n; i++) {
        const struct raft_server *s = &r->raft.configuration.servers[i];
        if (s->id == id)
            member = true;
        else if (raft_addr != NULL && strcmp(s->address, addr) == 0)
            return kf_err_set(err, -EEXIST, "another member has that address");
    }
    if (raft_addr != NULL && member)
        return kf_err_set(err, -EEXIST, "%s is already a member", name);
    if (raft_addr == NULL && !member)
        return kf_err_set(err, -ENOENT, "%s is not a member", name);
    return 0;
}

static void on_handed_over(struct raft_transfer *req)
{
    kf_log_info("raft_leadership_handed_over", "reason=\"a removal of this coordinator was asked\"");
    free(req);
}

int kfd_repl_hand_over(kfd_repl *r, kf_err *err)
{
    if (r->raft.transfer != NULL)
        return kf_err_set(err, -EAGAIN, "leadership is being handed on already");
    struct raft_transfer *req = calloc(1, sizeof(*req));
    if (req == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    /* The next voter in turn, not libraft's own pick (review rev46b R46b-4, as rev40 F1). */
    int rc = raft_transfer(&r->raft, req, transfer_target(r), on_handed_over);
    if (rc != 0) {
        free(req);
        return kf_err_set(err, -EAGAIN, "handing leadership on: %s", raft_strerror(rc));
    }
    return 0;
}

int kfd_repl_add(kfd_repl *r, const char *name, const char *raft_addr, const char *rpc_addr, kfd_repl_change_cb cb,
                 void *arg, kf_err *err)
{
    return change(r, name, raft_addr, rpc_addr, cb, arg, err);
}

int kfd_repl_remove(kfd_repl *r, const char *name, kfd_repl_change_cb cb, void *arg, kf_err *err)
{
    return change(r, name, NULL, NULL, cb, arg, err);
}

void kfd_repl_get_stats(kfd_repl *r, kfd_repl_stats *ret)
{
    memset(ret, 0, sizeof(*ret));
    if (r == NULL)
        return;
    ret->batches = r->batches;
    ret->batched_commands = r->batched_commands;
    if (!r->started)
        return;
    ret->term = r->raft.current_term;
    ret->commit_index = r->raft.commit_index;
    ret->applied_index = raft_last_applied(&r->raft);
    ret->snapshots_taken = r->snapshots_taken;
    ret->snapshots_restored = r->snapshots_restored;
    ret->snapshots_refused = r->snapshots_refused;
    ret->peers_refused = kfd_raft_transport_refused(&r->transport);
    ret->commit_timeouts = r->commits_timed_out;
    ret->leader = raft_state(&r->raft) == RAFT_LEADER;
}
