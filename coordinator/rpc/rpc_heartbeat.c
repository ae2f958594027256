/* NodeService.Heartbeat (docs/protocol.md): liveness, the offline unlocks and dead-man locks a
 * node reports, re-attestation while it runs, and the crypt-erase reports and orders
 * (rpc_erase.c).
 *
 * Order: validate; ready; heartbeat rate; revoked (told to lock, not refused); the quote; the op
 * and what it answers (recovery keys to replace, dead-man window, erase orders); the reports kept
 * and within budget; whether the heartbeat is the node's contact; then every commit, each
 * counted in op->outstanding and answered when the last one calls back. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rpc/rpc_heartbeat.h"
#include "rpc/rpc_admin.h"
#include "rpc/rpc_attest.h"
#include "rpc/rpc_erase.h"
#include "rpc/rpc_node.h"
#include "store/store_erase.h"

#include "core/app.h"
#include "core/audit.h"
#include "core/ratelimit.h"
#include "front/server.h"
#include "keyfleet/v1/node.pb-c.h"
#include "kf_node_check.h"
#include "kf_time.h"
#include "kf_log.h"
#include "store/store_apply.h"
#include "store/store_read.h"
#include "store/store_recovery.h"

typedef struct heartbeat_op {
    kfd_op base;
    bool revoked;
    uint64_t dead_man_after_s;
    size_t outstanding;
    int failed;
    bool attested;
    char attest_why[320];
    char *replace[100]; /* volumes whose recovery key was revealed: the agent replaces them */
    size_t n_replace;
    char **erase_ids; /* volumes the node is to crypt-erase (rpc_erase.c) */
    size_t n_erase;
    char *erase_all_ids[KFD_ERASE_MAX]; /* of those, the ones that erase every keyslot (borrowed) */
    size_t n_erase_all;
    kfd_erase_action erase_actions[KF_ERASED_MAX];
} heartbeat_op;

static void answer_heartbeat(heartbeat_op *op)
{
    kfd_call *call = op->base.call;
    if (call != NULL && op->failed > 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE,
                       "offline unlocks, dead-man locks, an attestation failure or the last contact could not be recorded; report again");
    } else if (call != NULL) {
        Keyfleet__V1__Timestamp now = KEYFLEET__V1__TIMESTAMP__INIT;
        now.seconds = time(NULL);
        Keyfleet__V1__HeartbeatResponse resp = KEYFLEET__V1__HEARTBEAT_RESPONSE__INIT;
        resp.lock = op->revoked;
        resp.server_time = &now;
        resp.attested = op->attested;
        resp.attestation = op->attest_why;
        resp.dead_man_after_s = op->dead_man_after_s;
        resp.n_recovery_replace = op->n_replace;
        resp.recovery_replace = op->replace;
        resp.erase_volume_ids = op->erase_ids;
        resp.n_erase_volume_ids = op->n_erase;
        resp.erase_all_volume_ids = op->erase_all_ids;
        resp.n_erase_all_volume_ids = op->n_erase_all;
        kfd_call_reply(call, &resp.base);
    }
    for (size_t i = 0; i < op->n_replace; i++)
        free(op->replace[i]);
    kfd_store_free_ids(op->erase_ids, op->n_erase);
    kfd_op_free(op);
}

static void on_offline_audited(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)res, (void)err;
    heartbeat_op *op = arg;
    if (status != 0)
        op->failed++;
    if (--op->outstanding == 0)
        answer_heartbeat(op);
}

/* Each offline unlock and dead-man lock a heartbeat reports is an audit record and a Raft entry:
 * a node has REPORT_BURST of them recorded one by one at once, refilled at REPORT_PER_MINUTE;
 * past that, the rest of a heartbeat's reports are counted in one reports_over_budget record (and
 * the heartbeat succeeds, so the agent drops them and its dead-man clock is not stopped). Before,
 * one node, revoked or not, wrote 1,100 records per 59 KB request, 3 MB a second. */
#define REPORT_BURST 200
#define REPORT_PER_MINUTE 1
/* Heartbeats a node may send: each records its contact, one Raft write. An agent sends one per
 * watch_interval (at least 1 s) and one after an unlock; a node sending faster is refused
 * (resource_exhausted, Retry-After) rather than writing to the log as fast as it can ask. */
#define HEARTBEAT_BURST 60
#define HEARTBEAT_PER_MINUTE 120

/* How many of n reports node may have recorded one by one now. */
static size_t reports_within_budget(kfd_app *app, const char *node, size_t n)
{
    size_t ok = 0;
    uint64_t now = kf_monotonic_ms();
    while (ok < n && kfd_ratelimit_take(app->report_limit, node, REPORT_PER_MINUTE, REPORT_BURST, now) == 0)
        ok++;
    return ok;
}

