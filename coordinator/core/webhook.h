/* Webhook notifications for new pending requests: a JSON POST signed with HMAC-SHA256, sent
 * through libcurl multi on the loop, retried with backoff. It never delays a release: notify()
 * only queues. Headers:
 *   X-Keyfleet-Timestamp: UNIX_SECONDS
 *   X-Keyfleet-Signature: sha256=HEX(HMAC-SHA256(secret, TIMESTAMP "." BODY)) */
#ifndef KFD_WEBHOOK_H
#define KFD_WEBHOOK_H

#include <stdint.h>

#include <uv.h>

#include "kf_err.h"

typedef struct kfd_webhook kfd_webhook;

typedef struct kfd_webhook_stats {
    uint64_t delivered, failed, retries, queued;
} kfd_webhook_stats;

int kfd_webhook_new(uv_loop_t *loop, const char *url, const char *secret_file, kfd_webhook **ret, kf_err *err);
/* Drops undelivered notifications; safe with NULL. */
void kfd_webhook_free(kfd_webhook *wh);
void kfd_webhook_notify(kfd_webhook *wh, const char *json_body);
kfd_webhook_stats kfd_webhook_get_stats(const kfd_webhook *wh);

#endif
