/* KMS backends: one vtable (this header), one file per backend, each with its header declaring
 * its open (kms_local.h, kms_vault.h, kms_azure.h); the remote ones share kms_remote.c,
 * kms_token.c, kms_wrapped.c and kms_answer.c. Writing KEK files (keyfleetctl init) is kms_kek.h,
 * a library of its own. Calls are asynchronous: each takes a callback that runs on the loop
 * (possibly before the call returns, for backends that need no I/O such as `local`). Wrapped keys
 * are text in keyfleet's versioned format "kf:BACKEND:vN:...". */
#ifndef KFD_KMS_H
#define KFD_KMS_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "kf_err.h"
#include "kf_secmem.h"
#include "config/kms_config.h"

#define KFD_DATA_KEY_LEN 32

typedef struct kfd_kms kfd_kms;

/* Result of a KMS call. On success status is 0; plaintext (generate/unwrap) belongs to the
 * callee and is wiped after the callback returns, so copy what you need; wrapped (generate/
 * wrap/rewrap) is a NUL-terminated string valid during the callback; key_version is the KMS key
 * version the input was (unwrap) or is now (wrap, rotate) under, 0 where the KMS has no numbered
 * versions (Azure); stale says the input is not under the newest key version (unwrap), so the
 * caller should rewrap. On failure status is a negative errno (-EIO, -ETIMEDOUT, -EHOSTUNREACH:
 * KMS unavailable; -EACCES: the KMS refused our credentials; -EBADMSG: the ciphertext does not
 * open under this volume; -EINVAL: malformed ciphertext or unknown key version) and message says
 * why. */
typedef struct kfd_kms_result {
    int status;
    const kf_secbuf *plaintext;
    const char *wrapped;
    uint32_t key_version;
    uint32_t latest_version;
    bool stale;
    const char *message;
} kfd_kms_result;

typedef void (*kfd_kms_cb)(void *arg, const kfd_kms_result *res);

typedef struct kfd_kms_info {
    const char *backend;
    uint32_t latest_version;
    uint32_t min_decrypt_version;
    bool reachable; /* the last call to the KMS got an answer */
    /* Why the KMS cannot serve although it answers (a key keyfleet cannot use, a failing login),
     * for readyz; NULL when none is known. Valid until the next KMS call. */
    const char *problem;
} kfd_kms_info;

typedef struct kfd_kms_ops {
    const char *name;
    /* A new 256-bit data key, plaintext and wrapped, bound to volume_id. */
    void (*generate)(kfd_kms *k, const char *volume_id, kfd_kms_cb cb, void *arg);
    void (*wrap)(kfd_kms *k, const char *volume_id, const kf_secbuf *key, kfd_kms_cb cb, void *arg);
    void (*unwrap)(kfd_kms *k, const char *volume_id, const char *wrapped, kfd_kms_cb cb, void *arg);
    /* The same data key under the newest key version. */
    void (*rewrap)(kfd_kms *k, const char *volume_id, const char *wrapped, kfd_kms_cb cb, void *arg);
    void (*describe)(kfd_kms *k, kfd_kms_info *ret);
    /* A new key version for new wraps; older ones still unwrap. The result's key_version is the
     * new version; message names it where versions are not numbers. */
    void (*rotate)(kfd_kms *k, kfd_kms_cb cb, void *arg);
    /* Makes key `version`, which another replica rotated to, usable here; NULL where the KMS
     * serves every replica itself. 0, or a negative errno with err saying what is missing. */
    int (*sync)(kfd_kms *k, uint32_t version, kf_err *err);
    void (*destroy)(kfd_kms *k);
} kfd_kms_ops;

struct kfd_kms {
    const kfd_kms_ops *ops;
    uv_loop_t *loop;
};

/* Opens the configured backend (kms.c): local (kms_local.h), vault-transit (kms_vault.h) or
 * azure-keyvault (kms_azure.h). */
int kfd_kms_open(uv_loop_t *loop, const kfd_kms_config *cfg, kfd_kms **ret, kf_err *err);

#endif
