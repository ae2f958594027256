/* The node side's reading of the coordinator's answers to Enroll, Release, RotateKey and
 * EnrollRecoveryKey (kf_node_client.h): pure, so tests/fuzz/fuzz_agent_answer.c drives them with
 * whatever bytes a coordinator (or whatever answers in its place) sends. */
#include "kf_node_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_node_check.h"

/* The PCRs the policy names, those that exist (at most 24). */
static void pcrs(const uint32_t *in, size_t n, kf_enrolled *ret)
{
    for (size_t i = 0; i < n && i < 24; i++)
        if (in[i] < 24)
            ret->tpm_pcrs[ret->n_tpm_pcrs++] = in[i];
}

int kf_node_enroll_answer(const Keyfleet__V1__EnrollResponse *resp, kf_seal_receiver *rx, const char *node,
                          const char *volume_id, const char *request_id, kf_enrolled *ret, kf_err *err)
{
    memset(ret, 0, sizeof(*ret));
    int r = kf_node_open_sealed(resp->sealed_key, rx, "enroll", request_id, node, volume_id, &ret->key, err);
    if (r == 0 && (ret->wrapped = strdup(resp->wrapped_key)) == NULL)
        r = kf_err_set(err, -ENOMEM, "out of memory");
    ret->offline_fallback_allowed = resp->offline_fallback_allowed;
    ret->tpm_and_network = resp->tpm_and_network;
    pcrs(resp->tpm_pcrs, resp->n_tpm_pcrs, ret);
    if (r != 0)
        kf_enrolled_clear(ret);
    return r;
}

int kf_node_release_answer(const Keyfleet__V1__ReleaseResponse *resp, kf_seal_receiver *rx, const char *node,
                           const char *volume_id, const char *request_id, kf_released *ret, kf_err *err)
{
    memset(ret, 0, sizeof(*ret));
    int r = 0;
    snprintf(ret->request_id, sizeof(ret->request_id), "%s", resp->request_id);
    /* The agent logs this id, shows it on the console and polls with it: one the coordinator
     * would refuse (kf_check_release), or cut to fit, is no answer. */
    if (!kf_request_id_valid(resp->request_id)) {
        r = kf_err_set(err, -EBADMSG, "answer carries no valid request id (16..64 of [0-9A-Za-z-])");
    } else if (request_id != NULL && request_id[0] != '\0' && strcmp(resp->request_id, request_id) != 0) {
        r = kf_err_set(err, -EBADMSG, "answer is for another request");
    } else if (resp->status == KEYFLEET__V1__RELEASE_STATUS__RELEASE_STATUS_PENDING) {
        ret->pending = true;
        ret->retry_after_ms = resp->retry_after_ms;
        ret->expires_at = resp->expires_at != NULL ? resp->expires_at->seconds : 0;
    } else if (resp->status == KEYFLEET__V1__RELEASE_STATUS__RELEASE_STATUS_RELEASED) {
        r = kf_node_open_sealed(resp->sealed_key, rx, "release", resp->request_id, node, volume_id, &ret->key, err);
        ret->audit_seq = resp->audit_seq;
        ret->key_overdue = resp->key_overdue;
        ret->tpm_and_network = resp->tpm_and_network;
        ret->recovery_replace = resp->recovery_replace;
        if (r == 0 && resp->rewrapped_key[0] != '\0' && (ret->rewrapped = strdup(resp->rewrapped_key)) == NULL)
            r = kf_err_set(err, -ENOMEM, "out of memory");
    } else {
        r = kf_err_set(err, -EBADMSG, "answer has no status");
    }
    if (r != 0)
        kf_released_clear(ret);
    return r;
}

int kf_node_rotate_answer(const Keyfleet__V1__RotateKeyResponse *resp, kf_seal_receiver *rx, bool commit,
                          const char *node, const char *volume_id, const char *request_id, kf_enrolled *ret,
                          kf_err *err)
{
    memset(ret, 0, sizeof(*ret));
    int r = 0;
    if (!commit)
        r = kf_node_open_sealed(resp->sealed_key, rx, "rotate", request_id, node, volume_id, &ret->key, err);
    if (r == 0 && (ret->wrapped = strdup(resp->wrapped_key)) == NULL)
        r = kf_err_set(err, -ENOMEM, "out of memory");
    ret->offline_fallback_allowed = resp->offline_fallback_allowed;
    pcrs(resp->tpm_pcrs, resp->n_tpm_pcrs, ret);
    if (r != 0)
        kf_enrolled_clear(ret);
    return r;
}

int kf_node_recovery_answer(const Keyfleet__V1__EnrollRecoveryKeyResponse *resp, kf_seal_receiver *rx, bool luks2,
                            const char *node, const char *volume_id, const char *request_id, kf_secbuf **ret_key,
                            bool *ret_replaced, kf_err *err)
{
    *ret_key = NULL;
    *ret_replaced = resp->replaced;
    if (!luks2)
        return 0;
    return kf_node_open_sealed(resp->sealed_key, rx, "recovery", request_id, node, volume_id, ret_key, err);
}
