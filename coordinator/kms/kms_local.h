/* The local KMS backend (kms_local.c): KEKs in files on this host. */
#ifndef KFD_KMS_LOCAL_H
#define KFD_KMS_LOCAL_H

#include <uv.h>

#include "config/kms_config.h"
#include "kf_err.h"
#include "kms/kms.h"

/* The embedded default: KEK files in DIR (kek-N.key, 32 bytes, mode 0600). */
int kfd_kms_local_open(uv_loop_t *loop, const char *dir, kfd_kms **ret, kf_err *err);

#endif
