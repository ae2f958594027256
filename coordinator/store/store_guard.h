/* The checks applied with the commands that hand out or gate key material, and the operator
 * changes held for approval (store_guard.c). */
#ifndef KFD_STORE_GUARD_H
#define KFD_STORE_GUARD_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "keyfleet/v1/state.pb-c.h"
#include "kf_err.h"
#include "store/store.h"

/* An operator's run of wrong TOTP codes and the end of its lockout (0: none). */
int kfd_store_totp_failures(kfd_store *s, const char *op, uint32_t *ret_failures, int64_t *ret_locked_until);
/* Whether a certificate serial (lowercase hex) is denylisted. 0 or -EIO. */
int kfd_store_cert_revoked(kfd_store *s, const char *serial, bool *ret);

/* --- for the store's own files --- */

/* What any command carries about how it was let through: its caller (StateCommand.
 * auth_cert_serial) against this replica's certificate denylist (review rev44b K3), and the
 * policy text an operator change was let through under without a held request
 * (StateCommand.judged_policy, review rev45b R45b-1). 0, -EACCES naming the serial, -EAGAIN (the
 * policy differs) or a read's error. Empty fields are not checked. */
int kfd_store_command_allowed(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, kf_err *err);

/* They run inside the apply, on every replica, so a change committed meanwhile (a revocation, a spent
 * approval) is seen whatever the handler read earlier. */
/* -EACCES when node is revoked. */
int kfd_store_check_not_revoked(kfd_store *s, const char *node, kf_err *err);
/* Revocation, and for a release that uses an approved request: still approved, this node's and
 * volume's, unexpired at the audit time; then marks it consumed. -EACCES or -ESTALE otherwise. */
int kfd_store_release_allowed(kfd_store *s, const Keyfleet__V1__CmdRecordRelease *c, kf_err *err);
/* A step of a volume key rotation: the checks (volume, owner, revocation, the rotation in
 * progress), the volume's new state, the audit record. -EACCES, -ESTALE or -EIO with err. */
int kfd_store_apply_rotate(kfd_store *s, const Keyfleet__V1__CmdRotateKey *c, uint64_t *seq, kf_err *err);
/* The proposer's approval of a change just recorded as pending; applies it when that is enough. */
int kfd_store_propose_change(kfd_store *s, const Keyfleet__V1__CmdCreatePending *c, uint64_t *seq, kf_err *err);
/* Applies the operator change held by request_id once it is approved, and marks it consumed. A
 * wipe with erase_all_keyslots is refused (-EACCES) unless erase_all_allowed (the approving
 * handler found the policy still allows it for the wipe's node). */
int kfd_store_apply_change(kfd_store *s, const char *request_id, bool erase_all_allowed, uint64_t *seq, kf_err *err);
/* The StateCommand a held change carries (*ret NULL when it does not unpack; free with
 * keyfleet__v1__state_command__free_unpacked). 0, -ENOENT or -EIO. */
int kfd_store_get_change(kfd_store *s, const char *request_id, Keyfleet__V1__StateCommand **ret);
int kfd_store_apply_totp_failure(kfd_store *s, const Keyfleet__V1__CmdTotpFailure *c, uint64_t *seq, kf_err *err);
/* A correct TOTP code clears the operator's run of failures. */
int kfd_store_totp_reset(kfd_store *s, const char *op, kf_err *err);
int kfd_store_apply_revoke_cert(kfd_store *s, const Keyfleet__V1__CmdRevokeCert *c, uint64_t *seq, kf_err *err);

#endif
