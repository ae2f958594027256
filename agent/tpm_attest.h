/* The node's side of TPM-bound identity (docs/attestation.md): the endorsement key (EK, the
 * TCG default RSA 2048 template, and its certificate from NV where the maker stored one), an
 * attestation key (AK: a restricted ECDSA P-256 signing primary in the endorsement hierarchy,
 * the same key every time it is created), TPM2_Certify of the node's TLS key by the AK, and
 * TPM2_ActivateCredential, which proves the AK is in the EK's TPM. Blocking calls, for the
 * one-off `identity` commands; every object and session is flushed, also after failures. */
#ifndef KFA_TPM_ATTEST_H
#define KFA_TPM_ATTEST_H

#include <stddef.h>
#include <stdint.h>

#include "kf_err.h"
#include "kf_tpm_evidence.h"
#include "kf_tpmkey.h"

/* Fills ev (caller zeroes it; free with kf_tpm_evidence_clear) for the key in key, certified
 * with qualifying data q (at most 64 bytes). */
int kfa_tpm_evidence(const char *tcti, const kf_tpmkey_info *key, const unsigned char *q, size_t q_len,
                     kf_tpm_evidence *ev, kf_err *err);

/* Recovers the secret of a credential made for this TPM's EK and AK (TPM2B_ID_OBJECT and
 * TPM2B_ENCRYPTED_SECRET, size-prefixed). out must hold 64 bytes. */
int kfa_tpm_activate(const char *tcti, const unsigned char *id_object, size_t id_len, const unsigned char *enc_secret,
                     size_t es_len, unsigned char *out, size_t *out_len, kf_err *err);

/* A TPM2_Quote by the AK (recreated from the endorsement seed, as above) over the PCRs in mask
 * (SHA-256 bank) with qualifying data q (kf_tpm_quote_qualifying), and those PCRs' values, read
 * after the quote in ascending order (their SHA-256 is the quote's pcrDigest unless a PCR was
 * extended in between; the coordinator then says the values do not match). */
typedef struct kfa_quote {
    unsigned char ak_pub[512]; /* TPM2B_PUBLIC */
    size_t ak_pub_len;
    unsigned char quoted[1024]; /* TPMS_ATTEST */
    size_t quoted_len;
    unsigned char sig[256]; /* TPMT_SIGNATURE */
    size_t sig_len;
    unsigned char values[24 * 32];
    size_t values_len;
    unsigned char nonce[32]; /* the qualifying data (filled by the caller, sent for diagnosis) */
} kfa_quote;
int kfa_tpm_quote(const char *tcti, uint32_t mask, const unsigned char q[32], kfa_quote *ret, kf_err *err);

#endif
