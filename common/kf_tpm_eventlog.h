/* TCG event log replay (issue #16 part 3, "what each measurement was"): the firmware's log of
 * every measurement it extended into the PCRs (Linux: /sys/kernel/security/tpm0/
 * binary_bios_measurements), replayed into the SHA-256 bank, so a quote's PCR values can be
 * checked against the events that produced them. Pure: parses and hashes only. */
#ifndef KF_TPM_EVENTLOG_H
#define KF_TPM_EVENTLOG_H

#include <stddef.h>
#include <stdint.h>

#include "kf_err.h"
#include "kf_tpm_evidence.h"

#define KF_TPM_EVENTLOG_MAX (4u << 20) /* bytes: real logs are 10..100 KB */
#define KF_TPM_EVENTLOG_MAX_EVENTS 20000u

/* Replays log, in the crypto-agile format of the TCG PC Client Platform Firmware Profile
 * (section 10: a first TCG_PCClientPCREvent of type EV_NO_ACTION carrying the "Spec ID Event03"
 * header that lists the banks and their digest sizes, then TCG_PCR_EVENT2 records), into the
 * SHA-256 bank: each event that is not EV_NO_ACTION extends its PCR with its SHA-256 digest
 * (PCR = SHA-256(PCR || digest)), from zeros, except PCR 0, which starts at the locality of a
 * "StartupLocality" EV_NO_ACTION event when there is one (H-CRTM / locality 3 starts). ret->mask
 * has the PCRs (0..23) at least one event extended; ret->values[i] the replayed value of every
 * PCR (zeros for those never extended). *n_events (may be NULL): the events read. -EINVAL, with
 * err naming the event and offset, for anything malformed: a log without the Spec ID header (an
 * SHA-1-only log), without a SHA-256 bank, an event naming a bank the header does not list or
 * missing its SHA-256 digest, a PCR above 23, a size past the end; nothing partial is returned. */
int kf_tpm_eventlog_replay(const unsigned char *log, size_t len, kf_tpm_pcrs *ret, size_t *n_events, kf_err *err);

/* The PCRs of quoted (its mask) whose value is not the replayed one: 0 when the log explains
 * every quoted PCR. */
uint32_t kf_tpm_eventlog_mismatch(const kf_tpm_pcrs *replayed, const kf_tpm_pcrs *quoted);

#endif
