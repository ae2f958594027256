/* libFuzzer: the coordinator's answers as the agent reads them. The first byte picks the answer
 * (Enroll, Release, RotateKey, EnrollRecoveryKey, Heartbeat) and how it was asked; the rest is its
 * protobuf body, unpacked as kf_rpc_call does and read by the agent's own code
 * (common/kf_node_answer.c, kfa_heartbeat_answer and kfa_heartbeat_erase in agent/state.c).
 * Sealed keys are opened with a fixed recipient key, so the seeds' keys open and the HPKE path
 * gets the mutations. Whatever a reading accepts must be what the agent relies on: a 32-byte key,
 * a wrapped key, PCR numbers below 24, bounded lists.
 * The seeds (tests/fuzz/corpus/fuzz_agent_answer) are written by this target:
 *   KF_FUZZ_ANSWER_SEEDS=tests/fuzz/corpus/fuzz_agent_answer build-fuzz/tests/fuzz/fuzz_agent_answer */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "kf_log.h"
#include "kf_node_check.h"
#include "kf_node_client.h"
#include "kf_seal.h"

#define NODE "node-1.example"
#define VOLUME "0b9c6a2e-1f3d-4c5b-9a8e-7d6c5b4a3f21"
#define REQ "7f3e2d1c0b0a09080706050403020100"
enum { ENROLL, RELEASE, ROTATE, RECOVERY, HEARTBEAT, KINDS };

static kf_seal_receiver *rx;
static const uint8_t ikm[32] = "keyfleet fuzz_agent_answer ikm!";

static void check_key(const kf_secbuf *key)
{
    if (key == NULL || key->len != KF_SEAL_KEY_LEN)
        abort();
}

static void check_enrolled(const kf_enrolled *e, bool key)
{
    if (e->wrapped == NULL || e->n_tpm_pcrs > 24)
        abort();
    if (key)
        check_key(e->key);
    else if (e->key != NULL)
        abort();
    for (size_t i = 0; i < e->n_tpm_pcrs; i++)
        if (e->tpm_pcrs[i] >= 24)
            abort();
}

/* The erase step (device I/O) is not run here: this reads every id the answer ordered erased,
 * so ASan sees a bad string the real erase would be handed. */
static void erase_reads_ids(kfa_ctx *ctx, char *const *ids, size_t n_ids, char *const *all_ids, size_t n_all)
{
    (void)ctx;
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++)
        total += strlen(ids[i]);
    for (size_t i = 0; i < n_all; i++)
        total += strlen(all_ids[i]);
    if (total == SIZE_MAX)
        abort();
}

static void heartbeat(const Keyfleet__V1__HeartbeatResponse *resp, bool quoted)
{
    static kfa_ctx ctx;
    ctx.erase = erase_reads_ids;
    bool lock;
    kfa_heartbeat_answer(&ctx, resp, quoted, &lock);
    if (ctx.n_recovery_replace > 100 || lock != resp->lock)
        abort();
    (void)kfa_heartbeat_erase(&ctx, resp);
    for (size_t i = 0; i < ctx.n_recovery_replace; i++) {
        (void)strlen(ctx.recovery_replace[i]);
        free(ctx.recovery_replace[i]);
    }
    ctx.n_recovery_replace = 0;
}

/* 0 when the agent accepts the answer. */
static int read_answer(int kind, uint8_t how, const ProtobufCMessage *m)
{
    bool alt = (how & 0x80) != 0;
    kf_err err = {0};
    kf_enrolled e;
    int r = 0;
    switch (kind) {
    case ENROLL:
        if ((r = kf_node_enroll_answer((const Keyfleet__V1__EnrollResponse *)m, rx, NODE, VOLUME, REQ, &e, &err)) == 0)
            check_enrolled(&e, true);
        kf_enrolled_clear(&e);
        break;
    case RELEASE: {
        kf_released rel;
        if ((r = kf_node_release_answer((const Keyfleet__V1__ReleaseResponse *)m, rx, NODE, VOLUME, alt ? "" : REQ,
                                        &rel, &err)) == 0) {
            if (!kf_request_id_valid(rel.request_id) || (!alt && strcmp(rel.request_id, REQ) != 0))
                abort();
            if (rel.pending ? rel.key != NULL : (check_key(rel.key), false))
                abort();
        }
        kf_released_clear(&rel);
        break;
    }
    case ROTATE:
        if ((r = kf_node_rotate_answer((const Keyfleet__V1__RotateKeyResponse *)m, rx, alt, NODE, VOLUME, REQ, &e,
                                       &err)) == 0)
            check_enrolled(&e, !alt);
        kf_enrolled_clear(&e);
        break;
    case RECOVERY: {
        kf_secbuf *key = NULL;
        bool replaced;
        r = kf_node_recovery_answer((const Keyfleet__V1__EnrollRecoveryKeyResponse *)m, rx, !alt, NODE, VOLUME,
                                    REQ, &key, &replaced, &err);
        if (r == 0 && !alt)
            check_key(key);
        else if (key != NULL)
            abort();
        kf_secbuf_free(key);
        break;
    }
    default:
        heartbeat((const Keyfleet__V1__HeartbeatResponse *)m, alt);
    }
    return r;
}

