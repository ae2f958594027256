/* Audit records as handlers and the core build them (audit.c): the entry, who acted, and the
 * rate-capped record of an authentication failure. The store chains and keeps them. */
#ifndef KFD_AUDIT_H
#define KFD_AUDIT_H

#include "keyfleet/v1/state.pb-c.h"
#include "kf_identity.h"

struct kfd_app;

/* Who acted. peer NULL: keyfleetd itself. source NULL: no request behind it (keyfleetd's own
 * records, and certificates refused during the TLS handshake). */
typedef struct kfd_actor {
    const kf_identity *peer;
    const char *auth; /* how peer was authenticated ("mtls" when NULL, "approle") */
    const char *source;
} kfd_actor;

/* An audit entry whose strings point at the arguments (no copies). */
typedef struct kfd_audit_buf {
    Keyfleet__V1__AuditEntry entry;
    Keyfleet__V1__Timestamp time;
    Keyfleet__V1__Principal actor;
} kfd_audit_buf;
void kfd_audit_fill(kfd_audit_buf *b, kfd_actor actor, const char *action, Keyfleet__V1__Decision decision,
                    const char *node, const char *volume_id, const char *request_id, const char *reason);
/* cmd (with c) as the state command that appends b's entry, ready for kfd_commit. */
void kfd_audit_command(kfd_audit_buf *b, Keyfleet__V1__CmdAppendAudit *c, Keyfleet__V1__StateCommand *cmd);

/* Audits an authentication failure (no identity, wrong caller kind, rejected certificate).
 * Capped at 10 records a second (burst 50) so a flood cannot fill the disk; the rest are
 * counted in metrics and logged. An actor without a source is a TLS-level failure: the record
 * names what the client presented. */
void kfd_audit_auth_failure(struct kfd_app *app, kfd_actor actor, const char *subject, const char *reason);

#endif
