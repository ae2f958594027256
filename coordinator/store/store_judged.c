/* What the apply judges again of a handler's decision (store_judged.h). */
#include "store/store_judged.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "kf_tpm_evidence.h"
#include "store/store_audit.h"
#include "store/store_guard.h"
#include "store/store_internal.h"
#include "store/store_read.h"

/* One digest: label (with its NUL) first, then the parts as the callers add them. */
typedef struct judged_hash {
    EVP_MD_CTX *ctx;
    int ok;
} judged_hash;

static void hash_begin(judged_hash *h, const char *label)
{
    h->ctx = EVP_MD_CTX_new();
    h->ok = h->ctx != NULL && EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) == 1 &&
            EVP_DigestUpdate(h->ctx, label, strlen(label) + 1) == 1;
}

static void hash_bytes(judged_hash *h, const void *p, size_t n)
{
    if (h->ok && n > 0)
        h->ok = EVP_DigestUpdate(h->ctx, p, n) == 1;
}

static void hash_u32(judged_hash *h, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    hash_bytes(h, b, sizeof(b));
}

/* A string as its length (32 bits) and bytes: no two lists of strings encode alike. */
static void hash_str(judged_hash *h, const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    hash_u32(h, (uint32_t)n);
    hash_bytes(h, s, n);
}

static int hash_end(judged_hash *h, uint8_t out[KFD_JUDGED_LEN])
{
    unsigned int len = 0;
    if (h->ok)
        h->ok = EVP_DigestFinal_ex(h->ctx, out, &len) == 1 && len == KFD_JUDGED_LEN;
    EVP_MD_CTX_free(h->ctx);
    return h->ok ? 0 : -EIO;
}

int kfd_judged_policy(const char *yaml, uint8_t out[KFD_JUDGED_LEN])
{
    judged_hash h;
    hash_begin(&h, "keyfleet judged policy v1");
    hash_bytes(&h, yaml, yaml != NULL ? strlen(yaml) : 0);
    return hash_end(&h, out);
}

