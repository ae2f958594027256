/* keyfleet-agent rewrap: each volume's key stored again under the newest KMS key. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "agent.h"
#include "boot.h"
#include "commands.h"

int kfa_cmd_rewrap(kfa_ctx *ctx, int argc, char **argv)
{
    (void)argv;
    if (argc != 1)
        return kfa_usage("rewrap");
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
            fprintf(stderr, "keyfleet-agent: rewrap: %s\n", err.msg);
        }
        kf_released_clear(&rel);
        kfa_volume_clear(&vs[i]);
    }
    free(vs);
    return ok == n ? KFA_EXIT_ALL : ok == 0 ? KFA_EXIT_NONE : KFA_EXIT_SOME;
}
