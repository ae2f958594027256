/* What the remote KMS backends (vault-transit, azure-keyvault) share: one authenticated HTTPS
 * call with a cached token that is fetched again, once, when the KMS refuses it (401 or 403);
 * JSON answers parsed into a jansson tree; and the result/error plumbing to kfd_kms_cb. */
#ifndef KFD_KMS_REMOTE_H
#define KFD_KMS_REMOTE_H

#include <stdbool.h>

#include <jansson.h>

#include "http.h"
#include "kms.h"
#include "kms_token.h"

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
    bool auth_retried;
    kfd_remote_done done;
    kfd_kms_cb cb;              /* the KMS caller's */
    void *arg;
};

/* Sets body from a printf format into secure memory. Returns 0 or -ENOMEM/-ENOSPC. */
int kfd_remote_body(kfd_remote_call *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void kfd_remote_start(kfd_remote_call *c);
/* Frees what the call owns (not c itself). */
void kfd_remote_clear(kfd_remote_call *c);

/* Parses a JSON answer; NULL when the body is not a JSON object. */
json_t *kfd_remote_json(const kfd_http_response *res);
/* The string at obj.key1[.key2], or NULL. */
const char *kfd_json_str(const json_t *obj, const char *key1, const char *key2);

/* Calls cb with a failure. */
void kfd_remote_fail(kfd_kms_cb cb, void *arg, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* A JSON-safe value for our bodies: printable ASCII without quotes or backslashes. */
bool kfd_json_safe(const char *s);

/* Makes jansson wipe what it frees; keyfleetd calls it once at start, before any JSON. */
void kfd_json_wipe_on_free(void);

#endif
