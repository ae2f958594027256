#include "core/policy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fnmatch.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "core/cidr.h"
#include "kf_tpm_evidence.h"
#include "kf_yaml.h"

#define DEFAULT_PENDING_TTL_S (15 * 60)

typedef kfd_cidr cidr;

typedef struct label_sel {
    char *key, *value;
} label_sel;

typedef struct rule {
    char *name;
    /* volume selectors */
    kf_strlist ids, names;
    label_sel *labels;
    size_t n_labels;
    /* node selectors */
    kf_strlist node_names, groups;
    cidr *cidrs;
    size_t n_cidrs;
    bool allow;
    uint32_t approvers;
    bool require_totp;
    int window_from, window_to; /* minutes of the UTC day; -1 = no window */
    uint64_t pending_ttl_ms;
    bool offline_fallback;
    bool require_tpm_key; /* require: [tpm_key]: only a node whose certificate vouches for a TPM key */
    bool require_attested; /* require: [attested]: a quote matching the node's accepted PCR values */
    bool require_tpm_and_network; /* require: [tpm_and_network]: enroll makes a two-part key */
    kf_tpm_pcrs golden;    /* golden_pcrs: with require: [attested], these values instead of the node's */
    uint32_t per_minute, burst;
    uint64_t max_key_age_s; /* 0: the lifecycle default */
} rule;

typedef struct group {
    char *name;
    kf_strlist members; /* node name globs */
    uint64_t dead_man_s; /* dead_man.after; 0: none */
    bool erase_all_keyslots; /* wipe.erase_all_keyslots: node wipe --erase-all-keyslots allowed */
} group;

struct kfd_policy {
    group *groups;
    size_t n_groups;
    rule *rules;
    size_t n_rules;
    kfd_admin_policy admin;
    kfd_attest_policy attest;
    uint64_t max_key_age_s; /* lifecycle.max_key_age; 0: no limit */
};

static void rule_clear(rule *r)
{
    free(r->name);
    kf_strlist_free(&r->ids);
    kf_strlist_free(&r->names);
    for (size_t i = 0; i < r->n_labels; i++) {
        free(r->labels[i].key);
        free(r->labels[i].value);
    }
    free(r->labels);
    kf_strlist_free(&r->node_names);
    kf_strlist_free(&r->groups);
    free(r->cidrs);
}

void kfd_policy_free(kfd_policy *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n_rules; i++)
        rule_clear(&p->rules[i]);
    free(p->rules);
    for (size_t i = 0; i < p->n_groups; i++) {
        free(p->groups[i].name);
        kf_strlist_free(&p->groups[i].members);
    }
    free(p->groups);
    free(p);
}

size_t kfd_policy_rule_count(const kfd_policy *p) { return p->n_rules; }

/* --- parsing --- */

typedef struct volumes_sel {
    kf_strlist ids, names;
    const kf_yaml_node *labels;
} volumes_sel;

typedef struct nodes_sel {
    kf_strlist names, groups, cidrs;
} nodes_sel;

static int dec_node_ref(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)doc, (void)arg, (void)err;
    *(const kf_yaml_node **)dst = node;
    return 0;
}

static const kf_yaml_field volume_fields[] = {
    {"ids", kf_yaml_dec_strlist, offsetof(volumes_sel, ids), NULL, false},
    {"names", kf_yaml_dec_strlist, offsetof(volumes_sel, names), NULL, false},
    {"labels", dec_node_ref, offsetof(volumes_sel, labels), NULL, false},
};

static const kf_yaml_field node_fields[] = {
    {"names", kf_yaml_dec_strlist, offsetof(nodes_sel, names), NULL, false},
    {"groups", kf_yaml_dec_strlist, offsetof(nodes_sel, groups), NULL, false},
    {"cidrs", kf_yaml_dec_strlist, offsetof(nodes_sel, cidrs), NULL, false},
};

typedef struct match_sec {
    const kf_yaml_node *volumes, *nodes;
} match_sec;

static const kf_yaml_field match_fields[] = {
    {"volumes", dec_node_ref, offsetof(match_sec, volumes), NULL, false},
    {"nodes", dec_node_ref, offsetof(match_sec, nodes), NULL, false},
};

typedef struct window_sec {
    char *from, *to;
} window_sec;

static const kf_yaml_field window_fields[] = {
    {"from", kf_yaml_dec_string, offsetof(window_sec, from), NULL, true},
    {"to", kf_yaml_dec_string, offsetof(window_sec, to), NULL, true},
};

typedef struct approval_sec {
    uint32_t approvers;
    uint32_t wipe_approvers; /* admin only */
    const kf_yaml_node *auto_approve;
    uint64_t timeout_ms;
    bool totp;
} approval_sec;

static const kf_yaml_uint_range approvers_range = {1, 16};
static const kf_yaml_field approval_fields[] = {
    {"approvers", kf_yaml_dec_uint, offsetof(approval_sec, approvers), &approvers_range, true},
    {"auto_approve", dec_node_ref, offsetof(approval_sec, auto_approve), NULL, false},
    {"timeout", kf_yaml_dec_duration_ms, offsetof(approval_sec, timeout_ms), NULL, false},
    {"totp", kf_yaml_dec_bool, offsetof(approval_sec, totp), NULL, false},
};

/* admin: how many operators must agree to a policy or role change; wipe_approvers: to a node wipe
 * (default 2). */
