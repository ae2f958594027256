#include "kf_tls_libctx.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/provider.h>

/* More than the default provider offers for any one operation (OpenSSL 3.0.x: 115 encoders, 40
 * decoders, 18 key managers), so that no list is ever cut short. */
#define MAX_OFFERED 128

/* Every key type TLS 1.3 can meet in a certificate or a key share; withheld are DH and DSA (not
 * in TLS 1.3's signatures; the ffdhe groups go with DH), SM2, and the MAC and KDF "keys". */
static const char *const KEY_TYPES[] = {"EC", "RSA", "RSA-PSS", "ED25519", "ED448", "X25519", "X448", NULL};

static OSSL_LIB_CTX *inner, *outer;
static OSSL_PROVIDER *deflt;
static pthread_once_t setup_once = PTHREAD_ONCE_INIT;

/* Each filtered operation's list, built once from the default provider's (which is static). */
typedef struct offered {
    int operation;
    OSSL_ALGORITHM algs[MAX_OFFERED + 1];
    bool built, ok;
} offered;
static offered filtered[] = {{.operation = OSSL_OP_KEYMGMT}, {.operation = OSSL_OP_DECODER}, {.operation = OSSL_OP_ENCODER}};
static pthread_mutex_t filtered_lock = PTHREAD_MUTEX_INITIALIZER;

/* "EC:id-ecPublicKey:1.2.840.10045.2.1" names EC; "DER" is the decoders' format step (PEM to
 * DER, EncryptedPrivateKeyInfo to PrivateKeyInfo), which every key type goes through. */
static bool first_name_is(const char *names, const char *name)
{
    size_t n = strlen(name);
    return strncmp(names, name, n) == 0 && (names[n] == '\0' || names[n] == ':');
}

static bool kept(const char *names)
{
    if (first_name_is(names, "DER"))
        return true;
    for (const char *const *t = KEY_TYPES; *t != NULL; t++)
        if (first_name_is(names, *t))
            return true;
    return false;
}

static const OSSL_ALGORITHM *query(void *provctx, int operation, int *no_cache)
{
    (void)provctx;
    const OSSL_ALGORITHM *all = OSSL_PROVIDER_query_operation(deflt, operation, no_cache);
    offered *f = NULL;
    for (size_t i = 0; i < sizeof(filtered) / sizeof(filtered[0]); i++)
        if (filtered[i].operation == operation)
            f = &filtered[i];
    if (f == NULL || all == NULL)
        return all;
    pthread_mutex_lock(&filtered_lock);
    if (!f->built) {
        size_t n = 0;
        f->ok = true;
        for (const OSSL_ALGORITHM *a = all; a->algorithm_names != NULL; a++) {
            if (!kept(a->algorithm_names))
                continue;
            if (n == MAX_OFFERED) {
                f->ok = false; /* never cut a list short: offer none rather than some */
                break;
            }
            f->algs[n++] = *a;
        }
        memset(&f->algs[f->ok ? n : 0], 0, sizeof(f->algs[0]));
        f->built = true;
    }
    pthread_mutex_unlock(&filtered_lock);
    /* The default provider's own lists are static and its answers may be cached; so may ours. */
    *no_cache = 0;
    return f->algs;
}

static void unquery(void *provctx, int operation, const OSSL_ALGORITHM *algs)
{
    (void)provctx;
    (void)operation;
    (void)algs; /* the default provider's lists are static (3.0 has no unquery of its own) */
}

static int get_capabilities(void *provctx, const char *capability, OSSL_CALLBACK *cb, void *arg)
{
    (void)provctx;
    /* TLS-GROUP: libssl keeps only the groups whose key type this context offers. */
    return OSSL_PROVIDER_get_capabilities(deflt, capability, cb, arg);
}

static const OSSL_PARAM *gettable_params(void *provctx)
{
    (void)provctx;
    return OSSL_PROVIDER_gettable_params(deflt);
}

static int get_params(void *provctx, OSSL_PARAM params[])
{
    (void)provctx;
    return OSSL_PROVIDER_get_params(deflt, params);
}

static const OSSL_DISPATCH DISPATCH[] = {
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))query},
    {OSSL_FUNC_PROVIDER_UNQUERY_OPERATION, (void (*)(void))unquery},
    {OSSL_FUNC_PROVIDER_GET_CAPABILITIES, (void (*)(void))get_capabilities},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))gettable_params},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))get_params},
    {0, NULL},
};

/* The algorithms run with the default provider's own context (their fetches and random numbers
 * come from the private context it was loaded into), so nothing of theirs is reimplemented. */
static int provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in, const OSSL_DISPATCH **out,
                         void **provctx)
{
    (void)handle;
    (void)in;
    if (deflt == NULL)
        return 0;
    *provctx = OSSL_PROVIDER_get0_provider_ctx(deflt);
    *out = DISPATCH;
    return 1;
}

/* Only where OpenSSL runs as configured by default: with the configuration file read, the default
 * library context must have the default provider alone and no default properties (FIPS): a
 * private context would not follow what openssl.cnf asks for there (review rev43, F2). */
static int other_provider(OSSL_PROVIDER *p, void *arg)
{
    (void)arg;
    return strcmp(OSSL_PROVIDER_get0_name(p), "default") == 0; /* 0 stops the walk */
}

static bool stock_configuration(void)
{
    if (OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL) != 1 || EVP_default_properties_is_fips_enabled(NULL))
        return false;
    /* Both activate OpenSSL's fallback (the default provider) where the configuration named none. */
    return OSSL_PROVIDER_available(NULL, "default") == 1 && OSSL_PROVIDER_do_all(NULL, other_provider, NULL) == 1;
}

static void setup(void)
{
    if (!stock_configuration())
        return;
    if ((inner = OSSL_LIB_CTX_new()) == NULL || (deflt = OSSL_PROVIDER_load(inner, "default")) == NULL ||
        (outer = OSSL_LIB_CTX_new()) == NULL || OSSL_PROVIDER_add_builtin(outer, KF_TLS_PROVIDER_NAME, provider_init) != 1 ||
        OSSL_PROVIDER_load(outer, KF_TLS_PROVIDER_NAME) == NULL) {
        OSSL_LIB_CTX_free(outer);
        outer = NULL; /* the inner context may be half set up; it is small and kept */
        return;
    }
    for (size_t i = 0; i < sizeof(filtered) / sizeof(filtered[0]); i++) {
        int no_cache = 0;
        if (query(NULL, filtered[i].operation, &no_cache) == NULL || !filtered[i].ok) {
            OSSL_LIB_CTX_free(outer);
            outer = NULL;
            return;
        }
    }
}

OSSL_LIB_CTX *kf_tls_server_libctx(void)
{
    pthread_once(&setup_once, setup);
    return outer;
}
