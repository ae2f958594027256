/* Release policy: YAML rules, first match wins, deny by default, evaluated without I/O.
 * Reference and examples: docs/policy.md. */
#ifndef KFD_POLICY_H
#define KFD_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "kf_err.h"

typedef struct kfd_policy kfd_policy;

typedef struct kfd_label {
    const char *key;
    const char *value;
} kfd_label;

typedef struct kfd_policy_input {
    const char *node;
    const char *source; /* client IP address; NULL or "" skips CIDR selectors (they then fail to match) */
    const char *volume_id;
    const char *volume_name;
    const kfd_label *labels;
    size_t n_labels;
    int64_t now; /* Unix seconds, for auto-approve windows */
    bool enrolling; /* Enroll: approval rules do not apply (they gate release) */
    bool tpm_key;   /* the caller's certificate vouches that its key is in a TPM (kf_identity.tpm_key) */
    bool attested;  /* the request carried a quote by the node's AK matching its accepted PCR values */
    const char *attest_why; /* when not attested: why (no quote, which PCRs changed, ...) */
    const struct kf_tpm_pcrs *quoted; /* a quote that held (all but the accepted values); NULL: none */
} kfd_policy_input;

typedef struct kfd_policy_decision {
    bool allow;
    char rule[64]; /* deciding rule, or "default-deny" */
    int rule_index; /* 1-based; 0 for the default */
    uint32_t approvals; /* distinct approvers needed before release; 0 = none */
    bool require_totp;  /* each approval needs a TOTP code */
    bool auto_approved; /* approval waived: inside the rule's auto-approve window */
    uint32_t pending_ttl_s;
    bool offline_fallback;
    /* require: [tpm_and_network]: enroll makes the key from a TPM part and this coordinator part
     * (docs/architecture.md); never together with offline_fallback */
    bool tpm_and_network;
    uint32_t rate_per_minute, rate_burst; /* 0 = unlimited */
    char explanation[384];
} kfd_policy_decision;

/* The policy's admin section: operator changes (policy puts, role creation) need approvers
 * distinct operators in all, the proposer being the first; 1 applies them at once. */
typedef struct kfd_admin_policy {
    uint32_t approvers;
    uint32_t wipe_approvers; /* admin.wipe_approvers: a node wipe's operators (default 2) */
    bool require_totp;
    uint32_t pending_ttl_s;
} kfd_admin_policy;

/* The attestation section (docs/attestation.md): the PCRs every quote must cover (bit i = PCR i,
 * within 0..15; default 0, 2, 4, 7), and whether a quote whose TPM reset/restart counters went
 * backwards is denied (default) or allowed and audited. */
typedef struct kfd_attest_policy {
    uint32_t pcrs;
    bool rollback_audit;
} kfd_attest_policy;

/* The attestation section of p; NULL p gives the defaults. */
kfd_attest_policy kfd_policy_attestation(const kfd_policy *p);

/* The admin section of p; NULL p (no policy) gives the defaults (1 approver, no TOTP). */
kfd_admin_policy kfd_policy_admin(const kfd_policy *p);

/* Parses and validates a whole policy. Errors name name:line:column. An empty document is the
 * empty policy (deny everything). */
int kfd_policy_parse(const char *name, const char *yaml, size_t len, kfd_policy **ret, kf_err *err);
void kfd_policy_free(kfd_policy *p);
size_t kfd_policy_rule_count(const kfd_policy *p);

void kfd_policy_evaluate(const kfd_policy *p, const kfd_policy_input *in, kfd_policy_decision *ret);
/* A release of a volume that owner enrolled: decided for the caller and, when the caller is
 * another node, for owner too, the stricter of the two winning (deny over allow, the larger
 * approver count, TOTP if either needs it, offline fallback only if both allow it). */
void kfd_policy_evaluate_release(const kfd_policy *p, const kfd_policy_input *in, const char *owner,
                                 kfd_policy_decision *ret);

/* Whether a rule for in's node, volume and labels could make the volume's key two-part (require:
 * [tpm_and_network]) for some caller: rules are taken in order, CIDR selectors and the tpm_key
 * and attested requirements left out (they depend on the request); a deny rule or one that names
 * networks does not end the search, the first allow rule that certainly matches does. Fails
 * closed for a recovery key reveal, where there is no request from the node (review rev40 F2). */
bool kfd_policy_may_require_two_parts(const kfd_policy *p, const kfd_policy_input *in);

/* Key lifecycle (docs/policy.md, "Key lifecycle"). The longest a volume's key may serve before
 * it is overdue for rotation (max_age_s, 0: no limit) is max_key_age of the first rule that
 * matches the volume (in: its id, name, labels) and the node that enrolled it (in->node), CIDR
 * selectors left out (a key's age does not depend on where a request comes from); where that rule
 * sets none, lifecycle.max_key_age. The key is overdue once it is older than that at in->now. */
typedef struct kfd_key_age {
    uint64_t max_age_s;
    int64_t age_s;
    bool overdue;
    char from[64]; /* the rule that set max_age_s, or "lifecycle" */
} kfd_key_age;
void kfd_policy_key_age(const kfd_policy *p, const kfd_policy_input *in, int64_t key_created_at, kfd_key_age *ret);

/* The dead-man window of node, in seconds (0: none): the shortest dead_man.after of the groups
 * it belongs to. A node that has not reached a coordinator for that long locks its volumes. */
uint64_t kfd_policy_dead_man(const kfd_policy *p, const char *node);
/* Whether a group of node sets wipe.erase_all_keyslots: `node wipe --erase-all-keyslots` (the
 * operator's passphrase keyslots destroyed too, the data unrecoverable) is refused otherwise. */
bool kfd_policy_erase_all_allowed(const kfd_policy *p, const char *node);

/* A node wipe destroys access to data: it needs at least two distinct operators unless the
 * policy's admin.wipe_approvers says otherwise. */
#define KFD_WIPE_MIN_APPROVERS 2
/* The operators a node wipe needs: the larger of admin.approvers and admin.wipe_approvers. */
uint32_t kfd_policy_wipe_approvers(const kfd_policy *p);
/* Rule names the coordinator's held requests use ("recovery", "admin"): refused in a policy. */
bool kfd_policy_rule_name_reserved(const char *name);

/* What a heartbeat from node must show to count as its contact (review rev26 R10): *tpm_key and
 * *attested are set when an allow rule that selects node by name or group requires tpm_key or
 * attested (rules that select only volumes or networks say nothing about the node itself). A
 * copy of a file-based node key must not keep a silent machine off the dead-man list. */
void kfd_policy_contact_requires(const kfd_policy *p, const char *node, bool *tpm_key, bool *attested);

#endif