static const kf_yaml_field admin_fields[] = {
    {"approvers", kf_yaml_dec_uint, offsetof(approval_sec, approvers), &approvers_range, true},
    {"wipe_approvers", kf_yaml_dec_uint, offsetof(approval_sec, wipe_approvers), &approvers_range, false},
    {"timeout", kf_yaml_dec_duration_ms, offsetof(approval_sec, timeout_ms), NULL, false},
    {"totp", kf_yaml_dec_bool, offsetof(approval_sec, totp), NULL, false},
};

typedef struct rate_sec {
    uint32_t per_minute, burst;
} rate_sec;

static const kf_yaml_uint_range rate_range = {1, 100000};
static const kf_yaml_field rate_fields[] = {
    {"per_minute", kf_yaml_dec_uint, offsetof(rate_sec, per_minute), &rate_range, true},
    {"burst", kf_yaml_dec_uint, offsetof(rate_sec, burst), &rate_range, false},
};

typedef struct rule_sec {
    char *name, *effect;
    const kf_yaml_node *match, *approval, *rate_limit;
    bool offline_fallback;
    kf_strlist require, golden_pcrs;
    uint64_t max_key_age_ms;
} rule_sec;

/* Key ages from 1s (tests) to 100 years; dead-man windows from 1s to a year. */
static const kf_yaml_uint_range key_age_range = {1000, 36500ull * 86400000};
static const kf_yaml_uint_range dead_man_range = {1000, 365ull * 86400000};

static const kf_yaml_field rule_fields[] = {
    {"name", kf_yaml_dec_string, offsetof(rule_sec, name), NULL, true},
    {"match", dec_node_ref, offsetof(rule_sec, match), NULL, false},
    {"effect", kf_yaml_dec_string, offsetof(rule_sec, effect), NULL, true},
    {"approval", dec_node_ref, offsetof(rule_sec, approval), NULL, false},
    {"offline_fallback", kf_yaml_dec_bool, offsetof(rule_sec, offline_fallback), NULL, false},
    {"rate_limit", dec_node_ref, offsetof(rule_sec, rate_limit), NULL, false},
    {"require", kf_yaml_dec_strlist, offsetof(rule_sec, require), NULL, false},
    {"golden_pcrs", kf_yaml_dec_strlist, offsetof(rule_sec, golden_pcrs), NULL, false},
    {"max_key_age", kf_yaml_dec_duration_ms, offsetof(rule_sec, max_key_age_ms), &key_age_range, false},
};

/* lifecycle: fleet-wide key lifecycle defaults. */
typedef struct lifecycle_sec {
    uint64_t max_key_age_ms;
} lifecycle_sec;

static const kf_yaml_field lifecycle_fields[] = {
    {"max_key_age", kf_yaml_dec_duration_ms, offsetof(lifecycle_sec, max_key_age_ms), &key_age_range, true},
};

/* groups: GROUP: {nodes: [GLOB, ...], dead_man: {after: 72h}} (the long form of GROUP: [GLOB, ...]). */
typedef struct group_sec {
    kf_strlist nodes;
    const kf_yaml_node *dead_man;
    const kf_yaml_node *wipe;
} group_sec;

typedef struct wipe_sec {
    bool erase_all_keyslots;
} wipe_sec;

static const kf_yaml_field wipe_fields[] = {
    {"erase_all_keyslots", kf_yaml_dec_bool, offsetof(wipe_sec, erase_all_keyslots), NULL, true},
};

typedef struct dead_man_sec {
    uint64_t after_ms;
} dead_man_sec;

static const kf_yaml_field group_fields[] = {
    {"nodes", kf_yaml_dec_strlist, offsetof(group_sec, nodes), NULL, true},
    {"dead_man", dec_node_ref, offsetof(group_sec, dead_man), NULL, false},
    {"wipe", dec_node_ref, offsetof(group_sec, wipe), NULL, false},
};

static const kf_yaml_field dead_man_fields[] = {
    {"after", kf_yaml_dec_duration_ms, offsetof(dead_man_sec, after_ms), &dead_man_range, true},
};

typedef struct top_sec {
    const kf_yaml_node *groups, *rules, *admin, *attestation, *lifecycle;
} top_sec;

static const kf_yaml_field top_fields[] = {
    {"groups", dec_node_ref, offsetof(top_sec, groups), NULL, false},
    {"rules", dec_node_ref, offsetof(top_sec, rules), NULL, false},
    {"admin", dec_node_ref, offsetof(top_sec, admin), NULL, false},
    {"attestation", dec_node_ref, offsetof(top_sec, attestation), NULL, false},
    {"lifecycle", dec_node_ref, offsetof(top_sec, lifecycle), NULL, false},
};

typedef struct attest_sec {
    kf_strlist pcrs;
    char *rollback;
} attest_sec;

