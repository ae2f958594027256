/* KEK files of the local KMS (kms_kek.c): DIR/kek-N.key, 32 bytes, mode 0600. Its own library
 * (kfd_kek: OpenSSL and kf_common only), so keyfleetctl writes a KEK without the daemon's KMS
 * backends and their libcurl, libuv and jansson. */
#ifndef KFD_KMS_KEK_H
#define KFD_KMS_KEK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kf_err.h"

#define KFD_KEK_LEN 32
#define KFD_KEK_MAX_VERSIONS 1024

/* Creates DIR and its first KEK (kek-1.key) if DIR has none (the one-directory case of the
 * next; keyfleetctl init calls that with one directory or with its peers'). */
int kfd_kms_local_init(const char *dir, kf_err *err);
/* The same KEK, new, in each of the n directories (a cluster's replicas share it), which must
 * hold none yet. Used by keyfleetctl init --peer. */
int kfd_kms_local_init_shared(const char *const *dirs, size_t n, kf_err *err);

/* A new random KEK written as kek-VERSION.key to each of dirs (never over an existing file, made
 * durable); on failure the copies already written are removed. */
int kfd_kek_write_new(const char *const *dirs, size_t n, uint32_t version, kf_err *err);

/* The versions present in dir (kek-N.key names written here, nothing else): present[N] set,
 * *ret_max the highest (0: none). */
int kfd_kek_scan(const char *dir, uint32_t *ret_max, bool present[KFD_KEK_MAX_VERSIONS + 1], kf_err *err);

/* Parses a version as written here: canonical decimal, 1..KFD_KEK_MAX_VERSIONS. Sets *ret_end
 * to the first character after the digits. Returns 0 or -EINVAL. */
int kfd_kek_parse_version(const char *p, uint32_t *ret_version, const char **ret_end);

#endif