/* The offline unlocks a heartbeat may record (review rev26 R6): only of volumes the caller
 * enrolled, and each (volume, at) once per heartbeat; any node could otherwise write offline_unlock
 * records naming another node's volume, or the same one a thousand times. Fills keep with those
 * kept and returns how many; counts the rest in not_own and repeated (first_bad names the first
 * refused volume), or returns a negative errno when the store cannot tell. */
static int own_offline_unlocks(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req,
                               const Keyfleet__V1__OfflineUnlock **keep, size_t *not_own, size_t *repeated,
                               char *first_bad, size_t first_bad_size)
{
    size_t kept = 0;
    const char *checked = NULL; /* the last volume found to be the caller's (reports come in runs) */
    *not_own = *repeated = 0;
    first_bad[0] = '\0';
    for (size_t i = 0; i < req->n_offline_unlocks; i++) {
        const Keyfleet__V1__OfflineUnlock *u = req->offline_unlocks[i];
        bool own = checked != NULL && strcmp(checked, u->volume->id) == 0;
        if (!own) {
            kfd_volume v;
            int r = kfd_store_get_volume(kfd_call_app(call)->store, u->volume->id, &v);
            if (r != 0 && r != -ENOENT)
                return r;
            own = r == 0 && strcmp(v.node, call->peer->name) == 0;
            if (r == 0)
                kfd_volume_clear(&v);
            if (own)
                checked = u->volume->id;
        }
        bool again = false;
        for (size_t k = 0; own && !again && k < kept; k++)
            again = keep[k]->at->seconds == u->at->seconds && strcmp(keep[k]->volume->id, u->volume->id) == 0;
        if (own && !again) {
            keep[kept++] = u;
            continue;
        }
        ++*(own ? repeated : not_own);
        if (first_bad[0] == '\0')
            snprintf(first_bad, first_bad_size, "%s", u->volume->id);
    }
    return (int)kept;
}

/* The checks before anything is read: a well-formed request, a coordinator that can record, the
 * node's heartbeat rate; and whether the node is revoked. False when the call was answered. */
static bool heartbeat_admit(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req, bool *revoked)
{
    char bad_buf[160];
    const char *bad = kf_check_heartbeat(req, bad_buf, sizeof(bad_buf));
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return false;
    }
    const char *why;
    if (!kfd_app_ready(kfd_call_app(call), &why)) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "coordinator cannot record: %s", why);
        return false;
    }
    uint32_t wait = kfd_ratelimit_take(kfd_call_app(call)->heartbeat_limit, call->peer->name, HEARTBEAT_PER_MINUTE,
                                       HEARTBEAT_BURST, kf_monotonic_ms());
    if (wait != 0) {
        kfd_rpc_retry_after(call, wait);
        kfd_call_error(call, KF_CONNECT_RESOURCE_EXHAUSTED, "more than %d heartbeats a minute; retry after %u ms",
                       HEARTBEAT_PER_MINUTE, wait);
        return false;
    }
    *revoked = false;
    if (kfd_store_node_revoked(kfd_call_app(call)->store, call->peer->name, revoked) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return false;
    }
    return true;
}

/* Re-attestation while the node runs (watch mode): the quote is bound to this connection
 * and to "Heartbeat"; a drift from the accepted values is audited once per new value. Fills att
 * when the request has a quote, and sets drift; false when the call was answered. */
static bool heartbeat_attest(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req, kfd_attest_eval *att,
                             bool *drift)
{
    *drift = false;
    memset(att, 0, sizeof(*att));
    if (req->attestation != NULL) {
        static const ProtobufCBinaryData none = {0, NULL};
        if (!kfd_rpc_attest_eval(call, req->attestation, "Heartbeat", "", &none, "", att))
            return false;
        kfd_attest_record rec;
        int r = kfd_store_get_attest(kfd_call_app(call)->store, call->peer->name, &rec);
        if (r != 0 && r != -ENOENT) {
            kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
            return false;
        }
        /* Nothing to drift from without accepted values (the node's first enrollment sets them).
         * A TPM state that contradicts the recorded one holds the node, once. */
        bool held = r == 0 && rec.held[0] != '\0';
        *drift = (att->hold && !held) || (!att->attested && !att->no_baseline && att->seen[0] != '\0' &&
                                           (r == -ENOENT || strcmp(rec.seen, att->seen) != 0));
        if (held) {
            att->attested = false;
            snprintf(att->why, sizeof(att->why), "node '%.64s' is held (%.15s): %.180s; keyfleetctl node attest show|unhold",
                     call->peer->name, rec.held_kind, rec.held);
        }
    }
    return true;
}