static int by_key(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* The labels as the rules see them (rpc_labels.c: the string values of the stored object;
 * anything else is no labels), sorted by key. */
int kfd_judged_volume(const kfd_volume *v, uint8_t out[KFD_JUDGED_LEN])
{
    json_error_t jerr;
    json_t *o = json_loads(v->labels_json != NULL ? v->labels_json : "{}", 0, &jerr);
    if (o == NULL && json_error_code(&jerr) == json_error_out_of_memory)
        return -ENOMEM; /* not "no labels": a replica's own failure (review rev45 R45-3) */
    size_t n = 0, cap = json_is_object(o) ? json_object_size(o) : 0;
    const char **keys = cap > 0 ? calloc(cap, sizeof(*keys)) : NULL;
    if (cap > 0 && keys == NULL) {
        json_decref(o);
        return -ENOMEM;
    }
    const char *k;
    json_t *val;
    if (cap > 0)
        json_object_foreach(o, k, val)
            if (json_is_string(val) && n < cap)
                keys[n++] = k;
    if (n > 1)
        qsort(keys, n, sizeof(*keys), by_key);
    judged_hash h;
    hash_begin(&h, "keyfleet judged volume v1");
    hash_str(&h, v->name);
    hash_str(&h, v->node); /* the owner: its rule binds when another node asks */
    uint8_t two_part = v->tpm_and_network ? 1 : 0;
    hash_bytes(&h, &two_part, 1);
    hash_u32(&h, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        hash_str(&h, keys[i]);
        hash_str(&h, json_string_value(json_object_get(o, keys[i])));
    }
    free(keys);
    json_decref(o);
    return hash_end(&h, out);
}

int kfd_judged_pcrs(const char *accepted, uint8_t out[KFD_JUDGED_LEN])
{
    kf_tpm_pcrs p;
    if (accepted == NULL || accepted[0] == '\0' || kf_tpm_pcrs_parse(accepted, &p, NULL) != 0)
        return -EINVAL;
    judged_hash h;
    hash_begin(&h, "keyfleet judged pcrs v1");
    hash_u32(&h, p.mask);
    for (unsigned i = 0; i < 24; i++)
        if (p.mask & (1u << i))
            hash_bytes(&h, p.values[i], sizeof(p.values[i]));
    return hash_end(&h, out);
}

int kfd_judged_tpm(const kfd_attest_record *rec, uint8_t out[KFD_JUDGED_LEN])
{
    /* The counters only (reset and restart: they change at a reboot or TPM restart), not the
     * clock, which every quote of the node moves: with it, parallel unlocks at boot and a
     * heartbeat racing a release were refused in normal operation (review rev44b K5). So an edit
     * that lowered the recorded counters is caught; one of the clock alone is not (open). */
    judged_hash h;
    hash_begin(&h, "keyfleet judged tpm v1");
    uint8_t has = rec != NULL && rec->has_clock ? 1 : 0;
    hash_bytes(&h, &has, 1);
    if (has) {
        hash_u32(&h, rec->reset_count);
        hash_u32(&h, rec->restart_count);
    }
    return hash_end(&h, out);
}

int kfd_judged_role(const kfd_role *r, uint8_t out[KFD_JUDGED_LEN])
{
    judged_hash h;
    hash_begin(&h, "keyfleet judged role v1");
    hash_str(&h, r->name);
    hash_str(&h, r->role_id);
    hash_str(&h, r->bound_cidrs);
    hash_u32(&h, r->token_ttl_s);
    hash_str(&h, r->node_name);
    hash_str(&h, r->node_group);
    return hash_end(&h, out);
}

int kfd_judged_token_rows(const char *token_id, const uint8_t hash[KFD_HASH_LEN], int64_t expires_at,
                          const kfd_role *role, uint8_t out[KFD_JUDGED_LEN])
{
    uint8_t role_digest[KFD_JUDGED_LEN];
    int r = kfd_judged_role(role, role_digest);
    if (r != 0)
        return r;
    judged_hash h;
    hash_begin(&h, "keyfleet judged token v1");
    hash_str(&h, token_id);
    hash_bytes(&h, hash, KFD_HASH_LEN);
    hash_u32(&h, (uint32_t)((uint64_t)expires_at >> 32));
    hash_u32(&h, (uint32_t)expires_at);
    hash_bytes(&h, role_digest, sizeof(role_digest));
    return hash_end(&h, out);
}

int kfd_judged_token(kfd_store *s, const char *token_id, uint8_t out[KFD_JUDGED_LEN], int64_t *expires_at)
{
    uint8_t hash[KFD_HASH_LEN];
    char role_name[64];
    int64_t exp = 0;
    int r = kfd_store_get_token(s, token_id, hash, role_name, &exp);
    if (r != 0)
        return r;
    kfd_role role;
    if ((r = kfd_store_get_role(s, role_name, NULL, &role)) != 0)
        return r;
    if (expires_at != NULL)
        *expires_at = exp;
    return kfd_judged_token_rows(token_id, hash, exp, &role, out);
}

void kfd_judged_fields(const kfd_judged *j, const kfd_judged_out *o)
{
    static const ProtobufCBinaryData none = {0, NULL};
    *o->policy = (ProtobufCBinaryData){KFD_JUDGED_LEN, (uint8_t *)j->policy};
    if (o->volume != NULL)
        *o->volume = (ProtobufCBinaryData){KFD_JUDGED_LEN, (uint8_t *)j->volume};
    *o->pcrs = j->has_pcrs ? (ProtobufCBinaryData){KFD_JUDGED_LEN, (uint8_t *)j->pcrs} : none;
    *o->tpm = j->has_tpm ? (ProtobufCBinaryData){KFD_JUDGED_LEN, (uint8_t *)j->tpm} : none;
    *o->cert_serial = (char *)j->cert_serial;
    *o->token_id = (char *)j->token_id;
    *o->auth = j->token_id[0] != '\0' ? (ProtobufCBinaryData){KFD_JUDGED_LEN, (uint8_t *)j->auth} : none;
}

/* A mismatch: -EAGAIN, which the apply records as a denial (store_judged.h). */
static int differs(const char *what, kf_err *err)
{
    return kf_err_set(err, -EAGAIN, "the %s this was decided on differ from this coordinator's (changed since, or "
                      "a coordinator's database edited outside keyfleetd); retry", what);
}

/* A quote's TPM clock against this replica's record (rec NULL: none; review rev44b K5, rev45c
 * R45c-2), at the command's time at: 0, or -EAGAIN when it is behind by more than parallel quotes
 * of one boot or a reboot's power loss explain, or ahead by more than the time since the record
 * (5/4 of it, plus the handler's slack and the apply's) explains. A clock not known, or a state
 * the policy let through audited, is not compared; counters that went back are judged_tpm's. */
int kfd_tpm_clock_judged(const Keyfleet__V1__AttestClock *q, const kfd_attest_record *rec, int64_t at, kf_err *err)
{
    if (q == NULL || !q->clock_known || q->rollback_audited || rec == NULL || !rec->has_clock || !rec->has_tpm_clock)
        return 0;
    bool same = q->reset_count == rec->reset_count && q->restart_count == rec->restart_count;
    bool later = q->reset_count > rec->reset_count ||
                 (q->reset_count == rec->reset_count && q->restart_count > rec->restart_count);
    if (!same && !later)
        return 0;
    if (q->clock < rec->clock) {
        uint64_t slack = same ? KFD_TPM_CLOCK_APPLY_SLACK_MS : KFD_TPM_CLOCK_APPLY_REBOOT_SLACK_MS;
        if (rec->clock - q->clock <= slack) /* no sum to overflow */
            return 0;
        return kf_err_set(err, -EAGAIN, "the TPM clock this was decided on (%" PRIu64 " ms) is behind this "
                          "coordinator's record (%" PRIu64 " ms) by more than %s explains: a second TPM with one "
                          "state (a cloned TPM?)", q->clock, rec->clock, same ? "parallel quotes" : "a reboot");
    }
    /* Rule 4 (review rev45c R45c-2): both times are commands' audit times, alike on every replica. */
    if (at <= 0 || rec->clock_at <= 0)
        return 0;
    uint64_t elapsed_ms = at > rec->clock_at ? (uint64_t)(at - rec->clock_at) * 1000u : 0;
    uint64_t allowed = elapsed_ms / 4u * 5u + KF_TPM_CLOCK_JUMP_SLACK_MS + KFD_TPM_CLOCK_APPLY_SLACK_MS;
    if (q->clock - rec->clock <= allowed)
        return 0;
    return kf_err_set(err, -EAGAIN, "the TPM clock this was decided on (%" PRIu64 " ms) ran ahead of this "
                      "coordinator's record (%" PRIu64 " ms, %" PRId64 " s before) by more than real time explains: "
                      "set forward (a cloned TPM?)", q->clock, rec->clock, at - rec->clock_at);
}

int kfd_store_check_judged(kfd_store *s, const char *node, const kfd_volume *v, int vr, const kfd_judged_in *in,
                           kf_err *err)
{
    const ProtobufCBinaryData *policy = in->policy, *volume = in->volume, *pcrs = in->pcrs, *tpm = in->tpm;
    const ProtobufCBinaryData *all[] = {policy, volume, pcrs, tpm, in->auth};
    for (size_t i = 0; i < 5; i++)
        if (all[i]->len != 0 && all[i]->len != KFD_JUDGED_LEN)
            return kf_err_set(err, -EINVAL, "a judged digest is %zu bytes, not %d", all[i]->len, KFD_JUDGED_LEN);
    uint8_t d[KFD_JUDGED_LEN];
    int r;
    /* How the caller authenticated (review rev44b K2, K3): read at the front door from the
     * proposer's rows only, so an edit of the denylist or of a token's or role's row there got a
     * caller in as anyone. */
    if (in->cert_serial != NULL && in->cert_serial[0] != '\0') {
        bool revoked = false;
        if ((r = kfd_store_cert_revoked(s, in->cert_serial, &revoked)) != 0)
            return kf_err_set(err, r, "reading the certificate denylist");
        if (revoked)
            return kf_err_set(err, -EAGAIN, "the caller's certificate (serial %s) is on this coordinator's denylist; "
                              "it was let in by a coordinator whose denylist differs", in->cert_serial);
    }
    if (in->token_id != NULL && in->token_id[0] != '\0') {
        int64_t exp = 0;
        r = in->auth->len == KFD_JUDGED_LEN ? kfd_judged_token(s, in->token_id, d, &exp) : -EINVAL;
        if (r == -EINVAL)
            return kf_err_set(err, -EINVAL, "an AppRole caller's command carries no token digest");
        if (r != 0 && r != -ENOENT)
            return kf_err_set(err, r, "reading the AppRole token");
        if (r == -ENOENT || in->at >= exp || CRYPTO_memcmp(d, in->auth->data, KFD_JUDGED_LEN) != 0)
            return differs("AppRole token and role", err);
    }
    if (volume->len != 0) {
        if (vr != 0)
            return vr == -ENOENT ? kf_err_set(err, -ESTALE, "the volume is not enrolled")
                                 : kf_err_set(err, vr, "reading the volume");
        if ((r = kfd_judged_volume(v, d)) != 0)
            return kf_err_set(err, r, "digesting the volume's row");
        if (CRYPTO_memcmp(d, volume->data, KFD_JUDGED_LEN) != 0)
            return differs("volume owner, name and labels", err);
    }
    if (pcrs->len != 0 || tpm->len != 0 || in->clock != NULL) {
        kfd_attest_record rec; /* read once for the PCRs, the counters and the clock */
        r = kfd_store_get_attest(s, node, &rec);
        if (r != 0 && r != -ENOENT)
            return kf_err_set(err, r, "reading the node's measured-boot record");
        /* Sent only when the quote matched and the node was not held (a drift hold, which the
         * policy's rules judge, clears the match at the handler; other holds refuse at apply). */
        /* No accepted values (-EINVAL) differs; a digest that failed (-EIO) is this replica's
         * own failure, not recorded (review rev45 R45-3). */
        int dr = pcrs->len != 0 && r == 0 ? kfd_judged_pcrs(rec.accepted, d) : 0;
        if (dr != 0 && dr != -EINVAL)
            return kf_err_set(err, -ENOMEM, "digesting the accepted PCR values");
        if (pcrs->len != 0 && (r == -ENOENT || rec.held[0] != '\0' || dr != 0 ||
                               CRYPTO_memcmp(d, pcrs->data, KFD_JUDGED_LEN) != 0))
            return differs("accepted PCR values (or hold)", err);
        /* The recorded counters a quote was checked against (review rev44 J4, counters only: K5):
         * an edit that lowered them let a rolled-back TPM through at the handler. */
        if (tpm->len != 0 && kfd_judged_tpm(r == 0 ? &rec : NULL, d) != 0)
            return kf_err_set(err, -ENOMEM, "digesting the recorded TPM counters");
        if (tpm->len != 0 && CRYPTO_memcmp(d, tpm->data, KFD_JUDGED_LEN) != 0)
            return differs("recorded TPM counters", err);
        if ((r = kfd_tpm_clock_judged(in->clock, r == 0 ? &rec : NULL, in->at, err)) != 0)
            return r;
    }
    if (policy->len != 0) {
        /* Kept from the last read of the row (invalidated by a policy write, a snapshot install
         * and an open): what S1 is about is the proposer's rows, not this replica's changing
         * under it while it runs (another process's commit is a dispute, store_dispute.h). */
        if (!s->policy_judged_ok) {
            char *yaml = NULL;
            uint64_t version = 0;
            if ((r = kfd_store_get_policy(s, &yaml, &version)) != 0)
                return kf_err_set(err, r, "reading the policy");
            r = kfd_judged_policy(yaml, s->policy_judged);
            free(yaml);
            if (r != 0)
                return kf_err_set(err, r, "digesting the policy");
            s->policy_judged_ok = true;
        }
        if (CRYPTO_memcmp(s->policy_judged, policy->data, KFD_JUDGED_LEN) != 0)
            return differs("policy rules", err);
    }
    return 0;
}

int kfd_store_check_policy(kfd_store *s, const ProtobufCBinaryData *judged_policy, int64_t at, kf_err *err)
{
    ProtobufCBinaryData none = {0, NULL};
    return kfd_store_check_judged(s, "", NULL, -ENOENT,
                                  &(kfd_judged_in){judged_policy, &none, &none, &none, &none, NULL, NULL, at, NULL}, err);
}

int kfd_store_check_tofu(kfd_store *s, const char *node, const char *tofu, kf_err *err)
{
    if (tofu == NULL || tofu[0] == '\0')
        return 0;
    bool has = true;
    kfd_attest_record rec;
    int r = kfd_store_node_has_volumes(s, node, &has);
    if (r != 0)
        return kf_err_set(err, r, "reading the node's volumes");
    r = kfd_store_get_attest(s, node, &rec);
    if (r != 0 && r != -ENOENT)
        return kf_err_set(err, r, "reading the node's measured-boot record");
    const char *accepted = r == 0 ? rec.accepted : "";
    /* Its first enrollment here; or the same values accepted already (two first enrollments of
     * one boot racing: the first applied set them). */
    if ((!has && accepted[0] == '\0') || strcmp(accepted, tofu) == 0)
        return 0;
    return kf_err_set(err, -EAGAIN, "the trust on first use this enrollment was decided on does not hold on this "
                      "coordinator (node %s already has volumes or other accepted PCR values); retry", node);
}

/* The ALLOW record of a command whose refusal at apply is recorded: a key (Release, a repeated
 * Enroll, a rotation, a recovery key's escrow or reveal), an enrollment or an AppRole login; NULL
 * for any other. */
static const Keyfleet__V1__AuditEntry *allowed_key_audit(const Keyfleet__V1__StateCommand *cmd)
{
    const Keyfleet__V1__AuditEntry *a = NULL;
    switch (cmd->cmd_case) {
    case KEYFLEET__V1__STATE_COMMAND__CMD_RECORD_RELEASE:
        a = cmd->record_release->audit;
        break;
    case KEYFLEET__V1__STATE_COMMAND__CMD_ROTATE_KEY:
        a = cmd->rotate_key->audit;
        break;
    case KEYFLEET__V1__STATE_COMMAND__CMD_ENROLL_VOLUME:
        a = cmd->enroll_volume->audit;
        break;
    case KEYFLEET__V1__STATE_COMMAND__CMD_LOGIN:
        a = cmd->login->audit;
        break;
    case KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_ESCROW:
        a = cmd->recovery_escrow->audit;
        break;
    case KEYFLEET__V1__STATE_COMMAND__CMD_RECOVERY_REVEAL:
        a = cmd->recovery_reveal->audit;
        break;
    default:
        return NULL;
    }
    return a != NULL && a->decision == KEYFLEET__V1__DECISION__DECISION_ALLOW ? a : NULL;
}

int kfd_store_record_refusal(kfd_store *s, const Keyfleet__V1__StateCommand *cmd, int code, uint64_t *seq,
                             kf_err *err, bool *recorded)
{
    *recorded = false;
    /* Only the apply's decisions on this replica's rows: not a malformed command, an allocation
     * or the store's own failure, nor anything else a replica may meet alone (review rev45 R45-5). */
    bool decision = code == -EACCES || code == -ESTALE || code == -EEXIST || code == -ENOENT || code == -EAGAIN;
    if (cmd == NULL || s->failed || !decision)
        return 0;
    /* An earlier version's command, replayed: rolled back as that version did (R45-1). */
    if (code != -EAGAIN && !cmd->refusals_recorded)
        return 0;
    const Keyfleet__V1__AuditEntry *a = allowed_key_audit(cmd);
    if (a == NULL)
        return 0;
    /* The command's own reason after it: a login's names the secret accessor and token id. */
    char reason[sizeof(err->msg) + 560];
    snprintf(reason, sizeof(reason), "refused at apply: %s; was: %.512s", err->msg, a->reason != NULL ? a->reason : "");
    Keyfleet__V1__AuditEntry d = *a;
    d.decision = KEYFLEET__V1__DECISION__DECISION_DENY;
    d.reason = reason;
    kf_err aerr = {0};
    int r = kfd_store_append_audit(s, &d, seq, &aerr);
    if (r != 0) {
        *err = aerr;
        return r;
    }
    *recorded = true;
    return 0;
}
