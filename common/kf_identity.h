/* Identities: every certificate keyfleet issues names its holder with one SAN URI
 * keyfleet://KIND/NAME, KIND being node, operator or coordinator. */
#ifndef KF_IDENTITY_H
#define KF_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "kf_err.h"

#define KF_NAME_MAX 63

typedef enum {
    KF_PEER_NONE = 0,
    KF_PEER_NODE,
    KF_PEER_OPERATOR,
    KF_PEER_COORDINATOR,
} kf_peer_kind;

/* A certificate serial as lowercase hex without leading zeros: 20 octets at most (RFC 5280). */
#define KF_SERIAL_MAX 41

typedef struct kf_identity {
    kf_peer_kind kind;
    char name[KF_NAME_MAX + 1];
    char serial[KF_SERIAL_MAX]; /* the certificate's; empty for identities without one (AppRole) */
    /* The fleet CA vouched, in the certificate (kf_tpm_evidence.h), that its key is in a TPM,
     * certified by the attestation key whose TPM2B_PUBLIC hashes to tpm_ak (hex). */
    bool tpm_key;
    char tpm_ak[65];
    int64_t not_after; /* the certificate's expiry (Unix seconds); 0 without one */
} kf_identity;

/* Canonical serial text from user input ("0A:1b", "serial=0A1B"): lowercase hex, no colons,
 * no leading zeros. Returns 0 or -EINVAL. */
int kf_serial_normalize(const char *in, char out[KF_SERIAL_MAX]);

const char *kf_peer_kind_name(kf_peer_kind kind);
/* "node", "operator" or "coordinator"; returns 0 or -EINVAL. */
int kf_peer_kind_parse(const char *s, kf_peer_kind *ret);

/* A name is 1..63 bytes of [A-Za-z0-9._-], starting with a letter or digit. */
bool kf_name_valid(const char *s, size_t len);

/* Parses "keyfleet://KIND/NAME". Returns 0, or -EINVAL with err set. */
int kf_identity_from_uri(const char *uri, size_t len, kf_identity *ret, kf_err *err);

/* Extracts the identity from a certificate: exactly one keyfleet:// URI SAN. Other SANs are ignored. */
int kf_identity_from_cert(X509 *cert, kf_identity *ret, kf_err *err);
/* The certificate's notBefore in seconds since the epoch; INT64_MIN when unreadable (the oldest
 * time, which no "issued after" rule lets through). */
int64_t kf_cert_not_before(const X509 *cert);

/* Writes "keyfleet://KIND/NAME" into buf; returns 0 or -ENOSPC. */
int kf_identity_uri(const kf_identity *id, char *buf, size_t size);

#endif
