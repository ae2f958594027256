#include "rpc/rpc_attest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "core/app.h"
#include "core/audit.h"
#include "core/policy.h"
#include "core/tpm_state.h"
#include "front/peer.h"
#include "front/server.h"
#include "kf_log.h"
#include "rpc/rpc_admin.h"
#include "rpc/rpc_change.h"
#include "rpc/rpc_check.h"
#include "store/store.h"
#include "store/store_read.h"
#include "store/store_judged.h"

/* The qualifying data this request's quote must carry: from this connection's TLS exporter. */
static int expected_qualifying(kfd_call *call, const char *method, const char *volume_id,
                               const ProtobufCBinaryData *eph, const char *request_id, unsigned char q[32])
{
    SSL *ssl = kfd_req_ssl(call->srv->ssl_generations, call->req);
    unsigned char exporter[32];
    static const char label[] = KF_TPM_QUOTE_EXPORTER_LABEL;
    if (ssl == NULL ||
        SSL_export_keying_material(ssl, exporter, sizeof(exporter), label, sizeof(label) - 1, NULL, 0, 0) != 1)
        return -EIO;
    kf_tpm_quote_qualifying(exporter, method, volume_id, eph->data, eph->len, request_id, q);
    return 0;
}

int kfd_attest_evaluate(kfd_call *call, const Keyfleet__V1__TpmQuote *quote, const char *method,
                        const char *volume_id, const ProtobufCBinaryData *eph, const char *request_id,
                        kfd_attest_eval *ret)
{
    memset(ret, 0, sizeof(*ret));
    if (quote == NULL) {
        snprintf(ret->why, sizeof(ret->why), "the request carries no TPM quote");
        return 0;
    }
    if (quote->quoted.len == 0 || quote->quoted.len > 1024 || quote->signature.len == 0 ||
        quote->signature.len > 256 || quote->ak_public.len == 0 || quote->ak_public.len > 512 ||
        quote->pcr_values.len == 0 || quote->pcr_values.len > 24 * 32 || quote->nonce.len > 64) {
        snprintf(ret->why, sizeof(ret->why), "attestation: quoted, signature, ak_public and pcr_values are required "
                                             "and bounded (1024, 256, 512, 768 bytes)");
        return -EINVAL;
    }
    if (!call->peer->tpm_key) {
        snprintf(ret->why, sizeof(ret->why), "node '%s' has no TPM-bound certificate naming an attestation key",
                 call->peer->name);
        return 0;
    }
    unsigned char q[32];
    if (expected_qualifying(call, method, volume_id, eph, request_id, q) != 0) {
        snprintf(ret->why, sizeof(ret->why), "no TLS exporter for this connection");
        return 0;
    }
    kf_tpm_pcrs got;
    kf_err err = {0};
    int r = kf_tpm_quote_verify(quote->ak_public.data, quote->ak_public.len, call->peer->tpm_ak, quote->quoted.data,
                                quote->quoted.len, quote->signature.data, quote->signature.len,
                                quote->pcr_values.data, quote->pcr_values.len, q, &got, &ret->clock, &err);
    if (r == -EINVAL) {
        snprintf(ret->why, sizeof(ret->why), "attestation: %.200s", err.msg);
        return -EINVAL;
    }
    /* The coordinator, not the agent, decides which PCRs count. */
    kfd_attest_policy ap = kfd_policy_attestation(kfd_call_app(call)->policy);
    if (r == 0)
        r = kf_tpm_pcrs_require(&got, ap.pcrs, &err);
    /* A clock past 2^63 ms (292 million years; only TPM2_ClockSet makes one) cannot be recorded
     * (the store's integers are signed), and a record without a clock checks the counters only:
     * such a TPM would switch off the clone check for itself (review rev16e, E2). */
    if (r == 0 && ret->clock.clock > (uint64_t)INT64_MAX)
        r = kf_err_set(&err, -ERANGE, "the TPM's clock (%" PRIu64 " ms) is past 2^63 ms: set forward with "
                                      "TPM2_ClockSet?", ret->clock.clock);
    if (r != 0) {
        snprintf(ret->why, sizeof(ret->why), "the quote does not hold: %.200s", err.msg);
        return 0;
    }
    kfd_attest_record rec;
    r = kfd_store_get_attest(kfd_call_app(call)->store, call->peer->name, &rec);
    if (r != 0 && r != -ENOENT)
        return -EIO;
    ret->has_clock = true;
    kf_tpm_pcrs_format(&got, ret->seen);
    /* The TPM state (review rev17, A1; core/tpm_state.h): counters that went backwards (a
     * rolled-back TPM), a clock that went backwards or ran ahead of time (two TPMs with one
     * state: a copied virtual TPM) cannot come from the TPM the coordinators recorded. */
    kfd_tpm_state st = {0};
    if (r == 0 && rec.has_clock)
        st = (kfd_tpm_state){.has = true, .reset_count = rec.reset_count, .restart_count = rec.restart_count,
                             .has_clock = rec.has_tpm_clock, .clock = rec.clock, .safe = rec.clock_safe,
                             .at = rec.clock_at};
    if (kfd_judged_tpm(r == 0 ? &rec : NULL, ret->judged_tpm) != 0) { /* for the apply (store_judged.h) */
        snprintf(ret->why, sizeof(ret->why), "cannot digest the TPM counters of node '%s'", call->peer->name);
        return -EIO;
    }
    char state_why[256];
    kfd_tpm_verdict v = kfd_tpm_state_check(&st, &ret->clock, time(NULL), state_why, sizeof(state_why));
    ret->state_ok = v == KFD_TPM_STATE_OK;
    if (v != KFD_TPM_STATE_OK) {
        snprintf(ret->note, sizeof(ret->note), "%s", state_why);
        kf_log_warn("attest_rollback", "node=%s reset=%" PRIu32 " restart=%" PRIu32 " clock=%" PRIu64
                    " recorded_reset=%" PRIu32 " recorded_restart=%" PRIu32 " recorded_clock=%" PRIu64
                    " verdict=%d mode=%s",
                    call->peer->name, ret->clock.reset_count, ret->clock.restart_count, ret->clock.clock,
                    st.reset_count, st.restart_count, st.clock, (int)v, ap.rollback_audit ? "audit" : "deny");
        if (!ap.rollback_audit) {
            ret->rollback = true;
            ret->hold = true;
            snprintf(ret->why, sizeof(ret->why), "%.256s; node held until keyfleetctl node attest unhold", state_why);
            ret->note[0] = '\0';
            return 0; /* not a quote that holds; its values are kept as seen */
        }
    }
    ret->quote_valid = true;
    ret->quoted = got;
    kf_tpm_pcrs accepted;
    if (r == -ENOENT || rec.accepted[0] == '\0' || kf_tpm_pcrs_parse(rec.accepted, &accepted, NULL) != 0) {
        ret->no_baseline = true;
        snprintf(ret->why, sizeof(ret->why),
                 "node '%s' has no accepted PCR values (they are recorded at its first attested enrollment, "
                 "or accepted with keyfleetctl node attest accept)",
                 call->peer->name);
        return 0;
    }
    uint32_t changed = kf_tpm_pcrs_diff(&accepted, &got);
    if (changed != 0) {
        char list[64];
        kf_tpm_pcr_list(changed, list, sizeof(list));
        /* The changed PCRs come first: a long name is cut, never them. */
        int n = snprintf(ret->why, sizeof(ret->why),
                         "PCR %s changed since the values accepted for node '%s' (by %.40s); keyfleetctl node "
                         "attest show|accept",
                         list, call->peer->name, rec.accepted_by);
        (void)n;
        return 0;
    }
    /* The values it matched, as the apply finds them on each replica (store_judged.h). */
    if (kfd_judged_pcrs(rec.accepted, ret->judged_pcrs) != 0) {
        snprintf(ret->why, sizeof(ret->why), "cannot digest the accepted PCR values of node '%s'", call->peer->name);
        return -EIO;
    }
    ret->attested = true;
    ret->seen[0] = '\0';
    return 0;
}

