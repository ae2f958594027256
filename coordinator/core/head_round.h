/* The tally of one confirmation of a new leader's audit head (docs/audit.md, "A leader signs
 * only what a majority confirmed"): the voters' answers to PeerService.AuditHead about one
 * CmdAuditHeadCheck. Pure (no I/O), so its rules are unit-tested (tests/unit/test_head_round.c). */
#ifndef KFD_HEAD_ROUND_H
#define KFD_HEAD_ROUND_H

#include <stdbool.h>
#include <stdint.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "store/store.h"
#include "store/store_audit.h"

/* Which question an answer is for: the leader's term, the check's id, and the pass (each pass
 * asks every voter once). An answer with another tag is from an earlier question: ignored. */
typedef struct kfd_head_tag {
    uint64_t term, round;
    unsigned pass;
} kfd_head_tag;

typedef struct kfd_head_round {
    kfd_head_tag tag;
    kfd_audit_head own; /* this leader's head at the check */
    unsigned voters, agree, disagree;
} kfd_head_round;

typedef enum { KFD_HEAD_IGNORED, KFD_HEAD_AGREES, KFD_HEAD_DIFFERS } kfd_head_answer;
typedef enum { KFD_HEAD_UNDECIDED, KFD_HEAD_CONFIRMED, KFD_HEAD_OUTVOTED } kfd_head_verdict;

/* Starts a pass of the round (term, round) over this many voters: the counts start again, with
 * the leader agreeing with itself. Returns the tag its questions carry. */
kfd_head_tag kfd_head_round_pass(kfd_head_round *r, uint64_t term, uint64_t round, unsigned voters,
                                 const kfd_audit_head *own);
/* Counts one voter's answer (NULL: none) to the question tagged tag. Ignored: not for the current
 * pass, not known, from a replica whose own log diverged, or from one that is not a witness (it
 * installed a snapshot since it started, so its log is a copy: `restored`). */
kfd_head_answer kfd_head_round_count(kfd_head_round *r, kfd_head_tag tag, const Keyfleet__V1__AuditHeadResponse *resp);
/* CONFIRMED: a majority of voters (the leader included) hold its head. OUTVOTED: a majority hold
 * another one, so the leader's own log is the changed one. No single answer decides either, not
 * even one whose log is vouched for: a peer holding a coordinator key could claim anything. */
kfd_head_verdict kfd_head_round_verdict(const kfd_head_round *r);

#endif