static const kf_yaml_field attest_fields[] = {
    {"pcrs", kf_yaml_dec_strlist, offsetof(attest_sec, pcrs), NULL, false},
    {"rollback", kf_yaml_dec_string, offsetof(attest_sec, rollback), NULL, false},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const kf_yaml_node *key_node(const kf_yaml_node *map, const char *key)
{
    for (size_t i = 0; map != NULL && map->type == KF_YAML_MAP && i < map->n; i++)
        if (strcmp(map->items[2 * i]->str, key) == 0)
            return map->items[2 * i + 1];
    return map;
}

static int parse_hhmm(const char *s, int *ret)
{
    unsigned h, m;
    char tail;
    if (strlen(s) != 5 || sscanf(s, "%2u:%2u%c", &h, &m, &tail) != 2 || h > 23 || m > 59)
        return -EINVAL;
    *ret = (int)(h * 60 + m);
    return 0;
}

static int check_globs(const kf_yaml_doc *doc, const kf_yaml_node *at, const kf_strlist *l, const char *what,
                       kf_err *err)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i][0] == '\0' || strlen(l->v[i]) > 255)
            return kf_yaml_error(doc, at, err, "%s entries must be 1..255 characters", what);
    return 0;
}

/* match.volumes.labels: a mapping of key: value, every pair of which a volume must carry. */
static int parse_labels(const kf_yaml_doc *doc, const kf_yaml_node *labels, rule *r, kf_err *err)
{
    if (labels->type != KF_YAML_MAP)
        return kf_yaml_error(doc, labels, err, "labels must be a mapping of key: value");
    if ((r->labels = calloc(labels->n + 1, sizeof(*r->labels))) == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < labels->n; i++) {
        const kf_yaml_node *val = labels->items[2 * i + 1];
        if (val->type != KF_YAML_SCALAR)
            return kf_yaml_error(doc, val, err, "label values must be strings");
        r->labels[i].key = strdup(labels->items[2 * i]->str);
        r->labels[i].value = strdup(val->str);
        r->n_labels++; /* freed with the rule, also when a copy failed */
        if (r->labels[i].key == NULL || r->labels[i].value == NULL)
            return kf_err_set(err, -ENOMEM, "out of memory");
    }
    return 0;
}

/* golden_pcrs: values every node the rule matches must quote ("PCR=64 hex digits" each), instead
 * of each node's own accepted values: no first boot is trusted. rc is parse_rule's so far; a
 * golden_pcrs present reports its own error in place of an earlier one, as before the split. */
static int parse_golden(const kf_yaml_doc *doc, const kf_yaml_node *node, const kf_strlist *golden, int rc, rule *r,
                        kf_err *err)
{
    char text[KF_TPM_PCRS_TEXT_MAX];
    size_t used = 0;
    kf_err perr = {0};
    for (size_t i = 0; rc == 0 && i < golden->n; i++) {
        size_t n = strlen(golden->v[i]);
        if (n > 67 || used + n + 2 > sizeof(text) || strchr(golden->v[i], ' ') != NULL)
            rc = kf_err_set(&perr, -EINVAL, "'%.70s' is not one PCR=VALUE", golden->v[i]);
        else
            used += (size_t)snprintf(text + used, sizeof(text) - used, "%s%s", used ? " " : "", golden->v[i]);
    }
    if (golden->n > 0 && rc == 0 && kf_tpm_pcrs_parse(text, &r->golden, &perr) == 0 &&
        (r->golden.mask & KF_TPM_PCRS_RESETTABLE))
        rc = kf_err_set(&perr, -EINVAL, "PCRs 16..23 can be reset by software and are never golden");
    if (golden->n > 0 && (rc != 0 || perr.code != 0))
        rc = kf_yaml_error(doc, key_node(node, "golden_pcrs"), err,
                           "golden_pcrs lists PCR=VALUE, a PCR 0..15 once each and 64 hex digits of its SHA-256 value: %s",
                           perr.msg);
    else if (rc == 0 && golden->n > 0 && !r->require_attested)
        rc = kf_yaml_error(doc, key_node(node, "golden_pcrs"), err, "golden_pcrs only makes sense with require: [attested]");
    return rc;
}

/* match.volumes: {ids, names, labels}. */
static int parse_match_volumes(const kf_yaml_doc *doc, const kf_yaml_node *volumes, rule *r, kf_err *err)
{
    volumes_sel v = {0};
    int rc = kf_yaml_decode_map(doc, volumes, volume_fields, N(volume_fields), &v, err);
    r->ids = v.ids;
    r->names = v.names;
    if (rc == 0)
        rc = check_globs(doc, volumes, &r->names, "volume name", err);
    if (rc == 0 && v.labels != NULL)
        rc = parse_labels(doc, v.labels, r, err);
    return rc;
}

/* match.nodes: {names, groups (defined above the rules), cidrs}. */
static int parse_match_nodes(const kf_yaml_doc *doc, const kfd_policy *p, const kf_yaml_node *nodes, rule *r,
                             kf_err *err)
{
    nodes_sel n = {0};
    int rc = kf_yaml_decode_map(doc, nodes, node_fields, N(node_fields), &n, err);
    r->node_names = n.names;
    r->groups = n.groups;
    if (rc == 0)
        rc = check_globs(doc, nodes, &r->node_names, "node name", err);
    for (size_t i = 0; rc == 0 && i < r->groups.n; i++) {
        size_t g = 0;
        while (g < p->n_groups && strcmp(p->groups[g].name, r->groups.v[i]) != 0)
            g++;
        if (g == p->n_groups)
            rc = kf_yaml_error(doc, key_node(nodes, "groups"), err, "unknown group '%s'", r->groups.v[i]);
    }
    if (rc == 0 && n.cidrs.n > 0) {
        r->cidrs = calloc(n.cidrs.n, sizeof(*r->cidrs));
        for (size_t i = 0; rc == 0 && i < n.cidrs.n; i++) {
            if (r->cidrs == NULL)
                rc = kf_err_set(err, -ENOMEM, "out of memory");
            else if (kfd_cidr_parse(n.cidrs.v[i], &r->cidrs[i]) != 0)
                rc = kf_yaml_error(doc, key_node(nodes, "cidrs"), err, "'%.64s' is not an address/prefix",
                                   n.cidrs.v[i]);
            else
                r->n_cidrs++;
        }
    }
    kf_strlist_free(&n.cidrs);
    return rc;
}

