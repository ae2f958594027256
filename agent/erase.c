/* Remote crypto-erase, the node's side (docs/operations.md, "Remote crypto-erase"): a heartbeat's
 * answer names volumes an approved `keyfleetctl node wipe` erases. Each is locked (mapping closed,
 * datasets unmounted and the key unloaded) and keyfleet's keyslots, tokens, properties and
 * TPM-sealed copies are destroyed; the operator's passphrases stay. The outcome is queued in the
 * state file and reported by the next heartbeat (HeartbeatRequest.erased). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "kf_log.h"

/* Erases v (probed, or its probe failed with probe_r); returns 0 or a negative errno, what says
 * what went or why not. */
static int erase_one(kfa_ctx *ctx, kfa_volume *v, int probe_r, bool all, char *what, size_t what_size)
{
    kf_err err = {0};
    bool changed = false;
    char lock_note[300] = "";
    /* Locked first: a key still loaded would outlive its keyslot. A volume in use is erased all
     * the same, and the report says it is still open. */
    if (probe_r == 0 && v->drv->lock(ctx->cfg, v, &changed, &err) != 0) {
        snprintf(lock_note, sizeof(lock_note), "; could not be locked, still open until reboot: %.200s", err.msg);
        kf_log_error("erase_lock_failed", "volume=%s error=%s", kf_log_q(v->path), kf_log_q(err.msg));
        err.msg[0] = '\0';
    }
    char done[200];
    int r = v->drv->erase(ctx->cfg, v, all, done, sizeof(done), &err);
    if (r != 0)
        snprintf(what, what_size, "%.480s", err.msg);
    else
        snprintf(what, what_size, "%s%s%.300s", done, changed ? "; locked" : "", lock_note);
    return r;
}

void kfa_erase_ordered(kfa_ctx *ctx, char *const *ids, size_t n_ids, char *const *all_ids, size_t n_all)
{
    kfa_volume *vs = NULL;
    size_t n = 0;
    if (kfa_collect_volumes(ctx, 0, NULL, false, &vs, &n) != 0)
        n = 0;
    int *probed = calloc(n + 1, sizeof(*probed));
    for (size_t k = 0; probed != NULL && k < n; k++) {
        kf_err err = {0};
        probed[k] = vs[k].drv->probe(ctx->cfg, &vs[k], &err);
    }
    for (size_t i = 0; i < n_ids; i++) {
        char what[512];
        int r = -ENOENT;
        snprintf(what, sizeof(what), "no volume with this id on the node");
        bool all = false;
        for (size_t a = 0; a < n_all && !all; a++)
            all = strcmp(all_ids[a], ids[i]) == 0;
        for (size_t k = 0; probed != NULL && k < n && r == -ENOENT; k++) {
            /* A malformed keyfleet token (-EBADMSG) is erased too: its LUKS UUID was read. */
            if ((probed[k] == 0 || probed[k] == -EBADMSG) && strcmp(vs[k].id, ids[i]) == 0) {
                r = erase_one(ctx, &vs[k], probed[k], all, what, sizeof(what));
                if (r == -ENOENT)
                    r = -EIO;
            }
        }
        if (r == 0) {
            kf_log_warn("volume_erased", "id=%s detail=%s", kf_log_q(ids[i]), kf_log_q(what));
            /* stderr: the command running the heartbeat (status --json) owns stdout */
            fprintf(stderr, "keyfleet-agent: %s: crypt-erased (%s)\n", ids[i], what);
        } else {
            kf_log_error("erase_failed", "id=%s error=%s", kf_log_q(ids[i]), kf_log_q(what));
            fprintf(stderr, "keyfleet-agent: erase of %s failed: %s\n", ids[i], what);
        }
        if (kfa_state_queue_erased(ctx->cfg, ids[i], r == 0, what) != 0)
            kf_log_warn("state_update_failed", "state_file=%s hint=\"the erase is reported after the next order\"",
                        kf_log_q(ctx->cfg->state_file));
    }
    for (size_t k = 0; k < n; k++)
        kfa_volume_clear(&vs[k]);
    free(vs);
    free(probed);
}
