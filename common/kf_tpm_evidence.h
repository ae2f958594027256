/* TPM-bound identity, the verifier's side, in software (OpenSSL only; docs/attestation.md):
 * the evidence a node's `keyfleet-agent identity create` writes, its checks, the credential
 * (TPM2_MakeCredential, TPM 2.0 Part 1 section 24, done without a TPM), and the certificate
 * extension in which the fleet CA vouches that a node's key is in a TPM. Every structure from
 * a node is parsed with bounds checks; garbage gets -EINVAL and a message, never a crash. */
#ifndef KF_TPM_EVIDENCE_H
#define KF_TPM_EVIDENCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "kf_err.h"

typedef struct kf_tpm_evidence {
    unsigned char ek_pub[1024]; /* TPM2B_PUBLIC */
    size_t ek_pub_len;
    unsigned char *ek_cert; /* DER, from NV 0x01c00002; NULL when the TPM has none */
    size_t ek_cert_len;
    unsigned char ak_pub[512]; /* TPM2B_PUBLIC */
    size_t ak_pub_len;
    unsigned char key_pub[512]; /* TPM2B_PUBLIC of the certified (TLS) key */
    size_t key_pub_len;
    unsigned char attest[1024]; /* TPMS_ATTEST, as signed */
    size_t attest_len;
    unsigned char sig[256]; /* TPMT_SIGNATURE */
    size_t sig_len;
} kf_tpm_evidence;

void kf_tpm_evidence_clear(kf_tpm_evidence *ev);
/* Text form: "kf-tpm-evidence 1" then one "FIELD BASE64" line per field. */
int kf_tpm_evidence_write(const kf_tpm_evidence *ev, const char *path, kf_err *err);
int kf_tpm_evidence_read(const char *path, kf_tpm_evidence *ev, kf_err *err);

/* The qualifying data a node puts into TPM2_Certify: SHA-256 over "keyfleet certify v1" and the
 * certified key's TPM2B_PUBLIC. */
void kf_tpm_certify_qualifying(const unsigned char *key_pub, size_t len, unsigned char out[32]);

typedef struct kf_tpm_verified {
    EVP_PKEY *key;     /* the certified key's public key (to compare with the CSR) */
    EVP_PKEY *ek;      /* the EK's public key */
    unsigned char ak_name[34]; /* 0x000b || SHA-256(TPMT_PUBLIC) */
    unsigned char ak_digest[32], ek_digest[32]; /* SHA-256 of each TPM2B_PUBLIC */
    bool ek_cert_verified; /* the EK certificate chained to a configured manufacturer CA */
} kf_tpm_verified;
void kf_tpm_verified_clear(kf_tpm_verified *v);

/* Checks ev: the EK (TCG RSA 2048 template attributes; where a certificate is present, that it
 * certifies this EK, and, with ek_cas, that it chains to one of them: required then), the AK
 * (restricted ECDSA P-256 signer, fixedTPM, fixedParent, sensitiveDataOrigin), the certified
 * key (P-256 signing key, fixedTPM, fixedParent, sensitiveDataOrigin, not restricted), and the
 * TPM2_Certify by the AK over that key's name with the expected qualifying data. */
int kf_tpm_evidence_verify(const kf_tpm_evidence *ev, X509_STORE *ek_cas, kf_tpm_verified *ret, kf_err *err);

/* TPM2_MakeCredential for an RSA EK: secret (at most 32 bytes) for the object named name.
 * Writes TPM2B_ID_OBJECT into id (up to 256 bytes) and TPM2B_ENCRYPTED_SECRET into es (up to
 * 512 bytes). */
int kf_tpm_make_credential(EVP_PKEY *ek, const unsigned char *name, size_t name_len, const unsigned char *secret,
                           size_t secret_len, unsigned char *id, size_t *id_len, unsigned char *es, size_t *es_len,
                           kf_err *err);

/* The certificate extension (OID KF_TPM_EXT_OID, not critical): "tpm-key ak=HEX ek=HEX
 * ek_cert=verified|unverified". */
