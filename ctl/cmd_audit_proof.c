/* keyfleetctl audit verify [--anchor FILE]... | checkpoint [--json] | prove REQUEST_ID [--checkpoint FILE]
 *                  | verify-proof FILE [--anchor FILE] | prove-consistency OLD [NEW]
 *                  | verify-consistency FILE
 * (docs/audit.md). verify-proof and verify-consistency work offline: they need only the fleet CA
 * (--ca, or the config's). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "audit_check.h"
#include "ctl.h"
#include "kf_b64.h"
#include "kf_merkle.h"
#include "keyfleet/v1/admin.pb-c.h"


static int trust_of(kfctl *ctl, const char *ca, kfctl_trust *t)
{
    if (ca == NULL) {
        if (kfctl_client_config(ctl) != 0)
            return -1;
        ca = ctl->ca;
    }
    return kfctl_trust_load(ca, t);
}

static void print_json(json_t *o)
{
    char *s = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s != NULL)
        printf("%s\n", s);
    free(s);
    json_decref(o);
}

static json_t *hex_array(ProtobufCBinaryData *const *unused, const ProtobufCBinaryData *v, size_t n)
{
    (void)unused;
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < n; i++) {
        char h[2 * KF_MERKLE_HASH + 1];
        if (v[i].len != KF_MERKLE_HASH) {
            json_decref(a);
            return NULL;
        }
        kf_hex(v[i].data, KF_MERKLE_HASH, h);
        json_array_append_new(a, json_string(h));
    }
    return a;
}

/* ---- verify ---- */

/* A sink's copy (JSON lines), checked offline. 0: verified. */
static uint64_t max_unsigned = KFCTL_AUDIT_MAX_UNSIGNED;

static int verify_stream(const char *path, const kfctl_trust *trust, const kfctl_cp *anchors, size_t n_anchors)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "keyfleetctl: %s: %m\n", path);
        return 1;
    }
    int rc = kfctl_stream_verify(f, path, trust, anchors, n_anchors, max_unsigned, stdout);
    fclose(f);
    return rc;
}

/* audit verify's own check: every record fetched (QueryAudit, in pages) and checked here against
 * the fleet CA and the anchors. 0 when the log holds, else not 0 (what is wrong printed). */
static int verify_here(kfctl *ctl, kf_rpc_client *c, const kfctl_trust *trust, const kfctl_cp *anchors,
                       size_t n_anchors, const Keyfleet__V1__VerifyAuditResponse *vr)
{
    int local = 1;
    ProtobufCMessage *m;
    kfctl_log_check *chk = kfctl_log_check_new(trust);
    if (chk != NULL) {
        kfctl_log_check_max_unsigned(chk, max_unsigned);
        kfctl_log_check_state(chk, vr->state_seq, vr->state.data, vr->state.len, vr->state_version);
    }
    Keyfleet__V1__QueryAuditRequest q = KEYFLEET__V1__QUERY_AUDIT_REQUEST__INIT;
    q.limit = 10000;
    bool fetched = chk != NULL;
    while (fetched) {
        m = NULL;
        if (kfctl_call(ctl, c, "keyfleet.v1.AdminService/QueryAudit", &q.base,
                       &keyfleet__v1__query_audit_response__descriptor, &m) != 0) {
            fetched = false;
            break;
        }
        Keyfleet__V1__QueryAuditResponse *resp = (Keyfleet__V1__QueryAuditResponse *)m;
        for (size_t i = 0; i < resp->n_records; i++)
            kfctl_log_check_add(chk, resp->records[i]);
        bool more = resp->more && resp->n_records > 0;
        if (more)
            q.after_seq = resp->records[resp->n_records - 1]->seq;
        protobuf_c_message_free_unpacked(m, NULL);
        if (!more)
            break;
    }
    if (fetched)
        local = kfctl_log_check_finish(chk, anchors, n_anchors, stdout);
    kfctl_log_check_free(chk);
    return local;
}

