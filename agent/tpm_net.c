/* TPM and network, both required: the two-part keyslot key (tpm_net.h). */
#include "tpm_net.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "kf_log.h"
#include "tpm2.h"

#define PART_LEN 32
#define TPM_BLOB_PREFIX "kftpm1:"

bool kfa_tpmnet_is_part(const char *s)
{
    return s != NULL && strncmp(s, KFA_TPMNET_PREFIX, strlen(KFA_TPMNET_PREFIX)) == 0;
}

int kfa_tpmnet_derive(const char *volume_id, const kf_secbuf *tpm_part, const kf_secbuf *coord_part,
                      kf_secbuf **ret_key, kf_err *err)
{
    if (tpm_part == NULL || coord_part == NULL || tpm_part->len != PART_LEN || coord_part->len != PART_LEN)
        return kf_err_set(err, -EINVAL, "each part of a tpm_and_network key must be %d bytes", PART_LEN);
    kf_secbuf *ikm = kf_secbuf_new(2 * PART_LEN), *key = kf_secbuf_new(PART_LEN);
    char info[256];
    int n = snprintf(info, sizeof(info), "%s%c%s", KFA_TPMNET_LABEL, '\0', volume_id);
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
    int r = -ENOMEM;
    if (ikm != NULL && key != NULL && kctx != NULL && n > 0 && (size_t)n < sizeof(info)) {
        memcpy(ikm->data, tpm_part->data, PART_LEN);
        memcpy(ikm->data + PART_LEN, coord_part->data, PART_LEN);
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, ikm->data, ikm->len),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, (size_t)n),
            OSSL_PARAM_construct_end(),
        };
        r = EVP_KDF_derive(kctx, key->data, PART_LEN, params) == 1 ? 0 : -EIO;
    }
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    kf_secbuf_free(ikm);
    if (r != 0) {
        kf_secbuf_free(key);
        return kf_err_set(err, r, "HKDF-SHA256 of the two parts failed");
    }
    *ret_key = key;
    return 0;
}

int kfa_tpmnet_enroll(kfa_ctx *ctx, const kf_enrolled *e, const char *volume_id, char **ret_blob,
                      kf_secbuf **ret_key, kf_err *err)
{
    kf_secbuf *part = kf_secbuf_new(PART_LEN);
    if (part == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    if (RAND_priv_bytes(part->data, PART_LEN) != 1) {
        kf_secbuf_free(part);
        return kf_err_set(err, -EIO, "no random bytes for the TPM part");
    }
    kf_enrolled as_part = *e;
    as_part.key = part;
    char *sealed = NULL, *blob = NULL;
    kf_secbuf *key = NULL;
    int r = kfa_seal_copy(ctx, &as_part, &sealed, err);
    if (r != 0)
        r = kf_err_wrap(err, "sealing the TPM part");
    else if (strncmp(sealed, TPM_BLOB_PREFIX, strlen(TPM_BLOB_PREFIX)) != 0 ||
             (blob = malloc(strlen(KFA_TPMNET_PREFIX) + strlen(sealed))) == NULL)
        r = kf_err_set(err, -ENOMEM, "out of memory");
    else
        sprintf(blob, "%s%s", KFA_TPMNET_PREFIX, sealed + strlen(TPM_BLOB_PREFIX));
    if (r == 0)
        r = kfa_tpmnet_derive(volume_id, part, e->key, &key, err);
    free(sealed);
    kf_secbuf_free(part);
    if (r != 0) {
        free(blob);
        return r;
    }
    *ret_blob = blob;
    *ret_key = key;
    return 0;
}

int kfa_tpmnet_combine(kfa_ctx *ctx, const kfa_volume *v, kf_secbuf **key, kf_err *err)
{
    if (!kfa_tpmnet_is_part(v->tpm_part))
        return 0;
    const char *b64 = v->tpm_part + strlen(KFA_TPMNET_PREFIX);
    char *sealed = malloc(strlen(TPM_BLOB_PREFIX) + strlen(b64) + 1);
    if (sealed == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    sprintf(sealed, "%s%s", TPM_BLOB_PREFIX, b64);
    kf_secbuf *part = NULL, *out = NULL;
    /* A TPM-resident node key holds a connection to the TPM (swtpm serves one at a time). */
    kfa_client_close_for_tpm(ctx);
    int r = kfa_tpm_unseal(ctx->cfg->tpm_tcti, sealed, &part, KFA_TPM_TIMEOUT_MS, err);
    free(sealed);
    if (r != 0) {
        kf_log_warn("tpm_part_refused", "volume=%s error=%s", kf_log_q(v->path), kf_log_q(err->msg));
        return kf_err_wrap(err, "%s needs TPM and network, and the TPM did not give its part", v->path);
    }
    r = kfa_tpmnet_derive(v->id, part, *key, &out, err);
    kf_secbuf_free(part);
    if (r != 0)
        return r;
    kf_secbuf_free(*key);
    *key = out;
    return 0;
}
