/* The fleet CA: ECDSA P-256 keys, certificates naming their holder with keyfleet://KIND/NAME. */
#ifndef KFCTL_CA_H
#define KFCTL_CA_H

#include <stdbool.h>

#include "kf_err.h"
#include "kf_identity.h"

typedef struct kfctl_cert_opts {
    kf_peer_kind kind;
    const char *name;
    int days;          /* validity from not-before */
    int backdate_days; /* not-before this many days ago (clock skew, or tests of expiry) */
    const char *const *extra_sans; /* "DNS:host" or "IP:addr" (coordinators) */
    size_t n_extra_sans;
} kfctl_cert_opts;

/* Creates a self-signed CA in ca_cert/ca_key (refuses to overwrite). */
int kfctl_ca_create(const char *ca_cert, const char *ca_key, const char *cn, kf_err *err);

/* Issues a certificate signed by the CA into cert_out/key_out (key mode 0600). Refuses to
 * overwrite unless force. */
int kfctl_cert_issue(const char *ca_cert, const char *ca_key, const kfctl_cert_opts *opts, const char *cert_out,
                     const char *key_out, bool force, kf_err *err);

#endif
