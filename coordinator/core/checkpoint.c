#include "core/checkpoint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "core/app.h"
#include "core/audit.h"
#include "core/head_round.h"
#include "kf_audit.h"
#include "kf_log.h"
#include "kms/http.h"
#include "store/store_apply.h"
#include "store/store_audit.h"
#include "store/store_digest.h"
#include "store/store_dispute.h"

/* A checkpoint at most this long after records were applied (the issue asks for <= 1 s), or
 * once this many records wait, whichever comes first; one in flight at a time. */
#define CHECKPOINT_MS 200
#define CHECKPOINT_RECORDS 1000
#define TICK_MS 25
/* A leader's head not (yet) confirmed by a majority is asked about again this often. */
#define CONFIRM_RETRY_MS 500
/* Followers apply the check a heartbeat after the leader: they are asked again this often, up
 * to ASK_PASSES times, before a new check is committed (one that restarted forgot the old one). */
#define ASK_AGAIN_MS 100
#define ASK_PASSES 10
#define CONFIRM_TIMEOUT_MS 2000
#define MAX_VOTERS 9

/* One question to one voter in a confirmation round. */
typedef struct peer_ask {
    struct kfd_checkpointer *c;
    char name[64];
    kfd_head_tag tag; /* the question it asked: a late answer to an earlier one is ignored */
    bool settle;      /* a disputed follower's question (settle), not a leader's (confirm) */
} peer_ask;

struct kfd_checkpointer {
    struct kfd_app *app;
    uv_timer_t timer;
    EVP_PKEY *key;
    uint8_t *cert_der;
    size_t cert_len;
    char serial[KF_SERIAL_MAX]; /* of cert_der */
    int64_t not_before, not_after; /* of cert_der: the times it may date a checkpoint */
    bool told_revoked, told_validity;
    X509_STORE *ca;
    char cluster[40];
    uint8_t cert_hash[KF_AUDIT_HASH]; /* of cert_der: what v2 checkpoints name */
    kf_checkpoint_cache *cache;      /* signer chains verified (review rev17, R6) */
    bool inflight, closing;
    uint64_t last_at; /* loop time of the last proposal */
    kfd_note_schedule notes; /* which checkpoints note the state (store_digest.h) */
    kfd_checkpoint_stats stats;
    /* Confirming this leader's audit head with a majority before it signs (docs/audit.md). */
    kfd_http *http;
    uint64_t confirm_term, confirmed_term;
    uint64_t round;         /* the CmdAuditHeadCheck id being asked about; 0: none */
    bool round_committing;  /* the check is being committed */
    kfd_audit_head own;     /* this replica's head at that check */
    kfd_head_round tally;   /* the answers of the current pass */
    unsigned pending, passes;
    bool told_disputed;     /* logged a disagreement in this round */
    uint64_t next_round_at; /* loop time */
    bool told_unconfirmed;
    /* A disputed follower settling its dispute with the voters (review rev17c, C1). */
    uint64_t next_settle_at;
    uint64_t reports_heard_at; /* loop time from which a voter's dispute report is heard again */
    peer_ask asks[MAX_VOTERS];
    /* A change no replica's apply judges waits for a round over its record (kfd_checkpointer_reconfirm). */
    struct {
        kfd_reconfirm_cb cb;
        void *arg;
        uint64_t seq, term, deadline;
    } waiter;
};

static int load_key_cert(kfd_checkpointer *c, const kfd_config *cfg, kf_err *err)
{
    FILE *f = fopen(cfg->tls_key, "r");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: %s", cfg->tls_key, strerror(errno));
    c->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (c->key == NULL)
        return kf_err_set(err, -EINVAL, "%s: no private key", cfg->tls_key);
    if ((f = fopen(cfg->tls_cert, "r")) == NULL)
        return kf_err_set(err, -errno, "%s: %s", cfg->tls_cert, strerror(errno));
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    unsigned char *der = NULL;
    int n = x != NULL ? i2d_X509(x, &der) : -1;
    kf_identity id;
    kf_err ierr = {0};
    if (x != NULL && kf_identity_from_cert(x, &id, &ierr) == 0)
        memcpy(c->serial, id.serial, sizeof(c->serial));
    struct tm tm;
    const ASN1_TIME *na = x != NULL ? X509_get0_notAfter(x) : NULL;
    c->not_before = kf_cert_not_before(x);
    c->not_after = na != NULL && ASN1_TIME_to_tm(na, &tm) == 1 ? (int64_t)timegm(&tm) : INT64_MIN;
    X509_free(x);
    if (n <= 0)
        return kf_err_set(err, -EINVAL, "%s: no certificate", cfg->tls_cert);
    c->cert_der = der;
    c->cert_len = (size_t)n;
    kf_sha256_parts(der, (size_t)n, NULL, 0, NULL, 0, c->cert_hash);
    return 0;
}