static int cmd_verify(kfctl *ctl, int argc, char **argv)
{
    kfctl_cp *anchors = NULL;
    size_t n_anchors = 0;
    static const struct option opts[] = {{"anchor", required_argument, NULL, 'a'},
                                         {"stream", required_argument, NULL, 's'},
                                         {"ca", required_argument, NULL, 'c'},
                                         {"max-unsigned", required_argument, NULL, 'm'},
                                         {NULL, 0, NULL, 0}};
    const char *stream = NULL, *ca = NULL;
    int o, rc = 1;
    char why[400];
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 's' || o == 'c') {
            *(o == 's' ? &stream : &ca) = optarg;
            continue;
        }
        if (o == 'm') {
            char *end = NULL;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || optarg[0] == '-') {
                fprintf(stderr, "keyfleetctl: --max-unsigned takes a number of records\n");
                return KFCTL_EXIT_USAGE;
            }
            max_unsigned = v;
            continue;
        }
        if (o != 'a') {
            kfctl_usage("audit");
            return KFCTL_EXIT_USAGE;
        }
        kfctl_cp *v = NULL;
        size_t n = 0;
        if (kfctl_cp_read_file(optarg, &v, &n, why, sizeof(why)) != 0) {
            fprintf(stderr, "keyfleetctl: anchor %s\n", why);
            goto out;
        }
        kfctl_cp *nv = realloc(anchors, (n_anchors + n) * sizeof(*nv));
        if (nv == NULL) {
            free(v);
            goto out;
        }
        anchors = nv;
        memcpy(anchors + n_anchors, v, n * sizeof(*v));
        n_anchors += n;
        free(v);
    }
    if (optind != argc) {
        kfctl_usage("audit");
        rc = KFCTL_EXIT_USAGE;
        goto out;
    }
    kfctl_trust trust;
    if (trust_of(ctl, ca, &trust) != 0)
        goto out;
    if (stream != NULL) {
        rc = verify_stream(stream, &trust, anchors, n_anchors);
        kfctl_trust_free(&trust);
        goto out;
    }
    kf_rpc_client *c = kfctl_client(ctl);
    if (c == NULL) {
        kfctl_trust_free(&trust);
        goto out;
    }
    /* The coordinator's own check first: it also knows the head it committed while running. */
    Keyfleet__V1__VerifyAuditRequest vreq = KEYFLEET__V1__VERIFY_AUDIT_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    int server_ok = 0;
    Keyfleet__V1__VerifyAuditResponse *vr = NULL;
    if (kfctl_call(ctl, c, "keyfleet.v1.AdminService/VerifyAudit", &vreq.base,
                   &keyfleet__v1__verify_audit_response__descriptor, &m) == 0) {
        vr = (Keyfleet__V1__VerifyAuditResponse *)m;
        server_ok = vr->ok;
        if (!vr->ok)
            printf("audit chain BROKEN at record %llu: %s\n", (unsigned long long)vr->first_bad_seq, vr->problem);
    }
    /* Then everything again here, trusting only the fleet CA, with the coordinator's own state
     * digest against the state root the log signed. */
    int local = server_ok ? verify_here(ctl, c, &trust, anchors, n_anchors, vr) : 1;
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    rc = server_ok && local == 0 ? 0 : 1;
    kf_rpc_client_free(c);
    kfctl_trust_free(&trust);
out:
    for (size_t i = 0; i < n_anchors; i++)
        kfctl_cp_clear(&anchors[i]);
    free(anchors);
    return rc;
}

/* ---- checkpoint ---- */

static int fetch_checkpoint(kfctl *ctl, kf_rpc_client *c, uint64_t size, kfctl_cp *ret)
{
    Keyfleet__V1__GetCheckpointRequest req = KEYFLEET__V1__GET_CHECKPOINT_REQUEST__INIT;
    req.tree_size = size;
    ProtobufCMessage *m = NULL;
    if (kfctl_call(ctl, c, "keyfleet.v1.AdminService/GetCheckpoint", &req.base,
                   &keyfleet__v1__get_checkpoint_response__descriptor, &m) != 0)
        return -1;
    Keyfleet__V1__GetCheckpointResponse *resp = (Keyfleet__V1__GetCheckpointResponse *)m;
    char why[300];
    int r = resp->checkpoint != NULL ? kfctl_cp_from_record(resp->checkpoint, ret, why, sizeof(why)) : -1;
    if (r != 0)
        fprintf(stderr, "keyfleetctl: the coordinator sent no checkpoint record\n");
    protobuf_c_message_free_unpacked(m, NULL);
    return r;
}

static int cmd_checkpoint(kfctl *ctl, int argc, char **argv)
{
    bool json = argc == 2 && strcmp(argv[1], "--json") == 0;
    if (argc != 1 && !json) {
        kfctl_usage("audit");
        return KFCTL_EXIT_USAGE;
    }
    kfctl_trust trust;
    if (trust_of(ctl, NULL, &trust) != 0)
        return 1;
    kf_rpc_client *c = kfctl_client(ctl);
    kfctl_cp cp;
    int rc = 1;
    char why[300];
    if (c != NULL && fetch_checkpoint(ctl, c, 0, &cp) == 0) {
        if (kfctl_cp_verify(&trust, &cp, why, sizeof(why)) != 0) {
            fprintf(stderr, "keyfleetctl: the newest checkpoint does not verify: %s\n", why);
        } else if (json) {
            print_json(kfctl_cp_to_json(&cp));
            rc = 0;
        } else {
            printf("checkpoint record %" PRIu64 " (signed by %s, verified against the fleet CA)\n%s", cp.seq,
                   cp.parsed.signer, cp.text);
            rc = 0;
        }
        kfctl_cp_clear(&cp);
    }
    kf_rpc_client_free(c);
    kfctl_trust_free(&trust);
    return rc;
}