/* The op and what the answer carries besides the reports' outcome: the recovery keys to replace,
 * the dead-man window, the crypt-erase plan (the node's reports of erases) and orders (the erases
 * still to do, less those). Sets n_erase_commits to the commits the plan makes; NULL when the
 * call was answered. */
static heartbeat_op *new_heartbeat_op(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req, bool revoked,
                                      int *n_erase_commits)
{
    heartbeat_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return NULL;
    }
    op->revoked = revoked;
    if (!revoked && kfd_store_recovery_to_replace(kfd_call_app(call)->store, call->peer->name, op->replace, 100,
                                                  &op->n_replace) != 0) {
        for (size_t i = 0; i < op->n_replace; i++)
            free(op->replace[i]);
        kfd_op_free(op);
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return NULL;
    }
    op->dead_man_after_s = kfd_policy_dead_man(kfd_call_app(call)->policy, call->peer->name);
    *n_erase_commits = kfd_erase_plan(call, req, op->erase_actions);
    if (*n_erase_commits < 0 || kfd_erase_orders(call, req, op->erase_actions, &op->erase_ids, &op->n_erase,
                                                     op->erase_all_ids, &op->n_erase_all) != 0) {
        kfd_op_free(op);
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return NULL;
    }
    return op;
}

/* A heartbeat's offline unlock and dead-man lock reports: those recorded one by one, those past
 * the node's report budget (counted in one record) and those refused (counted in another). */
typedef struct heartbeat_reports {
    const Keyfleet__V1__OfflineUnlock **offline; /* the node's own, each once (own_offline_unlocks) */
    size_t n_offline, n_locks;                   /* recorded one by one */
    size_t over_offline, over_locks;             /* past the budget */
    size_t not_own, repeated;                    /* refused offline unlocks */
    char first_bad[130];
} heartbeat_reports;

/* Sorts req's reports into rep (free rep->offline after); false when the store cannot tell (or no
 * memory). */
static bool heartbeat_reports_of(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req, heartbeat_reports *rep)
{
    memset(rep, 0, sizeof(*rep));
    rep->n_locks = req->n_dead_man_locks;
    rep->offline = calloc(req->n_offline_unlocks + 1, sizeof(*rep->offline));
    int kept = rep->offline == NULL ? -ENOMEM
                                    : own_offline_unlocks(call, req, rep->offline, &rep->not_own, &rep->repeated,
                                                          rep->first_bad, sizeof(rep->first_bad));
    if (kept < 0) {
        free(rep->offline);
        return false;
    }
    rep->n_offline = (size_t)kept;
    size_t budget = reports_within_budget(kfd_call_app(call), call->peer->name, rep->n_locks + rep->n_offline);
    rep->over_locks = rep->n_locks > budget ? rep->n_locks - budget : 0;
    rep->n_locks -= rep->over_locks;
    rep->over_offline = rep->n_offline > budget - rep->n_locks ? rep->n_offline - (budget - rep->n_locks) : 0;
    rep->n_offline -= rep->over_offline;
    return true;
}

/* Under require: [attested] (or [tpm_key]) a heartbeat that does not meet it is answered but
 * is not the node's contact (review rev26 R10): a copied node key must not keep a silent
 * machine off the PAST list. The agent's own switch counts the answer either way. */
static bool heartbeat_is_contact(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req,
                                 const kfd_attest_eval *att)
{
    bool need_tpm_key, need_attested;
    kfd_policy_contact_requires(kfd_call_app(call)->policy, call->peer->name, &need_tpm_key, &need_attested);
    bool contact = (!need_tpm_key || call->peer->tpm_key) &&
                   (!need_attested || (req->attestation != NULL && att->attested));
    if (!contact)
        kf_log_warn("heartbeat_not_contact", "node=%s reason=%s", call->peer->name,
                    need_tpm_key && !call->peer->tpm_key ? "no_tpm_key"
                    : req->attestation == NULL           ? "no_quote"
                                                         : "not_attested");
    return contact;
}

/* The commits below each count one in op->outstanding (heartbeat_commits). */