bool kfd_attest_clock_before(uint32_t reset, uint32_t restart, uint32_t than_reset, uint32_t than_restart)
{
    return kf_tpm_counters_before(reset, restart, than_reset, than_restart);
}

void kfd_attest_clock_fill(const kfd_attest_eval *att, Keyfleet__V1__AttestClock *clk)
{
    keyfleet__v1__attest_clock__init(clk);
    clk->reset_count = att->clock.reset_count;
    clk->restart_count = att->clock.restart_count;
    clk->clock = att->clock.clock;
    clk->safe = att->clock.safe;
    clk->clock_known = true;
    clk->rollback_audited = !att->state_ok; /* let through by the policy's rollback: audit */
}

void kfd_attest_seen_command(kfd_call *call, const kfd_attest_eval *att, const char *action, const char *volume_id,
                             const char *request_id, const char *reason, const char *hold_kind, kfd_attest_cmd *out)
{
    kfd_audit_fill(&out->audit, kfd_call_actor(call), action, KEYFLEET__V1__DECISION__DECISION_DENY,
                   call->peer->name, volume_id, request_id, reason);
    keyfleet__v1__cmd_attest__init(&out->attest);
    out->attest.node = (char *)call->peer->name;
    out->attest.kind = (char *)"seen";
    out->attest.pcrs = (char *)att->seen;
    out->attest.audit = &out->audit.entry;
    kfd_attest_clock_fill(att, &out->clock);
    out->attest.clock = att->has_clock ? &out->clock : NULL;
    memcpy(out->judged_policy, kfd_call_app(call)->policy_judged, sizeof(out->judged_policy));
    out->attest.judged_policy = (ProtobufCBinaryData){sizeof(out->judged_policy), out->judged_policy};
    if (hold_kind != NULL) {
        out->attest.hold = (char *)reason;
        out->attest.hold_kind = (char *)hold_kind;
        kf_log_warn("attest_hold", "node=%s kind=%s reason=%s", call->peer->name, hold_kind, kf_log_q(reason));
    }
    keyfleet__v1__state_command__init(&out->cmd);
    out->cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST;
    out->cmd.attest = &out->attest;
}

