/* AppRole credentials (approle.c): bearer-token authentication and the rules a Login shares
 * with it. */
#ifndef KFD_APPROLE_H
#define KFD_APPROLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kf_identity.h"
#include "store/store.h"
#include "store/store_approle.h"

/* token: "kft." HEX(8 random bytes, the public token id) "." BASE64URL(32 random bytes) */
#define KFD_TOKEN_PREFIX "kft."
#define KFD_TOKEN_ID_HEX 16
#define KFD_TOKEN_TEXT_LEN (4 + KFD_TOKEN_ID_HEX + 1 + 43)

/* SHA-256 of s, as secret ids and tokens are stored. */
void kfd_approle_sha256(const char *s, size_t len, uint8_t out[KFD_HASH_LEN]);
/* Whether source is inside one of the comma-separated CIDRs (empty: any address). */
bool kfd_approle_source_allowed(const char *bound_cidrs, const char *source);
/* The node name a role's callers act as. */
const char *kfd_approle_identity(const kfd_role *role);

/* Authenticates "Authorization: Bearer TOKEN" from source into ret (a node identity) and
 * role_out, with the token's id and the digest of the token and role rows it was judged by
 * (store_judged.h: key commands carry them, review rev44b K2). Returns 0, -ENOENT (no such
 * token), -ETIME (expired), -EACCES (outside the role's CIDRs) or -EIO. */
int kfd_approle_token_auth(kfd_store *store, const char *token, size_t len, const char *source, kf_identity *ret,
                           char role_out[64], char token_id_out[KFD_TOKEN_ID_HEX + 1], uint8_t judged_out[32]);

#endif
