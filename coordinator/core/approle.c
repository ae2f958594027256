/* AppRole credentials the front door checks: bearer tokens (the node identity behind one) and
 * the role rules a Login shares with them. Formats and the rest: rpc/rpc_approle.c. */
#include "core/approle.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/cidr.h"
#include "store/store_approle.h"
#include "store/store_judged.h"

void kfd_approle_sha256(const char *s, size_t len, uint8_t out[KFD_HASH_LEN])
{
    unsigned int n = 0;
    EVP_Digest(s, len, out, &n, EVP_sha256(), NULL);
}

bool kfd_approle_source_allowed(const char *bound_cidrs, const char *source)
{
    if (bound_cidrs[0] == '\0')
        return true;
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", bound_cidrs);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        kfd_cidr c;
        if (kfd_cidr_parse(t, &c) == 0 && kfd_cidr_contains(&c, source))
            return true;
    }
    return false;
}

const char *kfd_approle_identity(const kfd_role *role)
{
    return role->node_name[0] != '\0' ? role->node_name : role->name;
}

int kfd_approle_token_auth(kfd_store *store, const char *token, size_t len, const char *source, kf_identity *ret,
                           char role_out[64], char token_id_out[KFD_TOKEN_ID_HEX + 1], uint8_t judged_out[32])
{
    if (len != KFD_TOKEN_TEXT_LEN || memcmp(token, KFD_TOKEN_PREFIX, 4) != 0 || token[4 + KFD_TOKEN_ID_HEX] != '.')
        return -ENOENT;
    char token_id[KFD_TOKEN_ID_HEX + 1], role_name[64];
    memcpy(token_id, token + 4, KFD_TOKEN_ID_HEX);
    token_id[KFD_TOKEN_ID_HEX] = '\0';
    uint8_t want[KFD_HASH_LEN], got[KFD_HASH_LEN];
    int64_t expires_at = 0;
    int r = kfd_store_get_token(store, token_id, want, role_name, &expires_at);
    if (r != 0)
        return r;
    kfd_approle_sha256(token, len, got);
    if (CRYPTO_memcmp(want, got, KFD_HASH_LEN) != 0)
        return -ENOENT;
    if ((int64_t)time(NULL) >= expires_at)
        return -ETIME;
    kfd_role role;
    if ((r = kfd_store_get_role(store, role_name, NULL, &role)) != 0)
        return r == -ENOENT ? -ENOENT : r;
    if (!kfd_approle_source_allowed(role.bound_cidrs, source))
        return -EACCES;
    /* From the rows just read: what every replica's apply compares with its own (store_judged.h). */
    if (kfd_judged_token_rows(token_id, want, expires_at, &role, judged_out) != 0)
        return -EIO;
    memcpy(token_id_out, token_id, sizeof(token_id));
    ret->kind = KF_PEER_NODE;
    snprintf(ret->name, sizeof(ret->name), "%s", kfd_approle_identity(&role));
    snprintf(role_out, 64, "%s", role.name);
    return 0;
}