#define KF_TPM_EXT_OID "2.25.38316343326206108959689731787992094527"
int kf_tpm_ext_add(X509 *x, const kf_tpm_verified *v, kf_err *err);
/* true when x carries a well-formed extension; *ret_ak (65 bytes of hex) may be NULL. */
bool kf_tpm_ext_get(X509 *x, char *ret_ak_hex);



/* The credential bundle `keyfleetctl cert issue --tpm-evidence` writes: the certificate,
 * AES-256-GCM-encrypted under a secret that only TPM2_ActivateCredential in the node's TPM
 * recovers (the EK's TPM holding the AK that certified the key). Text form:
 * "kf-tpm-credential 1" then id_object, encrypted_secret, iv, certificate (ciphertext || tag). */
typedef struct kf_tpm_credential {
    unsigned char id[256];
    size_t id_len;
    unsigned char es[512];
    size_t es_len;
    unsigned char iv[12];
    unsigned char *box; /* ciphertext || 16-byte tag */
    size_t box_len;
} kf_tpm_credential;

void kf_tpm_credential_clear(kf_tpm_credential *c);
/* Makes the credential for v (EK, AK name) and seals cert_pem in it. */
int kf_tpm_credential_make(const kf_tpm_verified *v, const char *cert_pem, size_t len, kf_tpm_credential *ret,
                           kf_err *err);
int kf_tpm_credential_write(const kf_tpm_credential *c, const char *path, kf_err *err);
int kf_tpm_credential_read(const char *path, kf_tpm_credential *c, kf_err *err);
/* Opens the box with the activated secret; *ret_pem is malloc'ed and NUL-terminated. */
int kf_tpm_credential_open(const kf_tpm_credential *c, const unsigned char *secret, size_t secret_len,
                           char **ret_pem, kf_err *err);

/* ---- measured-boot quotes (issue #16 part 3, docs/attestation.md) ---- */

/* PCR values of the SHA-256 bank: bit i of mask is PCR i (0..23); values[i] is set for each. */
typedef struct kf_tpm_pcrs {
    uint32_t mask;
    unsigned char values[24][32];
} kf_tpm_pcrs;

#define KF_TPM_QUOTE_EXPORTER_LABEL "EXPORTER-keyfleet-tpm-quote-v1"
#define KF_TPM_DEFAULT_PCRS ((1u << 0) | (1u << 2) | (1u << 4) | (1u << 7))
/* PCRs 16..23: resettable (debug, DRTM, application), never evidence of a boot. */
#define KF_TPM_PCRS_RESETTABLE 0x00ff0000u

/* A quote's TPMS_CLOCK_INFO: resetCount counts TPM resets (reboots), restartCount the restarts
 * (resume from hibernation) since the last reset; together they only go forward on one TPM. */
typedef struct kf_tpm_clock {
    uint64_t clock;
    uint32_t reset_count, restart_count;
    bool safe;
} kf_tpm_clock;

/* How far a TPM's clock may legitimately go back across a reset after a power loss: TPM 2.0
 * Part 1 ("Clock") has the TPM save Clock to NV at least every 2^22 ms (about 70 minutes), and
 * a TPM that restarts without an orderly shutdown resumes from the saved value. The spec says
 * it then reports safe = NO, but libtpms (swtpm) was seen reporting YES after a kill, so the
 * slack applies whatever safe says. Used by the handler's check (coordinator/core/tpm_state.h)
 * and the apply's (store_judged.h). */
#define KF_TPM_CLOCK_NV_SLACK_MS (1ull << 22)
/* The most a TPM clock may run ahead of the coordinators' time between two quotes: 5/4 of the
 * time elapsed (the TPM's own rate error) plus this (coordinators' clocks and the quote's age):
 * the handler's rule 4 (coordinator/core/tpm_state.h) and the apply's (store_judged.c). */
#define KF_TPM_CLOCK_JUMP_SLACK_MS 300000ull

