/* libFuzzer: the JSON answers of Vault (Transit, AppRole, token renewal) and of Azure Key Vault,
 * Entra ID and IMDS, through the readers the backends use (coordinator/kms/kms_answer.c). A KMS,
 * or whatever answers in its place (a proxy, a wrong address), sends these bytes. Every reader
 * runs on every input. A wrapped key built from an answer must read back as the unwrap path
 * reads it: a stored key that cannot be read again loses the volume. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_b64.h"
#include "kms/kms_answer.h"
#include "kms/kms_wrapped.h"

#define PREFIX "https://kv.vault.azure.net/keys/k/"
static const char kcv[] = "AAAAAAAAAAAAAAAAAAAAAA"; /* 22 characters, as kfd_kcv writes them */

static void check_ttl(uint64_t ttl_s)
{
    /* kfd_token_fetched works in milliseconds and refreshes at two thirds */
    if (ttl_s > UINT64_MAX / 2000)
        abort();
}

static void vault(const json_t *j)
{
    char small[16], line[400];
    kfd_vault_errors(j, small, sizeof(small));
    kfd_vault_errors(j, line, sizeof(line));
    kfd_vault_key k;
    kfd_vault_key_read(j, &k);
    const char *tok;
    uint64_t ttl;
    if (kfd_vault_login_answer(j, &tok, &ttl) == 0)
        check_ttl(ttl);
    uint8_t key[64];
    const char *pt = kfd_json_str(j, "data", "plaintext");
    if (pt != NULL)
        (void)kf_b64_decode(pt, strlen(pt), false, key, sizeof(key));
    const char *ct = kfd_json_str(j, "data", "ciphertext");
    char wrapped[KFD_WRAPPED_MAX];
    uint32_t version = 0;
    if (kfd_vault_wrapped(ct, kcv, wrapped, sizeof(wrapped), &version) == 0) {
        /* kms_vault.c's unwrap: back to Vault's ciphertext */
        kfd_wrapped w;
        char again[KFD_WRAPPED_MAX];
        uint32_t v2 = 0;
        const char *body = NULL;
        if (kfd_wrapped_parse(wrapped, "vault", &w) != 0 ||
            snprintf(again, sizeof(again), "vault:%s:%s", w.ref, w.payload) >= (int)sizeof(again) ||
            kfd_vault_ciphertext(again, &v2, &body) != 0 || v2 != version || strcmp(again, ct) != 0)
            abort();
    }
}

static void azure(const json_t *j)
{
    char line[400], version[KFD_AZURE_VERSION_MAX];
    kfd_azure_error(j, line, sizeof(line));
    (void)kfd_azure_kid_version(PREFIX, kfd_json_str(j, "key", "kid"), version);
    bool no_unwrap;
    (void)kfd_azure_key_unusable(j, 1700000000, line, sizeof(line), &no_unwrap);
    (void)kfd_azure_key_unusable(j, 0, line, 8, &no_unwrap);
    const char *tok;
    uint64_t ttl;
    if (kfd_azure_login_answer(j, &tok, &ttl) == 0)
        check_ttl(ttl);
    char wrapped[KFD_WRAPPED_MAX];
    if (kfd_azure_wrapped(PREFIX, j, kcv, wrapped, sizeof(wrapped), version) == 0) {
        /* kms_azure.c's unwrap_key: the kid back from the reference, and the value as sent */
        kfd_wrapped w;
        char kid[512], v2[KFD_AZURE_VERSION_MAX];
        int n = kfd_wrapped_parse(wrapped, "azure", &w) == 0
                    ? kf_b64_decode(w.ref, strlen(w.ref), true, (uint8_t *)kid, sizeof(kid) - 1)
                    : -1;
        if (n <= 0)
            abort();
        kid[n] = '\0';
        if (kfd_azure_kid_version(PREFIX, kid, v2) != 0 || strcmp(v2, version) != 0 || !kfd_json_safe(w.payload) ||
            strcmp(w.payload, kfd_json_str(j, "value", NULL)) != 0)
            abort();
    }
    const char *value = kfd_json_str(j, "value", NULL);
    uint8_t key[64];
    if (value != NULL)
        (void)kf_b64_decode(value, strlen(value), true, key, sizeof(key));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *j = kfd_json_object((const char *)data, size);
    if (j == NULL)
        return 0;
    vault(j);
    azure(j);
    json_decref(j);
    return 0;
}
