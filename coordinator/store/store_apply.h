/* Applying state commands (store_apply.c): the only writer of the state. */
#ifndef KFD_STORE_APPLY_H
#define KFD_STORE_APPLY_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "keyfleet/v1/state.pb-c.h"
#include "kf_err.h"
#include "store/store.h"

typedef struct kfd_apply_result {
    uint64_t audit_seq; /* seq of the last audit record the command appended, 0 if none */
    /* Refused, its writes undone, and the refusal recorded as a denial at audit_seq
     * (kfd_store_record_refusal): the command's status says why. */
    bool refused;
} kfd_apply_result;

/* Applies cmd in one durable transaction. Returns 0, a negative errno for a command that is
 * invalid against the current state (-ENOENT, -EEXIST, -EINVAL: nothing changed, except that an
 * allowed key, enrollment or login refused here has its refusal recorded: ret->refused), or -EIO
 * when the store failed (nothing changed; the store is now failed). */
int kfd_store_apply(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, kfd_apply_result *ret, kf_err *err);

/* Applies n commands in one durable transaction (one fsync): group commit. Each command runs in
 * its own savepoint, so an invalid one (statuses[i] < 0, errs[i] says why) changes nothing and
 * does not affect the others; except -ECANCELED, a key refused at apply whose denial was recorded
 * (results[i].audit_seq; store_judged.h). Returns 0 when the transaction committed, or -EIO when it did not
 * (then every status is -EIO and nothing changed). */
int kfd_store_apply_batch(kfd_store *s, const Keyfleet__V1__StateCommand *const *cmds, size_t n, uint64_t raft_index,
                          int *statuses, kfd_apply_result *results, kf_err *errs);

/* True once after an apply wrote the policy (PutPolicy or a held change it completed); clears the flag. */
bool kfd_store_take_policy_changed(kfd_store *s);

/* --- for the store's own files --- */

/* Applies one command inside the current transaction; its audit records too. */
int kfd_store_apply_one(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, uint64_t *seq, kf_err *err);
/* Records op's approval of request_id (and spends its TOTP step, when not 0). */
/* Spends an operator's TOTP step (0: none): -EACCES when it was used already. */
int kfd_store_spend_totp(kfd_store *s, const char *op, int64_t totp_step, kf_err *err);
int kfd_store_record_approval(kfd_store *s, const char *request_id, const char *op, int64_t totp_step, int64_t at,
                              kf_err *err);

#endif
