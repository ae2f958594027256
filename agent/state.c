/* The agent's status file (JSON, no secrets): for each volume id, how and when it was last
 * unlocked. Written atomically. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "agent.h"
#include "kf_log.h"

int kfa_state_record(const kfa_config *cfg, const char *volume_id, const char *method, const char *detail)
{
    json_t *root = json_load_file(cfg->state_file, 0, NULL);
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        root = json_object();
    }
    json_t *entry = json_pack("{s:s, s:s, s:I}", "method", method, "detail", detail != NULL ? detail : "", "at",
                              (json_int_t)time(NULL));
    json_object_set_new(root, volume_id, entry);
    char *copy = strdup(cfg->state_file);
    if (copy != NULL) {
        mkdir(dirname(copy), 0755);
        free(copy);
    }
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", cfg->state_file);
    int r = json_dump_file(root, tmp, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(root);
    if (r != 0 || rename(tmp, cfg->state_file) != 0)
        return -EIO;
    return 0;
}

void kfa_state_lookup(const kfa_config *cfg, const char *volume_id, char *method, size_t msize, int64_t *at)
{
    method[0] = '\0';
    *at = 0;
    json_t *root = json_load_file(cfg->state_file, 0, NULL);
    json_t *e = root != NULL ? json_object_get(root, volume_id) : NULL;
    const char *m = NULL;
    json_int_t t = 0;
    if (e != NULL && json_unpack(e, "{s:s, s:I}", "method", &m, "at", &t) == 0) {
        snprintf(method, msize, "%s", m);
        *at = t;
    }
    json_decref(root);
}

int kfa_state_queue_offline(const kfa_config *cfg, const kfa_volume *v, const char *reason)
{
    json_t *root = json_load_file(cfg->state_file, 0, NULL);
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        root = json_object();
    }
    json_t *q = json_object_get(root, "offline_pending");
    if (!json_is_array(q)) {
        q = json_array();
        json_object_set_new(root, "offline_pending", q);
    }
    json_array_append_new(q, json_pack("{s:s, s:i, s:s, s:I, s:s}", "volume_id", v->id, "kind",
                                       v->kind == KFA_VOL_LUKS2 ? 1 : 2, "name", v->path, "at", (json_int_t)time(NULL),
                                       "reason", reason));
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", cfg->state_file);
    int r = json_dump_file(root, tmp, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(root);
    return r == 0 && rename(tmp, cfg->state_file) == 0 ? 0 : -EIO;
}

/* Removes the first n elements of a JSON array. */
static void drop_first(json_t *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        json_array_remove(a, 0);
}

int kfa_heartbeat(kfa_ctx *ctx, bool always, bool *ret_lock, kf_err *err)
{
    *ret_lock = false;
    json_t *root = json_load_file(ctx->cfg->state_file, 0, NULL);
    json_t *q = root != NULL ? json_object_get(root, "offline_pending") : NULL;
    size_t n = json_is_array(q) ? json_array_size(q) : 0;
    if (n > 1000) /* the coordinator takes at most 1000 at a time; report the first ones */
        n = 1000;
    if (n == 0 && !always) {
        json_decref(root);
        return 0;
    }
    Keyfleet__V1__OfflineUnlock *items = calloc(n + 1, sizeof(*items));
    Keyfleet__V1__OfflineUnlock **ptrs = calloc(n + 1, sizeof(*ptrs));
    Keyfleet__V1__VolumeRef *refs = calloc(n + 1, sizeof(*refs));
    Keyfleet__V1__Timestamp *ats = calloc(n + 1, sizeof(*ats));
    int r = items != NULL && ptrs != NULL && refs != NULL && ats != NULL ? kfa_connect(ctx, err)
                                                                        : kf_err_set(err, -ENOMEM, "out of memory");
    if (r == 0) {
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(q, i);
            keyfleet__v1__offline_unlock__init(&items[i]);
            keyfleet__v1__volume_ref__init(&refs[i]);
            keyfleet__v1__timestamp__init(&ats[i]);
            refs[i].id = (char *)json_string_value(json_object_get(e, "volume_id"));
            refs[i].kind = (Keyfleet__V1__VolumeKind)json_integer_value(json_object_get(e, "kind"));
            refs[i].name = (char *)json_string_value(json_object_get(e, "name"));
            ats[i].seconds = json_integer_value(json_object_get(e, "at"));
            items[i].volume = &refs[i];
            items[i].at = &ats[i];
            items[i].reason = (char *)json_string_value(json_object_get(e, "reason"));
            if (refs[i].id == NULL)
                refs[i].id = (char *)"";
            if (refs[i].name == NULL)
                refs[i].name = (char *)"";
            if (items[i].reason == NULL)
                items[i].reason = (char *)"";
            ptrs[i] = &items[i];
        }
        Keyfleet__V1__HeartbeatRequest req = KEYFLEET__V1__HEARTBEAT_REQUEST__INIT;
        req.n_offline_unlocks = n;
        req.offline_unlocks = ptrs;
        req.agent_version = (char *)KF_VERSION;
        ProtobufCMessage *m = NULL;
        kf_rpc_status st;
        r = kf_rpc_call(ctx->client, "keyfleet.v1.NodeService/Heartbeat", &req.base,
                        &keyfleet__v1__heartbeat_response__descriptor, &m, &st, err);
        if (r == 0 && st.code != KF_CONNECT_OK)
            r = kf_err_set(err, st.code == KF_CONNECT_UNAUTHENTICATED ? -EACCES : -EPROTO, "heartbeat: %s: %s",
                           kf_connect_code_name(st.code), st.message);
        if (r == 0) {
            ctx->reachable = true;
            *ret_lock = ((Keyfleet__V1__HeartbeatResponse *)m)->lock;
            if (n > 0) {
                drop_first(q, n);
                char tmp[4096];
                snprintf(tmp, sizeof(tmp), "%s.tmp", ctx->cfg->state_file);
                if (json_dump_file(root, tmp, JSON_INDENT(1) | JSON_SORT_KEYS) == 0)
                    rename(tmp, ctx->cfg->state_file);
                kf_log_info("offline_unlocks_reported", "count=%zu", n);
            }
        }
        if (m != NULL)
            protobuf_c_message_free_unpacked(m, NULL);
    }
    free(items);
    free(ptrs);
    free(refs);
    free(ats);
    json_decref(root);
    return r;
}

void kfa_report_offline(kfa_ctx *ctx)
{
    bool lock;
    kf_err err = {0};
    (void)kfa_heartbeat(ctx, false, &lock, &err); /* quiet: the next contact tries again */
}
