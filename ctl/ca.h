/* The fleet CA: ECDSA P-256 keys, certificates naming their holder with keyfleet://KIND/NAME. */
#ifndef KFCTL_CA_H
#define KFCTL_CA_H

#include <stdbool.h>

#include <openssl/evp.h>

#include "kf_err.h"
#include "kf_identity.h"
#include "kf_tpm_evidence.h"

typedef struct kfctl_cert_opts {
    kf_peer_kind kind;
    const char *name;
    int days;          /* validity from not-before */
    int backdate_days; /* not-before this many days ago (clock skew, or tests of expiry) */
    const char *const *extra_sans; /* "DNS:host" or "IP:addr" (coordinators) */
    size_t n_extra_sans;
    EVP_PKEY *public_key; /* from a CSR (a key made elsewhere, e.g. in a TPM): no key is made or written */
    const kf_tpm_verified *tpm; /* verified TPM evidence: the certificate says the key is in a TPM */
    char **ret_pem;             /* non-NULL: the certificate goes here (malloc'ed PEM), not to cert_out */
} kfctl_cert_opts;

/* Creates a self-signed CA in ca_cert/ca_key (refuses to overwrite). */
int kfctl_ca_create(const char *ca_cert, const char *ca_key, const char *cn, kf_err *err);

/* Issues a certificate signed by the CA into cert_out/key_out (key mode 0600; key_out unused
 * with opts->public_key). Refuses to overwrite unless force. */
int kfctl_cert_issue(const char *ca_cert, const char *ca_key, const kfctl_cert_opts *opts, const char *cert_out,
                     const char *key_out, bool force, kf_err *err);

/* Reads a PEM certificate request: its self-signature must verify (the requester holds the
 * key), its key must be ECDSA P-256, and its subject CN, where present, must be name.
 * Returns 0 with *ret_key, or -EINVAL with err set. */
int kfctl_csr_read(const char *path, const char *name, EVP_PKEY **ret_key, kf_err *err);

#endif
