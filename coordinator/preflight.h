/* What --check-config verifies beyond the schema: the files a start would need. */
#ifndef KFD_PREFLIGHT_H
#define KFD_PREFLIGHT_H

#include "config/config.h"
#include "kf_err.h"

/* Loads the TLS certificate, key and CA as the server would (key matching the certificate), the
 * local KEKs when the KMS is the embedded default, and checks that a remote KMS's secret and CA
 * files are readable. Runs as the calling user, as keyfleetd reads all of these before it drops
 * privileges (user:); what it writes later (a rotated KEK, the state) is not checked. */
int kfd_preflight(const kfd_config *cfg, kf_err *err);

#endif
