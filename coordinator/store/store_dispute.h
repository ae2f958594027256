/* Disputes (review rev17c, C1): a replica whose audit head or replicated state differs from what
 * one other word says (the leader's checkpoint, its state check or signed state root; or a
 * commit by another process into this database while it runs) does not decide alone which side
 * was changed. It is disputed: it serves nothing (not ready, no writes, no key answered) until a
 * head round among the voters settles it (core/checkpoint.c): the side a majority holds is right,
 * the minority marks itself diverged. With no majority either way it stays disputed. */
#ifndef KFD_STORE_DISPUTE_H
#define KFD_STORE_DISPUTE_H

#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"
#include "store/store_audit.h"

/* Marks this replica disputed at seq (the first time only, not once diverged; logged
 * `audit_disputed`, counted). Its head is vouched for by nothing until settled. */
void kfd_store_set_disputed(kfd_store *s, uint64_t seq, const char *why);
/* Not 0 while disputed: the record where it showed; why says how. */
uint64_t kfd_store_audit_disputed(const kfd_store *s, const char **ret_why);
/* A majority of voters held this replica's head and state: the dispute is over (logged). */
void kfd_store_settle_dispute(kfd_store *s, const char *how);
/* The newest CmdAuditHeadCheck applied since the dispute began, and the head this replica noted
 * there: what it asks the voters about. 0, or -ENOENT (none yet, or not disputed). */
int kfd_store_dispute_check(const kfd_store *s, uint64_t *id, kfd_audit_head *own);
/* A voter reported that it is disputed (PeerService.AuditHead); the leader takes the report
 * once and runs a head round. */
void kfd_store_report_dispute(kfd_store *s);
bool kfd_store_take_dispute_report(kfd_store *s);
/* A majority of voters holds another head or state than this replica's at a head round: it
 * diverges (kfd_store_set_diverged), and says so to `audit verify` (kfd_store_verify_audit). */
void kfd_store_mark_outvoted(kfd_store *s, uint64_t seq, const char *why);
/* Disputes since it opened (metrics). */
uint64_t kfd_store_disputes_total(const kfd_store *s);
/* PRAGMA data_version: the baseline (at open), and the check at each apply: changed means another
 * connection (another process) committed into this database, which then is disputed. */
void kfd_store_data_version_reset(kfd_store *s);
/* The only voter (replication sets it before each apply): no majority to ask, so another process's
 * commit is logged (`store_foreign_write`) but disputes nothing; a lone coordinator cannot be told
 * apart from its own database (threat-model.md). */
void kfd_store_set_sole_voter(kfd_store *s, bool sole);
bool kfd_store_foreign_write(kfd_store *s);
/* Disputed or diverged (review rev17d, D1): a command this replica applied is recorded, but its
 * answer (a release's key, a login's token, a revealed recovery key...) is not sent: the decision
 * may rest on rows another process wrote, and the majority has not said otherwise. */
bool kfd_store_answers_withheld(const kfd_store *s);

#endif