static void on_state_checked(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)arg;
    (void)res;
    if (status != 0)
        kf_log_warn("audit_state_check_failed", "error=%s", kf_log_q(err->msg));
}

/* The state digest this leader noted when it applied its checkpoint, for every replica to compare
 * with its own there (review rev17, R2): an edited replica diverges now rather than when it
 * leads, and a checkpoint vouches for a replica only once its state matched. */
static bool propose_state_check(kfd_checkpointer *c)
{
    uint8_t state[KFD_HASH_LEN];
    uint32_t version = 0;
    uint64_t seq = 0;
    if (kfd_store_checkpoint_state(c->app->store, &seq, state, &version) != 0)
        return false;
    Keyfleet__V1__CmdStateCheck sc = KEYFLEET__V1__CMD_STATE_CHECK__INIT;
    sc.seq = seq;
    sc.state = (ProtobufCBinaryData){sizeof(state), state};
    sc.version = version;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_STATE_CHECK;
    cmd.state_check = &sc;
    kfd_commit(c->app, &cmd, on_state_checked, c); /* serialized at once */
    return true;
}

static void on_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    kfd_checkpointer *c = arg;
    c->inflight = false;
    if (status != 0) {
        c->stats.failed_total++;
        kf_log_warn("audit_checkpoint_failed", "error=%s", kf_log_q(err->msg));
        kfd_note_schedule_missed(&c->notes); /* no note was made: the next checkpoint asks again */
        return;
    }
    c->stats.signed_total++;
    (void)res;
    /* A skipped record leaves the note already checked; a scan that failed here (no note) is
     * asked for again at the next checkpoint. */
    if (c->notes.inflight && !propose_state_check(c))
        kfd_note_schedule_missed(&c->notes);
}

