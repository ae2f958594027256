#include "kf_node_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/rand.h>

#include "kf_seal.h"

void kf_enrolled_clear(kf_enrolled *e)
{
    kf_secbuf_free(e->key);
    free(e->wrapped);
    memset(e, 0, sizeof(*e));
}

void kf_released_clear(kf_released *r)
{
    kf_secbuf_free(r->key);
    free(r->rewrapped);
    memset(r, 0, sizeof(*r));
}

int kf_identity_from_cert_file(const char *path, kf_identity *ret, kf_err *err)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (x == NULL)
        return kf_err_openssl(err, -EINVAL, path);
    int r = kf_identity_from_cert(x, ret, err);
    X509_free(x);
    return r;
}

/* Opens a sealed key with the run's receiver; returns 0 or -EBADMSG. */
int kf_node_open_sealed(const Keyfleet__V1__SealedKey *sk, kf_seal_receiver *rx, const char *purpose,
                       const char *request_id, const char *node, const char *volume_id, kf_secbuf **ret, kf_err *err)
{
    if (sk == NULL || sk->kem_id != KF_HPKE_KEM_X25519_SHA256 || sk->kdf_id != KF_HPKE_KDF_HKDF_SHA256 ||
        sk->aead_id != KF_SEAL_AEAD)
        return kf_err_set(err, -EBADMSG, "answer carries no sealed key in the expected HPKE suite");
    uint8_t aad[KF_SEAL_AAD_MAX];
    size_t aad_len = kf_seal_aad(purpose, request_id, node, volume_id, aad, sizeof(aad));
    kf_secbuf *key = kf_secbuf_new(KF_SEAL_KEY_LEN);
    if (aad_len == 0 || key == NULL) {
        kf_secbuf_free(key);
        return kf_err_set(err, -ENOMEM, "cannot open the sealed key");
    }
    if (kf_seal_receiver_open(rx, sk->enc.data, sk->enc.len, sk->seq, aad, aad_len, sk->ciphertext.data,
                              sk->ciphertext.len, key->data) != 0) {
        kf_secbuf_free(key);
        return kf_err_set(err, -EBADMSG, "the sealed key does not open for this request, node and volume");
    }
    *ret = key;
    return 0;
}

/* The caller's receiver, or a new one for this call only (*owned). */
static int receiver(kf_seal_receiver *rx, const char *node, kf_seal_receiver **ret, kf_seal_receiver **owned,
                    kf_err *err)
{
    *owned = NULL;
    if (rx == NULL) {
        if (kf_seal_receiver_new(node, owned) != 0)
            return kf_err_set(err, -EIO, "cannot make an X25519 key pair");
        rx = *owned;
    }
    *ret = rx;
    return 0;
}

int kf_node_enroll(kf_rpc_client *c, kf_seal_receiver *rx, const char *node, const Keyfleet__V1__VolumeRef *volume,
                   Keyfleet__V1__Label **labels, size_t n_labels, const char *request_id,
                   const Keyfleet__V1__TpmQuote *attestation, kf_enrolled *ret, kf_rpc_status *st, kf_err *err)
{
    memset(ret, 0, sizeof(*ret));
    kf_seal_receiver *owned;
    int r = receiver(rx, node, &rx, &owned, err);
    if (r != 0)
        return r;
    char generated[33];
    if (request_id == NULL || request_id[0] == '\0') {
        uint8_t raw[16];
        if (RAND_bytes(raw, sizeof(raw)) != 1) {
            kf_seal_receiver_free(owned);
            return kf_err_set(err, -EIO, "no randomness for a request id");
        }
        for (int i = 0; i < 16; i++)
            snprintf(generated + 2 * i, 3, "%02x", raw[i]);
        request_id = generated;
    }
    Keyfleet__V1__EnrollRequest req = KEYFLEET__V1__ENROLL_REQUEST__INIT;
    req.volume = (Keyfleet__V1__VolumeRef *)volume;
    req.labels = labels;
    req.n_labels = n_labels;
    req.ephemeral_public_key.data = (uint8_t *)kf_seal_receiver_public_key(rx);
    req.ephemeral_public_key.len = 32;
    req.request_id = (char *)request_id;
    if (attestation != NULL) {
        req.attestation_present_case = KEYFLEET__V1__ENROLL_REQUEST__ATTESTATION_PRESENT_ATTESTATION;
        req.attestation = (Keyfleet__V1__TpmQuote *)attestation;
    }
    ProtobufCMessage *m = NULL;
    r = kf_rpc_call(c, "keyfleet.v1.NodeService/Enroll", &req.base, &keyfleet__v1__enroll_response__descriptor, &m, st,
                    err);
    if (r == 0 && st->code == KF_CONNECT_OK) {
        r = kf_node_enroll_answer((const Keyfleet__V1__EnrollResponse *)m, rx, node, volume->id, request_id, ret,
                                  err);
    }
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    kf_seal_receiver_free(owned);
    return r;
}