int kfd_attest_held(kfd_call *call, char kind[16], char *why, size_t size)
{
    kfd_attest_record rec;
    kind[0] = '\0';
    int r = kfd_store_get_attest(kfd_call_app(call)->store, call->peer->name, &rec);
    if (r == -ENOENT)
        return 0;
    if (r != 0)
        return -EIO;
    if (rec.held[0] != '\0')
        snprintf(kind, 16, "%s", rec.held_kind[0] != '\0' ? rec.held_kind : "tpm");
    if (kind[0] != '\0')
        snprintf(why, size, "node '%s' is held (%s): %.300s; keyfleetctl node attest show|unhold", call->peer->name,
                 rec.held_kind, rec.held);
    return 0;
}

/* The seen quote's counters are below the recorded ones: accepting it accepts those. */
static bool seen_rollback(const kfd_attest_record *rec)
{
    return rec->seen[0] != '\0' && rec->has_seen_clock && rec->has_clock &&
           kfd_attest_clock_before(rec->seen_reset, rec->seen_restart, rec->reset_count, rec->restart_count);
}

/* The TPM state of a record as shown: "reset=N restart=M[ clock=C safe=yes|no]". */
static void state_text(char *out, size_t size, uint32_t reset, uint32_t restart, bool has_clock, uint64_t clock,
                       bool safe)
{
    int n = snprintf(out, size, "reset=%" PRIu32 " restart=%" PRIu32, reset, restart);
    if (has_clock && n > 0 && (size_t)n < size)
        snprintf(out + n, size - (size_t)n, " clock=%" PRIu64 " safe=%s", clock, safe ? "yes" : "no");
}

/* The token of rec as GetNodeAttestation shows it and AcceptNodeAttestation checks it: over the
 * values, the seen quote's counters and the hold (its time and TPM state). */
