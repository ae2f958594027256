/* What the coordinator and every offline verifier (keyfleetctl) must compute alike for the
 * audit log (docs/audit.md): the canonical bytes of a record, its chain hash, its Merkle leaf,
 * and signed checkpoints.
 *
 * A checkpoint is a text the leader signs with its coordinator key (EVP_DigestSign: ECDSA P-256
 * with SHA-256, or Ed25519), recorded in the log as a record of action "checkpoint" whose reason
 * is that text:
 *
 *   keyfleet-audit-checkpoint/v1
 *   cluster fleet-<32 hex: SHA-256 of the fleet CA certificate>
 *   size <records covered: seq 1..size>
 *   root <RFC 9162 Merkle root over those records, 64 hex>
 *   chain <hash of record `size` in the hash chain, 64 hex>
 *   time <unix seconds>.<9 digits of nanoseconds>
 *   signer <coordinator name>
 *
 * Format v2 (review rev17, R6 and the signed state root) adds two lines after signer:
 *
 *   keyfleet-audit-checkpoint/v2
 *   ... (as v1) ...
 *   cert <SHA-256 of the signer certificate (DER), 64 hex>
 *   state <seq> <version> <64 hex> | state none
 *
 * cert binds the certificate blob stored beside the signature into what is signed; state is the
 * digest of the replicated state outside the audit log (store_digest.c) that the leader noted when
 * it applied checkpoint record seq, of schema version version ("none": it noted none).
 */
#ifndef KF_AUDIT_H
#define KF_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "kf_err.h"
#include "kf_identity.h"
#include "kf_merkle.h"

#define KF_AUDIT_HASH 32
#define KF_AUDIT_CANON_MAX 8192
#define KF_AUDIT_CHECKPOINT_ACTION "checkpoint"
#define KF_CHECKPOINT_MAGIC "keyfleet-audit-checkpoint/v1" /* also the JSON anchor format */
#define KF_CHECKPOINT_MAGIC_V2 "keyfleet-audit-checkpoint/v2"
#define KF_CHECKPOINT_TEXT_MAX 640

/* The canonical bytes (format KFA1) of r; returns the length, which may exceed size (nothing
 * beyond size is written). */
size_t kf_audit_canonical(const Keyfleet__V1__AuditRecord *r, uint8_t *buf, size_t size);
/* hash(n) = SHA-256(hash(n-1) || canonical(n)). */
void kf_audit_chain_hash(const uint8_t prev[KF_AUDIT_HASH], const uint8_t *canon, size_t len,
                         uint8_t out[KF_AUDIT_HASH]);

typedef struct kf_checkpoint {
    char cluster[40];
    uint64_t size;
    uint8_t root[KF_AUDIT_HASH];
    uint8_t chain[KF_AUDIT_HASH];
    int64_t seconds;
    int32_t nanos;
    char signer[64];
    /* 0 or 1: the v1 text; 2: with the lines below (what a leader signs now). */
    int version;
    uint8_t cert_hash[KF_AUDIT_HASH]; /* v2: SHA-256 of the signer certificate (DER) */
    uint64_t state_seq;               /* v2: the checkpoint record the state was noted at; 0: none */
    uint32_t state_version;           /* v2: its schema version */
    uint8_t state[KF_AUDIT_HASH];     /* v2: the state digest there */
} kf_checkpoint;

/* The signed text. Returns its length, or -ENOSPC / -EINVAL (a field out of range). */
int kf_checkpoint_format(const kf_checkpoint *cp, char *buf, size_t size);
/* Parses a checkpoint text strictly: it must be exactly what kf_checkpoint_format writes, and
 * sign at least one record (size >= 1). */
int kf_checkpoint_parse(const char *text, size_t len, kf_checkpoint *ret, kf_err *err);

/* "fleet-" and the first 16 bytes of SHA-256(DER of the fleet CA certificate), in hex. */
int kf_checkpoint_cluster_id(X509 *ca, char out[40]);

/* Signs text with key (ECDSA: SHA-256; Ed25519: pure). *ret_sig is OPENSSL_malloc'ed. */
int kf_checkpoint_sign(EVP_PKEY *key, const char *text, size_t len, uint8_t **ret_sig, size_t *ret_len, kf_err *err);

/* Checks a signed checkpoint: its time is not ahead of this clock by more than
 * KF_CHECKPOINT_SKEW_S; cert (DER) chains to a CA in ca (time checks at the checkpoint's own
 * time, so a later expiry does not void old checkpoints), names a coordinator
 * (keyfleet://coordinator/NAME) whose NAME is the text's signer, and its key verifies sig over
 * text. When cluster is not NULL, the text must name it. Fills ret when not NULL. */
int kf_checkpoint_verify(const char *text, size_t len, const uint8_t *sig, size_t sig_len, const uint8_t *cert,
                         size_t cert_len, X509_STORE *ca, const char *cluster, kf_checkpoint *ret, kf_err *err);

