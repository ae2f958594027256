/* Volume drivers: one vtable, one file each (luks2.c, zfs.c). A driver reads the keyfleet
 * metadata stored on the volume, adds a key at enrollment (seal, then verify), loads a released
 * key, and replaces the stored wrapped key. Keys arrive in secure buffers and never reach argv,
 * the environment or a file. */
#ifndef KFA_VOLUME_H
#define KFA_VOLUME_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "kf_err.h"
#include "kf_secmem.h"

#define KFA_WRAPPED_MAX 4096

typedef struct kfa_volume {
    const struct kfa_driver *drv;
    kfa_vol_kind kind;
    char path[512];  /* LUKS2 device or file; ZFS dataset */
    char name[128];  /* LUKS2 device-mapper name */
    char id[130];    /* LUKS UUID or ZFS GUID */
    char *wrapped;   /* stored wrapped key; NULL when not enrolled */
    char *tpm_blob;  /* TPM-sealed copy for offline unlock; NULL when none */
    /* require: [tpm_and_network]: the TPM part of the key (tpm_net.h), stored where tpm_blob
     * would be, so the two never exist together; NULL when the volume has none */
    char *tpm_part;
    int keyslot;     /* LUKS2: the keyfleet keyslot */
    int token;       /* LUKS2: the keyfleet token */
    /* A rotation in progress on the volume (docs/agent.md, "Key rotation"): the new key's wrapped
     * form (LUKS2: the token marked rotating, while the old token is still there; ZFS:
     * org.keyfleet:wrapped-next), NULL when none; LUKS2: its keyslot and token. */
    char *wrapped_next;
    /* The new key sealed to this TPM, replacing tpm_blob once the new key is the volume's (LUKS2:
     * in the token marked rotating; ZFS: held by the run, stored with wrapped-key at retire);
     * NULL when none (review F3). */
    char *tpm_blob_next;
    /* tpm_and_network: the new key's TPM part (LUKS2: in the token marked rotating; ZFS:
     * org.keyfleet:tpm-next, staged with wrapped-next), replacing tpm_part once the new key is the
     * volume's; NULL when none. */
    char *tpm_part_next;
    /* ZFS: tpm_part_next was made and staged by this run (zfs_rotate_stage), not read from the
     * dataset. Only such a part may go into change-key: one read from the pool may be an evil
     * maid's, sealed to this TPM with a value she knows (review rev26z R1). */
    bool tpm_part_next_ours;
    int next_keyslot, next_token;
    int replaces_keyslot; /* LUKS2: the old key's keyslot, named by the marked token; -1 when none */
    char replaces_salt[65]; /* LUKS2: that keyslot's KDF salt when the token was staged; "" when unknown */
    /* LUKS2: the only keyfleet token is marked rotating (the old key is gone, COMMIT is not
     * known to have happened): wrapped is the new key, and a rotate run commits it. */
    bool rotating;
    bool unlocked;   /* the key is already loaded (ZFS keystatus, LUKS mapping present) */
    void *handle;    /* driver state kept from probe to unlock (LUKS2: the loaded crypt_device) */
    /* LUKS2, set by enroll: the CPU time of the check after enroll (what a boot unlock pays) and
     * the PBKDF2 cost of the volume-key digest that check ran (0 when the header does not say). */
    uint32_t enroll_verify_ms;
    uint32_t digest_iterations;
    char digest_hash[16];
} kfa_volume;

