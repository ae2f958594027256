#include "core/head_round.h"
#include "store/store_audit.h"

#include <string.h>

#include <openssl/crypto.h>

kfd_head_tag kfd_head_round_pass(kfd_head_round *r, uint64_t term, uint64_t round, unsigned voters,
                                 const kfd_audit_head *own)
{
    unsigned pass = r->tag.term == term && r->tag.round == round ? r->tag.pass + 1 : 1;
    r->tag = (kfd_head_tag){.term = term, .round = round, .pass = pass};
    r->own = *own;
    r->voters = voters;
    r->agree = 1; /* this leader */
    r->disagree = 0;
    return r->tag;
}

kfd_head_answer kfd_head_round_count(kfd_head_round *r, kfd_head_tag tag, const Keyfleet__V1__AuditHeadResponse *resp)
{
    /* A late answer from an earlier pass, round or term compares a head noted at another point of
     * the log with this one: it proves nothing about this leader. */
    if (tag.term != r->tag.term || tag.round != r->tag.round || tag.pass != r->tag.pass || r->tag.round == 0)
        return KFD_HEAD_IGNORED;
    if (resp == NULL || !resp->known || resp->diverged_seq != 0 || resp->restored)
        return KFD_HEAD_IGNORED;
    bool same = resp->seq == r->own.seq && resp->root.len == KFD_HASH_LEN && resp->chain.len == KFD_HASH_LEN &&
                CRYPTO_memcmp(resp->root.data, r->own.root, KFD_HASH_LEN) == 0 &&
                CRYPTO_memcmp(resp->chain.data, r->own.chain, KFD_HASH_LEN) == 0;
    /* The rest of the replicated state (review rev17, R2): a replica whose revocations, policy or
     * accepted PCR values were edited holds the same audit log but not the same state. Compared
     * only between replicas of one schema version (a rolling upgrade adds columns). */
    if (same && r->own.state_version != 0 && resp->state_version == r->own.state_version)
        same = resp->state.len == KFD_HASH_LEN && CRYPTO_memcmp(resp->state.data, r->own.state, KFD_HASH_LEN) == 0;
    if (same) {
        r->agree++;
        return KFD_HEAD_AGREES;
    }
    r->disagree++;
    return KFD_HEAD_DIFFERS;
}

kfd_head_verdict kfd_head_round_verdict(const kfd_head_round *r)
{
    unsigned majority = r->voters / 2 + 1;
    if (r->agree >= majority)
        return KFD_HEAD_CONFIRMED;
    if (r->disagree >= majority)
        return KFD_HEAD_OUTVOTED;
    return KFD_HEAD_UNDECIDED;
}
