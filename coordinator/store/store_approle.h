/* AppRole's state (store_approle.c): roles, secret ids and tokens. */
#ifndef KFD_STORE_APPROLE_H
#define KFD_STORE_APPROLE_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "keyfleet/v1/state.pb-c.h"
#include "kf_err.h"
#include "store/store.h"

typedef struct kfd_role {
    char name[64];
    char role_id[40];
    char bound_cidrs[1024]; /* comma-separated; empty: any address */
    uint32_t token_ttl_s, secret_id_ttl_s, secret_id_num_uses;
    char node_name[64], node_group[64];
    int64_t created_at;
} kfd_role;

/* By name or by role_id (the other NULL). Returns 0, -ENOENT or -EIO. */
int kfd_store_get_role(kfd_store *s, const char *name, const char *role_id, kfd_role *ret);
/* Finds the role's live secret id whose SHA-256 is hash (every candidate compared in constant
 * time) and copies its accessor. Returns 0, -ENOENT (none, expired or spent) or -EIO. */
int kfd_store_match_secret_id(kfd_store *s, const char *role_name, const uint8_t hash[KFD_HASH_LEN], int64_t now,
                              char accessor[33]);
/* The token whose public id is token_id. Returns 0, -ENOENT or -EIO. */
int kfd_store_get_token(kfd_store *s, const char *token_id, uint8_t hash[KFD_HASH_LEN], char role_name[64],
                        int64_t *expires_at);

/* --- for the store's own files --- */

/* The AppRole commands. */
int kfd_store_apply_approle(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, uint64_t *seq, kf_err *err);

#endif