/* (reset, restart) comes before (than_reset, than_restart) on one TPM: the handler's rollback
 * test and the apply's (an acceptance of a rolled-back state, review rev46c R46c-1). */
static inline bool kf_tpm_counters_before(uint32_t reset, uint32_t restart, uint32_t than_reset, uint32_t than_restart)
{
    return reset < than_reset || (reset == than_reset && restart < than_restart);
}

/* The qualifying data of a quote: SHA-256 over "keyfleet quote v1", the TLS connection's
 * exporter value (RFC 8446 7.5, label KF_TPM_QUOTE_EXPORTER_LABEL, no context, 32 bytes), and
 * the request: its method ("Enroll", "Release"), volume id, the agent's ephemeral public key and
 * request id (each length-prefixed). A quote made for one request or connection does not verify
 * on another. */
void kf_tpm_quote_qualifying(const unsigned char exporter[32], const char *method, const char *volume_id,
                             const unsigned char *eph_pub, size_t eph_len, const char *request_id,
                             unsigned char out[32]);

/* Checks a quote: ak_pub (TPM2B_PUBLIC) hashes to ak_digest_hex, the AK digest the fleet CA put
 * in the node's certificate, and is a restricted ECDSA-SHA256 P-256 signer fixed to its TPM;
 * quoted is a TPM-made TPMS_ATTEST of type quote whose extraData is q and whose signature (sig,
 * TPMT_SIGNATURE) verifies with that AK; it selects PCRs of the SHA-256 bank only; and
 * pcr_values (32 bytes per selected PCR, ascending) hash to its pcrDigest. Fills *ret with
 * those values. -EINVAL for malformed input, -EACCES for a quote that does not hold. */
int kf_tpm_quote_verify(const unsigned char *ak_pub, size_t ak_len, const char *ak_digest_hex,
                        const unsigned char *quoted, size_t quoted_len, const unsigned char *sig, size_t sig_len,
                        const unsigned char *pcr_values, size_t values_len, const unsigned char q[32],
                        kf_tpm_pcrs *ret, kf_tpm_clock *ret_clock, kf_err *err);

/* The PCR set a verified quote must have (the policy's attestation.pcrs, issue #16's review):
 * every PCR of required, none of 16..23 (resettable), and no required PCR all zeros or all
 * ones (never extended). -EACCES naming the PCRs otherwise. */
int kf_tpm_pcrs_require(const kf_tpm_pcrs *got, uint32_t required, kf_err *err);

/* Text form, for the store and the operator: "0=HEX 2=HEX ..." in ascending order. out must
 * hold KF_TPM_PCRS_TEXT_MAX bytes. */
#define KF_TPM_PCRS_TEXT_MAX (24 * 68 + 1)
void kf_tpm_pcrs_format(const kf_tpm_pcrs *p, char *out);
/* Strict: "N=HEX" separated by single spaces, N 0..23 in decimal (no sign or leading zero, each
 * once), HEX exactly 64 hex digits. -EINVAL with err (may be NULL) saying what is wrong. */
int kf_tpm_pcrs_parse(const char *text, kf_tpm_pcrs *ret, kf_err *err);
/* "0,2,4,7" for mask. out must hold 64 bytes. */
void kf_tpm_pcr_list(uint32_t mask, char *out, size_t cap);
/* Which PCRs differ between accepted and presented (a PCR in one selection only counts as
 * changed). Returns the mask of changed PCRs; 0 when they match. */
uint32_t kf_tpm_pcrs_diff(const kf_tpm_pcrs *accepted, const kf_tpm_pcrs *presented);

/* What `keyfleetctl node attest show` prints and `accept NODE TOKEN` must repeat: 32 hex digits
 * of SHA-256 over the node, its accepted values and the pending (seen) record as the
 * coordinator holds them, so an accept applies only to the values the operator looked at. */
#define KF_TPM_ATTEST_TOKEN_LEN 32
int kf_tpm_attest_token(const char *node, const char *accepted, const char *seen, const char *seen_clock,
                        char out[KF_TPM_ATTEST_TOKEN_LEN + 1]);

#endif
