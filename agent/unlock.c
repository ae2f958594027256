/* keyfleet-agent unlock: each volume's key from a coordinator (or the TPM-sealed copy when none
 * answers), with the volumes' headers read while TLS is set up. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "commands.h"
#include "kf_log.h"
#include "kf_secmem.h"
#include "tpm_net.h"

/* The offline fallback: no coordinator answered before the deadline, and policy allowed a
 * TPM-sealed copy at enrollment. Recorded, and reported to a coordinator on the next contact. */
static int unlock_from_tpm(kfa_ctx *ctx, kfa_volume *v, const char *why, kf_err *err)
{
    kf_secbuf *key = NULL;
    int r = kfa_unseal_offline(ctx, v, why, &key, err);
    if (r != 0)
        return kf_err_wrap(err, "%s", v->path);
    r = v->drv->unlock(ctx->cfg, v, key, err);
    kf_secbuf_free(key);
    if (r != 0)
        return r;
    printf("%s %s: unlocked from the TPM (no coordinator answered; will be reported)\n", v->drv->name, v->path);
    return 0;
}

static int unlock_with(kfa_ctx *ctx, kfa_volume *v, kf_err *err);

static void swap_next(kfa_volume *v)
{
    char *w = v->wrapped;
    int slot = v->keyslot;
    v->wrapped = v->wrapped_next;
    v->keyslot = v->next_keyslot;
    v->wrapped_next = w;
    v->next_keyslot = slot;
    if (v->tpm_part_next != NULL) { /* tpm_and_network: the new key has its own TPM part */
        char *p = v->tpm_part;
        v->tpm_part = v->tpm_part_next;
        v->tpm_part_next = p;
    }
}

/* Unlocks one probed volume; returns 0 when it is unlocked afterwards. A volume with a key
 * rotation staged (interrupted) opens with the old key or, failing that, the new one. */
static int unlock_one(kfa_ctx *ctx, kfa_volume *v, kf_err *err)
{
    if (v->wrapped == NULL)
        return kf_err_set(err, -ENOENT, "%s is not enrolled", v->path);
    if (v->unlocked) {
        printf("%s %s: already unlocked\n", v->drv->name, v->path);
        return 0;
    }
    int r = unlock_with(ctx, v, err);
    if (r == 0 || v->wrapped_next == NULL || r == -EHOSTUNREACH || r == -ETIMEDOUT || v->unlocked)
        return r;
    kf_log_info("unlock_rotation_key", "volume=%s after=%s", kf_log_q(v->path), kf_log_q(err->msg));
    swap_next(v);
    kf_err next_err = {0};
    if ((r = unlock_with(ctx, v, &next_err)) != 0) {
        swap_next(v);
        char first[240];
        snprintf(first, sizeof(first), "%.239s", err->msg);
        return kf_err_set(err, r, "%s; with the rotation in progress: %.240s", first, next_err.msg);
    }
    swap_next(v); /* v describes the volume as stored, for what follows (rewrap) */
    return 0;
}

/* The coordinator says this volume's recovery key was revealed: LUKS2 gets a new one now, with
 * the key just released as the keyslot's authorisation; a ZFS dataset's is its key, rotated by
 * watch (its key loaded). Failures only log: the next contact asks again. */
static void replace_recovery(kfa_ctx *ctx, kfa_volume *v, const kf_secbuf *key)
{
    kf_err err = {0};
    const char *how = "";
    if (v->kind != KFA_VOL_LUKS2)
        kf_log_warn("recovery_key_revealed", "volume=%s hint=\"keyfleet-agent watch replaces it (rotating the dataset's "
                    "key) at its next heartbeat\"", kf_log_q(v->path));
    else if (kfa_recovery_add(ctx, v, key, false, &how, &err) == 0)
        kf_log_warn("recovery_key_replaced", "volume=%s id=%s reason=\"revealed to an operator\"", kf_log_q(v->path),
                    kf_log_q(v->id));
    else
        kf_log_error("recovery_replace_failed", "volume=%s error=%s hint=\"retried at the next contact\"",
                     kf_log_q(v->path), kf_log_q(err.msg));
}

