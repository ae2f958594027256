/* Recovery keys, the node side of the escrow (docs/recovery.md): keyfleet-agent recovery-key add
 * VOLUME, enroll --recovery-key, and the replacement of a revealed one after a heartbeat. The
 * coordinator makes the key and escrows it before the keyslot exists (a keyslot never holds a
 * key the fleet does not have). LUKS2: a keyslot whose passphrase is the key's canonical text,
 * recorded in the keyfleet-recovery token; the one it replaces is killed by its recorded salt.
 * ZFS: the dataset's key is its recovery key, so a revealed one is replaced by rotating it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "agent.h"
#include "commands.h"
#include "kf_log.h"
#include "kf_recovery.h"

static void volume_ref(const kfa_volume *v, Keyfleet__V1__VolumeRef *ref)
{
    ref->id = (char *)v->id;
    ref->kind = v->kind == KFA_VOL_LUKS2 ? KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2
                                         : KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS;
    ref->name = (char *)v->path;
}

/* request_id: 33 bytes, the escrow's (for the confirmation of a replacement). */
static int escrow(kfa_ctx *ctx, const kfa_volume *v, char *request_id, kf_secbuf **ret_key, bool *ret_replaced,
                  kf_err *err)
{
    int r = kfa_connect(ctx, err);
    if (r != 0)
        return r;
    uint8_t raw[16];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return kf_err_set(err, -EIO, "no randomness for a request id");
    for (int i = 0; i < 16; i++)
        snprintf(request_id + 2 * i, 3, "%02x", raw[i]);
    Keyfleet__V1__VolumeRef ref = KEYFLEET__V1__VOLUME_REF__INIT;
    volume_ref(v, &ref);
    kf_rpc_status st;
    r = kf_node_recovery_escrow(ctx->client, kfa_receiver(ctx), ctx->me.name, &ref, request_id, ret_key, ret_replaced,
                                &st, err);
    if (r != 0)
        return kf_err_wrap(err, "%s: EnrollRecoveryKey", v->path);
    if (st.code != KF_CONNECT_OK)
        return kf_err_set(err, st.code == KF_CONNECT_PERMISSION_DENIED ? -EACCES : -EPROTO,
                          "%s: coordinator refused the recovery key: %s: %s", v->path, kf_connect_code_name(st.code),
                          st.message);
    if (v->kind == KFA_VOL_LUKS2 && *ret_key == NULL)
        return kf_err_set(err, -EBADMSG, "%s: the answer carries no recovery key", v->path);
    return 0;
}

/* The replacement's second step: the new keyslot is verified and the revealed key's killed, so
 * the coordinators may stop asking for it (until then the revealed key stays marked revealed). */
static int confirm(kfa_ctx *ctx, const kfa_volume *v, const char *request_id, kf_err *err)
{
    Keyfleet__V1__VolumeRef ref = KEYFLEET__V1__VOLUME_REF__INIT;
    volume_ref(v, &ref);
    kf_rpc_status st;
    int r = kf_node_recovery_confirm(ctx->client, &ref, request_id, &st, err);
    if (r != 0)
        return kf_err_wrap(err, "%s: confirming the recovery key's replacement", v->path);
    if (st.code != KF_CONNECT_OK)
        return kf_err_set(err, -EPROTO, "%s: coordinator refused the replacement's confirmation: %s: %s", v->path,
                          kf_connect_code_name(st.code), st.message);
    return 0;
}

