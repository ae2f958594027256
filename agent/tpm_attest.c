#include "tpm_attest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "tpm_esys.h"

typedef kfa_tpm tpm;

/* TCG EK Credential Profile, template L-1: RSA 2048, policy PolicySecret(TPM_RH_ENDORSEMENT). */
static const uint8_t EK_POLICY[32] = {0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc,
                                      0x8d, 0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52,
                                      0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};

static int create_ek(tpm *t, ESYS_TR *ret, TPM2B_PUBLIC **ret_pub, kf_err *err)
{
    TPM2B_PUBLIC tmpl = {.publicArea = {
                             .type = TPM2_ALG_RSA,
                             .nameAlg = TPM2_ALG_SHA256,
                             .objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                                 TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_ADMINWITHPOLICY |
                                                 TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT,
                             .parameters.rsaDetail = {.symmetric = {.algorithm = TPM2_ALG_AES,
                                                                    .keyBits.aes = 128,
                                                                    .mode.aes = TPM2_ALG_CFB},
                                                      .scheme = {.scheme = TPM2_ALG_NULL},
                                                      .keyBits = 2048,
                                                      .exponent = 0},
                             .unique.rsa = {.size = 256},
                         }};
    tmpl.publicArea.authPolicy.size = 32;
    memcpy(tmpl.publicArea.authPolicy.buffer, EK_POLICY, 32);
    TPM2B_SENSITIVE_CREATE sens = {0};
    TPM2B_DATA outside = {0};
    TPML_PCR_SELECTION pcrs = {0};
    TSS2_RC rc = sym_Esys_CreatePrimary(t->esys, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                        &sens, &tmpl, &outside, &pcrs, ret, ret_pub, NULL, NULL, NULL);
    return rc == TSS2_RC_SUCCESS ? 0 : kfa_tpm_error(err, "creating the endorsement key", rc);
}

/* The AK: a restricted ECDSA-SHA256 P-256 signing primary under the endorsement hierarchy. */
static int create_ak(tpm *t, ESYS_TR *ret, TPM2B_PUBLIC **ret_pub, kf_err *err)
{
    TPM2B_PUBLIC tmpl = {.publicArea = {
                             .type = TPM2_ALG_ECC,
                             .nameAlg = TPM2_ALG_SHA256,
                             .objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                                 TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                                 TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT,
                             .parameters.eccDetail = {.symmetric = {.algorithm = TPM2_ALG_NULL},
                                                      .scheme = {.scheme = TPM2_ALG_ECDSA,
                                                                 .details.ecdsa.hashAlg = TPM2_ALG_SHA256},
                                                      .curveID = TPM2_ECC_NIST_P256,
                                                      .kdf = {.scheme = TPM2_ALG_NULL}},
                         }};
    TPM2B_SENSITIVE_CREATE sens = {0};
    TPM2B_DATA outside = {0};
    TPML_PCR_SELECTION pcrs = {0};
    TSS2_RC rc = sym_Esys_CreatePrimary(t->esys, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                        &sens, &tmpl, &outside, &pcrs, ret, ret_pub, NULL, NULL, NULL);
    return rc == TSS2_RC_SUCCESS ? 0 : kfa_tpm_error(err, "creating the attestation key", rc);
}

static int marshal_public(const TPM2B_PUBLIC *p, unsigned char *out, size_t cap, size_t *len, kf_err *err)
{
    size_t off = 0;
    if (sym_Tss2_MU_TPM2B_PUBLIC_Marshal(p, out, cap, &off) != TSS2_RC_SUCCESS)
        return kf_err_set(err, -EIO, "marshalling a TPM public area");
    *len = off;
    return 0;
}

