/* keyfleet-agent recover VOLUME: the console side of a recovery key (docs/recovery.md), for the
 * break-glass case: no coordinator can release the key, the TPM copy is gone or refused, and an
 * operator has read the recovery key out to whoever stands at the node. The key is read from
 * stdin as typed (case, O/I/L and spacing forgiven), the first group that does not check is
 * named so the person retypes five symbols rather than sixty-five, and the volume is opened:
 * LUKS2 with the key's canonical text as a passphrase (any keyslot: the recovery keyslot), ZFS
 * with the 32 bytes as the dataset's key. The unlock is recorded in the status file and queued
 * for the next contact, which audits it as offline_unlock. It needs neither the node's identity
 * (its TPM key may be what was lost) nor the network. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "commands.h"
#include "kf_log.h"
#include "kf_recovery.h"

#define TYPED_MAX 1024

/* Opens v with the recovery key (32 bytes in key). */
static int open_with(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *key, kf_err *err)
{
    if (v->kind == KFA_VOL_ZFS)
        return v->drv->unlock(cfg, v, key, err);
    kf_secbuf *text = kf_secbuf_new(KF_RECOVERY_TEXT_LEN + 1);
    if (text == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    kf_recovery_encode(key->data, (char *)text->data);
    text->len = KF_RECOVERY_TEXT_LEN;
    v->keyslot = -1; /* the recovery keyslot, not the keyfleet one */
    int r = v->drv->unlock(cfg, v, text, err);
    kf_secbuf_free(text);
    return r;
}

int kfa_cmd_recover(const kfa_config *cfg, int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-')
        return kfa_usage("recover");
    kfa_volume v;
    kf_err err = {0};
    if (kfa_resolve_volume(cfg, argv[1], &v, &err) != 0) {
        fprintf(stderr, "keyfleet-agent: %s\n", err.msg);
        return KFA_EXIT_USAGE;
    }
    kf_secbuf *typed = NULL, *key = NULL;
    int r = v.drv->probe(cfg, &v, &err);
    if (r == 0 && v.unlocked) {
        printf("%s %s: already unlocked\n", v.drv->name, v.path);
        kfa_volume_clear(&v);
        return 0;
    }
    if (r == 0 && isatty(STDIN_FILENO))
        fprintf(stderr, "recovery key for %s (13 groups of 5), then Enter and Ctrl-D: ", v.path);
    if (r == 0)
        r = kf_secbuf_read_fd(STDIN_FILENO, "stdin", TYPED_MAX, &typed, &err);
    if (r == 0 && (key = kf_secbuf_new(KF_RECOVERY_KEY_LEN)) == NULL)
        r = kf_err_set(&err, -ENOMEM, "out of memory");
    if (r == 0 && (r = kf_recovery_decode((const char *)typed->data, key->data, &err)) != 0)
        kf_err_wrap(&err, "the recovery key as typed");
    if (r == 0) {
        key->len = KF_RECOVERY_KEY_LEN;
        r = open_with(cfg, &v, key, &err);
        if (r == -EKEYREJECTED)
            kf_err_set(&err, r, "%s: the recovery key is well formed but does not open it (another volume's?)", v.path);
    }
    if (r == 0) {
        const char *reason = "unlocked with a recovery key typed at the console";
        kf_log_warn("recovery_unlock", "volume=%s", kf_log_q(v.path));
        kfa_state_record(cfg, v.id, "recovery", reason);
        if (kfa_state_queue_unlock(cfg, &v, KEYFLEET__V1__OFFLINE_METHOD__OFFLINE_METHOD_RECOVERY_KEY, reason) != 0)
            kf_log_error("offline_unlock_not_queued", "volume=%s state_file=%s hint=\"the coordinators will not hear "
                         "of this unlock; state_file must be writable\"", kf_log_q(v.path), kf_log_q(cfg->state_file));
        printf("%s %s: unlocked with the recovery key (reported at the next contact; have it replaced)\n", v.drv->name,
               v.path);
    } else {
        fprintf(stderr, "keyfleet-agent: recover: %s\n", err.msg);
    }
    kf_secbuf_free(typed);
    kf_secbuf_free(key);
    kfa_volume_clear(&v);
    return r == 0 ? 0 : 1;
}
