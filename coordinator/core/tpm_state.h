/* A node's TPM state across its quotes (review rev17, A1; docs/attestation.md, "TPM clock"):
 * whether a quote's TPMS_CLOCK_INFO can come from the TPM whose state the coordinators recorded,
 * or only from a rolled-back or cloned copy of it. Pure: no store, no time source. */
#ifndef KFD_TPM_STATE_H
#define KFD_TPM_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kf_tpm_evidence.h"

/* The recorded state: the highest (reset, restart, clock) a quote that held showed, and when
 * (coordinator time, seconds) it was recorded. */
typedef struct kfd_tpm_state {
    bool has;                     /* counters recorded */
    uint32_t reset_count, restart_count;
    bool has_clock;               /* clock recorded (nodes recorded before it was, have none) */
    uint64_t clock;
    bool safe;
    int64_t at;
} kfd_tpm_state;

typedef enum kfd_tpm_verdict {
    KFD_TPM_STATE_OK = 0,
    KFD_TPM_STATE_COUNTERS_BACK, /* resetCount/restartCount below the recorded ones */
    KFD_TPM_STATE_CLOCK_BACK,    /* clock below the recorded one (beyond what a power loss explains) */
    KFD_TPM_STATE_CLOCK_JUMP,    /* clock ahead of the recorded one by more than the time since allows */
} kfd_tpm_verdict;

/* The rule (docs/attestation.md, "TPM clock"), for a quote q checked at now (seconds) against
 * rec:
 *  1. (reset, restart) lower than recorded: COUNTERS_BACK.
 *  2. the same (reset, restart): clock < recorded clock: CLOCK_BACK (within one power cycle
 *     the clock only goes forward; TPM2_ClockSet only advances it).
 *  3. higher (reset, restart): clock < recorded clock - KF_TPM_CLOCK_NV_SLACK_MS: CLOCK_BACK
 *     (more than a power loss can lose).
 *  4. clock - recorded clock > (now - at) * 1000 * 5/4 + KF_TPM_CLOCK_JUMP_SLACK_MS:
 *     CLOCK_JUMP (a TPM's clock runs only while it is powered, at about real time; a clone
 *     set ahead with TPM2_ClockSet to pass rule 2).
 * Without a recorded clock only rule 1 applies. why (may be NULL) names the rule and the
 * values. */
kfd_tpm_verdict kfd_tpm_state_check(const kfd_tpm_state *rec, const kf_tpm_clock *q, int64_t now, char *why,
                                    size_t size);

#endif
