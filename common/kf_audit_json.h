/* An audit record as one JSON object: the line format of the file and syslog sinks, and what
 * `keyfleetctl audit verify --stream` reads back (docs/audit.md, "Sinks"). Every field the
 * canonical encoding covers is there, as are the hashes, so a copy verifies on its own. */
#ifndef KF_AUDIT_JSON_H
#define KF_AUDIT_JSON_H

#include <jansson.h>

#include "keyfleet/v1/admin.pb-c.h"

#define KF_AUDIT_STREAM_FORMAT "keyfleet-audit/2"

json_t *kf_audit_record_to_json(const Keyfleet__V1__AuditRecord *r);
/* Strict: every field present with its type; hashes in lowercase hex. 0 or -EINVAL. The record
 * is heap-allocated; free it with kf_audit_record_free. */
int kf_audit_record_from_json(const json_t *o, Keyfleet__V1__AuditRecord **ret);
void kf_audit_record_free(Keyfleet__V1__AuditRecord *r);

#endif
