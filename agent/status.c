/* keyfleet-agent status: each volume's key status and last unlock, whether a coordinator
 * answers, and whether it reports this node revoked. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "agent.h"
#include "boot.h"
#include "commands.h"

int kfa_cmd_status(kfa_ctx *ctx, int argc, char **argv)
{
    int json = argc == 2 && strcmp(argv[1], "--json") == 0;
    if (argc > 1 + json)
        return kfa_usage("status");
    kfa_volume *vs = NULL;
    size_t n = 0;
    if (kfa_collect_volumes(ctx, 0, NULL, false, &vs, &n) != 0)
        return KFA_EXIT_USAGE;
    kf_err err = {0};
    long http = 0;
    char *body = NULL;
    bool reachable = kfa_connect(ctx, &err) == 0 && kf_rpc_get(ctx->client, "/healthz", &http, &body, &err) == 0 &&
                     http == 200;
    free(body);
    /* A heartbeat (it also reports offline unlocks): a revoked node is told to lock. */
    bool revoked = false;
    kf_err herr = {0};
    if (reachable && kfa_heartbeat(ctx, true, &revoked, &herr) != 0)
        revoked = false;
    else if (reachable && !revoked) /* an answer, unless it says revoked, is a contact (rev19 F1) */
        (void)kfa_state_dead_man_contact(ctx->cfg, ctx->dead_man_after_s, time(NULL));
    json_t *arr = json_array();
    if (!json) {
        printf("coordinators: %s%s\n", reachable ? "reachable" : "unreachable",
               revoked ? "; this node is REVOKED: coordinators release no keys to it (keyfleetctl node unrevoke)" : "");
        kfa_dead_man_status(ctx->cfg, NULL);
        printf("%-6s %-38s %-28s %-12s %-12s %s\n", "KIND", "ID", "NAME", "KEY", "LAST-UNLOCK", "WHEN");
    }
    for (size_t i = 0; i < n; i++) {
        kfa_volume *v = &vs[i];
        kf_err perr = {0};
        int r = v->drv->probe(ctx->cfg, v, &perr);
        const char *key = r != 0 ? "error" : v->wrapped == NULL ? "not-enrolled" : v->unlocked ? "unlocked" : "locked";
        char method[32], when[32] = "-";
        int64_t at = 0;
        kfa_state_lookup(ctx->cfg, v->id, method, sizeof(method), &at);
        if (at > 0) {
            time_t t = (time_t)at;
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        }
        if (json)
            json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "kind", v->drv->name, "id", v->id,
                                                 "name", v->path, "key", key, "last_unlock", method, "when", when));
        else
            printf("%-6s %-38s %-28s %-12s %-12s %s\n", v->drv->name, v->id[0] ? v->id : "-", v->path, key,
                   method[0] ? method : "-", when);
        kfa_volume_clear(v);
    }
    if (json) {
        json_t *o = json_pack("{s:b, s:b, s:o}", "coordinators_reachable", reachable, "node_revoked", revoked,
                              "volumes", arr);
        if (o != NULL)
            kfa_dead_man_status(ctx->cfg, o);
        char *s = json_dumps(o, JSON_COMPACT);
        printf("%s\n", s != NULL ? s : "{}");
        free(s);
        json_decref(o);
    } else {
        json_decref(arr);
    }
    free(vs);
    return 0;
}
