/* quote_probe: attacks on measured-boot attestation (docs/attestation.md), through the agent's own
 * code (kfa_attest, kf_node_release) with a real TPM; one "case=... code=... message=..." line
 * each. The volume must be enrolled and released to this node under require: [attested].
 *   quote_probe AGENT_YAML VOLUME_ID WRAPPED OTHER_TCTI
 * Cases:
 *   fresh      a quote made for this request on this connection (released)
 *   replayed   that same quote again, on a new connection (its TLS exporter differs)
 *   other-ak   a quote with this request's qualifying data by another TPM's AK (never activated
 *              for this node's EK, so no certificate names it)
 *   garbage    random bytes as the quote's structures (invalid_argument)
 *   narrow     a quote the agent made over PCRs 0, 2, 4 only (the policy requires 7 too)
 *   resettable a quote over PCRs 0, 2, 4, 7 and 16 (resettable by software)
 * and RotateKey (#26 review F5), which must be judged as Release is:
 *   rotate-unattested      BEGIN without a quote (denied under require: [attested])
 *   rotate-release-quote   BEGIN carrying a quote made for a Release of this request
 *   rotate-begin           BEGIN with its own quote (ok: a rotation in progress, never committed)
 *   rotate-commit-unattested  COMMIT of that key without a quote (denied)
 * Exit 0 when every line was printed, 1 otherwise. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "agent.h"
#include "kf_time.h"

/* rel: a Release's answer (a RotateKey's is reported through an empty one: ok). */
static void report(const char *name, int r, const kf_rpc_status *st, const kf_released *rel, const kf_err *err)
{
    if (r != 0)
        printf("case=%s code=transport message=\"%s\"\n", name, err->msg);
    else if (st->code == KF_CONNECT_OK)
        printf("case=%s code=ok status=%s\n", name, rel->pending ? "pending" : "released");
    else
        printf("case=%s code=%s message=\"%s\"\n", name, kf_connect_code_name(st->code), st->message);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: quote_probe AGENT_YAML VOLUME_ID WRAPPED OTHER_TCTI\n");
        return 1;
    }
    kf_err err = {0};
    kfa_ctx ctx = {0};
    if (kfa_config_load(argv[1], &ctx.cfg, &err) != 0 || kfa_identify(&ctx, &err) != 0) {
        fprintf(stderr, "quote_probe: %s\n", err.msg);
        return 1;
    }
    ctx.deadline = kf_monotonic_ms() + 60000;
    Keyfleet__V1__VolumeRef ref = KEYFLEET__V1__VOLUME_REF__INIT;
    ref.id = argv[2];
    ref.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2;
    ref.name = (char *)"";
    kfa_quote q;
    Keyfleet__V1__TpmQuote msg;
    kf_rpc_status st;
    kf_released rel;
    int rc = 1;

    /* fresh */
    int r = kfa_attest(&ctx, "Release", argv[2], "", &q, &msg, &err);
    if (r != 0) {
        fprintf(stderr, "quote_probe: attest: %d %s\n", r, err.msg);
        goto out;
    }
    r = kf_node_release(ctx.client, kfa_receiver(&ctx), ctx.me.name, &ref, argv[3], "", &msg, false, &rel, &st, &err);
    report("fresh", r, &st, &rel, &err);
    kf_released_clear(&rel);

    /* replayed: the same quote on a new connection */
    kfa_client_close_for_tpm(&ctx);
    if (kfa_connect(&ctx, &err) != 0 || kf_rpc_client_connect(ctx.client, &err) != 0) {
        fprintf(stderr, "quote_probe: %s\n", err.msg);
        goto out;
    }
    r = kf_node_release(ctx.client, kfa_receiver(&ctx), ctx.me.name, &ref, argv[3], "", &msg, false, &rel, &st, &err);
    report("replayed", r, &st, &rel, &err);
    kf_released_clear(&rel);

    /* other-ak: this request's qualifying data, quoted by another TPM */
    r = kfa_attest(&ctx, "Release", argv[2], "", &q, &msg, &err);
    kfa_quote other;
    if (r != 0 || kfa_tpm_quote(argv[4], ctx.cfg->tpm_attest_pcrs, q.nonce, &other, &err) != 0) {
        fprintf(stderr, "quote_probe: other TPM: %s\n", err.msg);
        goto out;
    }
    msg.quoted = (ProtobufCBinaryData){.data = other.quoted, .len = other.quoted_len};
    msg.signature = (ProtobufCBinaryData){.data = other.sig, .len = other.sig_len};
    msg.ak_public = (ProtobufCBinaryData){.data = other.ak_pub, .len = other.ak_pub_len};
    msg.pcr_values = (ProtobufCBinaryData){.data = other.values, .len = other.values_len};
    r = kf_node_release(ctx.client, kfa_receiver(&ctx), ctx.me.name, &ref, argv[3], "", &msg, false, &rel, &st, &err);
    report("other-ak", r, &st, &rel, &err);
    kf_released_clear(&rel);

    /* garbage: random structures of plausible sizes */
    static unsigned char junk[4][400];
    RAND_bytes(&junk[0][0], sizeof(junk));
    Keyfleet__V1__TpmQuote bad = KEYFLEET__V1__TPM_QUOTE__INIT;
    bad.quoted = (ProtobufCBinaryData){.data = junk[0], .len = 145};
    bad.signature = (ProtobufCBinaryData){.data = junk[1], .len = 72};
    bad.ak_public = (ProtobufCBinaryData){.data = junk[2], .len = 90};
    bad.pcr_values = (ProtobufCBinaryData){.data = junk[3], .len = 128};
    r = kf_node_release(ctx.client, kfa_receiver(&ctx), ctx.me.name, &ref, argv[3], "", &bad, false, &rel, &st, &err);
    report("garbage", r, &st, &rel, &err);
    kf_released_clear(&rel);

    /* narrow, resettable: the agent chooses what it quotes; the coordinator decides what counts. */
    static const struct {
        const char *name;
        uint32_t pcrs;
    } sets[] = {{"narrow", (1u << 0) | (1u << 2) | (1u << 4)},
                {"resettable", (1u << 0) | (1u << 2) | (1u << 4) | (1u << 7) | (1u << 16)}};
    for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++) {
        ctx.cfg->tpm_attest_pcrs = sets[i].pcrs;
        if (kfa_attest(&ctx, "Release", argv[2], "", &q, &msg, &err) != 0) {
            fprintf(stderr, "quote_probe: attest %s: %s\n", sets[i].name, err.msg);
            goto out;
        }
        r = kf_node_release(ctx.client, kfa_receiver(&ctx), ctx.me.name, &ref, argv[3], "", &msg, false, &rel, &st, &err);
        report(sets[i].name, r, &st, &rel, &err);
        kf_released_clear(&rel);
    }

    /* RotateKey: BEGIN and COMMIT carry the same evidence as Release. */
    ctx.cfg->tpm_attest_pcrs = (1u << 0) | (1u << 2) | (1u << 4) | (1u << 7);
    const char *rid = "0123456789abcdef0123456789abcdef";
    kf_enrolled e;
    const kf_released none = {0};
    r = kf_node_rotate(ctx.client, kfa_receiver(&ctx), ctx.me.name, &ref, false, rid, NULL, NULL, &e, &st, &err);
    report("rotate-unattested", r, &st, &none, &err);
    kf_enrolled_clear(&e);
    if (kfa_attest(&ctx, "Release", argv[2], rid, &q, &msg, &err) != 0)
        goto out;
    r = kf_node_rotate(ctx.client, kfa_receiver(&ctx), ctx.me.name, &ref, false, rid, NULL, &msg, &e, &st, &err);
    report("rotate-release-quote", r, &st, &none, &err);
    kf_enrolled_clear(&e);
    if (kfa_attest(&ctx, "RotateKey", argv[2], rid, &q, &msg, &err) != 0)
        goto out;
    r = kf_node_rotate(ctx.client, kfa_receiver(&ctx), ctx.me.name, &ref, false, rid, NULL, &msg, &e, &st, &err);
    report("rotate-begin", r, &st, &none, &err);
    kf_enrolled done;
    r = r == 0 && st.code == KF_CONNECT_OK
            ? kf_node_rotate(ctx.client, NULL, ctx.me.name, &ref, true, "", e.wrapped, NULL, &done, &st, &err)
            : -EPROTO;
    report("rotate-commit-unattested", r, &st, &none, &err);
    kf_enrolled_clear(&e);
    kf_enrolled_clear(&done);
    rc = 0;
out:
    kf_rpc_client_free(ctx.client);
    kf_seal_receiver_free(ctx.receiver);
    kfa_config_free(ctx.cfg);
    return rc;
}