static int unlock_with(kfa_ctx *ctx, kfa_volume *v, kf_err *err)
{
    int r;
    kf_released rel;
    if ((r = kfa_release(ctx, v, &rel, err)) != 0) {
        if (r == -EHOSTUNREACH && v->tpm_blob != NULL)
            return unlock_from_tpm(ctx, v, err->msg, err);
        return r;
    }
    ctx->reachable = true;
    if (rel.key_overdue)
        kf_log_warn("key_overdue", "volume=%s hint=\"older than the policy's max_key_age: keyfleet-agent rotate it\"",
                    kf_log_q(v->path));
    /* The rule was tightened after this volume was enrolled: its key is still the coordinator's
     * alone (the mode is fixed at enroll; docs/architecture.md). */
    if (rel.tpm_and_network && v->tpm_part == NULL)
        kf_log_warn("tpm_and_network_not_enrolled",
                    "volume=%s hint=\"its rule requires TPM and network, but it was enrolled with the coordinator's "
                    "key alone; the mode is fixed at enroll\"",
                    kf_log_q(v->path));
    /* A tpm_and_network volume: the released key is only the coordinator's part. */
    r = kfa_tpmnet_combine(ctx, v, &rel.key, err);
    if (r == 0)
        r = v->drv->unlock(ctx->cfg, v, rel.key, err);
    if (r == 0 && rel.rewrapped != NULL) {
        kf_err werr = {0};
        if (v->drv->store_wrapped(ctx->cfg, v, rel.rewrapped, &werr) == 0)
            kf_log_info("rewrapped", "volume=%s", kf_log_q(v->path));
        else
            kf_log_warn("rewrap_store_failed", "volume=%s error=%s", kf_log_q(v->path), kf_log_q(werr.msg));
    }
    if (r == 0) {
        char detail[128];
        snprintf(detail, sizeof(detail), "request=%s audit_seq=%llu", rel.request_id,
                 (unsigned long long)rel.audit_seq);
        kfa_state_record(ctx->cfg, v->id, "coordinator", detail);
        printf("%s %s: unlocked%s\n", v->drv->name, v->path,
               v->kind == KFA_VOL_LUKS2 && !ctx->cfg->luks_activate ? " (key verified; activation disabled)" : "");
    }
    /* Not while a rotation is staged (v may be swapped to it here; rotate first, then this). */
    if (r == 0 && rel.recovery_replace && v->wrapped_next == NULL)
        replace_recovery(ctx, v, rel.key);
    kf_released_clear(&rel);
    return r;
}

int kfa_cmd_unlock(kfa_ctx *ctx, int argc, char **argv, kfa_identity_job *job)
{
    int all = argc >= 2 && strcmp(argv[1], "--all") == 0;
    kfa_volume *vs = NULL;
    size_t n = 0;
    int rc = KFA_EXIT_USAGE;
    if (all && argc != 2)
        kfa_usage("unlock");
    else if (kfa_collect_volumes(ctx, all ? 0 : argc - 1, argv + 1, true, &vs, &n) == 0)
        rc = 0;
    /* The volumes' headers are read while the helper thread sets up TLS and connects. */
    kf_err *probe_err = rc == 0 ? calloc(n + 1, sizeof(*probe_err)) : NULL;
    int *probe_r = rc == 0 ? calloc(n + 1, sizeof(*probe_r)) : NULL;
    if (rc == 0 && (probe_err == NULL || probe_r == NULL))
        rc = KFA_EXIT_USAGE;
    for (size_t i = 0; rc == 0 && i < n; i++)
        probe_r[i] = vs[i].drv->probe(ctx->cfg, &vs[i], &probe_err[i]);
    if (job != NULL && kfa_await_identity(job) != 0)
        rc = KFA_EXIT_USAGE;
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        kf_err err = {0};
        if (rc == 0 && probe_r[i] != 0)
            fprintf(stderr, "keyfleet-agent: unlock: %s\n", probe_err[i].msg);
        else if (rc == 0 && unlock_one(ctx, &vs[i], &err) == 0)
            ok++;
        else if (rc == 0)
            fprintf(stderr, "keyfleet-agent: unlock: %s\n", err.msg);
        kfa_volume_clear(&vs[i]);
    }
    free(vs);
    free(probe_err);
    free(probe_r);
    if (rc != 0)
        return rc;
    if (ctx->reachable)
        kfa_report_offline(ctx);
    if (n == 0)
        fprintf(stderr, "keyfleet-agent: no volumes to unlock\n");
    return ok == n && n > 0 ? KFA_EXIT_ALL : ok == 0 ? KFA_EXIT_NONE : KFA_EXIT_SOME;
}
