#include "core/tpm_state.h"

#include <inttypes.h>
#include <stdio.h>

/* "WHAT (quote ..., recorded ...): WHY" into why. */
static kfd_tpm_verdict say(kfd_tpm_verdict v, char *why, size_t size, const char *what, const char *cause,
                           const kf_tpm_clock *q, const kfd_tpm_state *rec)
{
    if (why != NULL)
        snprintf(why, size,
                 "%s (quote reset=%" PRIu32 " restart=%" PRIu32 " clock=%" PRIu64 ", recorded reset=%" PRIu32
                 " restart=%" PRIu32 " clock=%" PRIu64 "): %s",
                 what, q->reset_count, q->restart_count, q->clock, rec->reset_count, rec->restart_count, rec->clock,
                 cause);
    return v;
}

kfd_tpm_verdict kfd_tpm_state_check(const kfd_tpm_state *rec, const kf_tpm_clock *q, int64_t now, char *why,
                                    size_t size)
{
    if (why != NULL && size > 0)
        why[0] = '\0';
    if (!rec->has)
        return KFD_TPM_STATE_OK;
    bool same = q->reset_count == rec->reset_count && q->restart_count == rec->restart_count;
    if (q->reset_count < rec->reset_count ||
        (q->reset_count == rec->reset_count && q->restart_count < rec->restart_count))
        return say(KFD_TPM_STATE_COUNTERS_BACK, why, size,
                   "the TPM's reset/restart counters went backwards", "its state was rolled back?", q, rec);
    if (!rec->has_clock)
        return KFD_TPM_STATE_OK;
    if (same && q->clock < rec->clock)
        return say(KFD_TPM_STATE_CLOCK_BACK, why, size,
                   "the TPM's clock went backwards at the same reset/restart counters",
                   "two TPMs with one state (a cloned virtual TPM?)",
                   q, rec);
    /* Not q->safe: libtpms (swtpm) reports safe = YES after a kill with the clock back by what
     * the last NV save lost (seen: 48 s), so the flag cannot narrow the slack. */
    uint64_t slack = KF_TPM_CLOCK_NV_SLACK_MS;
    if (!same && q->clock + slack < rec->clock)
        return say(KFD_TPM_STATE_CLOCK_BACK, why, size,
                   "the TPM's clock went backwards across a reboot by more than a power loss explains",
                   "its state was copied or rolled back?",
                   q, rec);
    if (q->clock > rec->clock) {
        uint64_t elapsed_ms = now > rec->at ? (uint64_t)(now - rec->at) * 1000u : 0;
        if (q->clock - rec->clock > elapsed_ms / 4u * 5u + KF_TPM_CLOCK_JUMP_SLACK_MS)
            return say(KFD_TPM_STATE_CLOCK_JUMP, why, size,
                       "the TPM's clock ran ahead of real time since the recorded quote",
                       "set forward (a cloned TPM made to pass the clock check?)",
                       q, rec);
    }
    return KFD_TPM_STATE_OK;
}
