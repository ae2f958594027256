/* What a key's or login's handler judged by that the apply cannot judge again itself (reviews
 * rev42 S1, rev44, rev44b): the policy text it evaluated, the volume's row as its rules see it
 * (name, labels, owner, two-part mode), the accepted PCR values and recorded TPM counters the
 * request's quote was judged by, how the caller authenticated (certificate serial, AppRole token
 * and role rows), and for a login the secret id and role it matched. Revocations, TPM holds and
 * approvals are checked again at apply (store_guard.c); these are not, since only the handler
 * evaluates the policy and authenticates. So the handler puts their digests in the command
 * (CmdRecordRelease, CmdRotateKey, CmdEnrollVolume, CmdLogin) and each replica's apply computes
 * them from its own rows and, when one differs, records a refusal instead of the key: a decision
 * taken on rows only the proposer holds (its database file edited below sqlite, or while it was
 * stopped) is refused by every honest replica at once, and their audit logs part from the
 * proposer's at its next checkpoint, however briefly the edit lasted. Empty digests (a command of
 * an older version) are not compared. docs/audit.md, "What the apply judges again". */
#ifndef KFD_STORE_JUDGED_H
#define KFD_STORE_JUDGED_H

#include <stdbool.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "keyfleet/v1/state.pb-c.h"

#include "kf_err.h"
#include "kf_tpm_evidence.h"
#include "store/store.h"
#include "store/store_approle.h"
#include "store/store_read.h"

#define KFD_JUDGED_LEN 32

typedef struct kfd_judged {
    uint8_t policy[KFD_JUDGED_LEN], volume[KFD_JUDGED_LEN], pcrs[KFD_JUDGED_LEN], tpm[KFD_JUDGED_LEN];
    bool has_pcrs; /* the quote matched accepted values (the policy and volume are always judged) */
    bool has_tpm;  /* a quote's clock held: it was judged against the recorded TPM state */
    /* How the caller authenticated (review rev44b K2, K3): a certificate's serial, or an AppRole
     * token's id and the digest of its token and role rows (kfd_judged_token). */
    char cert_serial[48];
    char token_id[24];
    uint8_t auth[KFD_JUDGED_LEN];
} kfd_judged;

/* The command fields a judgement travels in (empty: not judged, or an older version's command). */
typedef struct kfd_judged_in {
    const ProtobufCBinaryData *policy, *volume, *pcrs, *tpm, *auth;
    const char *cert_serial, *token_id;
    int64_t at; /* the command's audit time */
    /* The quote's counters and clock (NULL: none), against the recorded clock (the slacks above;
     * review rev44b K5): behind by more than they explain is -EAGAIN. */
    const Keyfleet__V1__AttestClock *clock;
} kfd_judged_in;

/* The command fields kfd_judged_fields fills (volume NULL: a command without one). */
typedef struct kfd_judged_out {
    ProtobufCBinaryData *policy, *volume, *pcrs, *tpm, *auth;
    char **cert_serial, **token_id;
} kfd_judged_out;

/* The digests. Each is SHA-256 over a label naming it and a canonical encoding of its inputs
 * (docs/audit.md, "What the apply judges again"), so replicas of any version agree on equal
 * rows. 0, or -ENOMEM/-EIO; kfd_judged_pcrs -EINVAL when accepted does not parse. */
int kfd_judged_policy(const char *yaml, uint8_t out[KFD_JUDGED_LEN]);
/* Of a volume's row: its name, owner, two-part mode and labels. */
int kfd_judged_volume(const kfd_volume *v, uint8_t out[KFD_JUDGED_LEN]);
int kfd_judged_pcrs(const char *accepted, uint8_t out[KFD_JUDGED_LEN]);
/* Of a node's recorded TPM counters as the rollback check reads them (rec NULL: no record). */
int kfd_judged_tpm(const kfd_attest_record *rec, uint8_t out[KFD_JUDGED_LEN]);
/* Of an AppRole role's row: what a login is judged by (review rev44 J1). */
int kfd_judged_role(const kfd_role *r, uint8_t out[KFD_JUDGED_LEN]);
/* Of an AppRole token's row and its role's, as s holds them: what a bearer-token caller was
 * authenticated by (review rev44b K2). 0, -ENOENT (no such token or role) or -EIO; *expires_at
 * the token's expiry. */
int kfd_judged_token(kfd_store *s, const char *token_id, uint8_t out[KFD_JUDGED_LEN], int64_t *expires_at);
/* The same from rows already read (the front door's, kfd_approle_token_auth). */
int kfd_judged_token_rows(const char *token_id, const uint8_t hash[KFD_HASH_LEN], int64_t expires_at,
                          const kfd_role *role, uint8_t out[KFD_JUDGED_LEN]);

