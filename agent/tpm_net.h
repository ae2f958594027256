/* TPM and network, both required (policy `require: [tpm_and_network]`; docs/architecture.md):
 * the volume's keyslot key is HKDF-SHA256 of a part sealed in this node's TPM and the part the
 * coordinators release (the KMS-wrapped data key). Neither part alone opens the volume. The TPM
 * part's sealed blob is stored where a TPM fallback copy would be (token field
 * keyfleet_tpm_sealed, ZFS org.keyfleet:tpm-sealed) under its own prefix, so a volume holds one
 * or the other, never both: no offline unlock exists for it by construction. */
#ifndef KFA_TPM_NET_H
#define KFA_TPM_NET_H

#include <stdbool.h>

#include "agent.h"

/* The stored form of the TPM part: kfa_tpm_seal's blob with this prefix for its "kftpm1:". */
#define KFA_TPMNET_PREFIX "kftpmnet1:"
/* HKDF-SHA256's info (then a NUL and the volume id): the derived key is for this use only. */
#define KFA_TPMNET_LABEL "keyfleet tpm_and_network keyslot key v1"

/* Whether s is a TPM part's blob (its prefix; the syntax is checked as a TPM blob's). */
bool kfa_tpmnet_is_part(const char *s);

/* The keyslot key from the two parts (32 bytes each): HKDF-SHA256, IKM tpm_part || coord_part,
 * no salt, info KFA_TPMNET_LABEL "\0" volume_id. */
int kfa_tpmnet_derive(const char *volume_id, const kf_secbuf *tpm_part, const kf_secbuf *coord_part,
                      kf_secbuf **ret_key, kf_err *err);

/* At enroll: makes a random TPM part, seals it to this TPM under e's PCRs (the config's when it
 * names none; seal, then verify), and derives the keyslot key from it and e->key. *ret_blob
 * (malloc'ed, KFA_TPMNET_PREFIX form) is what the volume stores. */
int kfa_tpmnet_enroll(kfa_ctx *ctx, const kf_enrolled *e, const char *volume_id, char **ret_blob,
                      kf_secbuf **ret_key, kf_err *err);

/* At unlock: when v holds a TPM part, unseals it and replaces *key (the coordinator's part) with
 * the keyslot key; a no-op for any other volume. -EACCES when the TPM refuses (another TPM, or
 * the PCRs changed), err saying so. */
int kfa_tpmnet_combine(kfa_ctx *ctx, const kfa_volume *v, kf_secbuf **key, kf_err *err);

#endif