static void propose(kfd_checkpointer *c, const kfd_audit_head *h)
{
    kfd_app *app = c->app;
    kf_checkpoint cp;
    memset(&cp, 0, sizeof(cp));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    memcpy(cp.cluster, c->cluster, sizeof(cp.cluster));
    cp.size = h->seq;
    memcpy(cp.root, h->root, KF_AUDIT_HASH);
    memcpy(cp.chain, h->chain, KF_AUDIT_HASH);
    cp.seconds = now.tv_sec;
    cp.nanos = (int32_t)now.tv_nsec;
    /* Dated by its clock, even before the newest checkpoint, when its certificate was valid at
     * that one's date (review rev17, R3: kf_checkpoint_follows): one checkpoint by a fast clock
     * pins nothing. Otherwise never before it (review of #17, F2): it keeps that time, which its
     * certificate does not cover, so it signs nothing below. */
    kf_checkpoint prev;
    if (kfd_store_newest_checkpoint(app->store, &prev) == 0 && prev.seconds > c->not_after &&
        (prev.seconds > cp.seconds || (prev.seconds == cp.seconds && prev.nanos > cp.nanos))) {
        cp.seconds = prev.seconds;
        cp.nanos = prev.nanos;
    }
    /* Its certificate must cover the checkpoint's time (review rev17, R3): verifiers judge the
     * chain at that time, so one dated past notAfter (a clock run far ahead, or a date pinned by
     * such a checkpoint) would make every replica diverge at its next start. */
    if (cp.seconds < c->not_before || cp.seconds > c->not_after) {
        c->stats.failed_total++;
        if (!c->told_validity)
            kf_log_error("audit_checkpoint_failed", "error=\"the checkpoint's time %lld is outside this coordinator's "
                         "certificate (%lld..%lld)\" serial=%s action=\"signing nothing; check the clock, or give this "
                         "coordinator a current certificate\"",
                         (long long)cp.seconds, (long long)c->not_before, (long long)c->not_after, c->serial);
        c->told_validity = true;
        return;
    }
    c->told_validity = false;
    snprintf(cp.signer, sizeof(cp.signer), "%s", app->cfg->name);
    /* v2 (review rev17): the certificate sent beside the signature, and the state root: the
     * state digest this leader noted at its newest checkpoint record, which every replica that
     * noted its own there compares when it applies this one. */
    cp.version = 2;
    memcpy(cp.cert_hash, c->cert_hash, KF_AUDIT_HASH);
    if (kfd_store_checkpoint_state(app->store, &cp.state_seq, cp.state, &cp.state_version) != 0)
        cp.state_seq = 0;
    char text[KF_CHECKPOINT_TEXT_MAX];
    int len = kf_checkpoint_format(&cp, text, sizeof(text));
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    kf_err err = {0};
    if (len < 0 || kf_checkpoint_sign(c->key, text, (size_t)len, &sig, &sig_len, &err) != 0) {
        c->stats.failed_total++;
        kf_log_error("audit_checkpoint_failed", "error=%s", kf_log_q(len < 0 ? "formatting" : err.msg));
        return;
    }
    kfd_audit_buf a;
    kfd_actor self = {0};
    kfd_audit_fill(&a, self, KF_AUDIT_CHECKPOINT_ACTION, KEYFLEET__V1__DECISION__DECISION_ALLOW, "", "", "", text);
    a.time.seconds = cp.seconds;
    a.time.nanos = cp.nanos;
    a.actor.name = app->cfg->name;
    Keyfleet__V1__CmdCheckpoint cc = KEYFLEET__V1__CMD_CHECKPOINT__INIT;
    cc.text = text;
    cc.signature.data = sig;
    cc.signature.len = sig_len;
    cc.cert.data = c->cert_der;
    cc.cert.len = c->cert_len;
    cc.audit = &a.entry;
    /* A state note when one is due (docs/audit.md, "How often the state is checked"): the gap
     * grows with what this replica's last scan cost, so that the scans every replica makes stay
     * a small share of its time whatever the fleet's size, and is drawn at random so that nobody
     * who can read the log's state roots knows when the next note comes (review rev42, S1). */
    uint64_t now_ms = uv_now(c->timer.loop);
    uint32_t draw = 0;
    if (RAND_bytes((unsigned char *)&draw, sizeof(draw)) != 1)
        draw = 0; /* the shortest gap */
    cc.skip_state_note =
        !kfd_note_schedule_propose(&c->notes, now_ms, kfd_store_state_note_cost_ns(app->store), draw);
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_CHECKPOINT;
    cmd.checkpoint = &cc;
    c->inflight = true;
    c->last_at = now_ms;
    c->stats.last_size = cp.size;
    kfd_commit(app, &cmd, on_committed, c); /* serialized at once */
    OPENSSL_free(sig);
}

/* Tells the waiting change how its round went, once. */
static void finish_waiter(kfd_checkpointer *c, int status, const char *why)
{
    kfd_reconfirm_cb cb = c->waiter.cb;
    if (cb == NULL)
        return;
    void *arg = c->waiter.arg;
    memset(&c->waiter, 0, sizeof(c->waiter));
    kf_err err = {0};
    if (status != 0)
        kf_err_set(&err, status, "%s", why);
    cb(arg, status, &err);
}

static void confirmed(kfd_checkpointer *c, const char *how)
{
    if (c->confirmed_term == c->confirm_term)
        return;
    if (c->waiter.cb != NULL && c->own.seq < c->waiter.seq) {
        /* A round over a head from before the waiting change's record (one already under way)
         * says nothing about the record: another round, committed after it, decides. */
        c->round = 0;
        c->passes = 0;
        c->next_round_at = 0;
        return;
    }
    kfd_store_settle_dispute(c->app->store, how); /* a majority holds this leader's head and state */
    if (kfd_store_audit_diverged(c->app->store, NULL) != 0)
        return; /* another process wrote its database (rev17d D2): it stands down, confirmed or not */
    c->confirmed_term = c->confirm_term;
    kfd_repl_set_audit_confirmed(c->app->repl, c->confirm_term);
    /* A disputed voter repeats its report until it applied a head check; one sent before it applied
     * this round's would start another round for nothing. A later dispute is reported again. */
    c->reports_heard_at = uv_now(c->timer.loop) + CONFIRM_RETRY_MS + ASK_AGAIN_MS;
    kf_log_info("audit_head_confirmed", "term=%llu seq=%llu agree=%u voters=%u how=%s",
                (unsigned long long)c->confirm_term, (unsigned long long)c->own.seq, c->tally.agree, c->tally.voters,
                how);
    finish_waiter(c, 0, NULL);
}

/* After each answer: a majority agreeing confirms this leader's head; a majority holding another
 * head means this replica's own log is the one that was changed (it was rewritten while stopped),
 * so it marks itself diverged: it signs nothing, serves nothing and hands leadership on. */