/* approval: {approvers, totp, timeout, auto_approve: {from, to}}, for allow rules only. */
static int parse_approval(const kf_yaml_doc *doc, const kf_yaml_node *approval, rule *r, kf_err *err)
{
    approval_sec a = {0};
    int rc = kf_yaml_decode_map(doc, approval, approval_fields, N(approval_fields), &a, err);
    r->approvers = a.approvers;
    r->require_totp = a.totp;
    if (rc == 0 && a.timeout_ms != 0) {
        if (a.timeout_ms < 10000 || a.timeout_ms > 7 * 24 * 3600 * 1000ull)
            rc = kf_yaml_error(doc, key_node(approval, "timeout"), err, "timeout must be from 10s to 168h");
        r->pending_ttl_ms = a.timeout_ms;
    }
    if (rc == 0 && a.auto_approve != NULL) {
        window_sec w = {0};
        rc = kf_yaml_decode_map(doc, a.auto_approve, window_fields, N(window_fields), &w, err);
        if (rc == 0 && parse_hhmm(w.from, &r->window_from) != 0)
            rc = kf_yaml_error(doc, key_node(a.auto_approve, "from"), err, "expected HH:MM (UTC)");
        if (rc == 0 && parse_hhmm(w.to, &r->window_to) != 0)
            rc = kf_yaml_error(doc, key_node(a.auto_approve, "to"), err, "expected HH:MM (UTC)");
        free(w.from);
        free(w.to);
    }
    if (rc == 0 && !r->allow)
        rc = kf_yaml_error(doc, approval, err, "approval only makes sense with effect: allow");
    return rc;
}

static int parse_rule(const kf_yaml_doc *doc, const kfd_policy *p, const kf_yaml_node *node, rule *r, kf_err *err)
{
    rule_sec sec = {0};
    int rc = kf_yaml_decode_map(doc, node, rule_fields, N(rule_fields), &sec, err);
    r->name = sec.name;
    r->window_from = r->window_to = -1;
    r->pending_ttl_ms = DEFAULT_PENDING_TTL_S * 1000ull;
    r->offline_fallback = sec.offline_fallback;
    r->max_key_age_s = sec.max_key_age_ms / 1000;
    for (size_t i = 0; rc == 0 && i < sec.require.n; i++) {
        if (strcmp(sec.require.v[i], "tpm_key") == 0)
            r->require_tpm_key = true;
        else if (strcmp(sec.require.v[i], "attested") == 0)
            r->require_attested = true;
        else if (strcmp(sec.require.v[i], "tpm_and_network") == 0)
            r->require_tpm_and_network = true;
        else
            rc = kf_yaml_error(doc, key_node(node, "require"), err,
                               "unknown requirement '%.64s' (known: tpm_key, attested, tpm_and_network)",
                               sec.require.v[i]);
    }
    /* A two-part key has no whole copy in the TPM to fall back on: saying both would promise an
     * offline unlock that cannot exist. */
    if (rc == 0 && r->require_tpm_and_network && sec.offline_fallback)
        rc = kf_yaml_error(doc, key_node(node, "offline_fallback"), err,
                           "offline_fallback: true contradicts require: [tpm_and_network] (the volume's key needs "
                           "the coordinator's part, so no offline unlock is possible): drop one of them");
    kf_strlist_free(&sec.require);
    rc = parse_golden(doc, node, &sec.golden_pcrs, rc, r, err);
    kf_strlist_free(&sec.golden_pcrs);
    if (rc == 0 && (r->require_tpm_key || r->require_attested || r->require_tpm_and_network) && sec.effect != NULL && strcmp(sec.effect, "allow") != 0)
        rc = kf_yaml_error(doc, key_node(node, "require"), err, "require only makes sense with effect: allow");
    if (rc != 0) {
        free(sec.effect);
        return rc;
    }
    if (strlen(r->name) > 63)
        rc = kf_yaml_error(doc, key_node(node, "name"), err, "rule names are at most 63 characters");
    else if (kfd_policy_rule_name_reserved(r->name))
        /* Held requests are told apart by their rule: a rule of that name would make its releases
         * look like break-glass reveals or operator changes in keyfleetctl pending. */
        rc = kf_yaml_error(doc, key_node(node, "name"), err,
                           "rule name '%s' is reserved (held recovery key reveals and operator changes use it)",
                           r->name);
    else if (strcmp(sec.effect, "allow") == 0)
        r->allow = true;
    else if (strcmp(sec.effect, "deny") != 0)
        rc = kf_yaml_error(doc, key_node(node, "effect"), err, "effect must be allow or deny");
    free(sec.effect);
    for (size_t i = 0; rc == 0 && i < p->n_rules; i++)
        if (strcmp(p->rules[i].name, r->name) == 0)
            rc = kf_yaml_error(doc, key_node(node, "name"), err, "duplicate rule name '%s'", r->name);

    if (rc == 0 && sec.match != NULL) {
        match_sec m = {0};
        rc = kf_yaml_decode_map(doc, sec.match, match_fields, N(match_fields), &m, err);
        if (rc == 0 && m.volumes != NULL)
            rc = parse_match_volumes(doc, m.volumes, r, err);
        if (rc == 0 && m.nodes != NULL)
            rc = parse_match_nodes(doc, p, m.nodes, r, err);
    }
    if (rc == 0 && sec.approval != NULL)
        rc = parse_approval(doc, sec.approval, r, err);
    if (rc == 0 && sec.rate_limit != NULL) {
        rate_sec rs = {0};
        rc = kf_yaml_decode_map(doc, sec.rate_limit, rate_fields, N(rate_fields), &rs, err);
        r->per_minute = rs.per_minute;
        r->burst = rs.burst != 0 ? rs.burst : rs.per_minute;
    }
    return rc;
}

