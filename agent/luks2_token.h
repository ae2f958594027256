/* The keyfleet LUKS2 token: its one parser, shared by the agent's LUKS2 driver (luks2.c) and
 * the libcryptsetup token plugin (token_plugin.c). The LUKS2 header is attacker-controlled (an
 * evil maid can edit it), so every field is checked for type, length and syntax, and every
 * refusal says which field and why, never echoing a value that could be long or binary:
 *   {"type":"keyfleet","keyslots":["N"],"keyfleet_volume_id":UUID,
 *    "keyfleet_wrapped_key":"kf:BACKEND:REF:...","keyfleet_coordinators":["host:port",...],
 *    "keyfleet_tpm_sealed":"kftpm1:..." (optional), "keyfleet_version":1 (optional),
 *    "keyfleet_rotating":true (optional: the new key of a rotation not yet committed, docs/agent.md),
 *    "keyfleet_replaces":"N" (optional, only with keyfleet_rotating: the old key's keyslot),
 *    "keyfleet_replaces_salt":BASE64 (optional, only with keyfleet_replaces: that keyslot's KDF
 *    salt, so a keyslot later given the same number, an operator's passphrase, is never killed)} */
#ifndef KFA_LUKS2_TOKEN_H
#define KFA_LUKS2_TOKEN_H

#include <stdbool.h>
#include <stddef.h>

#include "kf_err.h"

#define KFA_TOKEN_TYPE "keyfleet"
#define KFA_TOKEN_JSON_MAX 16384    /* the agent writes well under 4 KiB */
#define KFA_TOKEN_WRAPPED_MAX 4096  /* the coordinators write at most 2047 bytes */
#define KFA_TOKEN_TPM_MAX 4096
#define KFA_TOKEN_COORDINATORS_MAX 64
#define KFA_TOKEN_KEYSLOTS 32       /* LUKS2 keyslots are 0..31 */

typedef struct kfa_token {
    char volume_id[130];
    int keyslot;
    char *wrapped;       /* malloc'ed */
    char *tpm_blob;      /* malloc'ed; NULL when the token holds no TPM-sealed copy */
    char *tpm_part;      /* malloc'ed: keyfleet_tpm_sealed holds a tpm_and_network TPM part
                          * ("kftpmnet1:" BASE64, tpm_net.h) instead; NULL when not */
    char **coordinators; /* malloc'ed, n_coordinators entries */
    size_t n_coordinators;
    char backend[32];    /* from the wrapped key: "local", "vault", ... (for luksDump) */
    char key_ref[64];    /* the KMS key version the wrapped key names ("v1"), cut to fit */
    bool rotating;       /* keyfleet_rotating: a rotation's new key, not yet committed */
    int replaces;        /* keyfleet_replaces: the keyslot of the key it replaces; -1 when none */
    char replaces_salt[65]; /* keyfleet_replaces_salt: that keyslot's KDF salt (base64); "" when none */
} kfa_token;

/* Parses and checks a keyfleet token. uuid, when not NULL, is the header's UUID, which
 * keyfleet_volume_id must equal. Returns 0 with *ret filled (kfa_token_clear it), or -EBADMSG
 * (or -ENOMEM) with err saying what is wrong; *ret is then empty. */
int kfa_token_parse(const char *json, const char *uuid, kfa_token *ret, kf_err *err);
void kfa_token_clear(kfa_token *t);

/* Whether s has the syntax of a keyfleet wrapped key: "kf:" BACKEND ":" REF ":" REST, with
 * BACKEND [a-z0-9_-]{1,31}, REF non-empty, printable ASCII without spaces, at most
 * KFA_TOKEN_WRAPPED_MAX bytes. Whether a coordinator can unwrap it is for the coordinator. */
int kfa_wrapped_check(const char *s, kfa_token *ret_parts, kf_err *err);

/* Whether s has the syntax of a TPM-sealed copy: "kftpm1:" BASE64, at most KFA_TOKEN_TPM_MAX
 * bytes (what tpm2.c unseals is then checked by the TPM). */
int kfa_tpm_blob_check(const char *s, kf_err *err);

#endif
