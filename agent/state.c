/* The agent's status file (JSON, no secrets): for each volume id, how and when it was last
 * unlocked. Written atomically. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "agent.h"
#include "state.h"
#include "kf_log.h"
#include "kf_node_check.h"

/* Every change to the file is a read-modify-write under an exclusive flock on STATE.lock: several
 * writers run at once at boot (one systemd-cryptsetup per volume loading the token plugin, the
 * agent, keyfleet-watch) and none may lose another's queued report. Written to a unique temp
 * file, then renamed over the old one. */
typedef struct state_tx {
    int lock_fd;
    json_t *root;
} state_tx;

static int state_begin(const kfa_config *cfg, state_tx *tx)
{
    tx->root = NULL;
    char *copy = strdup(cfg->state_file);
    if (copy != NULL) {
        mkdir(dirname(copy), 0700);
        free(copy);
    }
    char lock[4096];
    if ((size_t)snprintf(lock, sizeof(lock), "%s.lock", cfg->state_file) >= sizeof(lock))
        return -ENAMETOOLONG;
    tx->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (tx->lock_fd < 0)
        return -errno;
    while (flock(tx->lock_fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            int r = -errno;
            close(tx->lock_fd);
            return r;
        }
    }
    tx->root = json_load_file(cfg->state_file, 0, NULL);
    if (tx->root == NULL || !json_is_object(tx->root)) {
        json_decref(tx->root);
        tx->root = json_object();
    }
    return tx->root != NULL ? 0 : -ENOMEM;
}

/* Writes tx->root back when commit is true; always releases the lock. */
static int state_end(const kfa_config *cfg, state_tx *tx, bool commit)
{
    int r = 0;
    if (commit) {
        char tmp[4096];
        int fd = -1;
        if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", cfg->state_file) >= sizeof(tmp) ||
            (fd = mkstemp(tmp)) < 0)
            r = -EIO;
        else if (json_dumpfd(tx->root, fd, JSON_INDENT(1) | JSON_SORT_KEYS) != 0 || fsync(fd) != 0)
            r = -EIO;
        if (fd >= 0 && close(fd) != 0)
            r = -EIO;
        if (fd >= 0 && r == 0 && rename(tmp, cfg->state_file) != 0)
            r = -EIO;
        if (fd >= 0 && r != 0)
            unlink(tmp);
    }
    json_decref(tx->root);
    tx->root = NULL;
    close(tx->lock_fd); /* releases the flock */
    return r;
}

int kfa_state_record(const kfa_config *cfg, const char *volume_id, const char *method, const char *detail)
{
    state_tx tx;
    int r = state_begin(cfg, &tx);
    if (r != 0)
        return r;
    json_t *entry = json_pack("{s:s, s:s, s:I}", "method", method, "detail", detail != NULL ? detail : "", "at",
                              (json_int_t)time(NULL));
    bool ok = entry != NULL && json_object_set_new(tx.root, volume_id, entry) == 0;
    r = state_end(cfg, &tx, ok);
    return ok ? r : -ENOMEM;
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
    return kfa_state_queue_unlock(cfg, v, KEYFLEET__V1__OFFLINE_METHOD__OFFLINE_METHOD_TPM, reason);
}

