#include "front/metrics.h"
#include "core/checkpoint.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/replication.h"
#include "core/app.h"
#include "core/webhook.h"
#include "front/call.h"
#include "front/seal.h"
#include "front/server.h"
#include "kf_secmem.h"
#include "store/store_audit.h"
#include "store/store_dispute.h"
#include "store/store_read.h"

typedef struct out {
    char *s;
    size_t len, cap;
    int failed;
} out;

static void emit(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(out *o, const char *fmt, ...)
{
    if (o->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->s + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)n;
        char *s = realloc(o->s, cap);
        if (s == NULL) {
            o->failed = 1;
            return;
        }
        o->s = s;
        o->cap = cap;
    }
}

/* The RPC counters, by method and Connect code. */
static void emit_requests(out *o, const kfd_server *srv)
{
    const kfd_metrics *m = &srv->metrics;
    emit(o, "# HELP keyfleet_rpc_requests_total RPC requests by method and Connect code.\n"
            "# TYPE keyfleet_rpc_requests_total counter\n");
    for (size_t i = 0; i <= srv->n_methods && i <= KFD_METRICS_MAX_METHODS; i++) {
        const char *name = i < srv->n_methods ? srv->methods[i].path + 1 : "unknown";
        for (int c = 0; c < KF_CONNECT_CODE_COUNT; c++)
            if (m->requests[i][c] > 0)
                emit(o, "keyfleet_rpc_requests_total{method=\"%s\",code=\"%s\"} %llu\n", name,
                     kf_connect_code_name((kf_connect_code)c), (unsigned long long)m->requests[i][c]);
    }
}

/* The front's counters: TLS, connections, the HTTP/2 guard, sealing, locked memory. */
static void emit_front(out *o, const kfd_server *srv)
{
    const kfd_metrics *m = &srv->metrics;
    kfd_seal_stats seal = kfd_seal_get_stats();
    emit(o,
         "# HELP keyfleet_tls_handshakes_total TLS handshakes by result.\n"
         "# TYPE keyfleet_tls_handshakes_total counter\n"
         "keyfleet_tls_handshakes_total{result=\"ok\"} %llu\n"
         "keyfleet_tls_handshakes_total{result=\"failed\"} %llu\n"
         "# HELP keyfleet_auth_failures_total Rejected client certificates and callers.\n"
         "# TYPE keyfleet_auth_failures_total counter\n"
         "keyfleet_auth_failures_total %llu\n"
         "# HELP keyfleet_connections_total Accepted and rejected TCP connections.\n"
         "# TYPE keyfleet_connections_total counter\n"
         "keyfleet_connections_total{result=\"accepted\"} %llu\n"
         "keyfleet_connections_total{result=\"rejected\"} %llu\n"
         "# HELP keyfleet_connections_open Open client connections.\n"
         "# TYPE keyfleet_connections_open gauge\n"
         "keyfleet_connections_open %u\n"
         "# HELP keyfleet_tls_reloads_total Certificate reloads (SIGHUP).\n"
         "# TYPE keyfleet_tls_reloads_total counter\n"
         "keyfleet_tls_reloads_total %llu\n"
         "# HELP keyfleet_h2_reset_floods_total HTTP/2 connections ended for too many stream resets (GOAWAY ENHANCE_YOUR_CALM).\n"
         "# TYPE keyfleet_h2_reset_floods_total counter\n"
         "keyfleet_h2_reset_floods_total %llu\n"
         "# HELP keyfleet_h2_bodies_cut_total Request bodies ended early for being over limits.max_body_bytes.\n"
         "# TYPE keyfleet_h2_bodies_cut_total counter\n"
         "keyfleet_h2_bodies_cut_total %llu\n"
         "# HELP keyfleet_h2_control_floods_total HTTP/2 connections ended for too many PING or SETTINGS frames.\n"
         "# TYPE keyfleet_h2_control_floods_total counter\n"
         "keyfleet_h2_control_floods_total %llu\n"
         "# HELP keyfleet_h2_streams_refused_total HTTP/2 streams refused: past the advertised count or a body budget.\n"
         "# TYPE keyfleet_h2_streams_refused_total counter\n"
         "keyfleet_h2_streams_refused_total %llu\n"
         "# HELP keyfleet_h2_body_bytes_held Request body bytes h2o holds for bodies still arriving.\n"
         "# TYPE keyfleet_h2_body_bytes_held gauge\n"
         "keyfleet_h2_body_bytes_held %llu\n"
         "# HELP keyfleet_accept_errors_total Failed accepts (EMFILE, ENFILE, ...).\n"
         "# TYPE keyfleet_accept_errors_total counter\n"
         "keyfleet_accept_errors_total %llu\n"
         "# HELP keyfleet_handshakes_rate_limited_total Connections closed before the TLS handshake: past the source address's handshake rate.\n"
         "# TYPE keyfleet_handshakes_rate_limited_total counter\n"
         "keyfleet_handshakes_rate_limited_total %llu\n"
         "# HELP keyfleet_http1_heads_refused_total HTTP/1.1 connections closed for a request head over 8 KiB or 64 lines.\n"
         "# TYPE keyfleet_http1_heads_refused_total counter\n"
         "keyfleet_http1_heads_refused_total %llu\n"
         "# HELP keyfleet_writes_refused_total Writes to clients refused at once (the client reset the connection): the connection is closed.\n"
         "# TYPE keyfleet_writes_refused_total counter\n"
         "keyfleet_writes_refused_total %llu\n"
         "# HELP keyfleet_seal_contexts_total HPKE contexts set up to seal keys to agents (one per connection and agent key).\n"
         "# TYPE keyfleet_seal_contexts_total counter\n"
         "keyfleet_seal_contexts_total %llu\n"
         "# HELP keyfleet_sealed_keys_total Keys sealed to agents.\n"
         "# TYPE keyfleet_sealed_keys_total counter\n"
         "keyfleet_sealed_keys_total %llu\n"
         "# HELP keyfleet_seal_contexts_open HPKE contexts held by open connections, in locked memory.\n"
         "# TYPE keyfleet_seal_contexts_open gauge\n"
         "keyfleet_seal_contexts_open %zu\n"
         "# HELP keyfleet_secmem_lock_failures_total Key buffers that could not be mlock'ed.\n"
         "# TYPE keyfleet_secmem_lock_failures_total counter\n"
         "keyfleet_secmem_lock_failures_total %lu\n",
         (unsigned long long)m->tls_handshakes_ok, (unsigned long long)m->tls_handshakes_failed,
         (unsigned long long)m->auth_failures, (unsigned long long)m->connections_accepted,
         (unsigned long long)m->connections_rejected, srv->connections, (unsigned long long)m->tls_reloads,
         (unsigned long long)m->h2_reset_floods, (unsigned long long)m->h2_bodies_cut,
         (unsigned long long)m->h2_control_floods, (unsigned long long)m->h2_streams_refused,
         (unsigned long long)srv->h2_body_bytes, (unsigned long long)m->accept_errors,
         (unsigned long long)m->handshakes_rate_limited, (unsigned long long)m->http1_heads_refused,
         (unsigned long long)m->writes_refused,
         (unsigned long long)seal.contexts, (unsigned long long)seal.keys, kfd_seal_contexts_live(),
         kf_secmem_lock_failures());
}