/* attestation: {pcrs: [0, 2, 4, 7], rollback: deny|audit}: what every quote must cover, and
 * what a TPM whose reset/restart counters went backwards gets. */
static int parse_attestation(const kf_yaml_doc *doc, const kf_yaml_node *node, kfd_attest_policy *ret, kf_err *err)
{
    attest_sec a = {0};
    int rc = kf_yaml_decode_map(doc, node, attest_fields, N(attest_fields), &a, err);
    if (rc == 0 && a.pcrs.v != NULL) { /* given (an empty list too) */
        uint32_t mask = 0;
        for (size_t i = 0; rc == 0 && i < a.pcrs.n; i++) {
            const char *v = a.pcrs.v[i];
            size_t n = strlen(v);
            unsigned pcr = n == 1 ? (unsigned)(v[0] - '0') : n == 2 && v[0] == '1' ? 10u + (unsigned)(v[1] - '0') : 99u;
            if (n == 0 || strspn(v, "0123456789") != n || pcr > 15 || (mask & (1u << pcr)))
                rc = kf_yaml_error(doc, key_node(node, "pcrs"), err,
                                   "attestation.pcrs lists PCRs 0..15, each once ('%.16s' is not one; 16..23 can be "
                                   "reset by software)",
                                   v);
            else
                mask |= 1u << pcr;
        }
        if (rc == 0 && mask == 0)
            rc = kf_yaml_error(doc, key_node(node, "pcrs"), err, "attestation.pcrs must list at least one PCR");
        ret->pcrs = mask;
    }
    if (rc == 0 && a.rollback != NULL) {
        if (strcmp(a.rollback, "audit") == 0)
            ret->rollback_audit = true;
        else if (strcmp(a.rollback, "deny") != 0)
            rc = kf_yaml_error(doc, key_node(node, "rollback"), err, "attestation.rollback must be deny or audit");
    }
    kf_strlist_free(&a.pcrs);
    free(a.rollback);
    return rc;
}

kfd_attest_policy kfd_policy_attestation(const kfd_policy *p)
{
    if (p == NULL)
        return (kfd_attest_policy){.pcrs = KF_TPM_DEFAULT_PCRS, .rollback_audit = false};
    return p->attest;
}