static void free_rx(void) { kf_seal_receiver_free(rx); }

/* The lines are formatted (the answer's text goes into them) but not printed. */
static void quiet(kf_log_level level, const char *line, void *userdata)
{
    (void)level;
    (void)userdata;
    if (strlen(line) > 1 << 20)
        abort();
}

static const ProtobufCMessageDescriptor *descriptor(int kind)
{
    static const ProtobufCMessageDescriptor *const d[KINDS] = {
        &keyfleet__v1__enroll_response__descriptor, &keyfleet__v1__release_response__descriptor,
        &keyfleet__v1__rotate_key_response__descriptor, &keyfleet__v1__enroll_recovery_key_response__descriptor,
        &keyfleet__v1__heartbeat_response__descriptor};
    return d[kind];
}

/* Seeds: answers as a coordinator sends them, keys sealed to rx. */
static Keyfleet__V1__SealedKey seal(kf_seal_session *s, const char *purpose, uint8_t enc[32], uint8_t ct[48])
{
    Keyfleet__V1__SealedKey sk = KEYFLEET__V1__SEALED_KEY__INIT;
    uint8_t aad[KF_SEAL_AAD_MAX], key[KF_SEAL_KEY_LEN] = {1, 2, 3};
    size_t aad_len = kf_seal_aad(purpose, REQ, NODE, VOLUME, aad, sizeof(aad));
    uint64_t seq;
    if (aad_len == 0 || kf_seal_session_seal(s, aad, aad_len, key, enc, &seq, ct) != 0)
        abort();
    sk.kem_id = KF_HPKE_KEM_X25519_SHA256;
    sk.kdf_id = KF_HPKE_KDF_HKDF_SHA256;
    sk.aead_id = KF_SEAL_AEAD;
    sk.enc.data = enc;
    sk.enc.len = 32;
    sk.ciphertext.data = ct;
    sk.ciphertext.len = KF_SEAL_CT_LEN;
    sk.seq = seq;
    return sk;
}

static void put(const char *dir, const char *name, uint8_t how, const ProtobufCMessage *m)
{
    static uint8_t buf[4096];
    size_t n = protobuf_c_message_get_packed_size(m);
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (n + 1 > sizeof(buf) || f == NULL)
        abort();
    buf[0] = how;
    protobuf_c_message_pack(m, buf + 1);
    if (fwrite(buf, 1, n + 1, f) != n + 1 || fclose(f) != 0)
        abort();
    /* every seed is an answer the agent accepts (its key opens) */
    ProtobufCMessage *back = protobuf_c_message_unpack(descriptor((how & 0x7f) % KINDS), NULL, n, buf + 1);
    if (back == NULL || read_answer((how & 0x7f) % KINDS, how, back) != 0) {
        fprintf(stderr, "seed %s is refused\n", name);
        abort();
    }
    protobuf_c_message_free_unpacked(back, NULL);
}

