/* keyfleetctl's own audit verification (docs/audit.md): nothing the coordinator says is taken
 * on trust. The records are re-hashed here (chain and RFC 9162 tree), every checkpoint's
 * signature is checked against the fleet CA, and the tree must pass through every signed head
 * and every saved anchor. Also the JSON forms of checkpoints and proofs. */
#ifndef KFCTL_AUDIT_CHECK_H
#define KFCTL_AUDIT_CHECK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <openssl/x509.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "kf_audit.h"

/* The fleet's trust: CA certificates and the cluster id derived from the first. */
typedef struct kfctl_trust {
    X509_STORE *ca;
    char cluster[40];
    kf_checkpoint_cache *cache; /* each signer chain verified once (review rev17, R6) */
} kfctl_trust;
int kfctl_trust_load(const char *ca_file, kfctl_trust *ret);
void kfctl_trust_free(kfctl_trust *t);

/* A signed checkpoint as saved in an anchor file or a proof. */
typedef struct kfctl_cp {
    uint64_t seq; /* its record's seq in the log */
    char text[KF_CHECKPOINT_TEXT_MAX];
    uint8_t *sig, *cert;
    size_t sig_len, cert_len;
    kf_checkpoint parsed;
} kfctl_cp;
void kfctl_cp_clear(kfctl_cp *cp);
/* From a checkpoint record (its signature and certificate included). */
int kfctl_cp_from_record(const Keyfleet__V1__AuditRecord *r, kfctl_cp *ret, char *why, size_t why_size);
json_t *kfctl_cp_to_json(const kfctl_cp *cp);
int kfctl_cp_from_json(const json_t *o, kfctl_cp *ret, char *why, size_t why_size);
/* Checks its signature against the trust; fills cp->parsed. */
int kfctl_cp_verify(const kfctl_trust *t, kfctl_cp *cp, char *why, size_t why_size);
/* Reads one or more checkpoints from a file: a JSON object, or JSON objects one per line. */
int kfctl_cp_read_file(const char *path, kfctl_cp **ret, size_t *ret_n, char *why, size_t why_size);

/* Incremental verification of a whole log, records fed in seq order. */
typedef struct kfctl_log_check kfctl_log_check;
kfctl_log_check *kfctl_log_check_new(const kfctl_trust *t);
/* A copy that may start after record 1 (an audit sink added later): its first record's
 * prev_hash is taken as given; the chain, every checkpoint's signature and the chain hash it
 * signed are checked, the Merkle roots only from record 1. */
void kfctl_log_check_allow_partial(kfctl_log_check *c);
/* Records after the newest checkpoint (or all, without one) beyond this many fail the check:
 * the leader signs within 200 ms or 1000 records (docs/audit.md, "Verifying"). */
#define KFCTL_AUDIT_MAX_UNSIGNED 2000
void kfctl_log_check_max_unsigned(kfctl_log_check *c, uint64_t n);
/* The coordinator's own state digest at checkpoint record seq (VerifyAudit): finish compares it
 * with the state root a checkpoint of the log signed for that record. */
void kfctl_log_check_state(kfctl_log_check *c, uint64_t seq, const uint8_t *state, size_t len, uint32_t version);
/* Feeds the next record; false once the log failed (kfctl_log_check_result says where). */
bool kfctl_log_check_add(kfctl_log_check *c, const Keyfleet__V1__AuditRecord *r);
/* After the last record: checks each anchor; prints a summary to out. 0: verified. */
int kfctl_log_check_finish(kfctl_log_check *c, const kfctl_cp *anchors, size_t n_anchors, FILE *out);
void kfctl_log_check_free(kfctl_log_check *c);

/* A sink's copy (JSON lines, one record each; it may start after record 1), read from in (named
 * name in messages) and checked as a whole log, then against the anchors. Prints the result to
 * out. 0: verified. */
int kfctl_stream_verify(FILE *in, const char *name, const kfctl_trust *t, const kfctl_cp *anchors, size_t n_anchors,
                        uint64_t max_unsigned, FILE *out);

/* The documents `audit prove` and `audit prove-consistency` print (docs/audit.md). */
#define KFCTL_PROOF_FORMAT "keyfleet-audit-inclusion/v1"
#define KFCTL_CONSISTENCY_FORMAT "keyfleet-audit-consistency/v1"
/* An inclusion proof: its checkpoint verified against the trust (and, with anchor_path, the same
 * as the last checkpoint in that file, verified too), then each record's path to the signed
 * root. Prints an "included:" line per record to out. 0, or -1 with why. */
int kfctl_proof_verify(const kfctl_trust *t, const json_t *doc, const char *anchor_path, FILE *out, char *why,
                       size_t why_size);
/* A consistency proof: both checkpoints verified, the old tree a prefix of the new. Prints the
 * "consistent:" line to out. 0, or -1 with why. */
int kfctl_consistency_verify(const kfctl_trust *t, const json_t *doc, FILE *out, char *why, size_t why_size);

#endif