int kfa_recovery_add(kfa_ctx *ctx, kfa_volume *v, const kf_secbuf *key, bool rotate_zfs, const char **ret_how,
                     kf_err *err)
{
    *ret_how = "";
    if (v->wrapped == NULL)
        return kf_err_set(err, -ENOENT, "%s is not enrolled", v->path);
    bool replaced = false;
    char request_id[33];
    if (v->kind == KFA_VOL_ZFS) {
        int r = rotate_zfs ? kfa_rotate_volume(ctx, v, err) : 0;
        kf_secbuf *none = NULL;
        if (r == 0)
            r = escrow(ctx, v, request_id, &none, &replaced, err);
        kf_secbuf_free(none);
        *ret_how = replaced ? "recovery key replaced (the dataset's key was rotated)"
                            : "the dataset's keyfleet key is escrowed as its recovery key";
        return r;
    }
    kf_secbuf *released = NULL, *rkey = NULL, *text = NULL;
    /* Under the volume's lock: two runs interleaving could leave the escrowed key without a
     * keyslot and the keyslot's key replaced in the escrow. */
    int lock_fd = -1;
    int r = kfa_volume_lock(ctx->cfg, v, &lock_fd, err);
    if (r == 0)
        r = v->drv->probe(ctx->cfg, v, err);
    if (r == 0 && key == NULL) {
        kf_released rel;
        if ((r = kfa_release(ctx, v, &rel, err)) == 0) {
            released = rel.key;
            rel.key = NULL;
            kf_released_clear(&rel);
            key = released;
        }
    }
    if (r == 0)
        r = escrow(ctx, v, request_id, &rkey, &replaced, err);
    /* After the escrow, so the coordinator's refusal is the one reported; never a keyslot: a key
     * the coordinators hold would open it without the TPM part, whatever the rule says now or a
     * coordinator answers (docs/architecture.md, "TPM and network, both required"). */
    if (r == 0 && v->tpm_part != NULL)
        r = kf_err_set(err, -EPERM, "%s requires TPM and network: it gets no recovery keyslot", v->path);
    if (r == 0 && (text = kf_secbuf_new(KF_RECOVERY_TEXT_LEN + 1)) == NULL)
        r = kf_err_set(err, -ENOMEM, "out of memory");
    if (r == 0) {
        kf_recovery_encode(rkey->data, (char *)text->data);
        text->len = KF_RECOVERY_TEXT_LEN;
        kfa_test_crash_point("recovery_escrow");
        bool killed = false;
        r = kfa_luks2_recovery_set(v, key, text, &killed, err);
        *ret_how = killed ? "recovery key replaced; the old one's keyslot is killed" : "recovery key added";
        /* A revealed key's replacement counts once the coordinators know its keyslot is gone. */
        kfa_test_crash_point("recovery_killed");
        if (r == 0 && replaced)
            r = confirm(ctx, v, request_id, err);
    }
    if (lock_fd >= 0)
        close(lock_fd);
    kf_secbuf_free(text);
    kf_secbuf_free(rkey);
    kf_secbuf_free(released);
    return r;
}

void kfa_recovery_replace(kfa_ctx *ctx, char **ids, size_t n)
{
    if (n == 0)
        return;
    kfa_volume *vs = NULL;
    size_t nv = 0;
    if (kfa_collect_volumes(ctx, 0, NULL, false, &vs, &nv) != 0)
        return;
    for (size_t i = 0; i < nv; i++) {
        kfa_volume *v = &vs[i];
        kf_err err = {0};
        bool listed = false;
        if (v->drv->probe(ctx->cfg, v, &err) == 0 && v->wrapped != NULL)
            for (size_t j = 0; j < n && !listed; j++)
                listed = strcmp(v->id, ids[j]) == 0;
        const char *how;
        if (listed && kfa_recovery_add(ctx, v, NULL, true, &how, &err) == 0)
            kf_log_warn("recovery_key_replaced", "volume=%s id=%s reason=\"revealed to an operator\"",
                        kf_log_q(v->path), kf_log_q(v->id));
        else if (listed)
            kf_log_error("recovery_replace_failed", "volume=%s error=%s hint=\"retried at the next contact\"",
                         kf_log_q(v->path), kf_log_q(err.msg));
        kfa_volume_clear(v);
    }
    free(vs);
}

int kfa_cmd_recovery_key(kfa_ctx *ctx, int argc, char **argv)
{
    if (argc < 3 || strcmp(argv[1], "add") != 0 || argv[2][0] == '-')
        return kfa_usage("recovery-key");
    kfa_volume *vs = NULL;
    size_t n = 0, ok = 0;
    if (kfa_collect_volumes(ctx, argc - 2, argv + 2, false, &vs, &n) != 0)
        return KFA_EXIT_USAGE;
    for (size_t i = 0; i < n; i++) {
        kfa_volume *v = &vs[i];
        kf_err err = {0};
        const char *how = "";
        int r = v->drv->probe(ctx->cfg, v, &err);
        if (r == 0)
            r = kfa_recovery_add(ctx, v, NULL, false, &how, &err);
        if (r == 0) {
            kf_log_info("recovery_key_added", "volume=%s id=%s", kf_log_q(v->path), kf_log_q(v->id));
            printf("%s %s: %s (escrowed; keyfleetctl volume recovery-key %s reveals it under approval)\n",
                   v->drv->name, v->path, how, v->id);
            ok++;
        } else {
            fprintf(stderr, "keyfleet-agent: recovery-key: %s\n", err.msg);
        }
        kfa_volume_clear(v);
    }
    free(vs);
    return ok == n && n > 0 ? KFA_EXIT_ALL : ok == 0 ? KFA_EXIT_NONE : KFA_EXIT_SOME;
}
