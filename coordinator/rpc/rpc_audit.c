#include "rpc/rpc_audit.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/app.h"
#include "kf_audit.h"
#include "kf_cleanup.h"
#include "kf_connect.h"
#include "rpc/rpc_admin.h"
#include "store/store_audit.h"
#include "store/store_dispute.h"
#include "rpc/rpc_check.h"

/* The checkpoint record of size (0: the newest) and the size it signed; answers on failure. */
static Keyfleet__V1__AuditRecord *checkpoint_of(kfd_call *call, uint64_t size, uint64_t *ret_size)
{
    Keyfleet__V1__AuditRecord *cp = NULL;
    int r = kfd_store_get_checkpoint(kfd_call_app(call)->store, size, &cp);
    if (r == -ENOENT) {
        if (size == 0)
            kfd_call_error(call, KF_CONNECT_NOT_FOUND, "no signed checkpoint yet");
        else
            kfd_call_error(call, KF_CONNECT_NOT_FOUND, "no checkpoint signs tree size %llu", (unsigned long long)size);
        return NULL;
    }
    if (r != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return NULL;
    }
    kf_checkpoint parsed;
    kf_err err = {0};
    if (kf_checkpoint_parse(cp->reason, strlen(cp->reason), &parsed, &err) != 0) {
        kfd_call_error(call, KF_CONNECT_INTERNAL, "checkpoint record %llu: %s", (unsigned long long)cp->seq, err.msg);
        kfd_audit_free_record(cp);
        return NULL;
    }
    *ret_size = parsed.size;
    return cp;
}

void kfd_rpc_get_checkpoint(kfd_call *call)
{
    const Keyfleet__V1__GetCheckpointRequest *req = (const Keyfleet__V1__GetCheckpointRequest *)call->request;
    if (!kfd_rpc_store_ok(call))
        return;
    uint64_t size;
    Keyfleet__V1__AuditRecord *cp = checkpoint_of(call, req->tree_size, &size);
    if (cp == NULL)
        return;
    Keyfleet__V1__GetCheckpointResponse resp = KEYFLEET__V1__GET_CHECKPOINT_RESPONSE__INIT;
    resp.checkpoint = cp;
    kfd_call_reply(call, &resp.base);
    kfd_audit_free_record(cp);
}

void kfd_rpc_audit_head(kfd_call *call)
{
    const Keyfleet__V1__AuditHeadRequest *req = (const Keyfleet__V1__AuditHeadRequest *)call->request;
    if (!kfd_rpc_store_ok(call))
        return;
    kfd_store *store = kfd_call_app(call)->store;
    Keyfleet__V1__AuditHeadResponse resp = KEYFLEET__V1__AUDIT_HEAD_RESPONSE__INIT;
    kfd_audit_head h;
    if (kfd_store_audit_head_at_check(store, req->check_id, &h) == 0) {
        resp.known = true;
        resp.seq = h.seq;
        resp.root.data = h.root;
        resp.root.len = sizeof(h.root);
        resp.chain.data = h.chain;
        resp.chain.len = sizeof(h.chain);
        if (h.state_version != 0) {
            resp.state.data = h.state;
            resp.state.len = sizeof(h.state);
            resp.state_version = h.state_version;
        }
    }
    resp.diverged_seq = kfd_store_audit_diverged(store, NULL);
    /* A disputed voter asks for a round (review rev17c, C1); only a leader acts on it, and a round
     * decides nothing by the asker's word: every voter's note at the new check is counted. */
    if (req->disputed)
        kfd_store_report_dispute(store);
    resp.vouched = kfd_store_audit_vouched(store);
    resp.restored = !kfd_store_audit_witness(store);
    kfd_call_reply(call, &resp.base);
}

/* For KF_CLEANUP: the records a handler read, freed on every way out. */
static void free_recordp(Keyfleet__V1__AuditRecord **r)
{
    kfd_audit_free_record(*r);
}

typedef struct records {
    Keyfleet__V1__AuditRecord **v;
    size_t n;
} records;

static void free_records(records *r)
{
    kfd_store_free_records(r->v, r->n);
}

/* The leaves of the first size records, or an answer. */
static kf_merkle_hash *leaves_of(kfd_call *call, uint64_t size)
{
    kf_merkle_hash *leaves = NULL;
    int r = kfd_store_audit_leaves(kfd_call_app(call)->store, size, &leaves);
    if (r == -ENOMEM)
        kfd_call_error(call, KF_CONNECT_RESOURCE_EXHAUSTED, "out of memory");
    else if (r != 0)
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "audit log unreadable up to record %llu", (unsigned long long)size);
    return leaves;
}