/* ---- inclusion proofs ---- */

/* ARG [--NAME FILE]: exactly one argument (argv[optind] afterwards) and an optional option. 0, or
 * -1 after getopt's or the usage message. */
static int one_file_and_option(int argc, char **argv, const char *name, const char **ret)
{
    const struct option opts[] = {{name, required_argument, NULL, 'c'}, {NULL, 0, NULL, 0}};
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o != 'c')
            return -1;
        *ret = optarg;
    }
    if (optind + 1 != argc) {
        kfctl_usage("audit");
        return -1;
    }
    return 0;
}

static int cmd_prove(kfctl *ctl, int argc, char **argv)
{
    const char *cp_file = NULL;
    if (one_file_and_option(argc, argv, "checkpoint", &cp_file) != 0)
        return KFCTL_EXIT_USAGE;
    Keyfleet__V1__ProveAuditRequest req = KEYFLEET__V1__PROVE_AUDIT_REQUEST__INIT;
    req.request_id = argv[optind];
    char why[300];
    if (cp_file != NULL) {
        kfctl_cp *v = NULL;
        size_t n = 0;
        kf_checkpoint p;
        kf_err err = {0};
        if (kfctl_cp_read_file(cp_file, &v, &n, why, sizeof(why)) != 0 ||
            kf_checkpoint_parse(v[n - 1].text, strlen(v[n - 1].text), &p, &err) != 0) {
            fprintf(stderr, "keyfleetctl: %s\n", v == NULL ? why : err.msg);
            for (size_t i = 0; i < n; i++)
                kfctl_cp_clear(&v[i]);
            free(v);
            return 1;
        }
        req.tree_size = p.size;
        for (size_t i = 0; i < n; i++)
            kfctl_cp_clear(&v[i]);
        free(v);
    }
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/ProveAudit", &req.base,
                        &keyfleet__v1__prove_audit_response__descriptor, &m) != 0)
        return 1;
    Keyfleet__V1__ProveAuditResponse *resp = (Keyfleet__V1__ProveAuditResponse *)m;
    kfctl_cp cp;
    int rc = 1;
    if (resp->checkpoint != NULL && kfctl_cp_from_record(resp->checkpoint, &cp, why, sizeof(why)) == 0) {
        json_t *proofs = json_array();
        for (size_t i = 0; proofs != NULL && i < resp->n_proofs; i++) {
            Keyfleet__V1__AuditRecord *r = resp->proofs[i]->record;
            /* The record as signed: its fields, packed; the hashes are the verifier's to compute. */
            Keyfleet__V1__AuditRecord bare = *r;
            bare.prev_hash.len = bare.hash.len = bare.root.len = bare.signature.len = bare.signer_cert.len = 0;
            size_t len = protobuf_c_message_get_packed_size(&bare.base);
            uint8_t *packed = malloc(len + 1);
            size_t b64 = kf_b64_encoded_len(len, false) + 1;
            char *text = malloc(b64);
            if (packed != NULL && text != NULL) {
                protobuf_c_message_pack(&bare.base, packed);
                kf_b64_encode(packed, len, false, text, b64);
                json_array_append_new(
                    proofs, json_pack("{s:I, s:s, s:s, s:s, s:s, s:o}", "seq", (json_int_t)r->seq, "action", r->action,
                                      "node", r->node, "volume", r->volume_id, "record", text, "path",
                                      hex_array(NULL, resp->proofs[i]->path, resp->proofs[i]->n_path)));
            }
            free(packed);
            free(text);
        }
        print_json(json_pack("{s:s, s:s, s:o, s:o}", "format", KFCTL_PROOF_FORMAT, "request_id", req.request_id,
                             "checkpoint", kfctl_cp_to_json(&cp), "proofs", proofs));
        kfctl_cp_clear(&cp);
        rc = 0;
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

static json_t *load_json(const char *path)
{
    json_error_t jerr;
    json_t *o = json_load_file(path, 0, &jerr);
    if (o == NULL)
        fprintf(stderr, "keyfleetctl: %s: %s\n", path, jerr.text);
    return o;
}

static int cmd_verify_proof(kfctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"anchor", required_argument, NULL, 'a'}, {"ca", required_argument, NULL, 'c'}, {NULL, 0, NULL, 0}};
    const char *anchor = NULL, *ca = NULL;
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'a')
            anchor = optarg;
        else if (o == 'c')
            ca = optarg;
        else
            return KFCTL_EXIT_USAGE;
    }
    if (optind + 1 != argc) {
        kfctl_usage("audit");
        return KFCTL_EXIT_USAGE;
    }
    kfctl_trust trust;
    if (trust_of(ctl, ca, &trust) != 0)
        return 1;
    json_t *doc = load_json(argv[optind]);
    char why[400] = "";
    int rc = 1;
    if (doc != NULL) {
        rc = kfctl_proof_verify(&trust, doc, anchor, stdout, why, sizeof(why)) == 0 ? 0 : 1;
        if (rc != 0)
            printf("proof INVALID: %s\n", why);
    }
    json_decref(doc);
    kfctl_trust_free(&trust);
    return rc;
}

