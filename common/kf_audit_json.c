#include "kf_audit_json.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kf_audit.h"
#include "kf_b64.h"

static json_t *hex_json(const ProtobufCBinaryData *b)
{
    char h[2 * KF_AUDIT_HASH + 1];
    if (b->len != KF_AUDIT_HASH)
        return json_string("");
    kf_hex(b->data, KF_AUDIT_HASH, h);
    return json_string(h);
}

static json_t *b64_json(const ProtobufCBinaryData *b)
{
    size_t size = kf_b64_encoded_len(b->len, false) + 1;
    char *s = malloc(size);
    json_t *j = s != NULL && kf_b64_encode(b->data, b->len, false, s, size) >= 0 ? json_string(s) : NULL;
    free(s);
    return j;
}

json_t *kf_audit_record_to_json(const Keyfleet__V1__AuditRecord *r)
{
    const Keyfleet__V1__Principal *a = r->actor;
    json_t *o = json_pack("{s:s, s:I, s:I, s:i, s:s, s:{s:i, s:s, s:s}, s:s, s:s, s:s, s:i, s:s, s:s, s:o, s:o, s:o}",
                          "format", KF_AUDIT_STREAM_FORMAT, "seq", (json_int_t)r->seq, "time_s",
                          (json_int_t)(r->time != NULL ? r->time->seconds : 0), "time_ns",
                          r->time != NULL ? (int)r->time->nanos : 0, "action", r->action, "actor", "kind",
                          a != NULL ? (int)a->kind : 0, "name", a != NULL ? a->name : "", "auth",
                          a != NULL ? a->auth : "", "node", r->node, "volume_id", r->volume_id, "request_id",
                          r->request_id, "decision", (int)r->decision, "reason", r->reason, "source",
                          r->source_address, "prev_hash", hex_json(&r->prev_hash), "hash", hex_json(&r->hash), "root",
                          hex_json(&r->root));
    if (o != NULL && r->signature.len > 0) {
        json_object_set_new(o, "signature", b64_json(&r->signature));
        json_object_set_new(o, "signer_cert", b64_json(&r->signer_cert));
    }
    return o;
}

void kf_audit_record_free(Keyfleet__V1__AuditRecord *r)
{
    if (r == NULL)
        return;
    free(r->time);
    if (r->actor != NULL) {
        free(r->actor->name);
        free(r->actor->auth);
        free(r->actor);
    }
    free(r->action);
    free(r->node);
    free(r->volume_id);
    free(r->request_id);
    free(r->reason);
    free(r->source_address);
    free(r->prev_hash.data);
    free(r->hash.data);
    free(r->root.data);
    free(r->signature.data);
    free(r->signer_cert.data);
    free(r);
}

static int str_field(const json_t *o, const char *key, char **out)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (s == NULL || (*out = strdup(s)) == NULL)
        return -EINVAL;
    return 0;
}

static int int_field(const json_t *o, const char *key, json_int_t lo, json_int_t hi, json_int_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return -EINVAL;
    *out = json_integer_value(v);
    return 0;
}

static int hex_field(const json_t *o, const char *key, ProtobufCBinaryData *out, bool optional)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (s == NULL)
        return -EINVAL;
    if (s[0] == '\0' && optional)
        return 0;
    out->data = malloc(KF_AUDIT_HASH);
    if (out->data == NULL || kf_unhex(s, strlen(s), out->data, KF_AUDIT_HASH) != 0)
        return -EINVAL;
    out->len = KF_AUDIT_HASH;
    return 0;
}

static int b64_field(const json_t *o, const char *key, ProtobufCBinaryData *out)
{
    const char *s = json_string_value(json_object_get(o, key));
    if (s == NULL)
        return 0; /* only checkpoint records carry them */
    size_t n = strlen(s);
    out->data = malloc(n + 1);
    int len = out->data != NULL ? kf_b64_decode(s, n, false, out->data, n + 1) : -ENOMEM;
    if (len < 0)
        return -EINVAL;
    out->len = (size_t)len;
    return 0;
}

int kf_audit_record_from_json(const json_t *o, Keyfleet__V1__AuditRecord **ret)
{
    const char *format = json_string_value(json_object_get(o, "format"));
    if (format == NULL || strcmp(format, KF_AUDIT_STREAM_FORMAT) != 0)
        return -EINVAL;
    Keyfleet__V1__AuditRecord *r = calloc(1, sizeof(*r));
    Keyfleet__V1__Timestamp *t = calloc(1, sizeof(*t));
    Keyfleet__V1__Principal *a = calloc(1, sizeof(*a));
    if (r == NULL || t == NULL || a == NULL) {
        free(r);
        free(t);
        free(a);
        return -ENOMEM;
    }
    keyfleet__v1__audit_record__init(r);
    keyfleet__v1__timestamp__init(t);
    keyfleet__v1__principal__init(a);
    r->time = t;
    r->actor = a;
    a->name = a->auth = NULL;
    r->action = r->node = r->volume_id = r->request_id = r->reason = r->source_address = NULL;
    json_int_t seq, sec, ns, kind, decision;
    const json_t *actor = json_object_get(o, "actor");
    int rc = 0;
    if (int_field(o, "seq", 1, INT64_MAX, &seq) != 0 || int_field(o, "time_s", 0, INT64_MAX, &sec) != 0 ||
        int_field(o, "time_ns", 0, 999999999, &ns) != 0 || int_field(actor, "kind", 0, 1000, &kind) != 0 ||
        int_field(o, "decision", 0, 1000, &decision) != 0 || str_field(o, "action", &r->action) != 0 ||
        str_field(actor, "name", &a->name) != 0 || str_field(actor, "auth", &a->auth) != 0 ||
        str_field(o, "node", &r->node) != 0 || str_field(o, "volume_id", &r->volume_id) != 0 ||
        str_field(o, "request_id", &r->request_id) != 0 || str_field(o, "reason", &r->reason) != 0 ||
        str_field(o, "source", &r->source_address) != 0 || hex_field(o, "prev_hash", &r->prev_hash, false) != 0 ||
        hex_field(o, "hash", &r->hash, false) != 0 || hex_field(o, "root", &r->root, true) != 0 ||
        b64_field(o, "signature", &r->signature) != 0 || b64_field(o, "signer_cert", &r->signer_cert) != 0)
        rc = -EINVAL;
    if (rc != 0) {
        /* Strings not yet set are NULL, which free takes. */
        kf_audit_record_free(r);
        return rc;
    }
    r->seq = (uint64_t)seq;
    t->seconds = sec;
    t->nanos = (int32_t)ns;
    a->kind = (Keyfleet__V1__PrincipalKind)kind;
    r->decision = (Keyfleet__V1__Decision)decision;
    *ret = r;
    return 0;
}