static int record_token(const char *node, const kfd_attest_record *rec, char seen_clock[48],
                        char token[KF_TPM_ATTEST_TOKEN_LEN + 1])
{
    seen_clock[0] = '\0';
    /* The token covers the seen quote's clock too (review rev46c R46c-2): the state an acceptance
     * lays is the one shown, and a node that quoted since makes the operator look again. */
    char seen_state[100] = "";
    if (rec->has_seen_clock && rec->seen[0] != '\0') {
        snprintf(seen_clock, 48, "reset=%" PRIu32 " restart=%" PRIu32, rec->seen_reset, rec->seen_restart);
        state_text(seen_state, sizeof(seen_state), rec->seen_reset, rec->seen_restart, rec->has_seen_tpm_clock,
                   rec->seen_clock, rec->seen_safe);
    }
    char state[240] = "";
    if (rec->held[0] != '\0') {
        char held_clock[100];
        state_text(held_clock, sizeof(held_clock), rec->held_reset, rec->held_restart, rec->has_held_clock,
                   rec->held_clock, rec->held_safe);
        snprintf(state, sizeof(state), "%s held_at=%" PRId64 " %s", seen_state, rec->held_at, held_clock);
    } else {
        snprintf(state, sizeof(state), "%s", seen_state);
    }
    return kf_tpm_attest_token(node, rec->accepted, rec->seen, state, token);
}

