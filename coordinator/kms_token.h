/* A cached bearer token for a remote KMS (a Vault token, an Entra ID access token). Callers ask
 * for it; the first ask, or one after expiry, starts a fetch and waits; asks after two thirds of
 * the lifetime get the current token and start a refresh in the background, and a timer
 * refreshes at that point even when idle, so the token never lapses. The value lives in secure
 * memory. */
#ifndef KFD_KMS_TOKEN_H
#define KFD_KMS_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct kfd_token kfd_token;

/* Starts a fetch; the backend answers later with kfd_token_fetched. */
typedef void (*kfd_token_fetch_fn)(void *ctx, kfd_token *t);
/* status 0: token is valid during the call. Otherwise -errno and message. */
typedef void (*kfd_token_cb)(void *arg, int status, const char *token, const char *message);

kfd_token *kfd_token_new(uv_loop_t *loop, const char *name, kfd_token_fetch_fn fetch, void *ctx);
void kfd_token_free(kfd_token *t);
void kfd_token_get(kfd_token *t, kfd_token_cb cb, void *arg);
/* ttl_s 0 means it does not expire (it is still re-fetched hourly). */
void kfd_token_fetched(kfd_token *t, int status, const char *value, size_t len, uint64_t ttl_s, const char *message);
/* The KMS refused the token: the next get fetches a new one. */
void kfd_token_invalidate(kfd_token *t);
/* The current token for a refresh call (e.g. Vault renew-self), or NULL. */
const char *kfd_token_current(const kfd_token *t);

#endif
