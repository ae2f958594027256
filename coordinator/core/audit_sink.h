/* Audit sinks (docs/audit.md, "Sinks"), as Vault's audit devices: every record this replica
 * applies, checkpoints included, with its seq and hashes, is written as one JSON line to an
 * append-only file (reopened on SIGHUP, for logrotate) and/or sent as an RFC 5424 message to a
 * syslog socket (journald, rsyslog). A sink marked required that cannot take a record fails the
 * command that wrote it, so no key goes out unrecorded there, and makes the replica not ready
 * until it takes the backlog again. Lines are written with write(2), not fsynced: the Raft log
 * is what makes records durable; the sinks are copies others keep. */
#ifndef KFD_AUDIT_SINK_H
#define KFD_AUDIT_SINK_H

#include <stdbool.h>
#include <stdint.h>

#include "config/audit_config.h"
#include "kf_err.h"
#include "store/store.h"

typedef struct kfd_sinks kfd_sinks;

/* Opens the configured sinks; records up to the store's current head count as streamed (a sink
 * added later starts there; `audit verify --stream` checks such a copy from its first record).
 * A sink that cannot be opened now is retried with each record. NULL *ret when none. */
int kfd_sinks_open(const kfd_audit_config *cfg, const char *name, kfd_store *store, kfd_sinks **ret, kf_err *err);
void kfd_sinks_free(kfd_sinks *k);
/* Reopens the files (SIGHUP, after logrotate moved them). */
void kfd_sinks_reopen(kfd_sinks *k);
/* Streams every record applied since the last call. -EIO with err when a required sink failed
 * (the records stay pending for it); optional sinks that fail are logged and skipped. */
int kfd_sinks_stream(kfd_sinks *k, kf_err *err);
/* False while a required sink has records it could not take. */
bool kfd_sinks_ok(const kfd_sinks *k, const char **ret_why);

#endif
