/* Recovery keys in a form a person can read and type (docs/recovery.md): 32 bytes as 13 groups
 * of 5 Crockford base32 symbols, each group 4 data symbols and a check symbol that covers them
 * and the group's place, the 52 data symbols holding the key and 4 bits of its hash. The text is
 * as secret as the key: callers keep both in locked buffers and wipe them. */
#ifndef KF_RECOVERY_H
#define KF_RECOVERY_H

#include <stdint.h>

#include "kf_err.h"

#define KF_RECOVERY_KEY_LEN 32
#define KF_RECOVERY_GROUPS 13
#define KF_RECOVERY_TEXT_LEN (KF_RECOVERY_GROUPS * 6 - 1) /* "xxxxx-" x 13, without the last dash */

/* The canonical text of key: lower case, groups joined by '-', NUL-terminated. */
void kf_recovery_encode(const uint8_t key[KF_RECOVERY_KEY_LEN], char out[KF_RECOVERY_TEXT_LEN + 1]);

/* Reads a typed recovery key: case does not matter, 'o' reads as '0' and 'i' or 'l' as '1', and
 * dashes and spaces between symbols are ignored. 0 with *ret_key filled, or -EINVAL with err
 * naming what is wrong: a symbol outside the alphabet, the number of symbols, the first group
 * whose check fails ("group 7 of 13"), or the whole-key check. *ret_key is wiped on failure. */
int kf_recovery_decode(const char *text, uint8_t ret_key[KF_RECOVERY_KEY_LEN], kf_err *err);

#endif
