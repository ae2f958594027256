/* The node side of Enroll and Release: the run's X25519 key (kf_seal_receiver), the HPKE info and
 * AAD computed from what was asked (never taken from the answer), the box opened into secure
 * memory. Used by keyfleet-agent, keyfleet-bench and the tests. */
#ifndef KF_NODE_CLIENT_H
#define KF_NODE_CLIENT_H

#include <stdbool.h>

#include "keyfleet/v1/node.pb-c.h"
#include "kf_identity.h"
#include "kf_rpc_client.h"
#include "kf_seal.h"
#include "kf_secmem.h"

typedef struct kf_enrolled {
    kf_secbuf *key;  /* 32-byte data key */
    char *wrapped;   /* store this on the volume */
    bool offline_fallback_allowed;
    /* Enroll only: policy requires TPM and network (agent/tpm_net.c): key is the coordinator's
     * part, and the keyslot key is derived from it and a part the agent makes in its TPM. */
    bool tpm_and_network;
    uint32_t tpm_pcrs[24]; /* PCRs policy wants the TPM copy sealed under (may be empty) */
    size_t n_tpm_pcrs;
} kf_enrolled;

typedef struct kf_released {
    bool pending;       /* true: poll again with request_id after retry_after_ms */
    char request_id[65];
    uint32_t retry_after_ms;
    int64_t expires_at; /* when pending: the request expires (Unix seconds; 0: not said) */
    kf_secbuf *key;     /* when released */
    char *rewrapped;    /* when released under an old KEK version: store this instead (may be NULL) */
    uint64_t audit_seq;
    bool key_overdue;   /* older than the policy's max_key_age: rotate it (keyfleet-agent rotate) */
    bool tpm_and_network; /* the volume's rule requires TPM and network (fixed at enroll) */
    bool recovery_replace; /* its recovery key was revealed: replace it (docs/recovery.md) */
} kf_released;

void kf_enrolled_clear(kf_enrolled *e);
void kf_released_clear(kf_released *r);

/* node is this node's identity name (from its certificate); it is bound into the HPKE info and AAD.
 * rx is the run's receiver, made for node (NULL: a key pair for this call only).
 * An empty or NULL enroll request_id gets a random one (pass the same id to retry safely).
 * Return as kf_rpc_call: 0 when a server answered (st->code says whether it succeeded). */
int kf_node_enroll(kf_rpc_client *c, kf_seal_receiver *rx, const char *node, const Keyfleet__V1__VolumeRef *volume,
                   Keyfleet__V1__Label **labels, size_t n_labels, const char *request_id,
                   const Keyfleet__V1__TpmQuote *attestation, kf_enrolled *ret, kf_rpc_status *st, kf_err *err);
/* attestation (NULL: none) is a quote made for this very request on c's pinned connection
 * (kf_rpc_client_export; docs/attestation.md). no_pending: a release the policy holds for
 * approval is refused at once (failed_precondition) instead of making a pending request. */
int kf_node_release(kf_rpc_client *c, kf_seal_receiver *rx, const char *node, const Keyfleet__V1__VolumeRef *volume,
                    const char *wrapped, const char *request_id, const Keyfleet__V1__TpmQuote *attestation,
                    bool no_pending, kf_released *ret, kf_rpc_status *st, kf_err *err);

/* NodeService.RotateKey. BEGIN (commit false; request_id required): *ret gets the new key, its
 * wrapped form and whether it may be sealed to the TPM. COMMIT (wrapped: the new wrapped key):
 * *ret gets the volume's wrapped key now, and no key. attestation as kf_node_release's (COMMIT's
 * is made for an empty ephemeral key). Return as kf_rpc_call. */
int kf_node_rotate(kf_rpc_client *c, kf_seal_receiver *rx, const char *node, const Keyfleet__V1__VolumeRef *volume,
                   bool commit, const char *request_id, const char *wrapped, const Keyfleet__V1__TpmQuote *attestation,
                   kf_enrolled *ret, kf_rpc_status *st, kf_err *err);

/* NodeService.EnrollRecoveryKey (docs/recovery.md): LUKS2, *ret_key gets the new recovery key
 * (32 bytes); ZFS, no key (the dataset's key is its recovery key). *ret_replaced: it replaces a
 * revealed one (ZFS: retired now; LUKS2: once kf_node_recovery_confirm says its keyslot is gone). The same request_id returns the same key. Return as kf_rpc_call. */
int kf_node_recovery_escrow(kf_rpc_client *c, kf_seal_receiver *rx, const char *node,
                            const Keyfleet__V1__VolumeRef *volume, const char *request_id, kf_secbuf **ret_key,
                            bool *ret_replaced, kf_rpc_status *st, kf_err *err);

/* NodeService.EnrollRecoveryKey with confirm (docs/recovery.md, "Replacing a revealed key"): the
 * keyslot of request_id's key is written and verified and the revealed one's killed. Return as
 * kf_rpc_call. */
int kf_node_recovery_confirm(kf_rpc_client *c, const Keyfleet__V1__VolumeRef *volume, const char *request_id,
                             kf_rpc_status *st, kf_err *err);

/* Opens a key sealed to rx for (purpose, request_id, name, volume_id): the AAD is computed from
 * what the caller asked, never from the answer. 0 with *ret (32 bytes), or -EBADMSG. */
int kf_node_open_sealed(const Keyfleet__V1__SealedKey *sk, kf_seal_receiver *rx, const char *purpose,
                        const char *request_id, const char *name, const char *volume_id, kf_secbuf **ret, kf_err *err);

/* The readings of a 200 answer (kf_node_answer.c) behind kf_node_enroll, _release, _rotate and
 * _recovery_escrow, with what was asked: *ret as those functions fill it (cleared on an error).
 * request_id of a release: the one asked for (NULL or empty: any). */
int kf_node_enroll_answer(const Keyfleet__V1__EnrollResponse *resp, kf_seal_receiver *rx, const char *node,
                          const char *volume_id, const char *request_id, kf_enrolled *ret, kf_err *err);
int kf_node_release_answer(const Keyfleet__V1__ReleaseResponse *resp, kf_seal_receiver *rx, const char *node,
                           const char *volume_id, const char *request_id, kf_released *ret, kf_err *err);
int kf_node_rotate_answer(const Keyfleet__V1__RotateKeyResponse *resp, kf_seal_receiver *rx, bool commit,
                          const char *node, const char *volume_id, const char *request_id, kf_enrolled *ret,
                          kf_err *err);
int kf_node_recovery_answer(const Keyfleet__V1__EnrollRecoveryKeyResponse *resp, kf_seal_receiver *rx, bool luks2,
                            const char *node, const char *volume_id, const char *request_id, kf_secbuf **ret_key,
                            bool *ret_replaced, kf_err *err);

/* The keyfleet identity named by a PEM certificate file. */
int kf_identity_from_cert_file(const char *path, kf_identity *ret, kf_err *err);

#endif