/* The EK certificate from its NV index, where the TPM's maker (or swtpm_setup) put one. */
#define EK_CERT_RSA_NV 0x01c00002
static void read_ek_cert(tpm *t, kf_tpm_evidence *ev)
{
    ESYS_TR nv = ESYS_TR_NONE;
    TPM2B_NV_PUBLIC *nvpub = NULL;
    if (sym_Esys_TR_FromTPMPublic(t->esys, EK_CERT_RSA_NV, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &nv) !=
            TSS2_RC_SUCCESS ||
        sym_Esys_NV_ReadPublic(t->esys, nv, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &nvpub, NULL) != TSS2_RC_SUCCESS)
        goto out;
    size_t size = nvpub->nvPublic.dataSize;
    unsigned char *buf = size > 0 && size <= 4096 ? malloc(size) : NULL;
    if (buf == NULL)
        goto out;
    for (size_t off = 0; off < size;) {
        uint16_t chunk = (uint16_t)(size - off > 512 ? 512 : size - off);
        TPM2B_MAX_NV_BUFFER *data = NULL;
        if (sym_Esys_NV_Read(t->esys, nv, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, chunk, (uint16_t)off,
                             &data) != TSS2_RC_SUCCESS ||
            data->size != chunk) {
            sym_Esys_Free(data);
            free(buf);
            goto out;
        }
        memcpy(buf + off, data->buffer, chunk);
        off += chunk;
        sym_Esys_Free(data);
    }
    /* The index may be larger than the DER it holds: keep the DER's own length. */
    size_t der_len = size;
    if (size >= 4 && buf[0] == 0x30 && buf[1] == 0x82)
        der_len = 4 + ((size_t)buf[2] << 8 | buf[3]);
    ev->ek_cert = buf;
    ev->ek_cert_len = der_len <= size ? der_len : size;
out:
    sym_Esys_Free(nvpub);
    if (nv != ESYS_TR_NONE)
        sym_Esys_TR_Close(t->esys, &nv);
}

int kfa_tpm_evidence(const char *tcti, const kf_tpmkey_info *key, const unsigned char *q, size_t q_len,
                     kf_tpm_evidence *ev, kf_err *err)
{
    if (q_len > 64)
        return kf_err_set(err, -EINVAL, "qualifying data longer than 64 bytes");
    tpm t;
    int r = kfa_tpm_open(&t, tcti, err);
    if (r != 0)
        return r;
    TPM2B_PUBLIC *ek_pub = NULL, *ak_pub = NULL, key_pub = {0};
    TPM2B_PRIVATE key_priv = {0};
    TPM2B_ATTEST *attest = NULL;
    TPMT_SIGNATURE *sig = NULL;
    ESYS_TR *ek = kfa_tpm_track(&t);
    if ((r = create_ek(&t, ek, &ek_pub, err)) != 0 ||
        (r = marshal_public(ek_pub, ev->ek_pub, sizeof(ev->ek_pub), &ev->ek_pub_len, err)) != 0)
        goto out;
    sym_Esys_FlushContext(t.esys, *ek); /* three transient slots on swtpm: keep the EK's public only */
    *ek = ESYS_TR_NONE;
    read_ek_cert(&t, ev);
    ESYS_TR *ak = kfa_tpm_track(&t), *srk = kfa_tpm_track(&t), *obj = kfa_tpm_track(&t);
    if ((r = create_ak(&t, ak, &ak_pub, err)) != 0 ||
        (r = marshal_public(ak_pub, ev->ak_pub, sizeof(ev->ak_pub), &ev->ak_pub_len, err)) != 0 ||
        (r = kfa_tpm_create_srk(&t, srk, err)) != 0)
        goto out;
    size_t off = 0;
    if (sym_Tss2_MU_TPM2B_PUBLIC_Unmarshal(key->pub, key->pub_len, &off, &key_pub) != TSS2_RC_SUCCESS ||
        (off = 0, sym_Tss2_MU_TPM2B_PRIVATE_Unmarshal(key->priv, key->priv_len, &off, &key_priv)) != TSS2_RC_SUCCESS) {
        r = kf_err_set(err, -EINVAL, "the TPM key file's public or private area does not unmarshal");
        goto out;
    }
    TSS2_RC rc = sym_Esys_Load(t.esys, *srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &key_priv, &key_pub, obj);
    if (rc != TSS2_RC_SUCCESS) {
        r = kfa_tpm_error(err, "loading the node key (made by another TPM?)", rc);
        goto out;
    }
    sym_Esys_FlushContext(t.esys, *srk);
    *srk = ESYS_TR_NONE;
    TPM2B_DATA qual = {.size = (uint16_t)q_len};
    memcpy(qual.buffer, q, q_len);
    TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_NULL}; /* the AK's own: ECDSA-SHA256 */
    rc = sym_Esys_Certify(t.esys, *obj, *ak, ESYS_TR_PASSWORD, ESYS_TR_PASSWORD, ESYS_TR_NONE, &qual, &scheme, &attest,
                          &sig);
    if (rc != TSS2_RC_SUCCESS) {
        r = kfa_tpm_error(err, "certifying the node key", rc);
        goto out;
    }
    if (attest->size > sizeof(ev->attest) || key->pub_len > sizeof(ev->key_pub)) {
        r = kf_err_set(err, -EIO, "TPM2_Certify: attestation too large");
        goto out;
    }
    memcpy(ev->attest, attest->attestationData, attest->size);
    ev->attest_len = attest->size;
    memcpy(ev->key_pub, key->pub, key->pub_len);
    ev->key_pub_len = key->pub_len;
    off = 0;
    if (sym_Tss2_MU_TPMT_SIGNATURE_Marshal(sig, ev->sig, sizeof(ev->sig), &off) != TSS2_RC_SUCCESS) {
        r = kf_err_set(err, -EIO, "marshalling the certify signature");
        goto out;
    }
    ev->sig_len = off;
    r = 0;
