#include "core/audit.h"

#include <errno.h>
#include <time.h>

#include "core/app.h"
#include "core/ratelimit.h"
#include "kf_log.h"
#include "kf_time.h"
#include "store/store_apply.h"

void kfd_audit_fill(kfd_audit_buf *b, kfd_actor actor, const char *action, Keyfleet__V1__Decision decision,
                    const char *node, const char *volume_id, const char *request_id, const char *reason)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    keyfleet__v1__audit_entry__init(&b->entry);
    keyfleet__v1__timestamp__init(&b->time);
    keyfleet__v1__principal__init(&b->actor);
    b->time.seconds = now.tv_sec;
    b->time.nanos = (int32_t)now.tv_nsec;
    if (actor.peer != NULL) {
        b->actor.kind = (Keyfleet__V1__PrincipalKind)actor.peer->kind;
        b->actor.name = (char *)actor.peer->name;
        b->actor.auth = (char *)(actor.auth != NULL ? actor.auth : "mtls");
    } else {
        b->actor.kind = KEYFLEET__V1__PRINCIPAL_KIND__PRINCIPAL_KIND_COORDINATOR;
        b->actor.name = (char *)"keyfleetd";
        b->actor.auth = (char *)"internal";
    }
    b->entry.time = &b->time;
    b->entry.actor = &b->actor;
    b->entry.action = (char *)action;
    b->entry.decision = decision;
    b->entry.node = (char *)(node != NULL ? node : "");
    b->entry.volume_id = (char *)(volume_id != NULL ? volume_id : "");
    b->entry.request_id = (char *)(request_id != NULL ? request_id : "");
    b->entry.reason = (char *)(reason != NULL ? reason : "");
    b->entry.source_address = (char *)(actor.source != NULL ? actor.source : "");
}

void kfd_audit_command(kfd_audit_buf *b, Keyfleet__V1__CmdAppendAudit *c, Keyfleet__V1__StateCommand *cmd)
{
    keyfleet__v1__cmd_append_audit__init(c);
    c->audit = &b->entry;
    keyfleet__v1__state_command__init(cmd);
    cmd->cmd_case = KEYFLEET__V1__STATE_COMMAND__CMD_APPEND_AUDIT;
    cmd->append_audit = c;
}

static void on_auth_audit(void *arg, int status, const kfd_apply_result *res, const kf_err *err)
{
    (void)arg, (void)res;
    if (status != 0 && status != -EAGAIN) /* -EAGAIN: not writable here, logged as auth_fail_unaudited */
        kf_log_warn("auth_audit_failed", "error=%s", kf_log_q(err->msg));
}

void kfd_audit_auth_failure(kfd_app *app, kfd_actor actor, const char *subject, const char *reason)
{
    uint64_t now = kf_monotonic_ms();
    if (app == NULL || app->store == NULL || kfd_store_failed(app->store) ||
        kfd_ratelimit_take(app->ratelimit, " auth-failures", 600, 50, now) != 0)
        return;
    const char *why;
    char leader[280];
    if (!kfd_repl_writable(app->repl, &why, leader, sizeof(leader)))
        /* Not the leader, or one whose audit head is not confirmed yet, which appends nothing
         * (kfd_commit refuses): the failure is only logged here and counted. */
        kf_log_warn("auth_fail_unaudited", "subject=%s reason=%s why=%s", kf_log_q(subject), kf_log_q(reason),
                    kf_log_q(why));
    kfd_audit_buf a;
    kfd_audit_fill(&a, actor, "auth_fail", KEYFLEET__V1__DECISION__DECISION_DENY, subject, "", "", reason);
    if (actor.source == NULL) {
        /* Refused during the TLS handshake: there is no verified actor, only what it presented. */
        a.actor.kind = KEYFLEET__V1__PRINCIPAL_KIND__PRINCIPAL_KIND_UNSPECIFIED;
        a.actor.name = (char *)subject;
        a.actor.auth = (char *)"tls";
    }
    Keyfleet__V1__CmdAppendAudit c;
    Keyfleet__V1__StateCommand cmd;
    kfd_audit_command(&a, &c, &cmd);
    kfd_commit(app, &cmd, on_auth_audit, NULL);
}
