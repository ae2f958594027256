/* Node TLS keys that live in a TPM, used through OpenSSL 3's tpm2 provider (Debian package
 * tpm2-openssl). The key file is a "TSS2 PRIVATE KEY" PEM: the key's TPM2B_PUBLIC and its
 * TPM2B_PRIVATE, encrypted by the TPM's storage root key, so it loads only into the TPM that
 * made it. Signing goes to the TPM; every other algorithm stays in OpenSSL's default provider. */
#ifndef KF_TPMKEY_H
#define KF_TPMKEY_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "kf_err.h"

#define KF_TPMKEY_PEM_BEGIN "-----BEGIN TSS2 PRIVATE KEY-----"

/* TPMA_OBJECT bits (TPM 2.0 Part 2, 8.3) that a node key must carry. */
#define KF_TPMA_FIXEDTPM 0x00000002u
#define KF_TPMA_FIXEDPARENT 0x00000010u
#define KF_TPMA_SENSITIVEDATAORIGIN 0x00000020u
#define KF_TPMA_SIGN 0x00040000u

/* What a TSS2 PRIVATE KEY file says about the key, read without a TPM. */
typedef struct kf_tpmkey_info {
    uint32_t parent;     /* 0x40000001: the owner hierarchy's storage primary key */
    uint16_t type;       /* 0x0023: ECC */
    uint32_t attributes; /* TPMA_OBJECT */
    uint16_t curve;      /* 0x0003: NIST P-256 */
    unsigned char pub[512]; /* the TPM2B_PUBLIC as stored (size-prefixed) */
    size_t pub_len;
    unsigned char priv[1024]; /* the TPM2B_PRIVATE as stored (encrypted by the parent) */
    size_t priv_len;
} kf_tpmkey_info;

/* Parses the PEM text of a TSS2 PRIVATE KEY. Returns 0, or -EINVAL with err set for anything
 * that is not one (never crashes on garbage). */
int kf_tpmkey_parse(const char *pem, size_t len, kf_tpmkey_info *ret, kf_err *err);

/* Reads and parses a TSS2 PRIVATE KEY file. */
int kf_tpmkey_parse_file(const char *path, kf_tpmkey_info *ret, kf_err *err);

/* Loads the tpm2 provider once per process (TCTI from tcti, e.g. "device:/dev/tpmrm0" or
 * "swtpm:host=127.0.0.1,port=P"; it is passed through the TPM2OPENSSL_TCTI environment variable,
 * the provider's only run-time knob in OpenSSL 3.0) and opens the key file. The key must be an
 * ECC P-256 signing key that is fixedTPM and fixedParent. *ret is an EVP_PKEY usable in any
 * library context (SSL_CTX_use_PrivateKey, X509_REQ_sign): its signatures are made in the TPM.
 * A key from another TPM fails here, with the TPM's reason. */
int kf_tpmkey_load(const char *path, const char *tcti, EVP_PKEY **ret, kf_err *err);

/* Generates a new ECC P-256 key in the TPM under the owner storage primary key (fixedTPM,
 * fixedParent, sensitiveDataOrigin) and writes its TSS2 PRIVATE KEY PEM to path (mode 0600,
 * path must not exist). */
int kf_tpmkey_generate(const char *path, const char *tcti, kf_err *err);

/* Unloads the provider (closing its TPM connection: a TPM without a resource manager, such as
 * swtpm, serves one connection at a time). No key from kf_tpmkey_load may still be in use. */
void kf_tpmkey_unload(void);

/* Lets go of the TPM behind pk (a key from kf_tpmkey_load): frees the provider's key object, so
 * pk can no longer sign (a handshake with it fails) but may still be referenced and freed; then
 * kf_tpmkey_unload can close the provider's TPM connection while a TLS connection made with pk
 * stays open. Used before the agent's own TPM work on that connection (a quote). No-op for a
 * key that is not a TPM key. */
void kf_tpmkey_detach(EVP_PKEY *pk);

#endif