static void evaluate(kfd_checkpointer *c)
{
    kfd_head_verdict v = kfd_head_round_verdict(&c->tally);
    if (v == KFD_HEAD_CONFIRMED) {
        confirmed(c, "majority");
        return;
    }
    if (v == KFD_HEAD_OUTVOTED) {
        char why[256];
        snprintf(why, sizeof(why), "%u of %u voters hold another audit head (or replicated state) after the same "
                 "entries (this replica: %llu records): this replica's log was changed", c->tally.disagree, c->tally.voters,
                 (unsigned long long)c->own.seq);
        kfd_store_mark_outvoted(c->app->store, c->own.seq != 0 ? c->own.seq : 1, why);
        finish_waiter(c, -EPERM, why);
        return;
    }
    if (c->pending == 0) {
        c->next_round_at = uv_now(c->timer.loop) + (c->passes < ASK_PASSES ? ASK_AGAIN_MS : CONFIRM_RETRY_MS);
        if (!c->told_unconfirmed && c->passes >= ASK_PASSES) {
            c->told_unconfirmed = true;
            kf_log_warn("audit_head_unconfirmed", "term=%llu seq=%llu agree=%u disagree=%u voters=%u "
                        "action=\"signing no checkpoint and serving no writes until a majority confirms; retrying\"",
                        (unsigned long long)c->confirm_term, (unsigned long long)c->own.seq, c->tally.agree,
                        c->tally.disagree, c->tally.voters);
        }
    }
}

/* Why the certificate that answered for voter name may not speak for it (review rev17, R4), or
 * NULL: the TLS host name check alone takes any fleet certificate naming that host (a revoked
 * coordinator's, a re-added one's old one, a node's issued with that SAN). */
static const char *answer_refusal(kfd_checkpointer *c, const char *name, const char *pem, char *why, size_t size)
{
    BIO *b = pem != NULL ? BIO_new_mem_buf(pem, -1) : NULL;
    X509 *x = b != NULL ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    kf_identity id;
    kf_err err = {0};
    const char *r = NULL;
    if (x == NULL || kf_identity_from_cert(x, &id, &err) != 0)
        r = "the answering certificate is unreadable";
    else if (id.kind != KF_PEER_COORDINATOR || strcmp(id.name, name) != 0)
        r = "the answering certificate does not name this coordinator";
    else if (kfd_store_coordinator_cert_ok(c->app->store, id.name, id.serial, kf_cert_not_before(x), &err) == -EPERM) {
        snprintf(why, size, "%s", err.msg);
        r = why;
    }
    X509_free(x);
    ERR_clear_error();
    return r;
}

/* A disputed follower's tally (review rev17c, C1): the voters' notes at the newest head check it
 * applied since the dispute, against its own there. A majority holding its head and state settles
 * the dispute (the leader's word was the changed one, and the leader's own round outvotes it); a
 * majority holding another makes this replica the changed one: it diverges. Short of a majority
 * either way it stays disputed and asks again (fail closed). */
static void settle_answer(kfd_checkpointer *c, const peer_ask *a, Keyfleet__V1__AuditHeadResponse *resp)
{
    kfd_store *store = c->app->store;
    kfd_head_answer k = kfd_head_round_count(&c->tally, a->tag, resp);
    if (k == KFD_HEAD_DIFFERS)
        kf_log_warn("audit_head_disputed", "peer=%s seq=%llu peer_seq=%llu role=follower reason=\"its head or state "
                    "at the same head check differs from this replica's\"", a->name,
                    (unsigned long long)c->tally.own.seq, (unsigned long long)resp->seq);
    if (resp != NULL)
        keyfleet__v1__audit_head_response__free_unpacked(resp, NULL);
    const char *dwhy = NULL;
    uint64_t dseq = kfd_store_audit_disputed(store, &dwhy);
    if (k == KFD_HEAD_IGNORED || dseq == 0)
        return;
    kfd_head_verdict v = kfd_head_round_verdict(&c->tally);
    if (v == KFD_HEAD_CONFIRMED) {
        kfd_store_settle_dispute(store, "majority");
    } else if (v == KFD_HEAD_OUTVOTED) {
        char why[256];
        int n = snprintf(why, sizeof(why), "%s; %u of %u voters hold another head or state at a head check",
                         dwhy, c->tally.disagree, c->tally.voters);
        (void)n; /* a cut reason is still a reason */
        kfd_store_mark_outvoted(store, dseq, why);
    }
}