static void write_seeds(const char *dir)
{
    static kf_seal_session s;
    uint8_t enc[4][32], ct[4][48];
    if (kf_seal_session_begin(&s, kf_seal_receiver_public_key(rx), NODE) != 0)
        abort();
    Keyfleet__V1__SealedKey sk[4] = {seal(&s, "enroll", enc[0], ct[0]), seal(&s, "release", enc[1], ct[1]),
                                     seal(&s, "rotate", enc[2], ct[2]), seal(&s, "recovery", enc[3], ct[3])};
    uint32_t pcrs[] = {0, 7, 11, 30};
    Keyfleet__V1__EnrollResponse en = KEYFLEET__V1__ENROLL_RESPONSE__INIT;
    en.sealed_key = &sk[0];
    en.wrapped_key = (char *)"vault:kek:v1:AAAAAAAAAAAAAAAAAAAAAA:dmF1bHQ6djE6YWJj";
    en.offline_fallback_allowed = true;
    en.tpm_pcrs = pcrs;
    en.n_tpm_pcrs = 4;
    put(dir, "enroll", ENROLL, &en.base);
    Keyfleet__V1__ReleaseResponse rel = KEYFLEET__V1__RELEASE_RESPONSE__INIT;
    rel.status = KEYFLEET__V1__RELEASE_STATUS__RELEASE_STATUS_RELEASED;
    rel.request_id = (char *)REQ;
    rel.sealed_key = &sk[1];
    rel.audit_seq = 42;
    rel.rewrapped_key = (char *)"vault:kek:v2:AAAAAAAAAAAAAAAAAAAAAA:dmF1bHQ6djI6YWJj";
    rel.recovery_replace = true;
    put(dir, "release", RELEASE, &rel.base);
    Keyfleet__V1__ReleaseResponse pend = KEYFLEET__V1__RELEASE_RESPONSE__INIT;
    Keyfleet__V1__Timestamp at = KEYFLEET__V1__TIMESTAMP__INIT;
    at.seconds = 1700000000;
    pend.status = KEYFLEET__V1__RELEASE_STATUS__RELEASE_STATUS_PENDING;
    pend.request_id = (char *)REQ;
    pend.retry_after_ms = 5000;
    pend.expires_at = &at;
    put(dir, "release-pending", RELEASE | 0x80, &pend.base);
    Keyfleet__V1__RotateKeyResponse rot = KEYFLEET__V1__ROTATE_KEY_RESPONSE__INIT;
    rot.sealed_key = &sk[2];
    rot.wrapped_key = en.wrapped_key;
    rot.tpm_pcrs = pcrs;
    rot.n_tpm_pcrs = 2;
    put(dir, "rotate", ROTATE, &rot.base);
    put(dir, "rotate-commit", ROTATE | 0x80, &rot.base);
    Keyfleet__V1__EnrollRecoveryKeyResponse rec = KEYFLEET__V1__ENROLL_RECOVERY_KEY_RESPONSE__INIT;
    rec.sealed_key = &sk[3];
    rec.replaced = true;
    put(dir, "recovery", RECOVERY, &rec.base);
    put(dir, "recovery-zfs", RECOVERY | 0x80, &rec.base);
    char *ids[] = {(char *)VOLUME, (char *)"tank/secure"};
    Keyfleet__V1__HeartbeatResponse hb = KEYFLEET__V1__HEARTBEAT_RESPONSE__INIT;
    hb.attestation = (char *)"pcr 7 does not match";
    hb.dead_man_after_s = 86400;
    hb.recovery_replace = ids;
    hb.n_recovery_replace = 2;
    hb.erase_volume_ids = ids;
    hb.n_erase_volume_ids = 2;
    hb.erase_all_volume_ids = ids;
    hb.n_erase_all_volume_ids = 1;
    put(dir, "heartbeat", HEARTBEAT | 0x80, &hb.base);
    Keyfleet__V1__HeartbeatResponse lock = KEYFLEET__V1__HEARTBEAT_RESPONSE__INIT;
    lock.lock = true;
    lock.attested = true;
    put(dir, "heartbeat-lock", HEARTBEAT, &lock.base);
    kf_seal_session_wipe(&s);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (kf_seal_receiver_derive(NODE, ikm, sizeof(ikm), &rx) != 0)
        abort();
    atexit(free_rx);
    kf_log_set_sink(quiet, NULL);
    const char *dir = getenv("KF_FUZZ_ANSWER_SEEDS");
    if (dir != NULL) {
        write_seeds(dir);
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    int kind = (data[0] & 0x7f) % KINDS;
    ProtobufCMessage *m = protobuf_c_message_unpack(descriptor(kind), NULL, size - 1, data + 1);
    if (m == NULL)
        return 0;
    read_answer(kind, data[0], m);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