int kfd_policy_parse(const char *name, const char *yaml, size_t len, kfd_policy **ret, kf_err *err)
{
    kf_yaml_doc *doc = NULL;
    int rc = kf_yaml_parse_string(name, yaml, len, &doc, err);
    if (rc != 0)
        return rc;
    kfd_policy *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        kf_yaml_free(doc);
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    top_sec top = {0};
    p->attest = kfd_policy_attestation(NULL);
    p->admin.approvers = 1;
    p->admin.wipe_approvers = KFD_WIPE_MIN_APPROVERS;
    p->admin.pending_ttl_s = DEFAULT_PENDING_TTL_S;
    if (doc->root != NULL)
        rc = kf_yaml_decode_map(doc, doc->root, top_fields, N(top_fields), &top, err);
    if (rc == 0 && top.admin != NULL) {
        approval_sec a = {0};
        rc = kf_yaml_decode_map(doc, top.admin, admin_fields, N(admin_fields), &a, err);
        if (rc == 0 && a.timeout_ms != 0 && (a.timeout_ms < 10000 || a.timeout_ms > 7 * 24 * 3600 * 1000ull))
            rc = kf_yaml_error(doc, key_node(top.admin, "timeout"), err, "timeout must be from 10s to 168h");
        p->admin.approvers = a.approvers;
        if (a.wipe_approvers != 0)
            p->admin.wipe_approvers = a.wipe_approvers;
        p->admin.require_totp = a.totp;
        if (a.timeout_ms != 0)
            p->admin.pending_ttl_s = (uint32_t)(a.timeout_ms / 1000);
    }
    if (rc == 0 && top.attestation != NULL)
        rc = parse_attestation(doc, top.attestation, &p->attest, err);
    if (rc == 0 && top.groups != NULL) {
        if (top.groups->type != KF_YAML_MAP)
            rc = kf_yaml_error(doc, top.groups, err, "groups must map a group name to a list of node names");
        p->groups = rc == 0 ? calloc(top.groups->n + 1, sizeof(*p->groups)) : NULL;
        if (rc == 0 && p->groups == NULL)
            rc = kf_err_set(err, -ENOMEM, "out of memory");
        for (size_t i = 0; rc == 0 && i < top.groups->n; i++) {
            group *g = &p->groups[p->n_groups];
            const kf_yaml_node *val = top.groups->items[2 * i + 1];
            g->name = strdup(top.groups->items[2 * i]->str);
            p->n_groups++;
            if (g->name == NULL) {
                rc = kf_err_set(err, -ENOMEM, "out of memory");
            } else if (val->type == KF_YAML_MAP) {
                group_sec gs = {0};
                rc = kf_yaml_decode_map(doc, val, group_fields, N(group_fields), &gs, err);
                g->members = gs.nodes;
                if (rc == 0 && gs.dead_man != NULL) {
                    dead_man_sec dm = {0};
                    rc = kf_yaml_decode_map(doc, gs.dead_man, dead_man_fields, N(dead_man_fields), &dm, err);
                    g->dead_man_s = dm.after_ms / 1000;
                }
                if (rc == 0 && gs.wipe != NULL) {
                    wipe_sec ws = {0};
                    rc = kf_yaml_decode_map(doc, gs.wipe, wipe_fields, N(wipe_fields), &ws, err);
                    g->erase_all_keyslots = ws.erase_all_keyslots;
                }
            } else {
                rc = kf_yaml_dec_strlist(doc, val, &g->members, NULL, err);
            }
        }
    }
    if (rc == 0 && top.lifecycle != NULL) {
        lifecycle_sec l = {0};
        rc = kf_yaml_decode_map(doc, top.lifecycle, lifecycle_fields, N(lifecycle_fields), &l, err);
        p->max_key_age_s = l.max_key_age_ms / 1000;
    }
    if (rc == 0 && top.rules != NULL) {
        if (top.rules->type != KF_YAML_SEQ)
            rc = kf_yaml_error(doc, top.rules, err, "rules must be a list");
        p->rules = rc == 0 ? calloc(top.rules->n + 1, sizeof(*p->rules)) : NULL;
        for (size_t i = 0; rc == 0 && i < top.rules->n; i++) {
            rc = parse_rule(doc, p, top.rules->items[i], &p->rules[p->n_rules], err);
            p->n_rules++;
        }
    }
    kf_yaml_free(doc);
    if (rc != 0) {
        kfd_policy_free(p);
        return rc;
    }
    *ret = p;
    return 0;
}

/* --- evaluation --- */

static bool any_glob(const kf_strlist *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (fnmatch(l->v[i], s, 0) == 0)
            return true;
    return false;
}

static bool in_group(const kfd_policy *p, const char *group_name, const char *node)
{
    for (size_t g = 0; g < p->n_groups; g++)
        if (strcmp(p->groups[g].name, group_name) == 0)
            return any_glob(&p->groups[g].members, node);
    return false;
}

static bool rule_matches(const kfd_policy *p, const rule *r, const kfd_policy_input *in, bool ignore_cidrs, char *why,
                         size_t why_size)
{
    size_t o = 0;
#define WHY(...)                                                                                                       \
    do {                                                                                                               \
        if (o < why_size)                                                                                              \
            o += (size_t)snprintf(why + o, why_size - o, __VA_ARGS__);                                                 \
    } while (0)
    if (r->ids.n > 0) {
        bool hit = false;
        for (size_t i = 0; i < r->ids.n && !hit; i++)
            hit = strcmp(r->ids.v[i], in->volume_id) == 0;
        if (!hit)
            return false;
        WHY("volume id listed; ");
    }
    if (r->names.n > 0) {
        if (!any_glob(&r->names, in->volume_name != NULL ? in->volume_name : ""))
            return false;
        WHY("volume name '%s' matches; ", in->volume_name);
    }
    for (size_t i = 0; i < r->n_labels; i++) {
        bool hit = false;
        for (size_t k = 0; k < in->n_labels && !hit; k++)
            hit = strcmp(in->labels[k].key, r->labels[i].key) == 0 && strcmp(in->labels[k].value, r->labels[i].value) == 0;
        if (!hit)
            return false;
        WHY("label %s=%s; ", r->labels[i].key, r->labels[i].value);
    }
    if (r->node_names.n > 0) {
        if (!any_glob(&r->node_names, in->node))
            return false;
        WHY("node '%s' matches; ", in->node);
    }
    if (r->groups.n > 0) {
        size_t g = 0;
        while (g < r->groups.n && !in_group(p, r->groups.v[g], in->node))
            g++;
        if (g == r->groups.n)
            return false;
        WHY("node in group '%s'; ", r->groups.v[g]);
    }
    if (r->n_cidrs > 0 && !ignore_cidrs) {
        size_t c = 0;
        while (c < r->n_cidrs && !(in->source != NULL && in->source[0] != '\0' && kfd_cidr_contains(&r->cidrs[c], in->source)))
            c++;
        if (c == r->n_cidrs)
            return false;
        WHY("source %s in an allowed network; ", in->source);
    }
    if (o == 0)
        WHY("matches everything; ");
#undef WHY
    return true;
}

/* A rule that matched but whose requirement (require: [...]) the caller does not meet denies,
 * with nothing of the allow left over. */
static void deny_unmet(kfd_policy_decision *ret)
{
    ret->allow = false;
    ret->offline_fallback = false;
    ret->tpm_and_network = false;
    ret->approvals = 0;
    ret->require_totp = ret->auto_approved = false;
}