/* The app's: webhook, store, Raft and the audit log. */
static void emit_app(out *o, const kfd_app *app)
{
    kfd_webhook_stats w = kfd_webhook_get_stats(app->webhook);
    kfd_repl_stats rs;
    kfd_repl_get_stats(app->repl, &rs);
    uint64_t volumes = 0;
    if (app->store != NULL && !kfd_store_failed(app->store))
        kfd_store_count_volumes(app->store, &volumes);
    emit(o,
         "# HELP keyfleet_webhook_total Webhook notifications by result.\n"
         "# TYPE keyfleet_webhook_total counter\n"
         "keyfleet_webhook_total{result=\"delivered\"} %llu\n"
         "keyfleet_webhook_total{result=\"failed\"} %llu\n"
         "keyfleet_webhook_total{result=\"retry\"} %llu\n"
         "# HELP keyfleet_store_up 1 while the state store is healthy.\n"
         "# TYPE keyfleet_store_up gauge\n"
         "keyfleet_store_up %d\n"
         "# HELP keyfleet_volumes Enrolled volumes.\n"
         "# TYPE keyfleet_volumes gauge\n"
         "keyfleet_volumes %llu\n"
         "# HELP keyfleet_commit_batches_total Store transactions: applied Raft entries share one for up to 50 ms.\n"
         "# TYPE keyfleet_commit_batches_total counter\n"
         "keyfleet_commit_batches_total %llu\n"
         "# HELP keyfleet_commit_commands_total State commands applied; divided by batches: commands per transaction.\n"
         "# TYPE keyfleet_commit_commands_total counter\n"
         "keyfleet_commit_commands_total %llu\n"
         "# HELP keyfleet_policy_version Current policy version.\n"
         "# TYPE keyfleet_policy_version gauge\n"
         "keyfleet_policy_version %llu\n",
         (unsigned long long)w.delivered, (unsigned long long)w.failed, (unsigned long long)w.retries,
         kfd_store_failed(app->store) ? 0 : 1, (unsigned long long)volumes, (unsigned long long)rs.batches,
         (unsigned long long)rs.batched_commands, (unsigned long long)app->policy_version);
    emit(o,
         "# HELP keyfleet_raft_leader 1 while this coordinator is the Raft leader.\n"
         "# TYPE keyfleet_raft_leader gauge\n"
         "keyfleet_raft_leader %d\n"
         "# HELP keyfleet_raft_term Current Raft term.\n"
         "# TYPE keyfleet_raft_term gauge\n"
         "keyfleet_raft_term %llu\n"
         "# HELP keyfleet_raft_commit_index Highest Raft entry known committed.\n"
         "# TYPE keyfleet_raft_commit_index gauge\n"
         "keyfleet_raft_commit_index %llu\n"
         "# HELP keyfleet_raft_applied_index Highest Raft entry applied to the store here.\n"
         "# TYPE keyfleet_raft_applied_index gauge\n"
         "keyfleet_raft_applied_index %llu\n"
         "# HELP keyfleet_raft_snapshots_total Snapshots taken here and installed from the leader.\n"
         "# TYPE keyfleet_raft_snapshots_total counter\n"
         "keyfleet_raft_snapshots_total{kind=\"taken\"} %llu\n"
         "keyfleet_raft_snapshots_total{kind=\"restored\"} %llu\n"
         "# HELP keyfleet_raft_peers_refused_total Raft connections refused (not a coordinator, wrong name).\n"
         "# TYPE keyfleet_raft_peers_refused_total counter\n"
         "keyfleet_raft_peers_refused_total %llu\n"
         "# HELP keyfleet_raft_commit_timeouts_total Commands answered unavailable because they were not committed in time.\n"
         "# TYPE keyfleet_raft_commit_timeouts_total counter\n"
         "keyfleet_raft_commit_timeouts_total %llu\n",
         rs.leader ? 1 : 0, (unsigned long long)rs.term, (unsigned long long)rs.commit_index,
         (unsigned long long)rs.applied_index, (unsigned long long)rs.snapshots_taken,
         (unsigned long long)rs.snapshots_restored, (unsigned long long)rs.peers_refused,
         (unsigned long long)rs.commit_timeouts);
    kfd_audit_head h = {0};
    uint64_t diverged = 0, disputed = 0, disputes = 0, note_ns = 0;
    if (app->store != NULL) {
        note_ns = kfd_store_state_note_cost_ns(app->store);
        kfd_store_audit_head(app->store, &h);
        diverged = kfd_store_audit_diverged(app->store, NULL);
        disputed = kfd_store_audit_disputed(app->store, NULL);
        disputes = kfd_store_disputes_total(app->store);
    }
    kfd_checkpoint_stats cs;
    kfd_checkpointer_stats(app->checkpointer, &cs);
    emit(o,
         "# HELP keyfleet_audit_records Audit records applied here.\n"
         "# TYPE keyfleet_audit_records gauge\n"
         "keyfleet_audit_records %llu\n"
         "# HELP keyfleet_audit_checkpoint_size Records covered by the newest signed checkpoint here.\n"
         "# TYPE keyfleet_audit_checkpoint_size gauge\n"
         "keyfleet_audit_checkpoint_size %llu\n"
         "# HELP keyfleet_audit_checkpoints_total Checkpoints this coordinator signed as leader, and that failed.\n"
         "# TYPE keyfleet_audit_checkpoints_total counter\n"
         "keyfleet_audit_checkpoints_total{result=\"committed\"} %llu\n"
         "keyfleet_audit_checkpoints_total{result=\"failed\"} %llu\n"
         "# HELP keyfleet_audit_diverged 1 when this replica's audit log left the signed history (it serves nothing).\n"
         "# TYPE keyfleet_audit_diverged gauge\n"
         "keyfleet_audit_diverged %d\n"
         "# HELP keyfleet_audit_diverged_seq The record at which (at the latest) it diverged; 0: it did not.\n"
         "# TYPE keyfleet_audit_diverged_seq gauge\n"
         "keyfleet_audit_diverged_seq %llu\n"
         "# HELP keyfleet_audit_disputed 1 while this replica's head or state differs from one other word and a majority has not settled it (it serves nothing).\n"
         "# TYPE keyfleet_audit_disputed gauge\n"
         "keyfleet_audit_disputed %d\n"
         "# HELP keyfleet_audit_disputes_total Disputes since it started (review rev17c, C1).\n"
         "# TYPE keyfleet_audit_disputes_total counter\n"
         "keyfleet_audit_disputes_total %llu\n"
         "# HELP keyfleet_raft_snapshots_refused_total Snapshots from the leader refused: their audit log did not verify or extend this replica's.\n"
         "# TYPE keyfleet_raft_snapshots_refused_total counter\n"
         "keyfleet_raft_snapshots_refused_total %llu\n"
         "# HELP keyfleet_state_note_seconds What this replica's last state note at a checkpoint took (its scan of every replicated table; the leader asks for the next one 50 times that later, at least 0.5 s, times a random factor in [0.5, 1.5), at most 10 s).\n"
         "# TYPE keyfleet_state_note_seconds gauge\n"
         "keyfleet_state_note_seconds %.6f\n",
         (unsigned long long)h.seq, (unsigned long long)h.checkpoint_size, (unsigned long long)cs.signed_total,
         (unsigned long long)cs.failed_total, diverged != 0 ? 1 : 0, (unsigned long long)diverged,
         disputed != 0 ? 1 : 0, (unsigned long long)disputes, (unsigned long long)rs.snapshots_refused,
         (double)note_ns / 1e9);
}

char *kfd_metrics_render(const kfd_server *srv, size_t *ret_len)
{
    out o = {malloc(4096), 0, 4096, 0};
    if (o.s == NULL)
        return NULL;
    emit_requests(&o, srv);
    emit_front(&o, srv);
    if (srv->app != NULL)
        emit_app(&o, srv->app);
    if (o.failed) {
        free(o.s);
        return NULL;
    }
    *ret_len = o.len;
    return o.s;
}