void kfd_rpc_prove_audit(kfd_call *call)
{
    const Keyfleet__V1__ProveAuditRequest *req = (const Keyfleet__V1__ProveAuditRequest *)call->request;
    const char *bad = kfd_check_prove_audit(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    uint64_t size;
    KF_CLEANUP(free_recordp) Keyfleet__V1__AuditRecord *cp = checkpoint_of(call, req->tree_size, &size);
    if (cp == NULL)
        return;
    kfd_store *s = kfd_call_app(call)->store;
    KF_CLEANUP(free_records) records recs = {0};
    if (kfd_store_records_of_request(s, req->request_id, size, &recs.v, &recs.n) != 0) {
        kfd_call_error(call, KF_CONNECT_UNAVAILABLE, "state store unavailable");
        return;
    }
    size_t n = recs.n;
    if (n == 0) {
        kfd_call_error(call, KF_CONNECT_NOT_FOUND,
                       "no record of request %s among the %llu records checkpoint %llu signed (a newer one comes "
                       "within a second)",
                       req->request_id, (unsigned long long)size, (unsigned long long)cp->seq);
        return;
    }
    KF_CLEANUP(kf_freep) kf_merkle_hash *leaves = leaves_of(call, size);
    if (leaves == NULL)
        return;
    Keyfleet__V1__AuditInclusion incl[KFD_PROOF_RECORDS_MAX], *incl_ptrs[KFD_PROOF_RECORDS_MAX];
    kf_merkle_hash paths[KFD_PROOF_RECORDS_MAX][KF_MERKLE_MAX_PROOF];
    ProtobufCBinaryData bins[KFD_PROOF_RECORDS_MAX][KF_MERKLE_MAX_PROOF];
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        kf_merkle_inclusion_proof(leaves, size, recs.v[i]->seq - 1, paths[i], &len);
        keyfleet__v1__audit_inclusion__init(&incl[i]);
        incl[i].record = recs.v[i];
        for (size_t j = 0; j < len; j++)
            bins[i][j] = (ProtobufCBinaryData){.len = KF_MERKLE_HASH, .data = paths[i][j]};
        incl[i].path = bins[i];
        incl[i].n_path = len;
        incl_ptrs[i] = &incl[i];
    }
    Keyfleet__V1__ProveAuditResponse resp = KEYFLEET__V1__PROVE_AUDIT_RESPONSE__INIT;
    resp.checkpoint = cp;
    resp.proofs = incl_ptrs;
    resp.n_proofs = n;
    kfd_call_reply(call, &resp.base);
}

void kfd_rpc_prove_consistency(kfd_call *call)
{
    const Keyfleet__V1__ProveConsistencyRequest *req = (const Keyfleet__V1__ProveConsistencyRequest *)call->request;
    const char *bad = kfd_check_prove_consistency(req);
    if (bad != NULL) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "%s", bad);
        return;
    }
    if (!kfd_rpc_store_ok(call))
        return;
    uint64_t size;
    KF_CLEANUP(free_recordp) Keyfleet__V1__AuditRecord *cp = checkpoint_of(call, req->new_size, &size);
    if (cp == NULL)
        return;
    if (req->old_size > size) {
        kfd_call_error(call, KF_CONNECT_INVALID_ARGUMENT, "old_size must be 1..%llu (the newer checkpoint's size)",
                       (unsigned long long)size);
        return;
    }
    KF_CLEANUP(kf_freep) kf_merkle_hash *leaves = leaves_of(call, size);
    if (leaves == NULL)
        return;
    kf_merkle_hash path[KF_MERKLE_MAX_PROOF];
    ProtobufCBinaryData bins[KF_MERKLE_MAX_PROOF];
    size_t len = 0;
    kf_merkle_consistency_proof(leaves, size, req->old_size, path, &len);
    for (size_t j = 0; j < len; j++)
        bins[j] = (ProtobufCBinaryData){.len = KF_MERKLE_HASH, .data = path[j]};
    Keyfleet__V1__ProveConsistencyResponse resp = KEYFLEET__V1__PROVE_CONSISTENCY_RESPONSE__INIT;
    resp.new_checkpoint = cp;
    resp.path = bins;
    resp.n_path = len;
    kfd_call_reply(call, &resp.base);
}
