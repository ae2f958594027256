/* LUKS2 keyslots keyfleet makes, told apart from the ones it must keep (review rev26c R3, R4).
 * A keyslot is added only after its number is recorded in a token ("keyfleet_adding":"N", the
 * intent), so a run cut off between the keyslot and the token that names it leaves a number to
 * look at, never an unknown keyslot (the recovery keyslot's number in its keyfleet-recovery token, a
 * rotation's in a keyfleet-adding token of its own). Such a keyslot is keyfleet's, and is killed, only when it
 * has the KDF keyfleet gives its keyslots (PBKDF2-SHA512 at exactly KFA_LUKS2_KDF_ITERATIONS:
 * cryptsetup luksAddKey's default is Argon2id, and its PBKDF2 is benchmarked to far more
 * iterations) and no token names it, keyfleet's included (systemd-cryptenroll's; the keyfleet or
 * keyfleet-recovery token of a keyslot that took the number after the cut: review rev26e K1,
 * K2): an operator's passphrase, or another of keyfleet's keyslots, that took the number after
 * the cut is kept, and logged. */
#ifndef KFA_LUKS2_SLOTS_H
#define KFA_LUKS2_SLOTS_H

#include <stdbool.h>
#include <stddef.h>

#include "kf_err.h"

struct crypt_device;

#define KFA_LUKS2_KDF_HASH "sha512"
#define KFA_LUKS2_KDF_ITERATIONS 1000

/* The lowest keyslot number not in use (what CRYPT_ANY_SLOT would take), or -ENOSPC. */
int kfa_luks2_free_slot(struct crypt_device *cd);

/* Whether keyslot slot is active, has keyfleet's KDF and no token names it, keyfleet's own
 * included (a keyslot being added is named by none; one a keyfleet or keyfleet-recovery token
 * names took the recorded number since: review rev26e K1, K2). */
bool kfa_luks2_slot_ours(struct crypt_device *cd, int slot);

/* Kills keyslot slot, recorded as being added by a run that did not finish, when it is still
 * there and keyfleet's (kfa_luks2_slot_ours); another's is kept and logged. *ret_killed (may be
 * NULL) says whether it was killed. */
int kfa_luks2_kill_adding(struct crypt_device *cd, const char *path, int slot, bool *ret_killed, kf_err *err);

/* The first keyslot that is keyfleet's (kfa_luks2_slot_ours) and that no token names at all, or
 * -1: what an erase must not leave behind (an orphan of a run cut off before this intent record
 * existed). */
int kfa_luks2_orphan_slot(struct crypt_device *cd);

#endif