static void commit_drift(kfd_call *call, heartbeat_op *op, const kfd_attest_eval *att)
{
    char reason[400];
    snprintf(reason, sizeof(reason), "re-attestation while running failed: %s", att->why);
    /* Held (review rev17, A1 and lock on drift): for its TPM state always; for changed PCRs when
     * a rule for the node requires attestation. */
    bool need_tpm_key, need_attested;
    kfd_policy_contact_requires(kfd_call_app(call)->policy, call->peer->name, &need_tpm_key, &need_attested);
    const char *hold = att->hold ? "tpm" : need_attested && att->quote_valid && !att->no_baseline ? "drift" : NULL;
    kfd_attest_cmd c;
    kfd_attest_seen_command(call, att, hold != NULL ? "attest_hold" : "attest_heartbeat", "", "", reason, hold, &c);
    kf_log_warn("attest_heartbeat", "node=%s attested=no held=%s", call->peer->name, hold != NULL ? hold : "no");
    kfd_call_commit(call, &c.cmd, on_offline_audited, op);
}

static void commit_over_budget(kfd_call *call, heartbeat_op *op, const heartbeat_reports *rep)
{
    char reason[300];
    snprintf(reason, sizeof(reason),
             "%zu offline unlock and %zu dead-man lock reports past the node's report budget (%d at once, then "
             "%d a minute) are counted here, not recorded one by one",
             rep->over_offline, rep->over_locks, REPORT_BURST, REPORT_PER_MINUTE);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "reports_over_budget", KEYFLEET__V1__DECISION__DECISION_DENY,
                   call->peer->name, "", "", reason);
    Keyfleet__V1__CmdAppendAudit c;
    Keyfleet__V1__StateCommand cmd;
    kfd_audit_command(&a, &c, &cmd);
    kf_log_warn("reports_over_budget", "node=%s offline_unlocks=%zu dead_man_locks=%zu", call->peer->name,
                rep->over_offline, rep->over_locks);
    kfd_call_commit(call, &cmd, on_offline_audited, op);
}

/* One record per heartbeat however many it refuses (heartbeats are rate-limited per node). */
static void commit_refused(kfd_call *call, heartbeat_op *op, const heartbeat_reports *rep)
{
    char reason[400];
    snprintf(reason, sizeof(reason),
             "%zu offline unlock report(s) refused: %zu name a volume this node did not enroll, %zu repeat a "
             "(volume, time) already in the heartbeat; first: '%.128s'",
             rep->not_own + rep->repeated, rep->not_own, rep->repeated, rep->first_bad);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "reports_refused", KEYFLEET__V1__DECISION__DECISION_DENY,
                   call->peer->name, "", "", reason);
    Keyfleet__V1__CmdAppendAudit c;
    Keyfleet__V1__StateCommand cmd;
    kfd_audit_command(&a, &c, &cmd);
    kf_log_warn("reports_refused", "node=%s not_own=%zu repeated=%zu first=%s", call->peer->name, rep->not_own,
                rep->repeated, kf_log_q(rep->first_bad));
    kfd_call_commit(call, &cmd, on_offline_audited, op);
}

static void commit_dead_man_locks(kfd_call *call, heartbeat_op *op, const Keyfleet__V1__HeartbeatRequest *req,
                                  size_t n_locks)
{
    for (size_t i = 0; i < n_locks; i++) {
        const Keyfleet__V1__DeadManLock *d = req->dead_man_locks[i];
        char reason[300];
        snprintf(reason, sizeof(reason),
                 "dead-man switch: locked %u volume(s) (%u could not be locked) at %lld after %llu s without reaching "
                 "a coordinator (dead_man.after %llu s)",
                 d->volumes_locked, d->volumes_failed, (long long)d->at->seconds, (unsigned long long)d->silent_s,
                 (unsigned long long)d->after_s);
        kfd_audit_buf a;
        kfd_audit_fill(&a, kfd_call_actor(call), "dead_man_lock", KEYFLEET__V1__DECISION__DECISION_DENY,
                       call->peer->name, "", "", reason);
        Keyfleet__V1__CmdAppendAudit c;
        Keyfleet__V1__StateCommand cmd;
        kfd_audit_command(&a, &c, &cmd);
        kf_log_warn("dead_man_lock_reported", "node=%s silent_s=%llu locked=%u failed=%u", call->peer->name,
                    (unsigned long long)d->silent_s, d->volumes_locked, d->volumes_failed);
        kfd_call_commit(call, &cmd, on_offline_audited, op);
    }
}