/* ---- consistency ---- */

static int cmd_prove_consistency(kfctl *ctl, int argc, char **argv)
{
    if (argc != 2 && argc != 3) {
        kfctl_usage("audit");
        return KFCTL_EXIT_USAGE;
    }
    kfctl_cp *olds = NULL, *news = NULL;
    size_t n_old = 0, n_new = 0;
    char why[300];
    int rc = 1;
    kf_checkpoint po, pn;
    kf_err err = {0};
    if (kfctl_cp_read_file(argv[1], &olds, &n_old, why, sizeof(why)) != 0 ||
        (argc == 3 && kfctl_cp_read_file(argv[2], &news, &n_new, why, sizeof(why)) != 0)) {
        fprintf(stderr, "keyfleetctl: %s\n", why);
        goto out;
    }
    if (kf_checkpoint_parse(olds[n_old - 1].text, strlen(olds[n_old - 1].text), &po, &err) != 0 ||
        (news != NULL && kf_checkpoint_parse(news[n_new - 1].text, strlen(news[n_new - 1].text), &pn, &err) != 0)) {
        fprintf(stderr, "keyfleetctl: %s\n", err.msg);
        goto out;
    }
    Keyfleet__V1__ProveConsistencyRequest req = KEYFLEET__V1__PROVE_CONSISTENCY_REQUEST__INIT;
    req.old_size = po.size;
    req.new_size = news != NULL ? pn.size : 0;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/ProveConsistency", &req.base,
                        &keyfleet__v1__prove_consistency_response__descriptor, &m) != 0)
        goto out;
    Keyfleet__V1__ProveConsistencyResponse *resp = (Keyfleet__V1__ProveConsistencyResponse *)m;
    kfctl_cp cp;
    if (resp->new_checkpoint != NULL && kfctl_cp_from_record(resp->new_checkpoint, &cp, why, sizeof(why)) == 0) {
        print_json(json_pack("{s:s, s:o, s:o, s:o}", "format", KFCTL_CONSISTENCY_FORMAT, "old",
                             kfctl_cp_to_json(&olds[n_old - 1]), "new", kfctl_cp_to_json(&cp), "path",
                             hex_array(NULL, resp->path, resp->n_path)));
        kfctl_cp_clear(&cp);
        rc = 0;
    }
    protobuf_c_message_free_unpacked(m, NULL);
out:
    for (size_t i = 0; i < n_old; i++)
        kfctl_cp_clear(&olds[i]);
    for (size_t i = 0; i < n_new; i++)
        kfctl_cp_clear(&news[i]);
    free(olds);
    free(news);
    return rc;
}

static int cmd_verify_consistency(kfctl *ctl, int argc, char **argv)
{
    const char *ca = NULL;
    if (one_file_and_option(argc, argv, "ca", &ca) != 0)
        return KFCTL_EXIT_USAGE;
    kfctl_trust trust;
    if (trust_of(ctl, ca, &trust) != 0)
        return 1;
    json_t *doc = load_json(argv[optind]);
    char why[400] = "";
    int rc = 1;
    if (doc != NULL) {
        rc = kfctl_consistency_verify(&trust, doc, stdout, why, sizeof(why)) == 0 ? 0 : 1;
        if (rc != 0)
            printf("consistency INVALID: %s\n", why);
    }
    json_decref(doc);
    kfctl_trust_free(&trust);
    return rc;
}

int kfctl_audit_sub(kfctl *ctl, int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(kfctl *, int, char **);
    } subs[] = {{"verify", cmd_verify},
                {"checkpoint", cmd_checkpoint},
                {"prove", cmd_prove},
                {"verify-proof", cmd_verify_proof},
                {"prove-consistency", cmd_prove_consistency},
                {"verify-consistency", cmd_verify_consistency}};
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++)
        if (strcmp(argv[0], subs[i].name) == 0)
            return subs[i].fn(ctl, argc, argv);
    return -1;
}
