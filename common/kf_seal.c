#include "kf_seal.h"

#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kf_secmem.h"

#define RECEIVER_CONTEXTS 4

static size_t put_field(uint8_t *buf, size_t size, size_t o, const char *s)
{
    size_t n = strlen(s);
    if (o == 0 || n > 0xffff || o + 2 + n > size)
        return 0;
    buf[o] = (uint8_t)(n >> 8);
    buf[o + 1] = (uint8_t)n;
    memcpy(buf + o + 2, s, n);
    return o + 2 + n;
}

/* "keyfleet/v1 " LABEL 0x00 */
static size_t put_label(const char *label, uint8_t *buf, size_t size)
{
    static const char prefix[] = "keyfleet/v1 ";
    size_t llen = strlen(label), o = sizeof(prefix) - 1 + llen + 1;
    if (o > size)
        return 0;
    memcpy(buf, prefix, sizeof(prefix) - 1);
    memcpy(buf + sizeof(prefix) - 1, label, llen);
    buf[o - 1] = 0x00;
    return o;
}

size_t kf_seal_info(const char *node, uint8_t *buf, size_t size)
{
    return put_field(buf, size, put_label("session", buf, size), node);
}

size_t kf_seal_aad(const char *purpose, const char *request_id, const char *node, const char *volume_id,
                   uint8_t *buf, size_t size)
{
    size_t o = put_label(purpose, buf, size);
    o = put_field(buf, size, o, request_id);
    o = put_field(buf, size, o, node);
    return put_field(buf, size, o, volume_id);
}

bool kf_seal_session_matches(const kf_seal_session *s, const uint8_t pk[32], const char *node)
{
    return s->ready && s->hpke.seq < KF_SEAL_MAX_SEQ && CRYPTO_memcmp(s->pk, pk, 32) == 0 &&
           strcmp(s->node, node) == 0;
}

int kf_seal_session_begin(kf_seal_session *s, const uint8_t pk[32], const char *node)
{
    kf_seal_session_wipe(s);
    uint8_t info[KF_SEAL_INFO_MAX];
    size_t info_len = kf_seal_info(node, info, sizeof(info));
    if (info_len == 0 || strlen(node) > KF_NAME_MAX)
        return -EINVAL;
    int r = kf_hpke_setup_base_s(KF_SEAL_AEAD, pk, info, info_len, NULL, 0, s->enc, &s->hpke);
    if (r != 0) {
        kf_seal_session_wipe(s);
        return r;
    }
    memcpy(s->pk, pk, 32);
    strcpy(s->node, node);
    s->ready = true;
    return 0;
}

int kf_seal_session_seal(kf_seal_session *s, const uint8_t *aad, size_t aad_len, const uint8_t key[KF_SEAL_KEY_LEN],
                         uint8_t ret_enc[32], uint64_t *ret_seq, uint8_t ret_ct[KF_SEAL_CT_LEN])
{
    if (!s->ready || s->hpke.seq >= KF_SEAL_MAX_SEQ)
        return -EINVAL;
    uint64_t seq = s->hpke.seq;
    int r = kf_hpke_seal(&s->hpke, aad, aad_len, key, KF_SEAL_KEY_LEN, ret_ct);
    if (r != 0)
        return r;
    memcpy(ret_enc, s->enc, 32);
    *ret_seq = seq;
    return 0;
}

void kf_seal_session_wipe(kf_seal_session *s) { OPENSSL_cleanse(s, sizeof(*s)); }

typedef struct receiver_context {
    uint8_t enc[32];
    bool used;
    kf_hpke_ctx hpke;
} receiver_context;

/* Lives inside its own secure buffer. */
struct kf_seal_receiver {
    kf_secbuf *mem;
    uint8_t sk[32];
    uint8_t pk[32];
    uint8_t info[KF_SEAL_INFO_MAX];
    size_t info_len;
    size_t next; /* the context to replace when all are in use */
    receiver_context ctx[RECEIVER_CONTEXTS];
};

/* ikm NULL: a random key pair. */
static int receiver_make(const char *node, const uint8_t *ikm, size_t ikm_len, kf_seal_receiver **ret)
{
    kf_secbuf *mem = kf_secbuf_new(sizeof(kf_seal_receiver));
    if (mem == NULL)
        return -ENOMEM;
    kf_seal_receiver *rx = (kf_seal_receiver *)mem->data;
    rx->mem = mem;
    rx->info_len = kf_seal_info(node, rx->info, sizeof(rx->info));
    int r = rx->info_len == 0                     ? -EINVAL
            : ikm != NULL ? kf_hpke_derive_keypair(ikm, ikm_len, rx->sk, rx->pk)
                          : kf_hpke_generate_keypair(rx->sk, rx->pk);
    if (r != 0) {
        kf_secbuf_free(mem);
        return r;
    }
    *ret = rx;
    return 0;
}

int kf_seal_receiver_new(const char *node, kf_seal_receiver **ret) { return receiver_make(node, NULL, 0, ret); }

int kf_seal_receiver_derive(const char *node, const uint8_t *ikm, size_t ikm_len, kf_seal_receiver **ret)
{
    return ikm == NULL ? -EINVAL : receiver_make(node, ikm, ikm_len, ret);
}

void kf_seal_receiver_free(kf_seal_receiver *rx)
{
    if (rx != NULL)
        kf_secbuf_free(rx->mem); /* wipes rx itself */
}

const uint8_t *kf_seal_receiver_public_key(const kf_seal_receiver *rx) { return rx->pk; }

/* The context for enc, set up (one DH) when it is new. */
static receiver_context *context_for(kf_seal_receiver *rx, const uint8_t enc[32])
{
    for (size_t i = 0; i < RECEIVER_CONTEXTS; i++)
        if (rx->ctx[i].used && CRYPTO_memcmp(rx->ctx[i].enc, enc, 32) == 0)
            return &rx->ctx[i];
    receiver_context *c = &rx->ctx[rx->next];
    rx->next = (rx->next + 1) % RECEIVER_CONTEXTS;
    OPENSSL_cleanse(c, sizeof(*c));
    if (kf_hpke_setup_base_r(KF_SEAL_AEAD, enc, rx->sk, rx->info, rx->info_len, &c->hpke) != 0)
        return NULL;
    memcpy(c->enc, enc, 32);
    c->used = true;
    return c;
}

int kf_seal_receiver_open(kf_seal_receiver *rx, const uint8_t *enc, size_t enc_len, uint64_t seq, const uint8_t *aad,
                          size_t aad_len, const uint8_t *ct, size_t ct_len, uint8_t ret_key[KF_SEAL_KEY_LEN])
{
    if (enc_len != 32 || ct_len != KF_SEAL_CT_LEN || seq >= KF_SEAL_MAX_SEQ)
        return -EBADMSG;
    receiver_context *c = context_for(rx, enc);
    if (c == NULL)
        return -EBADMSG;
    /* The sender says which sequence number it used; answers on one connection may come in any order. */
    c->hpke.seq = seq;
    return kf_hpke_open(&c->hpke, aad, aad_len, ct, ct_len, ret_key) == 0 ? 0 : -EBADMSG;
}