static void commit_offline_unlocks(kfd_call *call, heartbeat_op *op, const heartbeat_reports *rep)
{
    for (size_t i = 0; i < rep->n_offline; i++) {
        const Keyfleet__V1__OfflineUnlock *u = rep->offline[i];
        char reason[700];
        snprintf(reason, sizeof(reason), "unlocked %s at %lld: %s",
                 u->method == KEYFLEET__V1__OFFLINE_METHOD__OFFLINE_METHOD_RECOVERY_KEY
                     ? "with a recovery key typed at the node's console"
                     : "from the node's TPM",
                 (long long)u->at->seconds, u->reason);
        kfd_audit_buf a;
        kfd_audit_fill(&a, kfd_call_actor(call), "offline_unlock", KEYFLEET__V1__DECISION__DECISION_ALLOW,
                       call->peer->name,
                       u->volume->id, "", reason);
        Keyfleet__V1__CmdAppendAudit c;
        Keyfleet__V1__StateCommand cmd;
        kfd_audit_command(&a, &c, &cmd);
        kfd_call_commit(call, &cmd, on_offline_audited, op);
    }
}

/* The node's last contact (replicated: `keyfleetctl node list` shows nodes silent past their
 * dead-man window on any replica), or, when the heartbeat is not its contact, the release of the
 * hold. Always the last: it may answer and free op and the request. */
static void commit_contact(kfd_call *call, heartbeat_op *op, const kfd_attest_eval *att, bool quoted, bool contact)
{
    if (!contact) {
        if (--op->outstanding == 0)
            answer_heartbeat(op);
        return;
    }
    Keyfleet__V1__CmdNodeSeen seen = KEYFLEET__V1__CMD_NODE_SEEN__INIT;
    seen.node = (char *)call->peer->name;
    seen.at = time(NULL);
    /* A quote that held records the TPM state, as a Release's does (review rev17, A1). */
    Keyfleet__V1__AttestClock clk;
    kfd_attest_clock_fill(att, &clk);
    seen.attest_clock = quoted && att->has_clock && !att->rollback ? &clk : NULL;
    seen.judged_policy = (ProtobufCBinaryData){sizeof(kfd_call_app(call)->policy_judged), kfd_call_app(call)->policy_judged};
    Keyfleet__V1__StateCommand seen_cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    seen_cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_NODE_SEEN;
    seen_cmd.node_seen = &seen;
    kfd_call_commit(call, &seen_cmd, on_offline_audited, op);
}

/* Every report, and the node's last contact, is committed before the answer: op->outstanding
 * counts each commit issued here, and the last callback answers. A commit may call back at once;
 * the last one (commit_contact) may answer and free op and the request, so nothing reads them
 * after it. */
static void heartbeat_commits(kfd_call *call, const Keyfleet__V1__HeartbeatRequest *req, heartbeat_op *op,
                              const kfd_attest_eval *att, bool drift, const heartbeat_reports *rep,
                              int n_erase_commits, bool contact)
{
    bool over = rep->over_locks + rep->over_offline > 0;
    bool refused = rep->not_own + rep->repeated > 0;
    /* The last 1 is node_seen's, or the hold released at the end when there is no contact. */
    op->outstanding = rep->n_offline + rep->n_locks + 1 + (drift ? 1 : 0) + (over ? 1 : 0) + (refused ? 1 : 0) +
                      (size_t)n_erase_commits;
    if (req->attestation != NULL) {
        op->attested = att->attested;
        snprintf(op->attest_why, sizeof(op->attest_why), "%s", att->attested ? "" : att->why);
    }
    if (drift)
        commit_drift(call, op, att);
    if (over)
        commit_over_budget(call, op, rep);
    if (refused)
        commit_refused(call, op, rep);
    commit_dead_man_locks(call, op, req, rep->n_locks);
    commit_offline_unlocks(call, op, rep);
    kfd_erase_commit(call, req, op->erase_actions, on_offline_audited, op);
    commit_contact(call, op, att, req->attestation != NULL, contact);
}

/* Liveness, and the offline (TPM) unlocks a node made while no coordinator answered: each one is
 * audited as offline_unlock. A revoked node is told to lock (kill switch) instead of refused, so
 * an agent in watch mode can act on it. */
void kfd_rpc_heartbeat(kfd_call *call)
{
    const Keyfleet__V1__HeartbeatRequest *req = (const Keyfleet__V1__HeartbeatRequest *)call->request;
    bool revoked, drift;
    kfd_attest_eval att;
    if (!heartbeat_admit(call, req, &revoked) || !heartbeat_attest(call, req, &att, &drift))
        return;
    int n_erase_commits;
    heartbeat_op *op = new_heartbeat_op(call, req, revoked, &n_erase_commits);
    if (op == NULL)
        return;
    heartbeat_reports rep;
    if (!heartbeat_reports_of(call, req, &rep)) {
        kfd_op_free(op);
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    bool contact = heartbeat_is_contact(call, req, &att);
    heartbeat_commits(call, req, op, &att, drift, &rep, n_erase_commits, contact);
    free(rep.offline); /* the array only: its reports are the request's, which may be gone */
}