/* The command's fields, pointing into j (which the caller keeps until the command is packed). */
void kfd_judged_fields(const kfd_judged *j, const kfd_judged_out *o);

/* At apply: each non-empty digest against this replica's rows (v: the volume's row as read, vr
 * how reading it went; v is not read unless vr is 0). 0; -EAGAIN naming what differs (recorded as a
 * denial by kfd_store_apply_batch: kfd_store_record_refusal); -ESTALE,
 * -EINVAL (a malformed digest) or -EIO otherwise. */
int kfd_store_check_judged(kfd_store *s, const char *node, const kfd_volume *v, int vr, const kfd_judged_in *in,
                           kf_err *err);

/* The policy text a command was decided under (its judged_policy; empty: not compared) against
 * this replica's (review rev44 J6: approval counts, a wipe's erase_all_keyslots, a repeated
 * recovery escrow): 0, -EAGAIN naming it, -EINVAL (a malformed digest) or a read's error. */
int kfd_store_check_policy(kfd_store *s, const ProtobufCBinaryData *judged_policy, int64_t at, kf_err *err);

/* A quote's TPM clock judged again at apply (review rev44b K5): in the recorded boot (the same
 * reset and restart counts), a clock more than this far behind the recorded one is a second TPM
 * with the same state (a clone), whatever the handler's record said. Wide enough that two quotes
 * of one boot decided in parallel and applied out of order never meet it (a decision reaches its
 * apply within seconds); what it lets through inside it is the handler's check alone. */
#define KFD_TPM_CLOCK_APPLY_SLACK_MS 300000ull
/* Across a reboot (higher counters) a TPM's clock may go back by what it had not saved to NV
 * (KF_TPM_CLOCK_NV_SLACK_MS; core/tpm_state.h's rule 3): more, plus the slack above, is a
 * copied state (review rev45c R45c-2). */
#define KFD_TPM_CLOCK_APPLY_REBOOT_SLACK_MS (KF_TPM_CLOCK_NV_SLACK_MS + KFD_TPM_CLOCK_APPLY_SLACK_MS)

/* A quote's TPM clock against a replica's record (rec NULL: none), at the command's time at: 0,
 * or -EAGAIN (err says why) when it is behind by more than the slacks above explain, or ahead of
 * the record by more than 5/4 of the time between the commands plus KF_TPM_CLOCK_JUMP_SLACK_MS and
 * the apply's slack (review rev45c R45c-2). Not compared: a clock not known, a quote the policy
 * let through audited, counters that went back (judged_tpm's). */
int kfd_tpm_clock_judged(const Keyfleet__V1__AttestClock *q, const kfd_attest_record *rec, int64_t at, kf_err *err);


/* A first enrollment's trust on first use (CmdEnrollVolume.attest_tofu: the handler counted the
 * quote as attested because the node had no volumes and no accepted PCR values; review rev44b
 * K7), judged again from this replica's rows: 0 when it holds (or the same values are accepted
 * already), -EAGAIN (recorded as a denial) when it does not, or a read's error. */
int kfd_store_check_tofu(kfd_store *s, const char *node, const char *tofu, kf_err *err);

/* A key (a release, rotation, recovery key escrow or reveal), an enrollment or a login refused at
 * apply (code: its apply's error, err: why), after the apply's own writes were undone, is
 * recorded, not dropped (reviews rev42 S1, rev44b K1): a denial with the command's audit entry
 * ("refused at apply: WHY; was: REASON"), so every replica that refuses keeps the trace of a key
 * its proposer may have answered with, and an edited replica's log parts from the honest ones'.
 * Only for the apply's decisions (-EACCES, -ESTALE, -EEXIST, -ENOENT, and -EAGAIN: a judged
 * mismatch), not a malformed command, a failed store or allocation, nor a command that allowed
 * nothing; and, but for -EAGAIN, only in a command whose proposer sets refusals_recorded (an
 * earlier version's replayed is rolled back as it was: review rev45 R45-1). Called by
 * kfd_store_apply_batch, which keeps the command's status (a judged mismatch, -EAGAIN, becomes
 * -ECANCELED: the proposer answers `unavailable`). 0 (*recorded says whether it was) or the
 * append's error. */
int kfd_store_record_refusal(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, int code, uint64_t *seq,
                             kf_err *err, bool *recorded);

#endif