static void on_answer(void *arg, const kfd_http_response *res)
{
    peer_ask *a = arg;
    kfd_checkpointer *c = a->c;
    c->pending--;
    if (c->closing)
        return;
    Keyfleet__V1__AuditHeadResponse *resp = NULL;
    if (res->status == 0 && res->code == 200)
        resp = keyfleet__v1__audit_head_response__unpack(NULL, res->body_len, (const uint8_t *)res->body);
    /* Who answered is checked for every answer, late ones included, so an impostor shows. */
    char why[KF_ERR_MSG_MAX];
    const char *refused = resp != NULL ? answer_refusal(c, a->name, res->peer_cert, why, sizeof(why)) : NULL;
    if (refused != NULL) {
        kf_log_warn("audit_head_peer_refused", "peer=%s reason=%s", a->name, kf_log_q(refused));
        keyfleet__v1__audit_head_response__free_unpacked(resp, NULL);
        resp = NULL; /* counts as no answer */
    }
    if (a->settle) {
        settle_answer(c, a, resp);
        return;
    }
    if (c->confirmed_term == c->confirm_term || kfd_store_audit_diverged(c->app->store, NULL) != 0) {
        if (resp != NULL)
            keyfleet__v1__audit_head_response__free_unpacked(resp, NULL);
        return;
    }
    if (resp == NULL && refused == NULL)
        kf_log_debug("audit_head_no_answer", "peer=%s status=%d code=%ld error=%s", a->name, res->status, res->code,
                     kf_log_q(res->error != NULL ? res->error : res->body != NULL ? res->body : ""));
    kfd_head_answer k = kfd_head_round_count(&c->tally, a->tag, resp);
    if (k == KFD_HEAD_IGNORED && resp != NULL && resp->restored)
        kf_log_debug("audit_head_not_witness", "peer=%s reason=\"it installed a snapshot since it started\"", a->name);
    if (k == KFD_HEAD_DIFFERS) {
        if (!c->told_disputed || resp->vouched)
            kf_log_warn("audit_head_disputed", "peer=%s seq=%llu peer_seq=%llu peer_vouched=%s reason=\"its audit "
                        "head after the same entries differs from this replica's\"",
                        a->name, (unsigned long long)c->own.seq, (unsigned long long)resp->seq,
                        resp->vouched ? "yes" : "no");
        c->told_disputed = true;
    }
    if (resp != NULL)
        keyfleet__v1__audit_head_response__free_unpacked(resp, NULL);
    evaluate(c);
}

/* Asks every other voter for its note at check id (tagged tag); disputed: ask the leader for a
 * round. The answers go to on_answer. */
static void send_asks(kfd_checkpointer *c, const kfd_repl_voter *v, size_t n, kfd_head_tag tag, uint64_t id,
                      bool disputed, bool settle)
{
    Keyfleet__V1__AuditHeadRequest q = KEYFLEET__V1__AUDIT_HEAD_REQUEST__INIT;
    q.check_id = id;
    q.disputed = disputed;
    uint8_t body[32];
    size_t len = keyfleet__v1__audit_head_request__pack(&q, body);
    static const char *const headers[] = {"Content-Type: application/proto", NULL};
    for (size_t i = 0; i < n; i++) {
        if (v[i].self || v[i].rpc[0] == '\0')
            continue;
        char url[sizeof(v[i].rpc) + 64];
        snprintf(url, sizeof(url), "https://%s/keyfleet.v1.PeerService/AuditHead", v[i].rpc);
        peer_ask *a = &c->asks[i];
        a->c = c;
        a->tag = tag;
        a->settle = settle;
        snprintf(a->name, sizeof(a->name), "%s", v[i].name);
        c->pending++;
        kfd_http_send(c->http, "POST", url, headers, body, len, on_answer, a);
    }
}

static void ask_voters(kfd_checkpointer *c)
{
    kfd_repl_voter v[MAX_VOTERS];
    size_t n = kfd_repl_voters(c->app->repl, v, MAX_VOTERS);
    kfd_head_tag tag = kfd_head_round_pass(&c->tally, c->confirm_term, c->round, (unsigned)n, &c->own);
    send_asks(c, v, n, tag, c->round, false, false);
    evaluate(c);
}

/* A disputed follower (review rev17c, C1): until it applied a head check since the dispute, it
 * asks the voters for a round (the leader commits one); then it asks every voter for its note at
 * that check and tallies (settle_answer). Tagged term 0, so a leader's tally ignores the answers. */