out:
    sym_Esys_Free(ek_pub);
    sym_Esys_Free(ak_pub);
    sym_Esys_Free(attest);
    sym_Esys_Free(sig);
    kfa_tpm_close(&t);
    return r;
}

int kfa_tpm_activate(const char *tcti, const unsigned char *id_object, size_t id_len, const unsigned char *enc_secret,
                     size_t es_len, unsigned char *out, size_t *out_len, kf_err *err)
{
    TPM2B_ID_OBJECT cred = {0};
    TPM2B_ENCRYPTED_SECRET sec = {0};
    if (id_len < 2 || id_len - 2 != (size_t)(id_object[0] << 8 | id_object[1]) ||
        id_len - 2 > sizeof(cred.credential) || es_len < 2 ||
        es_len - 2 != (size_t)(enc_secret[0] << 8 | enc_secret[1]) || es_len - 2 > sizeof(sec.secret))
        return kf_err_set(err, -EINVAL, "malformed credential");
    cred.size = (uint16_t)(id_len - 2);
    memcpy(cred.credential, id_object + 2, cred.size);
    sec.size = (uint16_t)(es_len - 2);
    memcpy(sec.secret, enc_secret + 2, sec.size);
    tpm t;
    int r = kfa_tpm_open(&t, tcti, err);
    if (r != 0)
        return r;
    ESYS_TR *ek = kfa_tpm_track(&t), *ak = kfa_tpm_track(&t), *session = kfa_tpm_track(&t);
    TPM2B_DIGEST *cert_info = NULL;
    if ((r = create_ek(&t, ek, NULL, err)) != 0 || (r = create_ak(&t, ak, NULL, err)) != 0)
        goto out;
    TPMT_SYM_DEF sym = {.algorithm = TPM2_ALG_NULL};
    TSS2_RC rc = sym_Esys_StartAuthSession(t.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                           ESYS_TR_NONE, NULL, TPM2_SE_POLICY, &sym, TPM2_ALG_SHA256, session);
    if (rc == TSS2_RC_SUCCESS)
        rc = sym_Esys_PolicySecret(t.esys, ESYS_TR_RH_ENDORSEMENT, *session, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                   ESYS_TR_NONE, NULL, NULL, NULL, 0, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        r = kfa_tpm_error(err, "authorizing the endorsement key", rc);
        goto out;
    }
    rc = sym_Esys_ActivateCredential(t.esys, *ak, *ek, ESYS_TR_PASSWORD, *session, ESYS_TR_NONE, &cred, &sec,
                                     &cert_info);
    if (rc == TSS2_RC_SUCCESS)
        *session = ESYS_TR_NONE; /* a policy session without continueSession ends with the command */
    if (rc != TSS2_RC_SUCCESS) {
        r = kfa_tpm_error(err, "activating the credential (made for another TPM?)", rc);
        goto out;
    }
    if (cert_info->size > 64) {
        r = kf_err_set(err, -EIO, "credential secret too long");
        goto out;
    }
    memcpy(out, cert_info->buffer, cert_info->size);
    *out_len = cert_info->size;
    r = 0;
out:
    if (cert_info != NULL)
        OPENSSL_cleanse(cert_info->buffer, sizeof(cert_info->buffer));
    sym_Esys_Free(cert_info);
    kfa_tpm_close(&t);
    return r;
}

