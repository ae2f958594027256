/* What the remote KMS backends (vault-transit, azure-keyvault) share: one authenticated HTTPS
 * call with a cached token that is fetched again, once, when the KMS refuses it (401 or 403) and
 * no refusal did so within the token's refusal period (kfd_token_refused), or as the backend's
 * refused hook decides;
 * JSON answers parsed into a jansson tree; and the result/error plumbing to kfd_kms_cb. */
#ifndef KFD_KMS_REMOTE_H
#define KFD_KMS_REMOTE_H

#include <stdbool.h>

#include <jansson.h>

#include "kms/http.h"
#include "kms/kms_answer.h"
#include "kms/kms.h"
#include "kms/kms_token.h"

typedef struct kfd_remote_call kfd_remote_call;
/* The final answer: res->status < 0 for transport errors (after retries), else res->code. */
typedef void (*kfd_remote_done)(kfd_remote_call *c, const kfd_http_response *res);

struct kfd_remote_call {
    kfd_http *http;
    kfd_token *token;           /* NULL: fixed_token, or no Authorization */
    const char *fixed_token;    /* used when token is NULL (a renewal or login call) */
    const char *auth_format;    /* header prefix, e.g. "X-Vault-Token: " */
    const char *method;         /* static string */
    char url[1024];
    kf_secbuf *body;            /* JSON or form body; owned, wiped */
    const char *content_type;   /* static string */
    bool once;                  /* one HTTP attempt, never repeated (a key rotation) */
    bool auth_retried;          /* the token was fetched again after a refusal */
    bool login_failed;          /* done runs because no token could be had (res->error says why) */
    /* Optional: decides a 401/403 to a call with a token (a backend that can tell an invalid token
     * from a policy refusal); it restarts the call or ends it with done. NULL: fetch a new token
     * once, within kfd_token_refused's limit. */
    void (*refused)(kfd_remote_call *c, const kfd_http_response *res);
    kfd_remote_done done;
    kfd_kms_cb cb;              /* the KMS caller's */
    void *arg;
};

/* The part every remote backend shares; embed it first in the backend's struct. */
typedef struct kfd_remote_kms kfd_remote_kms;
/* Starts a read of the KMS key's versions; answers cb like any KMS call. */
typedef void (*kfd_remote_read_key_fn)(kfd_remote_kms *k, kfd_kms_cb cb, void *arg);

struct kfd_remote_kms {
    kfd_kms super;
    kfd_http *http;
    kfd_token *token;
    kfd_remote_call login; /* the one token fetch in flight */
    bool reachable;        /* the last call got an answer (for readyz) */
    bool describing;
    kfd_remote_read_key_fn read_key;
    uv_timer_t describe_timer;
};

/* Sets up k (zeroed, embedded first in a calloc'ed backend): the HTTP client from cfg (named name
 * in logs), the token cache with fetch, and a describe timer that calls read_key at once and then
 * every minute (started by kfd_remote_kms_start). On failure the caller destroys k. */
int kfd_remote_kms_init(kfd_remote_kms *k, uv_loop_t *loop, const kfd_kms_ops *ops, const kfd_kms_config *cfg,
                        const char *name, uint32_t max_retry_after_ms, kfd_token_fetch_fn fetch,
                        kfd_remote_read_key_fn read_key, kf_err *err);
void kfd_remote_kms_start(kfd_remote_kms *k);
/* Frees the shared part, then the whole backend object (once the timer has closed); free the
 * backend's own fields first. */
void kfd_remote_kms_destroy(kfd_remote_kms *k);
/* Records whether an answer came: sets reachable from a final HTTP result, or from a failed token
 * fetch's status (-EACCES, -EPROTO, -EAGAIN: the KMS answered). For a backend whose logins the KMS
 * itself serves (Vault); one whose tokens come from elsewhere (Azure: Entra ID, IMDS) calls it
 * only for calls that reached the KMS. */
void kfd_remote_kms_answered(kfd_remote_kms *k, const kfd_http_response *res);
/* The backend whose login call rc is. */
kfd_remote_kms *kfd_remote_kms_of_login(kfd_remote_call *rc);

/* strdup of an optional string; clears *ok when out of memory. */
char *kfd_strdup_opt(const char *s, bool *ok);

/* Sets body from a printf format into secure memory. Returns 0 or -ENOMEM/-ENOSPC. */
int kfd_remote_body(kfd_remote_call *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void kfd_remote_start(kfd_remote_call *c);
/* Frees what the call owns (not c itself). */
void kfd_remote_clear(kfd_remote_call *c);

/* Parses a JSON answer; NULL when the body is not a JSON object. */
json_t *kfd_remote_json(const kfd_http_response *res);

/* Calls cb with a failure. */
void kfd_remote_fail(kfd_kms_cb cb, void *arg, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));


/* Makes jansson wipe what it frees; keyfleetd calls it once at start, before any JSON. */
void kfd_json_wipe_on_free(void);

#endif
