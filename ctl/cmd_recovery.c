/* keyfleetctl volume recovery-key VOLUME [--request ID] [--totp CODE] (docs/recovery.md): the
 * break-glass reveal. Without --request it proposes the reveal, held for other operators'
 * approval (keyfleetctl approve ID); with the request id of the caller's own approved proposal it
 * prints the key in its typeable form, opened from the answer sealed to a key made for this call
 * (the AAD binds purpose, request, this operator and the volume). */
#include <getopt.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "kf_node_client.h"
#include "kf_recovery.h"
#include "kf_seal.h"

static int reveal(kfctl *ctl, const char *volume, const char *request_id, const char *totp)
{
    kf_identity me;
    kf_err err = {0};
    if (kfctl_client_config(ctl) != 0)
        return 1;
    if (kf_identity_from_cert_file(ctl->cert, &me, &err) != 0) {
        fprintf(stderr, "keyfleetctl: %s\n", err.msg);
        return 1;
    }
    kf_seal_receiver *rx = NULL;
    if (kf_seal_receiver_new(me.name, &rx) != 0) {
        fprintf(stderr, "keyfleetctl: cannot make an X25519 key pair\n");
        return 1;
    }
    Keyfleet__V1__RevealRecoveryKeyRequest req = KEYFLEET__V1__REVEAL_RECOVERY_KEY_REQUEST__INIT;
    req.volume_id = (char *)volume;
    req.request_id = (char *)request_id;
    req.totp_code = (char *)totp;
    req.ephemeral_public_key.data = (uint8_t *)kf_seal_receiver_public_key(rx);
    req.ephemeral_public_key.len = 32;
    ProtobufCMessage *m = NULL;
    int rc = 1;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/RevealRecoveryKey", &req.base,
                        &keyfleet__v1__reveal_recovery_key_response__descriptor, &m) != 0) {
        kf_seal_receiver_free(rx);
        return 1;
    }
    Keyfleet__V1__RevealRecoveryKeyResponse *resp = (Keyfleet__V1__RevealRecoveryKeyResponse *)m;
    bool zfs = resp->volume != NULL && resp->volume->kind == KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS;
    if (request_id[0] == '\0') {
        printf("recovery key reveal of %s (node %s) proposed: request %s, %u of %u approvals\n", volume, resp->node,
               resp->request_id, resp->approvals_have, resp->approvals_needed);
        printf("other operators: keyfleetctl approve %s; then: keyfleetctl volume recovery-key %s --request %s\n",
               resp->request_id, volume, resp->request_id);
        rc = 0;
    } else {
        kf_secbuf *key = NULL;
        char text[KF_RECOVERY_TEXT_LEN + 1];
        if (kf_node_open_sealed(resp->sealed_key, rx, "recovery-reveal", request_id, me.name, volume, &key, &err) != 0) {
            fprintf(stderr, "keyfleetctl: %s\n", err.msg);
        } else {
            kf_recovery_encode(key->data, text);
            kf_secbuf_free(key);
            printf("recovery key of %s (node %s):\n\n    %s\n\n", volume, resp->node, text);
            printf("type it at the node's console: keyfleet-agent recover %s:%s, or %s\n",
                   zfs ? "zfs" : "luks", resp->volume != NULL ? resp->volume->name : "VOLUME",
                   zfs ? "decoded to its 32 bytes by keyfleet-agent recover only (zfs load-key takes raw keys)"
                       : "as the passphrase at any cryptsetup prompt");
            printf("the node replaces it at its next contact; this one then no longer opens the volume "
                   "(audit seq %llu)\n",
                   (unsigned long long)resp->audit_seq);
            OPENSSL_cleanse(text, sizeof(text));
            rc = 0;
        }
    }
    protobuf_c_message_free_unpacked(m, NULL);
    kf_seal_receiver_free(rx);
    return rc;
}

int kfctl_volume_recovery_key(kfctl *ctl, int argc, char **argv)
{
    const char *request_id = "", *totp = "";
    static const struct option opts[] = {{"request", required_argument, NULL, 'r'},
                                         {"totp", required_argument, NULL, 't'},
                                         {NULL, 0, NULL, 0}};
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'r')
            request_id = optarg;
        else if (o == 't')
            totp = optarg;
        else
            return kfctl_usage("volume");
    }
    if (optind + 1 != argc)
        return kfctl_usage("volume");
    return reveal(ctl, argv[optind], request_id, totp);
}
