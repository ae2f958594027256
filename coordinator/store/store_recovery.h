/* Recovery keys (docs/recovery.md): each volume's escrowed key, the checks applied with its
 * escrow and its reveal, and the volumes a node must give a new one. */
#ifndef KFD_STORE_RECOVERY_H
#define KFD_STORE_RECOVERY_H

#include <stdint.h>

#include "keyfleet/v1/state.pb-c.h"
#include "kf_err.h"
#include "store/store.h"

/* A repeated EnrollRecoveryKey returns the escrowed LUKS2 key itself only this long after its
 * escrow (and only before it was revealed): judged by the handler and again at apply. */
#define KFD_RECOVERY_REPLAY_WINDOW_S 300

typedef struct kfd_recovery {
    char node[64];
    char *wrapped; /* LUKS2: wrapped under VOLUME_ID/recovery; ZFS: "" (the dataset's own key) */
    char kcv[24];
    char request_id[65];
    int64_t created_at;
    int64_t revealed_at; /* 0: never shown to an operator */
    char revealed_by[64];
    /* LUKS2, a revealed key's replacement awaiting the node's confirmation ("": none): the
     * revealed key above stays the escrowed one, and marked, until then. */
    char next_request_id[65];
    char *next_wrapped;
    char next_kcv[24];
    int64_t next_at;          /* when the replacement was escrowed */
    int64_t next_revealed_at; /* the replacement shown to an operator before the node confirmed it; 0: not */
    /* ZFS: the check value of the dataset key the last reveal showed ("": none, or a reveal from
     * before store migration 18). */
    char revealed_kcv[24];
} kfd_recovery;

void kfd_recovery_clear(kfd_recovery *r);
/* Why a repeated LUKS2 escrow (request_id names the escrowed key or its replacement) may not hand
 * that key back at time at, or NULL: it was revealed (the replacement's own mark for a replacement,
 * review rev45c R45c-6), or escrowed more than KFD_RECOVERY_REPLAY_WINDOW_S before. The handler and
 * every replica's apply judge by it (review rev45b R45b-3). */
const char *kfd_recovery_replay_refusal(const kfd_recovery *cur, const char *request_id, int64_t at);
/* A volume's escrowed recovery key: 0, -ENOENT (none), -EIO or -ENOMEM. */
int kfd_store_get_recovery(kfd_store *s, const char *volume_id, kfd_recovery *ret);
/* The operator who proposed a held request ("" for a node's release request). 0, -ENOENT, -EIO. */
int kfd_store_pending_proposer(kfd_store *s, const char *request_id, char *ret, size_t size);
/* Ids of node's volumes whose recovery key was revealed (at most max): *ret_n of them in ids, each
 * malloc'ed (free them). 0, -EIO or -ENOMEM. */
int kfd_store_recovery_to_replace(kfd_store *s, const char *node, char **ids, size_t max, size_t *ret_n);

/* --- for the store's own files --- */
int kfd_store_apply_recovery_escrow(kfd_store *s, const Keyfleet__V1__CmdRecoveryEscrow *c, uint64_t *seq,
                                    kf_err *err);
int kfd_store_apply_recovery_reveal(kfd_store *s, const Keyfleet__V1__CmdRecoveryReveal *c, uint64_t *seq,
                                    kf_err *err);
/* The node confirms a replacement: -EACCES (another node's, revoked), -ESTALE (no replacement
 * with this request id awaits, and it is not the key escrowed and unrevealed either). */
int kfd_store_apply_recovery_confirm(kfd_store *s, const Keyfleet__V1__CmdRecoveryConfirm *c, uint64_t *seq,
                                     kf_err *err);
/* Drops a volume's escrowed recovery key (a wipe): 0 also when it had none. */
int kfd_store_recovery_drop(kfd_store *s, const char *volume_id, kf_err *err);
/* Records the proposer of a held request (apply_create_pending). */
int kfd_store_set_proposer(kfd_store *s, const char *request_id, const char *proposer, kf_err *err);

#endif
