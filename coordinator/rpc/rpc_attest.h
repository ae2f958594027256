/* Measured-boot attestation on the coordinator (docs/attestation.md): a request's TPM quote
 * checked against the node's certificate and accepted PCR values, and the operator's
 * GetNodeAttestation / AcceptNodeAttestation. */
#ifndef KFD_RPC_ATTEST_H
#define KFD_RPC_ATTEST_H

#include <stdbool.h>

#include "core/audit.h"
#include "front/call.h"
#include "kf_tpm_evidence.h"
#include "keyfleet/v1/node.pb-c.h"

typedef struct kfd_attest_eval {
    bool attested;    /* a valid quote for this request, matching the accepted values */
    char why[320];    /* when not attested: why, naming changed PCRs */
    char seen[KF_TPM_PCRS_TEXT_MAX]; /* a valid quote's values when they are not (yet) accepted */
    bool no_baseline; /* valid quote, and the node has no accepted values yet */
    bool quote_valid; /* the quote held (steps 1-5 of docs/attestation.md); quoted holds its values */
    kf_tpm_pcrs quoted;
    bool has_clock;     /* the quote's signature held: clock is its clock info (record it) */
    kf_tpm_clock clock;
    bool rollback;  /* its TPM state contradicts the recorded one (core/tpm_state.h): denied */
    bool hold;      /* ... and the node is to be held for it (kind "tpm"); why is the reason */
    bool state_ok;  /* has_clock, and the TPM state is one the recorded one can lead to: record it */
    char note[320]; /* a rollback let through by attestation.rollback: audit; to append to the audit */
    /* attested: the digest of the accepted values it matched (store_judged.h), for the command */
    uint8_t judged_pcrs[32];
    /* has_clock: the digest of the recorded TPM counters the quote was checked against */
    uint8_t judged_tpm[32];
} kfd_attest_eval;

/* (reset, restart) comes before (than_reset, than_restart) on one TPM. */
bool kfd_attest_clock_before(uint32_t reset, uint32_t restart, uint32_t than_reset, uint32_t than_restart);

/* att's TPM state as a command's AttestClock (clock_known). */
void kfd_attest_clock_fill(const kfd_attest_eval *att, Keyfleet__V1__AttestClock *clk);

/* The command that records a quote that did not attest (kind "seen": its values and TPM state),
 * with its audit record, and, when hold_kind is not NULL, holds the node for reason (review
 * rev17, A1). One builder for a denied request (rpc_node.c) and a heartbeat (rpc_heartbeat.c);
 * the command points into *out, which the caller keeps until it is committed. */
typedef struct kfd_attest_cmd {
    kfd_audit_buf audit;
    Keyfleet__V1__CmdAttest attest;
    Keyfleet__V1__AttestClock clock;
    uint8_t judged_policy[32]; /* the policy's digest at the decision (review rev46b R46b-2) */
    Keyfleet__V1__StateCommand cmd;
} kfd_attest_cmd;
void kfd_attest_seen_command(kfd_call *call, const kfd_attest_eval *att, const char *action, const char *volume_id,
                             const char *request_id, const char *reason, const char *hold_kind, kfd_attest_cmd *out);

/* Whether the node is held (docs/attestation.md): kind "tpm" or "drift", "" when not; the reason
 * in why. 0 or -EIO. */
int kfd_attest_held(kfd_call *call, char kind[16], char *why, size_t size);

/* Evaluates quote (NULL: none) for the request method/volume_id/eph/request_id on call's TLS
 * connection. Returns 0 with *ret filled, or -EINVAL with why set for a malformed quote (the
 * caller answers invalid_argument), or -EIO (store unavailable). */
int kfd_attest_evaluate(kfd_call *call, const Keyfleet__V1__TpmQuote *quote, const char *method,
                        const char *volume_id, const ProtobufCBinaryData *eph, const char *request_id,
                        kfd_attest_eval *ret);

void kfd_rpc_get_node_attestation(kfd_call *call);
void kfd_rpc_accept_node_attestation(kfd_call *call);

#endif
