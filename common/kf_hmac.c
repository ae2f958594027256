#include "kf_hmac.h"

#include <errno.h>
#include <pthread.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>

static EVP_MAC_CTX *hmac_sha256;
static pthread_once_t setup_once = PTHREAD_ONCE_INIT;

static void setup(void)
{
    EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (hmac != NULL && (hmac_sha256 = EVP_MAC_CTX_new(hmac)) != NULL) {
        OSSL_PARAM p[2] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
                           OSSL_PARAM_construct_end()};
        if (EVP_MAC_CTX_set_params(hmac_sha256, p) != 1) {
            EVP_MAC_CTX_free(hmac_sha256);
            hmac_sha256 = NULL;
        }
    }
    EVP_MAC_free(hmac);
}

int kf_hmac_sha256(const void *key, size_t key_len, const kf_span *parts, size_t n, uint8_t out[KF_HMAC_SHA256_LEN])
{
    static const uint8_t zeros[KF_HMAC_SHA256_LEN];
    pthread_once(&setup_once, setup);
    if (hmac_sha256 == NULL)
        return -ENOSYS;
    EVP_MAC_CTX *m = EVP_MAC_CTX_dup(hmac_sha256);
    /* An empty key is given as HashLen zeros: the same MAC, and EVP_MAC_init needs a key. */
    int ok = m != NULL && EVP_MAC_init(m, key_len > 0 ? key : zeros, key_len > 0 ? key_len : sizeof(zeros), NULL) == 1;
    for (size_t i = 0; ok && i < n; i++)
        ok = parts[i].len == 0 || EVP_MAC_update(m, parts[i].data, parts[i].len) == 1;
    size_t len = 0;
    ok = ok && EVP_MAC_final(m, out, &len, KF_HMAC_SHA256_LEN) == 1 && len == KF_HMAC_SHA256_LEN;
    EVP_MAC_CTX_free(m);
    return ok ? 0 : -EIO;
}
