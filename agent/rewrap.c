/* keyfleet-agent rewrap: each volume's key stored again under the newest KMS key. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "boot.h"
#include "commands.h"

int kfa_cmd_rewrap(kfa_ctx *ctx, int argc, char **argv)
{
    bool wait = argc == 2 && strcmp(argv[1], "--wait") == 0;
    if (argc != 1 && !wait)
        return kfa_usage("rewrap");
    /* Rewrapping is housekeeping: unless told to wait, a volume held for approval is said at
     * once, and no pending request is left for operators to find (docs/agent.md). */
    ctx->no_pending = !wait;
    kfa_volume *vs = NULL;
    size_t n = 0, ok = 0;
    if (kfa_collect_volumes(ctx, 0, NULL, false, &vs, &n) != 0)
        return KFA_EXIT_USAGE;
    for (size_t i = 0; i < n; i++) {
        kf_err err = {0};
        kf_released rel = {0};
        int r = vs[i].drv->probe(ctx->cfg, &vs[i], &err);
        if (r == 0 && vs[i].wrapped == NULL)
            r = kf_err_set(&err, -ENOENT, "%s is not enrolled", vs[i].path);
        if (r == 0)
            r = kfa_release(ctx, &vs[i], &rel, &err);
        if (r == 0 && rel.rewrapped != NULL)
            r = vs[i].drv->store_wrapped(ctx->cfg, &vs[i], rel.rewrapped, &err);
        if (r == 0) {
            printf("%s %s: %s\n", vs[i].drv->name, vs[i].path, rel.rewrapped != NULL ? "rewrapped" : "already current");
            ok++;
        } else {
            /* The coordinator's refusal says "needs N approval(s) ... no request was made". */
            bool held = ctx->no_pending && strstr(err.msg, "no request was made") != NULL;
            fprintf(stderr, "keyfleet-agent: rewrap: %s%s\n", err.msg,
                    held ? "\n  run keyfleet-agent rewrap --wait to ask for the approval and wait for it; the next "
                           "unlock stores the rewrapped key too"
                         : "");
        }
        kf_released_clear(&rel);
        kfa_volume_clear(&vs[i]);
    }
    free(vs);
    return ok == n ? KFA_EXIT_ALL : ok == 0 ? KFA_EXIT_NONE : KFA_EXIT_SOME;
}