static void settle(kfd_checkpointer *c)
{
    uint64_t now = uv_now(c->timer.loop);
    if (c->pending > 0 || now < c->next_settle_at)
        return;
    kfd_repl_voter v[MAX_VOTERS];
    size_t n = kfd_repl_voters(c->app->repl, v, MAX_VOTERS);
    uint64_t id = 0;
    kfd_audit_head own;
    memset(&own, 0, sizeof(own));
    bool have = kfd_store_dispute_check(c->app->store, &id, &own) == 0;
    kfd_head_tag tag = kfd_head_round_pass(&c->tally, 0, id, (unsigned)n, &own);
    c->next_settle_at = now + (have ? ASK_AGAIN_MS : CONFIRM_RETRY_MS);
    send_asks(c, v, n, tag, id, !have, true);
}

static void on_check_committed(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    kfd_checkpointer *c = arg;
    (void)res;
    c->round_committing = false;
    c->next_round_at = uv_now(c->timer.loop) + CONFIRM_RETRY_MS;
    if (c->closing || kfd_repl_leading_term(c->app->repl) != c->confirm_term)
        return;
    if (status != 0 || kfd_store_audit_head_at_check(c->app->store, c->round, &c->own) != 0) {
        kf_log_warn("audit_head_check_failed", "term=%llu error=%s", (unsigned long long)c->confirm_term,
                    kf_log_q(status != 0 ? err->msg : "the check was not applied here"));
        c->round = 0;
        return;
    }
    c->passes = 1;
    c->told_disputed = false;
    ask_voters(c);
}

/* A leader signs nothing until a majority of voters confirmed that they hold, after the same
 * entries, the audit head it holds: a replica whose database was rewritten while the cluster was
 * stopped, elected first, would otherwise sign the forgery and make the honest replicas look
 * diverged. One round: commit a CmdAuditHeadCheck (every replica notes its head when it applies
 * it), then ask each voter for the head it noted (PeerService.AuditHead). */
static void confirm(kfd_checkpointer *c, uint64_t term)
{
    uint64_t now = uv_now(c->timer.loop);
    if (c->confirm_term != term) {
        c->confirm_term = term;
        kfd_note_schedule_new_term(&c->notes); /* a new leader's first checkpoint notes the state */
        c->told_unconfirmed = false;
        c->next_round_at = 0;
        c->round = 0;
        memset(&c->own, 0, sizeof(c->own));
    }
    if (c->round_committing || c->pending > 0 || now < c->next_round_at)
        return;
    if (c->round != 0 && c->passes < ASK_PASSES) {
        c->passes++;
        ask_voters(c);
        return;
    }
    kfd_repl_voter v[MAX_VOTERS];
    bool alone = kfd_repl_voters(c->app->repl, v, MAX_VOTERS) <= 1;
    /* A change waiting for its round (kfd_checkpointer_reconfirm) is never confirmed by a vouch. */
    if (alone || (c->waiter.cb == NULL && kfd_store_audit_vouched(c->app->store))) {
        /* Alone, its own log is the majority; vouched for, it rests on a confirmed checkpoint. */
        kfd_store_audit_head(c->app->store, &c->own);
        kfd_head_round_pass(&c->tally, term, 0, 1, &c->own);
        confirmed(c, alone ? "single_voter" : "vouched");
        return;
    }
    uint64_t id = 0;
    while (id == 0)
        if (RAND_bytes((unsigned char *)&id, sizeof(id)) != 1)
            return;
    c->round = id;
    c->round_committing = true;
    Keyfleet__V1__CmdAuditHeadCheck hc = KEYFLEET__V1__CMD_AUDIT_HEAD_CHECK__INIT;
    hc.id = id;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_AUDIT_HEAD_CHECK;
    cmd.audit_head_check = &hc;
    kfd_commit(c->app, &cmd, on_check_committed, c);
}

/* The waiting change's round cannot end well: this replica failed, diverged or stopped leading,
 * or the voters did not answer in time. */
static void check_waiter(kfd_checkpointer *c, uint64_t term)
{
    if (c->waiter.cb == NULL)
        return;
    kfd_store *store = c->app->store;
    if (store == NULL || kfd_store_failed(store) || kfd_store_audit_diverged(store, NULL) != 0)
        finish_waiter(c, -EPERM, "this coordinator's audit log is diverged or its store failed");
    else if (term != c->waiter.term)
        finish_waiter(c, -EAGAIN, "this coordinator stopped leading before the voters confirmed its audit head");
    else if (uv_now(c->timer.loop) >= c->waiter.deadline)
        finish_waiter(c, -ETIMEDOUT, "a majority of voters did not confirm this leader's audit head in time");
}

