/* What Vault's and Azure Key Vault's JSON answers say, read apart from the calls that get them so
 * that each reader can be fuzzed on its own (tests/fuzz/fuzz_kms_answer.c). Every function takes
 * the parsed answer (kfd_json_object); strings returned point into it. */
#ifndef KFD_KMS_ANSWER_H
#define KFD_KMS_ANSWER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define KFD_AZURE_VERSION_MAX 128

/* Parses a JSON answer body; NULL when it is not a JSON object. */
json_t *kfd_json_object(const char *body, size_t len);
/* The string at obj.key1[.key2], or NULL. */
const char *kfd_json_str(const json_t *obj, const char *key1, const char *key2);
/* A JSON-safe value for our bodies: printable ASCII without quotes or backslashes. */
bool kfd_json_safe(const char *s);
/* A token's lifetime as an answer gives it (seconds; <= 0 none), capped at ten years so that
 * milliseconds never overflow. */
uint64_t kfd_token_ttl(long long ttl_s);

/* Vault's ciphertext "vault:vN:BODY" -> N and BODY (standard base64); 0 or -EINVAL. */
int kfd_vault_ciphertext(const char *ct, uint32_t *version, const char **body);
/* Vault's ciphertext as keyfleet stores it, "kf:vault:vN:KCV:BODY", and N; 0, -EINVAL (not a
 * Vault ciphertext) or -ENOSPC. */
int kfd_vault_wrapped(const char *ct, const char *kcv, char *out, size_t out_size, uint32_t *version);
/* Vault's {"errors":[...]} as one line ("no error message" when none). */
void kfd_vault_errors(const json_t *j, char *out, size_t size);

/* A Transit key as keys/NAME answers it. */
typedef struct kfd_vault_key {
    uint32_t latest;       /* the newest version listed (0: none) */
    uint32_t min_decrypt;  /* 1 when absent or odd */
    bool derived;          /* derived: true (refused) */
    bool no_encryption;    /* supports_encryption: false, or a type keyfleet cannot wrap with */
    const char *type;      /* or NULL */
    bool encryption_false; /* supports_encryption: false, as such */
} kfd_vault_key;
void kfd_vault_key_read(const json_t *j, kfd_vault_key *ret);
/* auth.client_token and auth.lease_duration of a login or renewal; 0 or -EIO. */
int kfd_vault_login_answer(const json_t *j, const char **ret_token, uint64_t *ret_ttl_s);

/* Checks that kid is PREFIX VERSION (PREFIX: VAULT/keys/NAME/) with a 32-hex-digit version and
 * copies VERSION; 0 or -EINVAL. */
int kfd_azure_kid_version(const char *prefix, const char *kid, char version[KFD_AZURE_VERSION_MAX]);
/* Key Vault's {"error":{"code","message","innererror":{"code"}}}, or Entra ID's and IMDS's
 * {"error":"...","error_description":"..."}, as "CODE[/INNER]: MESSAGE". */
void kfd_azure_error(const json_t *j, char *out, size_t size);
/* Why keyfleet cannot wrap with this key bundle at time now (kty, key_ops, enabled, nbf, exp),
 * written to buf and returned, or NULL; *no_unwrap says whether Key Vault would refuse unwrapkey
 * with this version too (an expired or not-yet-valid version still unwraps; a disabled one does
 * nothing). */
const char *kfd_azure_key_unusable(const json_t *j, long long now, char *buf, size_t size, bool *no_unwrap);
/* A wrapkey answer {"kid","value"} as keyfleet stores it, "kf:azure:B64URL(KID):KCV:VALUE", and
 * the kid's version; 0, -EINVAL (kid not under prefix, no value, or one a stored key cannot hold)
 * or -ENOSPC. */
int kfd_azure_wrapped(const char *prefix, const json_t *j, const char *kcv, char *out, size_t out_size,
                      char version[KFD_AZURE_VERSION_MAX]);
/* access_token and expires_in (a number from Entra ID, a string from IMDS) of a token answer;
 * 0 or -EPROTO. */
int kfd_azure_login_answer(const json_t *j, const char **ret_token, uint64_t *ret_ttl_s);

#endif