/* Checked certificate chains, so that a log's many checkpoints by few certificates cost one chain
 * verification per certificate (review rev17, R6): each entry is a certificate (by its SHA-256)
 * that chained to the fleet CA, the times every certificate of that chain covers, the coordinator
 * it names and its public key. A checkpoint dated outside those times is verified in full. */
typedef struct kf_checkpoint_cache kf_checkpoint_cache;
kf_checkpoint_cache *kf_checkpoint_cache_new(void);
void kf_checkpoint_cache_free(kf_checkpoint_cache *c); /* NULL: no-op */
/* kf_checkpoint_verify (clock) or kf_checkpoint_verify_applied (!clock) through cache (NULL: none).
 * Entries are kept per ca: use one cache with one CA store. */
int kf_checkpoint_verify_cached(kf_checkpoint_cache *cache, bool clock, const char *text, size_t len,
                                const uint8_t *sig, size_t sig_len, const uint8_t *cert, size_t cert_len,
                                X509_STORE *ca, const char *cluster, kf_checkpoint *ret, kf_err *err);

/* A checkpoint whose time is more than this far ahead of the verifier's clock is refused: its
 * time is what the certificate's validity is checked at, so it must not be chosen freely. */
#define KF_CHECKPOINT_SKEW_S 300

/* kf_checkpoint_verify without the clock: for a replica's own log at start, whose checkpoint
 * times were judged against its clock when it applied them (a leader's clock that ran fast
 * then must not make every replica that restarts diverge). */
int kf_checkpoint_verify_applied(const char *text, size_t len, const uint8_t *sig, size_t sig_len, const uint8_t *cert,
                                 size_t cert_len, X509_STORE *ca, const char *cluster, kf_checkpoint *ret,
                                 kf_err *err);

/* The checkpoints of a log follow one another (review of #17, F4): each signs more records than
 * the one before it and is dated no earlier, unless its signer's certificate (cert, DER) was still
 * valid at the date of the one before it (review rev17, R3): that signer could have dated it then,
 * so going back gains a stolen key nothing, and one checkpoint dated by a fast clock does not pin
 * every later date. A replayed copy of a genuine checkpoint after forged records, or a
 * continuation dated back by a key whose certificate had expired by then, is refused. prev NULL:
 * next is the first. 0 or -EPERM. */
int kf_checkpoint_follows(const kf_checkpoint *prev, const kf_checkpoint *next, const uint8_t *cert, size_t cert_len,
                          kf_err *err);

/* A coordinator removed from the cluster and added back under its name counts only with a
 * certificate issued after the removal: notBefore no earlier than the removal record's time less
 * this (the fleet CA dates notBefore 300 s back for clock skew, ctl/ca.c). */
#define KF_CHECKPOINT_READD_SLACK_S 300
/* True when x was issued before a removal at removed_at (notBefore < removed_at - slack), or
 * its notBefore is unreadable. */
bool kf_audit_cert_predates(X509 *x, int64_t removed_at);

/* Who may no longer sign checkpoints, as the log itself says up to a point: certificate serials
 * denylisted by cert_revoke records and coordinators taken out by cluster_remove records (and
 * not added back). A forged continuation of a log cannot undo what the signed part before it
 * holds, so a stolen key of a revoked certificate or a removed coordinator signs nothing after
 * that record, nor after the coordinator was added back. Fed every record in seq order; checked
 * at each checkpoint. */
typedef struct kf_audit_member {
    char name[64];
    int64_t removed_at; /* time of its newest cluster_remove record */
    bool out;           /* removed and not added back */
} kf_audit_member;
typedef struct kf_audit_signers {
    char (*revoked)[KF_SERIAL_MAX];
    kf_audit_member *removed; /* every coordinator ever removed */
    size_t n_revoked, n_removed, cap_revoked, cap_removed;
} kf_audit_signers;
void kf_audit_signers_init(kf_audit_signers *h);
/* Notes r when it revokes a certificate or changes membership. 0 or -ENOMEM. */
int kf_audit_signers_note(kf_audit_signers *h, const Keyfleet__V1__AuditRecord *r);
/* 0, or -EPERM (err says why) when cert (DER) was revoked, its coordinator removed, or removed
 * and added back while cert was issued before that removal (kf_audit_cert_predates). */
int kf_audit_signers_check(const kf_audit_signers *h, const uint8_t *cert, size_t cert_len, kf_err *err);
void kf_audit_signers_free(kf_audit_signers *h);

/* A store of the CA certificates in a PEM file; its first certificate's cluster id. */
int kf_checkpoint_ca_load(const char *ca_file, X509_STORE **ret_store, char cluster[40], kf_err *err);

void kf_hex(const uint8_t *in, size_t n, char *out); /* out holds 2n+1 */
int kf_unhex(const char *in, size_t hex_len, uint8_t *out, size_t out_len);

#endif