static void on_tick(uv_timer_t *t)
{
    kfd_checkpointer *c = t->data;
    kfd_app *app = c->app;
    check_waiter(c, kfd_repl_leading_term(app->repl));
    if (c->closing || app->store == NULL || kfd_store_failed(app->store) ||
        kfd_store_audit_diverged(app->store, NULL) != 0)
        return;
    uint64_t term = kfd_repl_leading_term(app->repl);
    bool reported = kfd_store_take_dispute_report(app->store);
    if (term == 0) {
        if (kfd_store_audit_disputed(app->store, NULL) != 0)
            settle(c);
        return;
    }
    /* A dispute (review rev17c, C1): this leader's head and state are confirmed again by a head
     * round, as after an election; meanwhile it serves no writes and signs nothing. */
    if (reported && uv_now(t->loop) >= c->reports_heard_at) {
        kfd_audit_head h;
        kfd_store_audit_head(app->store, &h);
        kfd_store_set_disputed(app->store, h.seq, "a voter reported that its head or state differs from this "
                               "leader's");
    }
    if (kfd_store_audit_disputed(app->store, NULL) != 0 && c->confirmed_term == term) {
        c->confirmed_term = 0;
        c->round = 0;
        c->passes = 0;
        c->next_round_at = 0;
        c->told_unconfirmed = false;
        kfd_repl_clear_audit_confirmed(app->repl);
        kf_log_warn("audit_head_reconfirming", "term=%llu reason=\"disputed: a head round decides\"",
                    (unsigned long long)term);
    }
    if (c->confirmed_term != term) {
        confirm(c, term);
        return;
    }
    if (c->inflight)
        return;
    const char *why;
    char leader[280];
    if (!kfd_repl_writable(app->repl, &why, leader, sizeof(leader)))
        return;
    kfd_audit_head h;
    kfd_store_audit_head(app->store, &h);
    /* Nothing since the newest checkpoint record (which a checkpoint itself is). */
    if (h.seq == 0 || h.seq == h.checkpoint_seq)
        return;
    if (uv_now(t->loop) - c->last_at < CHECKPOINT_MS && h.seq - h.checkpoint_size < CHECKPOINT_RECORDS)
        return;
    /* Every replica refuses a checkpoint by a denylisted certificate, or by a coordinator added
     * back with a certificate from before its removal (store_audit.c). */
    kf_err serr = {0};
    int sr = kfd_store_checkpoint_signer(app->store, c->cert_der, c->cert_len, app->cfg->name, &serr);
    if (sr != 0) {
        if (sr == -EPERM && !c->told_revoked)
            kf_log_error("audit_checkpoint_failed", "error=%s serial=%s action=\"signing nothing; give this "
                         "coordinator a new certificate and restart it\"", kf_log_q(serr.msg), c->serial);
        c->told_revoked = sr == -EPERM;
        return;
    }
    c->told_revoked = false;
    propose(c, &h);
}