int kfa_tpm_quote(const char *tcti, uint32_t mask, const unsigned char q[32], kfa_quote *ret, kf_err *err)
{
    if (mask == 0 || mask >= (1u << 24))
        return kf_err_set(err, -EINVAL, "the PCRs to quote must be among 0..23");
    memset(ret, 0, sizeof(*ret));
    tpm t;
    int r = kfa_tpm_open(&t, tcti, err);
    if (r != 0)
        return r;
    TPM2B_PUBLIC *ak_pub = NULL;
    TPM2B_ATTEST *quoted = NULL;
    TPMT_SIGNATURE *sig = NULL;
    ESYS_TR *ak = kfa_tpm_track(&t);
    if ((r = create_ak(&t, ak, &ak_pub, err)) != 0 ||
        (r = marshal_public(ak_pub, ret->ak_pub, sizeof(ret->ak_pub), &ret->ak_pub_len, err)) != 0)
        goto out;
    TPML_PCR_SELECTION sel = {.count = 1};
    sel.pcrSelections[0].hash = TPM2_ALG_SHA256;
    sel.pcrSelections[0].sizeofSelect = 3;
    for (unsigned i = 0; i < 3; i++)
        sel.pcrSelections[0].pcrSelect[i] = (uint8_t)(mask >> (8 * i));
    TPM2B_DATA qual = {.size = 32};
    memcpy(qual.buffer, q, 32);
    TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_NULL}; /* the AK's own: ECDSA-SHA256 */
    TSS2_RC rc = sym_Esys_Quote(t.esys, *ak, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &qual, &scheme, &sel,
                                &quoted, &sig);
    if (rc != TSS2_RC_SUCCESS) {
        r = kfa_tpm_error(err, "quoting the PCRs", rc);
        goto out;
    }
    size_t off = 0;
    if (quoted->size > sizeof(ret->quoted) ||
        sym_Tss2_MU_TPMT_SIGNATURE_Marshal(sig, ret->sig, sizeof(ret->sig), &off) != TSS2_RC_SUCCESS) {
        r = kf_err_set(err, -EIO, "TPM2_Quote: attestation too large");
        goto out;
    }
    ret->sig_len = off;
    memcpy(ret->quoted, quoted->attestationData, quoted->size);
    ret->quoted_len = quoted->size;
    /* The values: TPM2_PCR_Read returns at most 8 digests a call; ask again for the rest. */
    unsigned char values[24][32];
    uint32_t have = 0;
    for (int round = 0; round < 24 && have != mask; round++) {
        TPML_PCR_SELECTION want = sel, *got_sel = NULL;
        for (unsigned i = 0; i < 3; i++)
            want.pcrSelections[0].pcrSelect[i] = (uint8_t)((mask & ~have) >> (8 * i));
        TPML_DIGEST *digests = NULL;
        UINT32 counter = 0;
        rc = sym_Esys_PCR_Read(t.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &want, &counter, &got_sel, &digests);
        uint32_t got = 0;
        if (rc == TSS2_RC_SUCCESS && got_sel->count == 1 && got_sel->pcrSelections[0].hash == TPM2_ALG_SHA256)
            for (unsigned i = 0; i < 3; i++)
                got |= (uint32_t)got_sel->pcrSelections[0].pcrSelect[i] << (8 * i);
        size_t k = 0;
        for (unsigned i = 0; i < 24 && rc == TSS2_RC_SUCCESS; i++)
            if ((got & (1u << i)) && k < digests->count && digests->digests[k].size == 32)
                memcpy(values[i], digests->digests[k++].buffer, 32);
        bool ok = rc == TSS2_RC_SUCCESS && got != 0 && (got & ~mask) == 0 && k == (size_t)__builtin_popcount(got);
        sym_Esys_Free(got_sel);
        sym_Esys_Free(digests);
        if (!ok) {
            r = rc != TSS2_RC_SUCCESS ? kfa_tpm_error(err, "reading the PCRs", rc)
                                      : kf_err_set(err, -EIO, "TPM2_PCR_Read: the TPM has no SHA-256 bank for these PCRs");
            goto out;
        }
        have |= got;
    }
    for (unsigned i = 0; i < 24; i++)
        if (mask & (1u << i)) {
            memcpy(ret->values + ret->values_len, values[i], 32);
            ret->values_len += 32;
        }
    r = have == mask ? 0 : kf_err_set(err, -EIO, "TPM2_PCR_Read did not return every PCR");
out:
    sym_Esys_Free(ak_pub);
    sym_Esys_Free(quoted);
    sym_Esys_Free(sig);
    kfa_tpm_close(&t);
    return r;
}