static bool in_window(int from, int to, int64_t now)
{
    if (from < 0)
        return false;
    int minute = (int)((now % 86400 + 86400) % 86400 / 60);
    return from <= to ? minute >= from && minute < to : minute >= from || minute < to;
}

void kfd_policy_evaluate(const kfd_policy *p, const kfd_policy_input *in, kfd_policy_decision *ret)
{
    memset(ret, 0, sizeof(*ret));
    for (size_t i = 0; p != NULL && i < p->n_rules; i++) {
        const rule *r = &p->rules[i];
        char why[256];
        if (!rule_matches(p, r, in, false, why, sizeof(why)))
            continue;
        ret->allow = r->allow;
        snprintf(ret->rule, sizeof(ret->rule), "%s", r->name);
        ret->rule_index = (int)i + 1;
        ret->offline_fallback = r->allow && r->offline_fallback;
        ret->tpm_and_network = r->allow && r->require_tpm_and_network;
        ret->rate_per_minute = r->per_minute;
        ret->rate_burst = r->burst;
        ret->pending_ttl_s = (uint32_t)(r->pending_ttl_ms / 1000);
        ret->approvals = r->allow && !in->enrolling ? r->approvers : 0;
        if (ret->approvals > 0 && in_window(r->window_from, r->window_to, in->now)) {
            ret->auto_approved = true;
            ret->approvals = 0;
        }
        ret->require_totp = ret->approvals > 0 && r->require_totp;
        why[strlen(why) > 2 ? strlen(why) - 2 : 0] = '\0';
        if (r->allow && r->require_tpm_key && !in->tpm_key) {
            /* The rule is for this node and volume, but only with a TPM-bound key: a copied
             * key file (a stolen disk's initramfs) must not pass on a fall-through rule. */
            deny_unmet(ret);
            /* A long rule name or match reason is cut, never the verdict's start (the return
             * value is taken so that GCC's truncation check knows it is expected). */
            int n = snprintf(ret->explanation, sizeof(ret->explanation),
                             "rule %zu '%s' decides (%s): deny: it requires a TPM-bound node key (require: "
                             "[tpm_key]) and node '%s' authenticated with a key its certificate does not vouch "
                             "is in a TPM",
                             i + 1, r->name, why, in->node);
            (void)n;
            return;
        }
        char golden_why[160] = "";
        bool attested = in->attested;
        if (r->golden.mask != 0) {
            /* The rule's golden values decide, not the node's own accepted ones. */
            uint32_t off = in->quoted == NULL ? 0 : r->golden.mask & ~in->quoted->mask;
            for (unsigned k = 0; in->quoted != NULL && k < 24; k++)
                if ((r->golden.mask & in->quoted->mask & (1u << k)) &&
                    CRYPTO_memcmp(r->golden.values[k], in->quoted->values[k], 32) != 0)
                    off |= 1u << k;
            attested = in->quoted != NULL && off == 0;
            if (in->quoted != NULL && off != 0) {
                char list[64];
                kf_tpm_pcr_list(off, list, sizeof(list));
                snprintf(golden_why, sizeof(golden_why), "PCR %s differs from the rule's golden_pcrs", list);
            }
        }
        if (r->allow && r->require_attested && !attested) {
            /* A quote by the node's AK over PCRs that match its accepted values, for this very
             * request and connection: otherwise what booted is not what was enrolled. */
            deny_unmet(ret);
            int n = snprintf(ret->explanation, sizeof(ret->explanation),
                             "rule %zu '%s' decides (%s): deny: it requires measured-boot attestation (require: "
                             "[attested]): %s",
                             i + 1, r->name, why,
                             golden_why[0] ? golden_why : in->attest_why != NULL ? in->attest_why : "no quote");
            (void)n;
            return;
        }
        snprintf(ret->explanation, sizeof(ret->explanation), "rule %zu '%s' decides (%s): %s%s%s", i + 1, r->name,
                 why, r->allow ? "allow" : "deny",
                 ret->tpm_and_network ? " (TPM and network, both required: a two-part key at enroll)" : "",
                 ret->auto_approved ? ", approval waived inside its auto-approve window"
                 : ret->approvals > 0 && ret->require_totp ? ", after human approval with TOTP"
                 : ret->approvals > 0 ? ", after human approval"
                 : r->allow && in->enrolling && r->approvers > 0 ? " (its approval applies to release)"
                                                                 : "");
        return;
    }
    snprintf(ret->rule, sizeof(ret->rule), "default-deny");
    snprintf(ret->explanation, sizeof(ret->explanation), "no rule matches node '%s' and volume '%s': denied by default",
             in->node, in->volume_id);
    ret->pending_ttl_s = DEFAULT_PENDING_TTL_S;
}