void kfd_rpc_get_node_attestation(kfd_call *call)
{
    const Keyfleet__V1__GetNodeAttestationRequest *req = (const Keyfleet__V1__GetNodeAttestationRequest *)call->request;
    const char *bad = kfd_check_get_node_attestation(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    kfd_attest_record rec;
    int r = kfd_store_get_attest(kfd_call_app(call)->store, req->node, &rec);
    if (r != 0) {
        kfd_call_error(call, r == -ENOENT ? KF_CONNECT_NOT_FOUND : KF_CONNECT_UNAVAILABLE, "%s",
                       r == -ENOENT ? "no measured-boot record for this node" : "state store unavailable");
        return;
    }
    char changed[64] = "", clock[100] = "", seen_clock[48] = "", held_clock[100] = "";
    char token[KF_TPM_ATTEST_TOKEN_LEN + 1];
    if (rec.has_clock)
        state_text(clock, sizeof(clock), rec.reset_count, rec.restart_count, rec.has_tpm_clock, rec.clock,
                   rec.clock_safe);
    if (rec.held[0] != '\0' && rec.has_held_state)
        state_text(held_clock, sizeof(held_clock), rec.held_reset, rec.held_restart, rec.has_held_clock,
                   rec.held_clock, rec.held_safe);
    if (record_token(req->node, &rec, seen_clock, token) != 0) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    kf_tpm_pcrs a, s;
    if (rec.accepted[0] != '\0' && rec.seen[0] != '\0' && kf_tpm_pcrs_parse(rec.accepted, &a, NULL) == 0 &&
        kf_tpm_pcrs_parse(rec.seen, &s, NULL) == 0)
        kf_tpm_pcr_list(kf_tpm_pcrs_diff(&a, &s), changed, sizeof(changed));
    Keyfleet__V1__GetNodeAttestationResponse resp = KEYFLEET__V1__GET_NODE_ATTESTATION_RESPONSE__INIT;
    resp.accepted = rec.accepted;
    resp.accepted_at = rec.accepted_at;
    resp.accepted_by = rec.accepted_by;
    resp.seen = rec.seen;
    resp.seen_at = rec.seen_at;
    resp.changed = changed;
    resp.token = token;
    resp.clock = clock;
    resp.seen_clock = seen_clock;
    resp.rollback = seen_rollback(&rec);
    resp.held = rec.held;
    resp.held_at = rec.held_at;
    resp.held_kind = rec.held_kind;
    resp.held_clock = held_clock;
    kfd_call_reply(call, &resp.base);
}

typedef struct accept_op {
    kfd_op base;
    char pcrs[KF_TPM_PCRS_TEXT_MAX];
} accept_op;

static void on_accept_committed(void *arg, int status, const kfd_change_result *res, const kf_err *err)
{
    accept_op *op = arg;
    if (op->base.call != NULL && kfd_rpc_commit_answer(op->base.call, status, err)) {
        Keyfleet__V1__AcceptNodeAttestationResponse resp = KEYFLEET__V1__ACCEPT_NODE_ATTESTATION_RESPONSE__INIT;
        resp.accepted = op->pcrs;
        resp.pending_request_id = (char *)res->held_request_id;
        resp.approvals_needed = res->approvals_needed;
        kfd_call_reply(op->base.call, &resp.base);
    }
    kfd_op_free(op);
}

/* keyfleetctl node attest unhold NODE TOKEN: after investigation, an operator lifts the node's
 * hold and accepts the held quote's TPM state as the recorded one (review rev17, A1). Audited,
 * held for approvals like an acceptance, and applied only over the hold shown (its time). */
static void unhold(kfd_call *call, const Keyfleet__V1__AcceptNodeAttestationRequest *req, const kfd_attest_record *rec)
{
    char seen_clock[48], token[KF_TPM_ATTEST_TOKEN_LEN + 1];
    if (rec == NULL || rec->held[0] == '\0') {
        kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION, "node %s is not held", req->node);
        return;
    }
    if (record_token(req->node, rec, seen_clock, token) != 0 ||
        CRYPTO_memcmp(req->token, token, KF_TPM_ATTEST_TOKEN_LEN) != 0) { /* the hold shown, not a later one */
        kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION,
                       "node %s's measured-boot record is no longer the one shown with this token; look again "
                       "(keyfleetctl node attest show)",
                       req->node);
        return;
    }
    accept_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    char state[100] = "(none)";
    if (rec->has_held_state)
        state_text(state, sizeof(state), rec->held_reset, rec->held_restart, rec->has_held_clock, rec->held_clock,
                   rec->held_safe);
    char reason[700];
    snprintf(reason, sizeof(reason), "lift node %s's hold (%s, since %" PRId64 ": %.300s) and accept its TPM state %s",
             req->node, rec->held_kind, rec->held_at, rec->held, state);
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "attest_unhold", KEYFLEET__V1__DECISION__DECISION_ALLOW, req->node, "",
                   "", reason);
    Keyfleet__V1__CmdAttest c = KEYFLEET__V1__CMD_ATTEST__INIT;
    c.node = (char *)req->node;
    c.kind = (char *)"unhold";
    c.pcrs = (char *)"";
    c.audit = &a.entry;
    c.prev_held_at = rec->held_at;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST;
    cmd.attest = &c;
    kf_log_info("attest_unhold", "node=%s operator=%s kind=%s", req->node, call->peer->name, rec->held_kind);
    kfd_commit_change(call, &cmd, reason, req->totp_code, on_accept_committed, op);
}

