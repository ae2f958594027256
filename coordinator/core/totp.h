/* Operators' second factor: RFC 6238 codes checked against OPERATOR.b32 in the TOTP directory,
 * with a lockout after a run of wrong codes (held in replicated state, store_guard.c). */
#ifndef KFD_TOTP_H
#define KFD_TOTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* Wrong codes in a row before an operator is locked out, and for how long. */
#define KFD_TOTP_MAX_FAILURES 5
#define KFD_TOTP_LOCKOUT_S 900

/* Decides whether operator op may approve with code. required: the request or change asks for
 * TOTP. With a TOTP directory configured, every operator needs a secret there. Returns:
 *   0        go ahead; *ret_step is the code's step (0 when no TOTP applies)
 *   -EINVAL  a code is needed and none was given (not counted as a failure)
 *   -EPERM   the code is wrong: the caller records a CmdTotpFailure
 *   -EACCES  refused without counting: locked out, or no secret to check a required code against
 *   -EIO     the store or the secret file could not be read
 * why says which, for the error and the audit record. */
int kfd_totp_gate(kfd_store *store, const char *totp_dir, const char *op, const char *code, bool required,
                  int64_t now, int64_t *ret_step, char *why, size_t why_size);

#endif