typedef struct kfa_driver {
    const char *name;
    /* Reads the id and the keyfleet metadata. -ENOENT: no such volume; -EBADMSG: corrupt
     * metadata. v->wrapped stays NULL when the volume is not enrolled. */
    int (*probe)(const kfa_config *cfg, kfa_volume *v, kf_err *err);
    /* Adds key to the volume (auth: an existing passphrase, LUKS2 only), checks that it opens,
     * then stores the wrapped key. Nothing is left half-done on failure. */
    int (*enroll)(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *key, const char *wrapped,
                  const kf_secbuf *auth, kf_err *err);
    /* Loads key. -EKEYREJECTED when it does not open the volume; nothing changes then. */
    int (*unlock)(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *key, kf_err *err);
    int (*store_wrapped)(const kfa_config *cfg, kfa_volume *v, const char *wrapped, kf_err *err);
    /* Stores the TPM-sealed copy next to the wrapped key. */
    int (*store_tpm)(const kfa_config *cfg, kfa_volume *v, const char *blob, kf_err *err);
    /* The kill switch: unmounts and unloads the key (ZFS), or closes the mapping (LUKS2). 0 when
     * the volume is locked afterwards (*changed says whether it was open); a volume still in use
     * is an error. */
    int (*lock)(const kfa_config *cfg, kfa_volume *v, bool *changed, kf_err *err);
    /* Rotation (rotate.c drives the steps; each leaves a volume that opens with the old key or
     * the new one). stage: stores the new key beside the old (LUKS2: a keyslot authorised by
     * old_key and a token marked rotating; ZFS: org.keyfleet:wrapped-next), sets wrapped_next.
     * retire: checks that new_key opens the volume, then removes the old key (LUKS2: its keyslot,
     * then its token; ZFS: change-key, only while old_key is the dataset's key or new_key already
     * is, then wrapped-key := wrapped_next and wrapped-next removed); the TPM copy becomes
     * tpm_blob_next, or is dropped when there is none (it sealed the old key);
     * wrapped becomes the new wrapped key; called again on a volume left rotating (new_key NULL),
     * it only finishes removing the old key. finish: after COMMIT, clears the rotating mark. */
    int (*rotate_stage)(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *old_key, const kf_secbuf *new_key,
                        const char *wrapped, kf_err *err);
    int (*rotate_retire)(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *old_key, const kf_secbuf *new_key,
                         kf_err *err);
    int (*rotate_finish)(const kfa_config *cfg, kfa_volume *v, kf_err *err);
    /* Remote crypto-erase (erase.c): destroys keyfleet's access to the volume, leaving every other
     * way in (LUKS2: every keyfleet token, with the TPM copy it holds, and the keyslots the tokens
     * name, a malformed token's too; ZFS: the wrapped-key, wrapped-next and tpm-sealed properties,
     * the volume-id one kept so the erase can be confirmed again). The caller locks first. 0 also
     * when nothing was left to destroy; *ret_what says what went. all (node wipe
     * --erase-all-keyslots): LUKS2, every other keyslot and token too, the operator's passphrases
     * included (luksErase: the data is unrecoverable); ZFS has no other keyslot. */
    int (*erase)(const kfa_config *cfg, kfa_volume *v, bool all, char *ret_what, size_t what_size, kf_err *err);
} kfa_driver;

extern const kfa_driver kfa_luks2_driver;
extern const kfa_driver kfa_zfs_driver;

/* Lists ZFS encryption roots that carry keyfleet metadata (only those whose key is not loaded,
 * when locked_only). */
int kfa_zfs_discover(const kfa_config *cfg, bool locked_only, char ***ret_names, size_t *ret_n, kf_err *err);
/* Creates an encryption root with a throwaway key, so that it has a GUID to enroll under. */
int kfa_zfs_create(const kfa_config *cfg, const char *dataset, kf_err *err);

void kfa_volume_clear(kfa_volume *v);

/* LUKS2 recovery keyslot (docs/recovery.md): adds a keyslot whose passphrase is text (the
 * recovery key's canonical form), authorised by auth (the volume's keyfleet key), checks that it
 * opens, records it in the keyfleet-recovery token, then kills the keyslot of the recovery key it
 * replaces (by its recorded salt; *ret_replaced) and forgets it. Resumes a run stopped before its
 * kill. */
int kfa_luks2_recovery_set(kfa_volume *v, const kf_secbuf *auth, const kf_secbuf *text, bool *ret_replaced,
                           kf_err *err);
/* The recovery keyslot: 0 with *ret_slot, -ENOENT (none), or another -errno. */
int kfa_luks2_recovery_slot(kfa_volume *v, int *ret_slot);

/* Test builds only (KF_TEST_HOOKS, set with KF_TESTS): _exit(86) when the environment's
 * KEYFLEET_TEST_CRASH_AFTER names step, for the rotation's crash tests; with KEYFLEET_TEST_PAUSE_AFTER
 * naming step, creates the file KEYFLEET_TEST_PAUSE_FILE and waits (at most 60 s) until it is
 * removed, for the overlapping-runs tests. A no-op otherwise. */
#ifdef KF_TEST_HOOKS
void kfa_test_crash_point(const char *step);
#else
static inline void kfa_test_crash_point(const char *step) { (void)step; }
#endif

/* Runs argv[0] (an absolute path) with input on a pipe to its stdin; captures stdout (malloc'ed,
 * NUL-terminated) when ret_out is not NULL. Returns the exit status (>= 0) or a negative errno. */
int kfa_run(char *const argv[], const uint8_t *input, size_t input_len, char **ret_out, char *errbuf,
            size_t errbuf_size);

#endif