void kfd_policy_evaluate_release(const kfd_policy *p, const kfd_policy_input *in, const char *owner,
                                 kfd_policy_decision *ret)
{
    kfd_policy_evaluate(p, in, ret);
    if (owner == NULL || owner[0] == '\0' || strcmp(owner, in->node) == 0)
        return;
    /* The volume moved (or its wrapped key did): the enrolling node's rule binds too, so a node
     * under a looser rule cannot take a key that its owner may only have with approval. */
    kfd_policy_input as_owner = *in;
    as_owner.node = owner;
    kfd_policy_decision o;
    kfd_policy_evaluate(p, &as_owner, &o);
    char caller_why[sizeof(ret->explanation)];
    snprintf(caller_why, sizeof(caller_why), "%s", ret->explanation);
    if (!o.allow && ret->allow) {
        ret->allow = false;
        snprintf(ret->rule, sizeof(ret->rule), "%s", o.rule);
        ret->rule_index = o.rule_index;
    }
    if (o.approvals > ret->approvals) {
        ret->approvals = o.approvals;
        ret->auto_approved = false;
    }
    ret->require_totp |= o.require_totp && ret->approvals > 0;
    ret->offline_fallback &= o.offline_fallback;
    ret->tpm_and_network |= o.tpm_and_network;
    /* Rate limits: the tighter of each (0 is unlimited). */
    if (o.rate_per_minute != 0 && (ret->rate_per_minute == 0 || o.rate_per_minute < ret->rate_per_minute))
        ret->rate_per_minute = o.rate_per_minute;
    if (o.rate_burst != 0 && (ret->rate_burst == 0 || o.rate_burst < ret->rate_burst))
        ret->rate_burst = o.rate_burst;
    if (o.pending_ttl_s != 0 && (ret->pending_ttl_s == 0 || o.pending_ttl_s < ret->pending_ttl_s))
        ret->pending_ttl_s = o.pending_ttl_s;
    snprintf(ret->explanation, sizeof(ret->explanation), "%.150s; the volume was enrolled by '%.63s': %.120s",
             caller_why, owner, o.explanation);
}

kfd_admin_policy kfd_policy_admin(const kfd_policy *p)
{
    if (p == NULL)
        return (kfd_admin_policy){.approvers = 1, .wipe_approvers = KFD_WIPE_MIN_APPROVERS,
                                  .pending_ttl_s = DEFAULT_PENDING_TTL_S};
    return p->admin;
}

bool kfd_policy_may_require_two_parts(const kfd_policy *p, const kfd_policy_input *in)
{
    for (size_t i = 0; p != NULL && i < p->n_rules; i++) {
        const rule *r = &p->rules[i];
        char why[256];
        if (!r->allow || !rule_matches(p, r, in, true, why, sizeof(why)))
            continue;
        if (r->require_tpm_and_network)
            return true;
        if (r->n_cidrs == 0)
            return false; /* decides for every caller of this node */
    }
    return false;
}

static uint64_t max_key_age(const kfd_policy *p, const kfd_policy_input *in, char ret_from[64])
{
    snprintf(ret_from, 64, "lifecycle");
    for (size_t i = 0; p != NULL && i < p->n_rules; i++) {
        char why[256];
        if (!rule_matches(p, &p->rules[i], in, true, why, sizeof(why)))
            continue;
        if (p->rules[i].max_key_age_s == 0)
            break; /* first match wins: its volumes take the fleet default */
        snprintf(ret_from, 64, "%s", p->rules[i].name);
        return p->rules[i].max_key_age_s;
    }
    return p != NULL ? p->max_key_age_s : 0;
}

void kfd_policy_key_age(const kfd_policy *p, const kfd_policy_input *in, int64_t key_created_at, kfd_key_age *ret)
{
    memset(ret, 0, sizeof(*ret));
    ret->max_age_s = max_key_age(p, in, ret->from);
    ret->age_s = in->now > key_created_at ? in->now - key_created_at : 0;
    ret->overdue = ret->max_age_s != 0 && (uint64_t)ret->age_s > ret->max_age_s;
}

bool kfd_policy_rule_name_reserved(const char *name)
{
    return strcmp(name, "recovery") == 0 || strcmp(name, "admin") == 0;
}

uint32_t kfd_policy_wipe_approvers(const kfd_policy *p)
{
    kfd_admin_policy a = kfd_policy_admin(p);
    return a.wipe_approvers > a.approvers ? a.wipe_approvers : a.approvers;
}

bool kfd_policy_erase_all_allowed(const kfd_policy *p, const char *node)
{
    for (size_t g = 0; p != NULL && g < p->n_groups; g++)
        if (p->groups[g].erase_all_keyslots && any_glob(&p->groups[g].members, node))
            return true;
    return false;
}

uint64_t kfd_policy_dead_man(const kfd_policy *p, const char *node)
{
    uint64_t after = 0;
    for (size_t g = 0; p != NULL && g < p->n_groups; g++)
        if (p->groups[g].dead_man_s != 0 && any_glob(&p->groups[g].members, node) &&
            (after == 0 || p->groups[g].dead_man_s < after))
            after = p->groups[g].dead_man_s; /* in several groups: the shortest window */
    return after;
}

void kfd_policy_contact_requires(const kfd_policy *p, const char *node, bool *tpm_key, bool *attested)
{
    *tpm_key = *attested = false;
    for (size_t i = 0; p != NULL && i < p->n_rules; i++) {
        const rule *r = &p->rules[i];
        if (!r->allow || (!r->require_tpm_key && !r->require_attested) || (r->node_names.n == 0 && r->groups.n == 0))
            continue;
        if (r->node_names.n > 0 && !any_glob(&r->node_names, node))
            continue;
        size_t g = 0;
        while (g < r->groups.n && !in_group(p, r->groups.v[g], node))
            g++;
        if (r->groups.n > 0 && g == r->groups.n)
            continue;
        *tpm_key |= r->require_tpm_key;
        *attested |= r->require_attested;
    }
}
