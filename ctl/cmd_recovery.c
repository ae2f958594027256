/* keyfleetctl volume recovery-key VOLUME [--request ID] [--totp -|--totp-fd N] (docs/recovery.md): the
 * break-glass reveal. Without --request it proposes the reveal, held for other operators'
 * approval (keyfleetctl approve ID); with the request id of the caller's own approved proposal it
 * prints the key in its typeable form, opened from the answer sealed to a key made for this call
 * (the AAD binds purpose, request, this operator and the volume). */
#include <errno.h>
#include <getopt.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "ctl.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "kf_node_client.h"
#include "kf_recovery.h"
#include "kf_seal.h"
#include "kf_secmem.h"

/* All of buf to fd, unbuffered: no stdio copy of the key is left behind. */
static int write_all(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Opens one sealed key and writes its text, indented, then a blank line: the key and the text
 * live in locked buffers, wiped after, and go to stdout by write(2). */
static int print_one(const Keyfleet__V1__SealedKey *sk, kf_seal_receiver *rx, const char *purpose,
                     const char *request_id, const char *me, const char *volume)
{
    kf_secbuf *key = NULL, *line = NULL;
    kf_err err = {0};
    if (kf_node_open_sealed(sk, rx, purpose, request_id, me, volume, &key, &err) != 0) {
        fprintf(stderr, "keyfleetctl: %s\n", err.msg);
        return 1;
    }
    if ((line = kf_secbuf_new(KF_RECOVERY_TEXT_LEN + 16)) == NULL) {
        kf_secbuf_free(key);
        fprintf(stderr, "keyfleetctl: out of memory\n");
        return 1;
    }
    char *text = (char *)line->data;
    memcpy(text, "    ", 4);
    kf_recovery_encode(key->data, text + 4);
    kf_secbuf_free(key);
    size_t n = 4 + KF_RECOVERY_TEXT_LEN;
    memcpy(text + n, "\n\n", 2);
    fflush(stdout);
    int rc = write_all(STDOUT_FILENO, text, n + 2) == 0 ? 0 : 1;
    OPENSSL_cleanse(text, line->cap);
    kf_secbuf_free(line);
    if (rc != 0)
        fprintf(stderr, "keyfleetctl: cannot write the key to stdout\n");
    return rc;
}

/* The current key and, where a replacement waits for the node's confirmation, the pending one
 * (review rev26c R2: once the node killed the current keyslot, only the pending key opens it).
 * The process is not dumpable meanwhile. */
static int print_key(const Keyfleet__V1__RevealRecoveryKeyResponse *resp, kf_seal_receiver *rx,
                     const char *request_id, const char *me, const char *volume, bool zfs)
{
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    bool pending = resp->sealed_pending_key != NULL;
    printf("%srecovery key of %s (node %s):\n\n", pending ? "current " : "", volume, resp->node);
    if (print_one(resp->sealed_key, rx, "recovery-reveal", request_id, me, volume) != 0)
        return 1;
    if (pending) {
        printf("pending replacement (try this if the current one does not open the volume: the node may have "
               "killed the current one's keyslot and not yet confirmed):\n\n");
        if (print_one(resp->sealed_pending_key, rx, "recovery-reveal-pending", request_id, me, volume) != 0)
            return 1;
    }
    printf("type it at the node's console: keyfleet-agent recover %s:%s, or %s\n", zfs ? "zfs" : "luks",
           resp->volume != NULL ? resp->volume->name : "VOLUME",
           zfs ? "decoded to its 32 bytes by keyfleet-agent recover only (zfs load-key takes raw keys)"
               : "as the passphrase at any cryptsetup prompt");
    printf("the node replaces %s at its next contact; %s then no longer opens the volume (audit seq %llu)\n",
           pending ? "both" : "it", pending ? "neither" : "this one", (unsigned long long)resp->audit_seq);
    return 0;
}

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
        rc = print_key(resp, rx, request_id, me.name, volume, zfs);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    kf_seal_receiver_free(rx);
    return rc;
}

int kfctl_volume_recovery_key(kfctl *ctl, int argc, char **argv)
{
    const char *request_id = "", *totp_arg = NULL, *totp_fd = NULL;
    static const struct option opts[] = {{"request", required_argument, NULL, 'r'},
                                         {"totp", required_argument, NULL, 't'},
                                         {"totp-fd", required_argument, NULL, 'f'},
                                         {NULL, 0, NULL, 0}};
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'r')
            request_id = optarg;
        else if (o == 't')
            totp_arg = optarg;
        else if (o == 'f')
            totp_fd = optarg;
        else
            return kfctl_usage("volume");
    }
    if (optind + 1 != argc)
        return kfctl_usage("volume");
    /* Break glass: the code is read, never taken from the command line (review rev26b F7). */
    char totp[KFCTL_TOTP_MAX + 1];
    if (kfctl_totp_read(totp_arg, totp_fd, totp) != 0)
        return KFCTL_EXIT_USAGE;
    int rc = reveal(ctl, argv[optind], request_id, totp);
    OPENSSL_cleanse(totp, sizeof(totp));
    return rc;
}
