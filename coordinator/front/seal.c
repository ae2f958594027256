/* A connection's sealing context lives in its SSL's ex_data, in a slot of a locked slab; OpenSSL
 * calls free_session when the connection's SSL is freed, which wipes it. The slab is bounded:
 * when it is full, a key is sealed under a context made for it alone, as if each key came on
 * its own connection: the one fallback context, locked like the slab and wiped after each key. */
#include "front/seal.h"

#include <errno.h>
#include <pthread.h>

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "front/peer.h"
#include "front/server.h"
#include "kf_secmem.h"
#include "kf_secslab.h"

/* 10,000 connections at 256 bytes: 2.5 MiB of locked memory at most, taken 64 KiB at a time. */
#define MAX_LIVE_SESSIONS 10240

static kf_secslab *slab;
static int ex_index = -1;
static pthread_once_t once = PTHREAD_ONCE_INIT;
/* Sealing is synchronous, so one fallback context serves every one-off key, under a lock. */
static kf_secbuf *fallback;
static pthread_mutex_t fallback_lock = PTHREAD_MUTEX_INITIALIZER;

static void free_session(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (ptr != NULL)
        kf_secslab_free(slab, ptr);
}

static void init(void)
{
    slab = kf_secslab_new(sizeof(kf_seal_session), MAX_LIVE_SESSIONS);
    ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, free_session);
    fallback = kf_secbuf_new(sizeof(kf_seal_session));
}

static kfd_seal_stats stats; /* loop thread only, as the metrics they replaced */

kfd_seal_stats kfd_seal_get_stats(void) { return stats; }

size_t kfd_seal_contexts_live(void)
{
    pthread_once(&once, init);
    return slab != NULL ? kf_secslab_live(slab) : 0;
}

/* The connection's context, attached on first use; NULL when there is no room (or no SSL). */
static kf_seal_session *connection_session(kfd_call *call)
{
    pthread_once(&once, init);
    SSL *ssl = kfd_req_ssl(call->srv->ssl_generations, call->req);
    if (ssl == NULL || slab == NULL || ex_index < 0)
        return NULL;
    kf_seal_session *s = SSL_get_ex_data(ssl, ex_index);
    if (s != NULL)
        return s;
    if ((s = kf_secslab_alloc(slab)) == NULL)
        return NULL;
    if (SSL_set_ex_data(ssl, ex_index, s) != 1) {
        kf_secslab_free(slab, s);
        return NULL;
    }
    return s;
}

/* Seals under s, starting a context first when s is one-off or holds another caller's. */
static int seal_with(kfd_call *call, kf_seal_session *s, bool one_off, const uint8_t pk[32], const uint8_t *aad,
                     size_t aad_len, const uint8_t key[KF_SEAL_KEY_LEN], kfd_sealed *ret)
{
    const char *node = call->peer->name;
    int r = 0;
    if (one_off || !kf_seal_session_matches(s, pk, node)) {
        r = kf_seal_session_begin(s, pk, node);
        if (r == 0)
            stats.contexts++;
    }
    if (r == 0)
        r = kf_seal_session_seal(s, aad, aad_len, key, ret->enc, &ret->seq, ret->ct);
    if (r == 0)
        stats.keys++;
    if (one_off || r != 0)
        kf_seal_session_wipe(s); /* a bad key must not leave a half-made context behind */
    return r;
}

/* No room in the slab: the locked fallback context, never the stack. */
static int seal_one_off(kfd_call *call, const uint8_t pk[32], const uint8_t *aad, size_t aad_len,
                        const uint8_t key[KF_SEAL_KEY_LEN], kfd_sealed *ret)
{
    if (fallback == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&fallback_lock);
    int r = seal_with(call, (kf_seal_session *)fallback->data, true, pk, aad, aad_len, key, ret);
    pthread_mutex_unlock(&fallback_lock);
    return r;
}

int kfd_seal_key(kfd_call *call, const uint8_t pk[32], const char *purpose, const char *request_id,
                 const char *volume_id, const uint8_t key[KF_SEAL_KEY_LEN], kfd_sealed *ret)
{
    uint8_t aad[KF_SEAL_AAD_MAX];
    size_t aad_len = kf_seal_aad(purpose, request_id, call->peer->name, volume_id, aad, sizeof(aad));
    if (aad_len == 0)
        return -EINVAL;
    kf_seal_session *s = connection_session(call);
    if (s == NULL)
        return seal_one_off(call, pk, aad, aad_len, key, ret);
    return seal_with(call, s, false, pk, aad, aad_len, key, ret);
}
