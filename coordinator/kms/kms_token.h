/* A cached bearer token for a remote KMS (a Vault token, an Entra ID access token). Callers ask
 * for it; the first ask, or one after expiry, starts a fetch and waits; asks after two thirds of
 * the lifetime get the current token and start a refresh in the background, and a timer
 * refreshes at that point even when idle, so the token never lapses. The value lives in secure
 * memory.
 *
 * A failed fetch is backed off: no new fetch for BACKOFF_FLOOR (1 s), doubled per failure in a
 * row up to BACKOFF_CEIL (60 s), or longer when the KMS asked (kfd_token_hold_off). Callers in
 * that time get the failure at once, without a fetch; one fetch at a time serves every caller.
 * The failure they get names the last cause and, when it differs, the first one of the streak
 * (a secret id spent by re-logins must not hide the policy refusal that started them).
 * A token the KMS refuses is dropped for a new fetch at most once per back-off period
 * (kfd_token_refused), so an ambiguous refusal (a policy, not an expired token) never loops. */
#ifndef KFD_KMS_TOKEN_H
#define KFD_KMS_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct kfd_token kfd_token;

/* Starts a fetch; the backend answers later with kfd_token_fetched. */
typedef void (*kfd_token_fetch_fn)(void *ctx, kfd_token *t);
/* status 0: token is valid during the call. Otherwise -errno and message: -EACCES the KMS refused
 * the credentials, -EPROTO it answered with something unusable (a redirect, 404, bad JSON),
 * -EAGAIN it asked us to wait (429, 503), anything else: no answer (transport). */
typedef void (*kfd_token_cb)(void *arg, int status, const char *token, const char *message);

kfd_token *kfd_token_new(uv_loop_t *loop, const char *name, kfd_token_fetch_fn fetch, void *ctx);
void kfd_token_free(kfd_token *t);
void kfd_token_get(kfd_token *t, kfd_token_cb cb, void *arg);
/* ttl_s 0 means it does not expire (it is still re-fetched hourly). */
void kfd_token_fetched(kfd_token *t, int status, const char *value, size_t len, uint64_t ttl_s, const char *message);
/* The KMS refused the token: the next get fetches a new one. */
void kfd_token_invalidate(kfd_token *t);
/* The KMS refused the token, and why (for the log if the new fetch fails too). Drops it and returns
 * true when no refusal did so within the current refusal period (1 s, doubling while refusals keep
 * coming, up to 60 s); else false: keep the token and report the refusal. */
bool kfd_token_refused(kfd_token *t, const char *why);
/* A call with a token fetched after a refusal succeeded: the refusal period starts again at 1 s. */
void kfd_token_refusal_cured(kfd_token *t);
/* Before kfd_token_fetched with a failure: the KMS asked for seconds before the next try. */
void kfd_token_hold_off(kfd_token *t, uint32_t seconds);
/* While there is no valid token and the last fetch failed: what went wrong (valid until the next
 * fetch ends); else NULL. */
const char *kfd_token_problem(const kfd_token *t);
/* The current token for a refresh call (e.g. Vault renew-self), or NULL. */
const char *kfd_token_current(const kfd_token *t);

#endif
