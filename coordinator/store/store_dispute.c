#include "store/store_dispute.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "kf_log.h"
#include "store/store_internal.h"

void kfd_store_set_disputed(kfd_store *s, uint64_t seq, const char *why)
{
    if (s->diverged_seq != 0 || s->disputed_seq != 0)
        return;
    s->disputed_seq = seq != 0 ? seq : 1;
    s->disputed_checks = s->check_count;
    s->disputes_total++;
    s->vouched = false; /* a new round decides; no shortcut through an earlier checkpoint */
    snprintf(s->disputed_why, sizeof(s->disputed_why), "%s", why);
    kf_log_error("audit_disputed", "seq=%llu reason=%s action=\"serving nothing until a majority of voters "
                 "settles it (a head round)\"", (unsigned long long)s->disputed_seq, kf_log_q(why));
}

uint64_t kfd_store_audit_disputed(const kfd_store *s, const char **ret_why)
{
    if (ret_why != NULL)
        *ret_why = s->disputed_why;
    return s->diverged_seq == 0 ? s->disputed_seq : 0;
}

void kfd_store_settle_dispute(kfd_store *s, const char *how)
{
    if (s->disputed_seq == 0 || s->diverged_seq != 0)
        return;
    /* Review rev17d, D2: the majority may hold the same state (the write changed nothing, or the
     * command it let through was applied everywhere). Once, that settles it (someone ran sqlite3
     * against the live file). Again, it does not: settled each time, a writer committing again and
     * again would keep it leading and withholding every answer (one database, the whole cluster
     * down). It diverges instead: only this replica is lost. */
    if (s->foreign_writes > 1) {
        kfd_store_mark_outvoted(s, s->disputed_seq, "another process committed into this replica's database "
                                "again while it ran; its voters hold the same head and state, but its tables are "
                                "not keyfleetd's alone");
        return;
    }
    kf_log_info("audit_dispute_settled", "seq=%llu how=%s reason=%s", (unsigned long long)s->disputed_seq, how,
                kf_log_q(s->disputed_why));
    s->disputed_seq = 0;
    s->disputed_why[0] = '\0';
}

int kfd_store_dispute_check(const kfd_store *s, uint64_t *id, kfd_audit_head *own)
{
    if (s->disputed_seq == 0 || s->check_count <= s->disputed_checks || s->check_id == 0)
        return -ENOENT;
    *id = s->check_id;
    *own = s->check_head;
    return 0;
}

void kfd_store_report_dispute(kfd_store *s) { s->dispute_reported = true; }

bool kfd_store_take_dispute_report(kfd_store *s)
{
    bool r = s->dispute_reported;
    s->dispute_reported = false;
    return r;
}

void kfd_store_mark_outvoted(kfd_store *s, uint64_t seq, const char *why)
{
    if (s->diverged_seq == 0)
        s->outvoted = true;
    kfd_store_set_diverged(s, seq, why);
}

uint64_t kfd_store_disputes_total(const kfd_store *s) { return s->disputes_total; }

static int64_t data_version(kfd_store *s)
{
    sqlite3_stmt *st = s->st[ST_DATA_VERSION];
    int64_t v = st != NULL && sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    if (st != NULL)
        sqlite3_reset(st);
    return v;
}

void kfd_store_set_sole_voter(kfd_store *s, bool sole) { s->sole_voter = sole; }

void kfd_store_data_version_reset(kfd_store *s) { s->data_version = data_version(s); }

bool kfd_store_foreign_write(kfd_store *s)
{
    int64_t v = data_version(s);
    if (v < 0 || v == s->data_version)
        return false;
    s->data_version = v;
    if (s->sole_voter) {
        kf_log_warn("store_foreign_write", "reason=\"another process committed into this database while it ran\" "
                    "action=\"none: the only voter has no majority to ask\"");
        return true;
    }
    s->foreign_writes++; /* a second one is settled by nothing: the round makes it diverge (D2) */
    kfd_store_set_disputed(s, s->head_seq + 1, "another process committed into this replica's database while it "
                           "ran");
    return true;
}

bool kfd_store_answers_withheld(const kfd_store *s) { return s->disputed_seq != 0 || s->diverged_seq != 0; }
