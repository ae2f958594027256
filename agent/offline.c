/* The offline fallback, one path for `unlock`, the cryptroot keyscript and the token plugin:
 * the TPM copy of a volume's key, used only when no coordinator answered. The unlock is recorded
 * in the status file and queued for the next contact as soon as the key leaves the TPM, whether
 * or not the volume then opens: the coordinators hear of every key a TPM gave out. */
#include <errno.h>
#include <stdio.h>
#include <time.h>

#include "agent.h"
#include "kf_log.h"
#include "tpm2.h"

int kfa_unseal_offline(kfa_ctx *ctx, const kfa_volume *v, const char *why, kf_secbuf **ret_key, kf_err *err)
{
    char reason[300];
    snprintf(reason, sizeof(reason), "no coordinator answered before the deadline: %.200s", why);
    /* Past the dead-man window (the watcher's record: the policy's dead_man.after and the last
     * contact), the TPM copy would undo the dead-man lock at the next boot: refused until a
     * coordinator answers. Only where the state file outlives a boot (not an initramfs's /run). */
    uint64_t after_s = 0;
    int64_t last = 0, now = time(NULL);
    kfa_state_dead_man_get(ctx->cfg, &after_s, &last);
    if (after_s > 0 && last > 0 && now > last && (uint64_t)(now - last) > after_s)
        return kf_err_set(err, -EACCES,
                          "offline fallback refused: no coordinator reached for %lld s, past the dead-man window "
                          "(dead_man.after %llu s); the volume opens once a coordinator answers",
                          (long long)(now - last), (unsigned long long)after_s);
    if (after_s > 0 && last > 0 && last - now > KFA_DEAD_MAN_CLOCK_SLACK_S)
        return kf_err_set(err, -EACCES,
                          "offline fallback refused: the clock is %lld s behind the last contact, so the dead-man "
                          "window (dead_man.after %llu s) cannot be judged; the volume opens once a coordinator "
                          "answers",
                          (long long)(last - now), (unsigned long long)after_s);
    kf_secbuf *key = NULL;
    /* A TPM-resident node key holds a connection to the TPM (swtpm serves one at a time). */
    kfa_client_close_for_tpm(ctx);
    int r = kfa_tpm_unseal(ctx->cfg->tpm_tcti, v->tpm_blob, &key, KFA_TPM_TIMEOUT_MS, err);
    if (r != 0)
        return kf_err_wrap(err, "offline fallback refused");
    kf_log_warn("offline_unlock", "volume=%s reason=%s", kf_log_q(v->path), kf_log_q(reason));
    kfa_state_record(ctx->cfg, v->id, "tpm", reason);
    /* Not fatal: the machine boots, and the log line above says what the coordinators missed. */
    if (kfa_state_queue_offline(ctx->cfg, v, reason) != 0)
        kf_log_error("offline_unlock_not_queued", "volume=%s state_file=%s hint=\"the coordinators will not hear of "
                     "this unlock; state_file must be writable (in an initramfs: under /run)\"",
                     kf_log_q(v->path), kf_log_q(ctx->cfg->state_file));
    *ret_key = key;
    return 0;
}

int kfa_seal_copy(kfa_ctx *ctx, const kf_enrolled *e, char **ret_blob, kf_err *err)
{
    const uint32_t *pcrs = e->n_tpm_pcrs > 0 ? e->tpm_pcrs : ctx->cfg->tpm_pcrs;
    size_t n_pcrs = e->n_tpm_pcrs > 0 ? e->n_tpm_pcrs : ctx->cfg->n_tpm_pcrs;
    kfa_client_close_for_tpm(ctx);
    return kfa_tpm_seal(ctx->cfg->tpm_tcti, pcrs, n_pcrs, e->key, ret_blob, KFA_TPM_TIMEOUT_MS, err);
}