int kf_node_release(kf_rpc_client *c, kf_seal_receiver *rx, const char *node, const Keyfleet__V1__VolumeRef *volume,
                    const char *wrapped, const char *request_id, const Keyfleet__V1__TpmQuote *attestation,
                    bool no_pending, kf_released *ret, kf_rpc_status *st, kf_err *err)
{
    memset(ret, 0, sizeof(*ret));
    kf_seal_receiver *owned;
    int r = receiver(rx, node, &rx, &owned, err);
    if (r != 0)
        return r;
    Keyfleet__V1__ReleaseRequest req = KEYFLEET__V1__RELEASE_REQUEST__INIT;
    req.volume = (Keyfleet__V1__VolumeRef *)volume;
    req.wrapped_key = (char *)wrapped;
    req.ephemeral_public_key.data = (uint8_t *)kf_seal_receiver_public_key(rx);
    req.ephemeral_public_key.len = 32;
    req.request_id = (char *)(request_id != NULL ? request_id : "");
    req.no_pending = no_pending;
    if (attestation != NULL) {
        req.attestation_present_case = KEYFLEET__V1__RELEASE_REQUEST__ATTESTATION_PRESENT_ATTESTATION;
        req.attestation = (Keyfleet__V1__TpmQuote *)attestation;
    }
    ProtobufCMessage *m = NULL;
    r = kf_rpc_call(c, "keyfleet.v1.NodeService/Release", &req.base, &keyfleet__v1__release_response__descriptor, &m,
                    st, err);
    if (r == 0 && st->code == KF_CONNECT_OK) {
        r = kf_node_release_answer((const Keyfleet__V1__ReleaseResponse *)m, rx, node, volume->id, request_id, ret,
                                   err);
    }
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    kf_seal_receiver_free(owned);
    return r;
}

int kf_node_rotate(kf_rpc_client *c, kf_seal_receiver *rx, const char *node, const Keyfleet__V1__VolumeRef *volume,
                   bool commit, const char *request_id, const char *wrapped, const Keyfleet__V1__TpmQuote *attestation,
                   kf_enrolled *ret, kf_rpc_status *st, kf_err *err)
{
    memset(ret, 0, sizeof(*ret));
    kf_seal_receiver *owned = NULL;
    int r = commit ? 0 : receiver(rx, node, &rx, &owned, err);
    if (r != 0)
        return r;
    Keyfleet__V1__RotateKeyRequest req = KEYFLEET__V1__ROTATE_KEY_REQUEST__INIT;
    req.volume = (Keyfleet__V1__VolumeRef *)volume;
    req.step = commit ? KEYFLEET__V1__ROTATE_STEP__ROTATE_STEP_COMMIT : KEYFLEET__V1__ROTATE_STEP__ROTATE_STEP_BEGIN;
    if (!commit) {
        req.ephemeral_public_key.data = (uint8_t *)kf_seal_receiver_public_key(rx);
        req.ephemeral_public_key.len = 32;
    }
    req.request_id = (char *)(request_id != NULL ? request_id : "");
    req.wrapped_key = (char *)(commit && wrapped != NULL ? wrapped : "");
    if (attestation != NULL) {
        req.attestation_present_case = KEYFLEET__V1__ROTATE_KEY_REQUEST__ATTESTATION_PRESENT_ATTESTATION;
        req.attestation = (Keyfleet__V1__TpmQuote *)attestation;
    }
    ProtobufCMessage *m = NULL;
    r = kf_rpc_call(c, "keyfleet.v1.NodeService/RotateKey", &req.base, &keyfleet__v1__rotate_key_response__descriptor,
                    &m, st, err);
    if (r == 0 && st->code == KF_CONNECT_OK) {
        r = kf_node_rotate_answer((const Keyfleet__V1__RotateKeyResponse *)m, rx, commit, node, volume->id, request_id,
                                  ret, err);
    }
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    kf_seal_receiver_free(owned);
    return r;
}

int kf_node_recovery_escrow(kf_rpc_client *c, kf_seal_receiver *rx, const char *node,
                            const Keyfleet__V1__VolumeRef *volume, const char *request_id, kf_secbuf **ret_key,
                            bool *ret_replaced, kf_rpc_status *st, kf_err *err)
{
    *ret_key = NULL;
    *ret_replaced = false;
    kf_seal_receiver *owned;
    int r = receiver(rx, node, &rx, &owned, err);
    if (r != 0)
        return r;
    Keyfleet__V1__EnrollRecoveryKeyRequest req = KEYFLEET__V1__ENROLL_RECOVERY_KEY_REQUEST__INIT;
    req.volume = (Keyfleet__V1__VolumeRef *)volume;
    req.ephemeral_public_key.data = (uint8_t *)kf_seal_receiver_public_key(rx);
    req.ephemeral_public_key.len = 32;
    req.request_id = (char *)request_id;
    ProtobufCMessage *m = NULL;
    r = kf_rpc_call(c, "keyfleet.v1.NodeService/EnrollRecoveryKey", &req.base,
                    &keyfleet__v1__enroll_recovery_key_response__descriptor, &m, st, err);
    if (r == 0 && st->code == KF_CONNECT_OK) {
        r = kf_node_recovery_answer((const Keyfleet__V1__EnrollRecoveryKeyResponse *)m, rx,
                                    volume->kind == KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2, node, volume->id,
                                    request_id, ret_key, ret_replaced, err);
    }
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    kf_seal_receiver_free(owned);
    return r;
}

int kf_node_recovery_confirm(kf_rpc_client *c, const Keyfleet__V1__VolumeRef *volume, const char *request_id,
                             kf_rpc_status *st, kf_err *err)
{
    Keyfleet__V1__EnrollRecoveryKeyRequest req = KEYFLEET__V1__ENROLL_RECOVERY_KEY_REQUEST__INIT;
    req.volume = (Keyfleet__V1__VolumeRef *)volume;
    req.request_id = (char *)request_id;
    req.confirm = true;
    ProtobufCMessage *m = NULL;
    int r = kf_rpc_call(c, "keyfleet.v1.NodeService/EnrollRecoveryKey", &req.base,
                        &keyfleet__v1__enroll_recovery_key_response__descriptor, &m, st, err);
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    return r;
}