int kfa_state_queue_unlock(const kfa_config *cfg, const kfa_volume *v, int method, const char *reason)
{
    /* A coordinator takes a volume name of at most 255 bytes (kf_check_volume_ref): a longer path
     * is cut, before a UTF-8 character it would split. */
    char name[256];
    size_t n = strlen(v->path);
    if (n > sizeof(name) - 1) {
        n = sizeof(name) - 1;
        while (n > 0 && ((unsigned char)v->path[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(name, v->path, n);
    name[n] = '\0';
    state_tx tx;
    int r = state_begin(cfg, &tx);
    if (r != 0)
        return r;
    json_t *q = json_object_get(tx.root, "offline_pending");
    if (!json_is_array(q)) {
        q = json_array();
        json_object_set_new(tx.root, "offline_pending", q);
    }
    bool ok = q != NULL &&
              json_array_append_new(q, json_pack("{s:s, s:i, s:s, s:I, s:s, s:i}", "volume_id", v->id, "kind",
                                                 v->kind == KFA_VOL_LUKS2 ? 1 : 2, "name", name, "at",
                                                 (json_int_t)time(NULL), "reason", reason, "method", method)) == 0;
    r = state_end(cfg, &tx, ok);
    return ok ? r : -ENOMEM;
}

void kfa_state_drop_reported(const kfa_config *cfg, const char *key, json_t *sent, size_t n)
{
    state_tx tx;
    if (state_begin(cfg, &tx) != 0) {
        kf_log_warn("state_update_failed", "state_file=%s hint=\"reported offline unlocks and locks stay queued\"",
                    kf_log_q(cfg->state_file));
        return;
    }
    json_t *q = json_object_get(tx.root, key);
    bool changed = false;
    for (size_t i = 0; i < n && json_is_array(q); i++) {
        json_t *done = json_array_get(sent, i);
        for (size_t k = 0; k < json_array_size(q); k++) {
            if (json_equal(json_array_get(q, k), done)) {
                json_array_remove(q, k);
                changed = true;
                break;
            }
        }
    }
    state_end(cfg, &tx, changed);
}

int kfa_state_reports_read(const char *path, kfa_state_reports *ret)
{
    memset(ret, 0, sizeof(*ret));
    json_t *root = ret->root = json_load_file(path, 0, NULL);
    json_t *q = ret->offline = root != NULL ? json_object_get(root, "offline_pending") : NULL;
    size_t n = json_is_array(q) ? json_array_size(q) : 0;
    if (n > KFA_STATE_OFFLINE_MAX) /* report the first ones */
        n = KFA_STATE_OFFLINE_MAX;
    json_t *dq = ret->dead_man = root != NULL ? json_object_get(root, "dead_man_pending") : NULL;
    size_t nd = json_is_array(dq) ? json_array_size(dq) : 0;
    if (nd > KFA_STATE_DEAD_MAN_MAX)
        nd = KFA_STATE_DEAD_MAN_MAX;
    ret->n_offline = n;
    ret->n_dead_man = nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *e = json_array_get(dq, i);
        keyfleet__v1__dead_man_lock__init(&ret->dls[i]);
        keyfleet__v1__timestamp__init(&ret->dats[i]);
        ret->dats[i].seconds = json_integer_value(json_object_get(e, "at"));
        ret->dls[i].at = &ret->dats[i];
        ret->dls[i].silent_s = (uint64_t)json_integer_value(json_object_get(e, "silent_s"));
        ret->dls[i].after_s = (uint64_t)json_integer_value(json_object_get(e, "after_s"));
        ret->dls[i].volumes_locked = (uint32_t)json_integer_value(json_object_get(e, "locked"));
        ret->dls[i].volumes_failed = (uint32_t)json_integer_value(json_object_get(e, "failed"));
        ret->dlp[i] = &ret->dls[i];
    }
    json_t *eq = ret->erased = root != NULL ? json_object_get(root, "erase_pending") : NULL;
    size_t ne = json_is_array(eq) ? json_array_size(eq) : 0;
    ret->n_erased = ne < KFA_STATE_ERASED_MAX ? ne : KFA_STATE_ERASED_MAX;
    for (size_t i = 0; i < ret->n_erased; i++) {
        json_t *e = json_array_get(eq, i);
        Keyfleet__V1__VolumeErased *x = &ret->ers[ret->n_erased_send];
        keyfleet__v1__volume_erased__init(x);
        keyfleet__v1__timestamp__init(&ret->erats[ret->n_erased_send]);
        ret->erats[ret->n_erased_send].seconds = json_integer_value(json_object_get(e, "at"));
        x->at = &ret->erats[ret->n_erased_send];
        x->volume_id = (char *)json_string_value(json_object_get(e, "volume_id"));
        x->detail = (char *)json_string_value(json_object_get(e, "detail"));
        x->ok = json_is_true(json_object_get(e, "ok"));
        if (x->volume_id == NULL)
            x->volume_id = (char *)"";
        if (x->detail == NULL)
            x->detail = (char *)"";
        const char *bad = kf_check_volume_erased(x);
        if (bad != NULL)
            kf_log_warn("state_report_dropped", "state_file=%s erase=%zu error=%s", kf_log_q(path), i, kf_log_q(bad));
        else
            ret->erp[ret->n_erased_send++] = x;
    }
    Keyfleet__V1__OfflineUnlock *items = ret->items = calloc(n + 1, sizeof(*items));
    Keyfleet__V1__OfflineUnlock **ptrs = ret->ptrs = calloc(n + 1, sizeof(*ptrs));
    Keyfleet__V1__VolumeRef *refs = ret->refs = calloc(n + 1, sizeof(*refs));
    Keyfleet__V1__Timestamp *ats = ret->ats = calloc(n + 1, sizeof(*ats));
    if (items == NULL || ptrs == NULL || refs == NULL || ats == NULL)
        return -ENOMEM;
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
        items[i].method = (Keyfleet__V1__OfflineMethod)json_integer_value(json_object_get(e, "method"));
        if (refs[i].id == NULL)
            refs[i].id = (char *)"";
        if (refs[i].name == NULL)
            refs[i].name = (char *)"";
        if (items[i].reason == NULL)
            items[i].reason = (char *)"";
        const char *bad = kf_check_offline_unlock(&items[i]);
        if (bad != NULL)
            kf_log_warn("state_report_dropped", "state_file=%s index=%zu error=%s", kf_log_q(path), i, kf_log_q(bad));
        else
            ptrs[ret->n_send++] = &items[i];
    }
    return 0;
}

void kfa_state_reports_free(kfa_state_reports *r)
{
    free(r->items);
    free(r->ptrs);
    free(r->refs);
    free(r->ats);
    json_decref(r->root);
    memset(r, 0, sizeof(*r));
}

void kfa_heartbeat_answer(kfa_ctx *ctx, const Keyfleet__V1__HeartbeatResponse *resp, bool quoted, bool *ret_lock)
{
    *ret_lock = resp->lock;
    if (quoted && !resp->attested)
        kf_log_warn("attest_heartbeat", "attested=no why=\"%.300s\"", resp->attestation);
    else if (quoted)
        kf_log_info("attest_heartbeat", "attested=yes");
    ctx->dead_man_after_s = resp->dead_man_after_s;
    for (size_t i = 0; i < ctx->n_recovery_replace; i++)
        free(ctx->recovery_replace[i]);
    ctx->n_recovery_replace = 0;
    for (size_t i = 0; i < resp->n_recovery_replace && i < 100; i++)
        if ((ctx->recovery_replace[ctx->n_recovery_replace] = strdup(resp->recovery_replace[i])) != NULL)
            ctx->n_recovery_replace++;
}

bool kfa_heartbeat_erase(kfa_ctx *ctx, const Keyfleet__V1__HeartbeatResponse *resp)
{
    /* Crypt-erase ordered (keyfleetctl node wipe): done now, reported by the next heartbeat. */
    if (resp->n_erase_volume_ids == 0 || ctx->erase == NULL)
        return false;
    kf_log_warn("erase_ordered", "volumes=%zu", resp->n_erase_volume_ids);
    ctx->erase(ctx, resp->erase_volume_ids, resp->n_erase_volume_ids, resp->erase_all_volume_ids,
               resp->n_erase_all_volume_ids);
    return true;
}

static int heartbeat_once(kfa_ctx *ctx, bool always, bool *ret_lock, bool *ret_erased, kf_err *err)
{
    *ret_lock = false;
    *ret_erased = false;
    kfa_state_reports s;
    int r = kfa_state_reports_read(ctx->cfg->state_file, &s);
    size_t n = s.n_offline, nd = s.n_dead_man, ne = s.n_erased;
    if (r == 0 && n == 0 && nd == 0 && ne == 0 && !always) {
        kfa_state_reports_free(&s);
        return 0;
    }
    r = r == 0 ? kfa_connect(ctx, err) : kf_err_set(err, -ENOMEM, "out of memory");
    if (r == 0) {
        Keyfleet__V1__HeartbeatRequest req = KEYFLEET__V1__HEARTBEAT_REQUEST__INIT;
        req.n_offline_unlocks = s.n_send;
        req.offline_unlocks = s.ptrs;
        req.agent_version = (char *)KF_VERSION;
        /* Watch mode re-attests with each heartbeat (docs/attestation.md); a quote the TPM
         * refuses is logged and the heartbeat goes without one. */
        kfa_quote quote;
        Keyfleet__V1__TpmQuote qmsg;
        kf_err qerr = {0};
        int qr = always ? kfa_attest_heartbeat(ctx, &quote, &qmsg, &qerr) : 1;
        if (qr == 0)
            req.attestation = &qmsg;
        else if (qr < 0)
            kf_log_warn("attest_heartbeat", "quoted=no error=\"%s\"", qerr.msg);
        req.n_dead_man_locks = nd;
        req.dead_man_locks = s.dlp;
        req.n_erased = s.n_erased_send;
        req.erased = s.erp;
        ProtobufCMessage *m = NULL;
        kf_rpc_status st;
        r = kf_rpc_call(ctx->client, "keyfleet.v1.NodeService/Heartbeat", &req.base,
                        &keyfleet__v1__heartbeat_response__descriptor, &m, &st, err);
        if (r == 0 && st.code != KF_CONNECT_OK)
            r = kf_err_set(err, st.code == KF_CONNECT_UNAUTHENTICATED ? -EACCES : -EPROTO, "heartbeat: %s: %s",
                           kf_connect_code_name(st.code), st.message);
        if (r == 0) {
            ctx->reachable = true;
            const Keyfleet__V1__HeartbeatResponse *resp = (const Keyfleet__V1__HeartbeatResponse *)m;
            kfa_heartbeat_answer(ctx, resp, req.attestation != NULL, ret_lock);
            if (n > 0) {
                kfa_state_drop_reported(ctx->cfg, "offline_pending", s.offline, n);
                kf_log_info("offline_unlocks_reported", "count=%zu", n);
            }
            if (nd > 0) {
                kfa_state_drop_reported(ctx->cfg, "dead_man_pending", s.dead_man, nd);
                kf_log_info("dead_man_locks_reported", "count=%zu", nd);
            }
            if (ne > 0) {
                kfa_state_drop_reported(ctx->cfg, "erase_pending", s.erased, ne);
                kf_log_info("erases_reported", "count=%zu", ne);
            }
            *ret_erased = kfa_heartbeat_erase(ctx, resp);
        }
        if (m != NULL)
            protobuf_c_message_free_unpacked(m, NULL);
    }
    kfa_state_reports_free(&s);
    return r;
}

int kfa_heartbeat(kfa_ctx *ctx, bool always, bool *ret_lock, kf_err *err)
{
    bool erased = false;
    int r = heartbeat_once(ctx, always, ret_lock, &erased, err);
    if (r == 0 && erased) { /* report the erase at once, not an interval later; once only */
        bool lock = false, again = false;
        kf_err e2 = {0};
        if (heartbeat_once(ctx, false, &lock, &again, &e2) != 0)
            kf_log_warn("erase_report_failed", "error=%s hint=\"the next heartbeat reports it\"", kf_log_q(e2.msg));
        *ret_lock = *ret_lock || lock;
    }
    return r;
}

int kfa_state_queue_erased(const kfa_config *cfg, const char *volume_id, bool ok, const char *detail)
{
    state_tx tx;
    int r = state_begin(cfg, &tx);
    if (r != 0)
        return r;
    json_t *failures = json_object_get(tx.root, "erase_failures");
    if (!json_is_object(failures)) {
        failures = json_object();
        json_object_set_new(tx.root, "erase_failures", failures);
    }
    const char *last = json_string_value(json_object_get(failures, volume_id));
    if (!ok && last != NULL && strcmp(last, detail) == 0)
        return state_end(cfg, &tx, false); /* the same failure was reported already */
    json_t *q = json_object_get(tx.root, "erase_pending");
    if (!json_is_array(q)) {
        q = json_array();
        json_object_set_new(tx.root, "erase_pending", q);
    }
    bool ok_write = failures != NULL && q != NULL && json_array_size(q) < KFA_STATE_ERASED_MAX &&
                    json_array_append_new(q, json_pack("{s:s, s:I, s:b, s:s}", "volume_id", volume_id, "at",
                                                       (json_int_t)time(NULL), "ok", ok, "detail", detail)) == 0;
    if (ok_write)
        ok_write = ok ? (json_object_del(failures, volume_id), true)
                      : json_object_set_new(failures, volume_id, json_string(detail)) == 0;
    r = state_end(cfg, &tx, ok_write);
    return ok_write ? r : -ENOMEM;
}

void kfa_report_offline(kfa_ctx *ctx)
{
    bool lock;
    kf_err err = {0};
    (void)kfa_heartbeat(ctx, false, &lock, &err); /* quiet: the next contact tries again */
}

void kfa_state_dead_man_read(const kfa_config *cfg, kfa_dead_man_state *ret)
{
    json_t *root = json_load_file(cfg->state_file, 0, NULL);
    json_t *d = root != NULL ? json_object_get(root, "dead_man") : NULL;
    json_int_t after = json_integer_value(json_object_get(d, "after_s"));
    json_int_t at = json_integer_value(json_object_get(d, "last_contact"));
    json_int_t locked = json_integer_value(json_object_get(d, "locked_at"));
    json_t *q = root != NULL ? json_object_get(root, "dead_man_pending") : NULL;
    ret->after_s = after > 0 ? (uint64_t)after : 0;
    ret->last_contact = at > 0 ? (int64_t)at : 0;
    ret->locked_at = locked > 0 ? (int64_t)locked : 0;
    ret->unreported = json_is_array(q) ? json_array_size(q) : 0;
    json_decref(root);
}

void kfa_state_dead_man_get(const kfa_config *cfg, uint64_t *ret_after_s, int64_t *ret_last_contact)
{
    kfa_dead_man_state s;
    kfa_state_dead_man_read(cfg, &s);
    *ret_after_s = s.after_s;
    *ret_last_contact = s.last_contact;
}

int kfa_state_dead_man_contact(const kfa_config *cfg, uint64_t after_s, int64_t at)
{
    state_tx tx;
    int r = state_begin(cfg, &tx);
    if (r != 0)
        return r;
    json_t *d = json_pack("{s:I, s:I}", "after_s", (json_int_t)after_s, "last_contact", (json_int_t)at);
    json_t *locked = json_object_get(json_object_get(tx.root, "dead_man"), "locked_at"); /* for status */
    if (d != NULL && json_is_integer(locked))
        json_object_set(d, "locked_at", locked);
    bool ok = d != NULL && json_object_set_new(tx.root, "dead_man", d) == 0;
    r = state_end(cfg, &tx, ok);
    return ok ? r : -ENOMEM;
}

int kfa_state_queue_dead_man(const kfa_config *cfg, int64_t at, uint64_t silent_s, uint64_t after_s, unsigned locked,
                             unsigned failed)
{
    state_tx tx;
    int r = state_begin(cfg, &tx);
    if (r != 0)
        return r;
    json_t *q = json_object_get(tx.root, "dead_man_pending");
    if (!json_is_array(q)) {
        q = json_array();
        json_object_set_new(tx.root, "dead_man_pending", q);
    }
    bool ok = q != NULL && json_array_size(q) < 100 && /* a node silent for months keeps the first 100 */
              json_array_append_new(q, json_pack("{s:I, s:I, s:I, s:i, s:i}", "at", (json_int_t)at, "silent_s",
                                                 (json_int_t)silent_s, "after_s", (json_int_t)after_s, "locked",
                                                 (int)locked, "failed", (int)failed)) == 0;
    /* The last lock, kept past its report for keyfleet-agent status. */
    json_t *d = json_object_get(tx.root, "dead_man");
    if (ok && json_is_object(d))
        ok = json_object_set_new(d, "locked_at", json_integer((json_int_t)at)) == 0;
    r = state_end(cfg, &tx, ok);
    return ok ? r : -ENOMEM;
}
