/* Requests waiting for approval that reach their deadline are expired, with an audit record
 * each, by the leader (main's one-second tick calls kfd_approvals_expire). */
#include "core/approvals.h"

#include <string.h>
#include <time.h>

#include "cluster/replication.h"
#include "core/app.h"
#include "core/audit.h"
#include "kf_log.h"
#include "store/store_apply.h"
#include "store/store_read.h"

static void on_expired(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)arg, (void)res;
    if (status != 0)
        kf_log_warn("expiry_failed", "error=%s", kf_log_q(err->msg));
}

#define EXPIRE_BATCH 64

void kfd_approvals_expire(kfd_app *app)
{
    const char *why;
    char leader[8];
    if (kfd_store_failed(app->store) || !kfd_repl_writable(app->repl, &why, leader, sizeof(leader)))
        return; /* the leader expires them */
    static char ids[EXPIRE_BATCH][65];
    /* Copies of each request's strings, which the audit entries point at until the commit. */
    static char nodes[EXPIRE_BATCH][sizeof(((kfd_pending *)0)->node)];
    static char volumes[EXPIRE_BATCH][sizeof(((kfd_pending *)0)->volume_id)];
    size_t n = 0;
    if (kfd_store_expired_pending(app->store, time(NULL), ids, EXPIRE_BATCH, &n) != 0 || n == 0)
        return;
    kfd_audit_buf bufs[EXPIRE_BATCH];
    Keyfleet__V1__AuditEntry *audits[EXPIRE_BATCH];
    char *id_ptrs[EXPIRE_BATCH];
    for (size_t i = 0; i < n; i++) {
        kfd_pending p;
        if (kfd_store_get_pending(app->store, ids[i], &p) != 0)
            return;
        memcpy(nodes[i], p.node, sizeof(nodes[i]));
        memcpy(volumes[i], p.volume_id, sizeof(volumes[i]));
        kfd_audit_fill(&bufs[i], (kfd_actor){0}, "expire", KEYFLEET__V1__DECISION__DECISION_DENY, nodes[i],
                       volumes[i], ids[i], "no approval before the deadline");
        audits[i] = &bufs[i].entry;
        id_ptrs[i] = ids[i];
        kf_log_info("pending_expired", "request=%s node=%s", ids[i], p.node);
    }
    Keyfleet__V1__CmdExpirePending c = KEYFLEET__V1__CMD_EXPIRE_PENDING__INIT;
    c.n_request_ids = n;
    c.request_ids = id_ptrs;
    c.n_audits = n;
    c.audits = audits;
    Keyfleet__V1__StateCommand cmd = KEYFLEET__V1__STATE_COMMAND__INIT;
    cmd.cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_EXPIRE_PENDING;
    cmd.expire_pending = &c;
    kfd_commit(app, &cmd, on_expired, NULL);
}