int kfd_checkpointer_new(kfd_app *app, uv_loop_t *loop, kfd_checkpointer **ret, kf_err *err)
{
    kfd_checkpointer *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    c->app = app;
    int r = load_key_cert(c, app->cfg, err);
    if (r == 0)
        r = kf_checkpoint_ca_load(app->cfg->tls_ca, &c->ca, c->cluster, err);
    if (r == 0 && (c->cache = kf_checkpoint_cache_new()) == NULL)
        r = kf_err_set(err, -ENOMEM, "out of memory");
    ERR_clear_error();
    kfd_http_opts ho = {.name = "audit_head",
                        .ca_file = app->cfg->tls_ca,
                        .cert_file = app->cfg->tls_cert,
                        .key_file = app->cfg->tls_key,
                        .protocols = "https",
                        .timeout_ms = CONFIRM_TIMEOUT_MS,
                        .max_attempts = 1,
                        .max_response = 4096,
                        .no_reuse = true,
                        .peer_cert = true};
    if (r == 0)
        r = kfd_http_new(loop, &ho, &c->http, err);
    if (r != 0) {
        EVP_PKEY_free(c->key);
        OPENSSL_free(c->cert_der);
        X509_STORE_free(c->ca);
        kf_checkpoint_cache_free(c->cache);
        free(c);
        return kf_err_wrap(err, "audit checkpoints");
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    uv_timer_start(&c->timer, on_tick, TICK_MS, TICK_MS);
    uv_unref((uv_handle_t *)&c->timer);
    *ret = c;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    kfd_checkpointer *c = h->data;
    EVP_PKEY_free(c->key);
    OPENSSL_free(c->cert_der);
    X509_STORE_free(c->ca);
    kf_checkpoint_cache_free(c->cache);
    free(c);
}

int kfd_checkpointer_reconfirm(kfd_checkpointer *c, uint64_t seq, uint64_t timeout_ms, kfd_reconfirm_cb cb,
                               void *arg, kf_err *err)
{
    if (c == NULL || c->closing)
        return kf_err_set(err, -EAGAIN, "this coordinator is stopping");
    if (c->waiter.cb != NULL)
        return kf_err_set(err, -EBUSY, "another membership change is waiting for its head round");
    uint64_t term = kfd_repl_leading_term(c->app->repl);
    if (term == 0)
        return kf_err_set(err, -EAGAIN, "this coordinator is not the leader");
    c->waiter.cb = cb;
    c->waiter.arg = arg;
    c->waiter.seq = seq;
    c->waiter.term = term;
    c->waiter.deadline = uv_now(c->timer.loop) + timeout_ms;
    /* No shortcut through a checkpoint from before the record, now or after the wait gives up. */
    kfd_store_audit_unvouch(c->app->store);
    /* As after an election: writes wait and nothing is signed until a majority holds this head. */
    if (c->confirmed_term == term) {
        c->confirmed_term = 0;
        if (!c->round_committing)
            c->round = 0;
        c->passes = 0;
        c->next_round_at = 0;
        c->told_unconfirmed = false;
        kfd_repl_clear_audit_confirmed(c->app->repl);
    }
    kf_log_info("audit_head_reconfirming", "term=%llu seq=%llu reason=\"a membership change waits for a majority "
                "to hold its record\"", (unsigned long long)term, (unsigned long long)seq);
    return 0;
}

void kfd_checkpointer_free(kfd_checkpointer *c)
{
    if (c == NULL)
        return;
    finish_waiter(c, -ECANCELED, "this coordinator is stopping");
    c->closing = true;
    kfd_http_free(c->http); /* drops the questions in flight without their callbacks */
    c->http = NULL;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_closed);
}

int kfd_checkpoint_verify_record(kfd_checkpointer *c, const Keyfleet__V1__AuditRecord *r, kf_err *err)
{
    if (r == NULL || strcmp(r->action, KF_AUDIT_CHECKPOINT_ACTION) != 0)
        return kf_err_set(err, -EPERM, "not a checkpoint record");
    return kf_checkpoint_verify(r->reason, strlen(r->reason), r->signature.data, r->signature.len,
                                r->signer_cert.data, r->signer_cert.len, c->ca, c->cluster, NULL, err);
}

int kfd_checkpoint_verify_command(kfd_checkpointer *c, const Keyfleet__V1__CmdCheckpoint *cmd, kf_err *err)
{
    if (cmd == NULL || cmd->text == NULL)
        return kf_err_set(err, -EPERM, "checkpoint command without its text");
    /* Not by the clock: every replica decides alike (a time too far ahead is judged after). */
    int r = kf_checkpoint_verify_cached(c->cache, false, cmd->text, strlen(cmd->text), cmd->signature.data,
                                        cmd->signature.len, cmd->cert.data, cmd->cert.len, c->ca, c->cluster, NULL,
                                        err);
    return r == 0 ? 0 : -EPERM;
}

int kfd_checkpoint_verify_applied_record(kfd_checkpointer *c, const Keyfleet__V1__AuditRecord *r, kf_err *err)
{
    if (r == NULL || strcmp(r->action, KF_AUDIT_CHECKPOINT_ACTION) != 0)
        return kf_err_set(err, -EPERM, "not a checkpoint record");
    return kf_checkpoint_verify_cached(c->cache, false, r->reason, strlen(r->reason), r->signature.data,
                                       r->signature.len, r->signer_cert.data, r->signer_cert.len, c->ca, c->cluster,
                                       NULL, err);
}

void kfd_checkpointer_stats(const kfd_checkpointer *c, kfd_checkpoint_stats *ret)
{
    if (c == NULL)
        memset(ret, 0, sizeof(*ret));
    else
        *ret = c->stats;
}