void kfd_rpc_accept_node_attestation(kfd_call *call)
{
    const Keyfleet__V1__AcceptNodeAttestationRequest *req =
        (const Keyfleet__V1__AcceptNodeAttestationRequest *)call->request;
    kf_tpm_pcrs expected;
    char bad_buf[200];
    const char *bad = kfd_check_accept_node_attestation(req, &expected, bad_buf, sizeof(bad_buf));
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    kfd_attest_record rec;
    int r = kfd_store_get_attest(kfd_call_app(call)->store, req->node, &rec);
    if (r != 0 && r != -ENOENT) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    if (req->unhold) {
        unhold(call, req, r == 0 ? &rec : NULL);
        return;
    }
    kf_tpm_pcrs seen;
    if (r == -ENOENT || rec.seen[0] == '\0' || kf_tpm_pcrs_parse(rec.seen, &seen, NULL) != 0) {
        kfd_call_error(call, KF_CONNECT_NOT_FOUND, "node %s has sent no quote that differs from its accepted values",
                       req->node);
        return;
    }
    /* The record the operator looked at (its token), or nothing: the node may have quoted other
     * values since, or another acceptance may have come first. */
    char seen_clock[48] = "", token[KF_TPM_ATTEST_TOKEN_LEN + 1];
    if (record_token(req->node, &rec, seen_clock, token) != 0 ||
        CRYPTO_memcmp(token, req->token, KF_TPM_ATTEST_TOKEN_LEN) != 0) {
        kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION,
                       "node %s's measured-boot record is no longer the one shown with this token (it quoted again, "
                       "or another acceptance came first); look again (keyfleetctl node attest show)",
                       req->node);
        return;
    }
    /* The operator names the values accepted (review rev17, A2): the token only says which quote
     * was shown, and a quote is whatever holds the node's TPM key (a thief's machine booted with
     * another chain too). Every PCR that changed must be listed, and each listed value must be
     * the quoted one; the values come from outside the node (the new kernel's or firmware's
     * published measurements, a known-good machine). */
    kf_tpm_pcrs accepted_now;
    uint32_t changed = rec.accepted[0] != '\0' && kf_tpm_pcrs_parse(rec.accepted, &accepted_now, NULL) == 0
                           ? kf_tpm_pcrs_diff(&accepted_now, &seen)
                           : seen.mask;
    if (req->expected[0] == '\0' || (changed & ~expected.mask) != 0) {
        char need[64];
        kf_tpm_pcr_list(changed, need, sizeof(need));
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT,
                       "name the values you accept for node %s: expected must list PCR %s (as '4=HEX ...'), from a "
                       "source other than the node",
                       req->node, need);
        return;
    }
    if ((kf_tpm_pcrs_diff(&expected, &seen) & expected.mask) != 0) {
        kfd_call_error(call, KF_CONNECT_FAILED_PRECONDITION,
                       "node %s quoted other values than the ones you expect; do not accept them unless you know why "
                       "(keyfleetctl node attest show)",
                       req->node);
        return;
    }
    accept_op *op = kfd_op_new(call, sizeof(*op));
    if (op == NULL) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "out of memory");
        return;
    }
    snprintf(op->pcrs, sizeof(op->pcrs), "%s", rec.seen);
    char list[64] = "all";
    kf_tpm_pcrs accepted;
    if (rec.accepted[0] != '\0' && kf_tpm_pcrs_parse(rec.accepted, &accepted, NULL) == 0)
        kf_tpm_pcr_list(kf_tpm_pcrs_diff(&accepted, &seen), list, sizeof(list));
    char reason[200];
    bool rollback = seen_rollback(&rec);
    snprintf(reason, sizeof(reason), "accept the PCR values node %s quoted last (changed: PCR %s%s)", req->node, list,
             rollback ? "; its TPM counters went backwards" : "");
    kfd_audit_buf a;
    kfd_audit_fill(&a, kfd_call_actor(call), "attest_accept", KEYFLEET__V1__DECISION__DECISION_ALLOW, req->node, "",
                   "", reason);
    Keyfleet__V1__CmdAttest c = KEYFLEET__V1__CMD_ATTEST__INIT;
    c.node = (char *)req->node;
    c.kind = (char *)"accept";
    c.pcrs = op->pcrs;
    c.audit = &a.entry;
    /* Compare and swap: applied (maybe later, after approvals) only over the accepted values
     * this acceptance was made against. */
    c.cas = true;
    c.prev_accepted = rec.accepted;
    Keyfleet__V1__AttestClock clk = KEYFLEET__V1__ATTEST_CLOCK__INIT;
    clk.reset_count = rec.seen_reset;
    clk.restart_count = rec.seen_restart;
    /* The seen quote's clock with its counters (review rev16e E4): without it the record would
     * have counters and no clock, and the clock rules would wait for the node's next quote. */
    clk.clock_known = rec.has_seen_tpm_clock;
    clk.clock = rec.seen_clock;
    clk.safe = rec.seen_safe;
    if (rollback)
        c.clock = &clk;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_ATTEST;
    cmd.attest = &c;
    kf_log_info("attest_accept", "node=%s operator=%s changed=%s", req->node, call->peer->name, list);
    kfd_commit_change(call, &cmd, reason, req->totp_code, on_accept_committed, op);
}
