/* Reads of the state (store_read.c). Each read answers -EIO once the store failed. */
#ifndef KFD_STORE_READ_H
#define KFD_STORE_READ_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "store/store.h"

typedef struct kfd_volume {
    char id[129];
    int kind;
    char name[256];
    char node[64];      /* the node that enrolled it */
    char *labels_json;  /* {"k":"v",...}; free with kfd_volume_clear */
    char *wrapped_key;  /* escrow copy */
    char enroll_request_id[65];
    int64_t created_at;
    int64_t last_released_at; /* 0: never released */
    char *next_wrapped_key;   /* the rotation in progress; NULL when none */
    char key_kcv[24];         /* the key's check value; "" when not known yet (a row from before rotation) */
    char next_kcv[24];        /* the rotation in progress's; "" when none */
    int64_t key_created_at;   /* when the key was made (enroll or the last rotation) */
    int64_t retired_at;       /* 0: in service; else its key is refused (volume retire) */
    bool tpm_and_network;     /* enrolled under require: [tpm_and_network] (store migration 18; false
                               * for a volume enrolled before, whose mode is not recorded) */
} kfd_volume;

void kfd_volume_clear(kfd_volume *v);
/* Returns 0, -ENOENT, or -EIO. */
int kfd_store_get_volume(kfd_store *s, const char *id, kfd_volume *ret);

/* A node's measured-boot record (docs/attestation.md): PCR values as kf_tpm_pcrs text. */
typedef struct kfd_attest_record {
    char accepted[24 * 68 + 1]; /* empty: none accepted yet */
    int64_t accepted_at;
    char accepted_by[128]; /* "tofu" or the operator */
    char seen[24 * 68 + 1]; /* the last quote that did not match; empty: none */
    int64_t seen_at;
    bool has_clock; /* the highest TPM counters a quote of the node showed */
    uint32_t reset_count, restart_count;
    bool has_seen_clock; /* the seen quote's counters */
    uint32_t seen_reset, seen_restart;
    bool has_tpm_clock; /* the recorded quote's clock (with reset_count, restart_count) */
    uint64_t clock;
    bool clock_safe;
    int64_t clock_at; /* when it was recorded (coordinator time) */
    char held[512];   /* non-empty: the node is held (key requests refused), why */
    char held_kind[16]; /* "tpm" or "drift" */
    int64_t held_at;
    bool has_held_state; /* the TPM state of the quote that caused the hold */
    uint32_t held_reset, held_restart;
    bool has_held_clock;
    uint64_t held_clock;
    bool held_safe;
    bool has_seen_tpm_clock; /* the seen quote's clock (store migration 19) */
    uint64_t seen_clock;
    bool seen_safe;
} kfd_attest_record;
/* 0, -ENOENT (no record for the node) or -EIO. */
int kfd_store_get_attest(kfd_store *s, const char *node, kfd_attest_record *ret);
int kfd_store_count_volumes(kfd_store *s, uint64_t *ret);
/* Whether node enrolled any volume (trust on first use is only for its first). 0 or -EIO. */
int kfd_store_node_has_volumes(kfd_store *s, const char *node, bool *ret);

/* Returns 0 and sets *ret_revoked, or -EIO. */
int kfd_store_node_revoked(kfd_store *s, const char *node, bool *ret_revoked);
/* The same, and when it was revoked (0 when it is not). */
int kfd_store_node_revoked_at(kfd_store *s, const char *node, bool *ret_revoked, int64_t *ret_at);

typedef enum {
    KFD_PENDING_WAITING = 0,
    KFD_PENDING_APPROVED,
    KFD_PENDING_DENIED,
    KFD_PENDING_EXPIRED,
    KFD_PENDING_CONSUMED, /* approved, then used by its one release (or its change applied) */
} kfd_pending_state;

typedef struct kfd_pending {
    char request_id[65];
    char node[64];
    char volume_id[129];
    char source[64];
    int64_t created_at, expires_at;
    uint32_t approvals_needed, approvals_have;
    kfd_pending_state state;
    char rule[64];
    bool require_totp;
    bool has_change; /* an operator change, not a release */
    char change_summary[256];
} kfd_pending;

int kfd_store_get_pending(kfd_store *s, const char *request_id, kfd_pending *ret);
/* True if operator already approved request_id. */
int kfd_store_has_approved(kfd_store *s, const char *request_id, const char *op, bool *ret);
/* True if operator already used TOTP step. */
int kfd_store_totp_used(kfd_store *s, const char *op, int64_t step, bool *ret);
/* Waiting requests, oldest first; appended to resp (caller frees with kfd_store_free_pending_list). */
int kfd_store_list_pending(kfd_store *s, Keyfleet__V1__ListPendingResponse *resp);
void kfd_store_free_pending_list(Keyfleet__V1__ListPendingResponse *resp);
/* Every enrolled volume, by id; appended to resp (caller frees with kfd_store_free_volume_list).
 * 0, -EIO or -ENOMEM. */
int kfd_store_list_volumes(kfd_store *s, Keyfleet__V1__ListVolumesResponse *resp);
void kfd_store_free_volume_list(Keyfleet__V1__ListVolumesResponse *resp);
/* Request ids of waiting requests whose expires_at <= now (at most max). */
int kfd_store_expired_pending(kfd_store *s, int64_t now, char ids[][65], size_t max, size_t *ret_n);


/* The newest key version the cluster rotated BACKEND to (replicated); 0 when it never rotated. */
int kfd_store_kms_latest(kfd_store *s, const char *backend, uint32_t *ret);
/* The current policy (NULL yaml and version 0 when none was ever put). yaml is malloc'ed. */
int kfd_store_get_policy(kfd_store *s, char **ret_yaml, uint64_t *ret_version);

/* --- for the store's own files --- */

/* A volume's labels column ({"k":"v",...}) as Label messages; free with kfd_store_free_labels. */
int kfd_store_labels_from_json(const char *text, Keyfleet__V1__Label ***ret, size_t *ret_n);
void kfd_store_free_labels(Keyfleet__V1__Label **labels, size_t n);

#endif
