#include "tpm2.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "tpm_esys.h"

#define BLOB_PREFIX "kftpm1:"

/* The objects this file holds, flushed by tpm_close with everything else (tpm_esys.h). */
typedef struct tpm {
    kfa_tpm k;
    ESYS_TR *primary, *object, *session;
} tpm;

static int tpm_open(tpm *t, const char *tcti, kf_err *err)
{
    int r = kfa_tpm_open(&t->k, tcti, err);
    if (r == 0) {
        t->primary = kfa_tpm_track(&t->k);
        t->object = kfa_tpm_track(&t->k);
        t->session = kfa_tpm_track(&t->k);
    }
    return r;
}

static void tpm_close(tpm *t)
{
    kfa_tpm_close(&t->k);
}

static void pcr_selection(const uint32_t *pcrs, size_t n, TPML_PCR_SELECTION *sel)
{
    memset(sel, 0, sizeof(*sel));
    sel->count = 1;
    sel->pcrSelections[0].hash = TPM2_ALG_SHA256;
    sel->pcrSelections[0].sizeofSelect = 3;
    for (size_t i = 0; i < n; i++)
        if (pcrs[i] < 24)
            sel->pcrSelections[0].pcrSelect[pcrs[i] / 8] |= (uint8_t)(1u << (pcrs[i] % 8));
}

/* A policy session bound to the current values of the selected PCRs (trial: only the digest). */
static int pcr_policy(tpm *t, TPM2_SE type, const TPML_PCR_SELECTION *sel, TPM2B_DIGEST **ret_digest, kf_err *err)
{
    TPMT_SYM_DEF sym = {.algorithm = TPM2_ALG_NULL};
    TSS2_RC rc = sym_Esys_StartAuthSession(t->k.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                       NULL, type, &sym, TPM2_ALG_SHA256, t->session);
    if (rc != TSS2_RC_SUCCESS)
        return kfa_tpm_error(err, "start session", rc);
    TPM2B_DIGEST empty = {0}; /* empty pcrDigest: bind to the current values */
    rc = sym_Esys_PolicyPCR(t->k.esys, *t->session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &empty, sel);
    if (rc != TSS2_RC_SUCCESS)
        return kfa_tpm_error(err, "PolicyPCR", rc);
    if (ret_digest != NULL &&
        (rc = sym_Esys_PolicyGetDigest(t->k.esys, *t->session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ret_digest)) !=
            TSS2_RC_SUCCESS)
        return kfa_tpm_error(err, "PolicyGetDigest", rc);
    return 0;
}

static int do_unseal(const char *tcti, const char *blob, kf_secbuf **ret_key, kf_err *err)
{
    if (strncmp(blob, BLOB_PREFIX, sizeof(BLOB_PREFIX) - 1) != 0)
        return kf_err_set(err, -EBADMSG, "TPM blob: unknown format");
    const char *b64 = blob + sizeof(BLOB_PREFIX) - 1;
    size_t b64_len = strlen(b64);
    if (b64_len == 0 || b64_len % 4 != 0 || b64_len > KFA_TPM_BLOB_MAX)
        return kf_err_set(err, -EBADMSG, "TPM blob: malformed");
    uint8_t raw[KFA_TPM_BLOB_MAX];
    int n = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)b64_len);
    if (n < 2)
        return kf_err_set(err, -EBADMSG, "TPM blob: malformed");
    n -= (b64[b64_len - 1] == '=') + (b64[b64_len - 2] == '=');
    size_t n_pcrs = raw[0], off = 1 + n_pcrs;
    if (off > (size_t)n || n_pcrs > 24)
        return kf_err_set(err, -EBADMSG, "TPM blob: malformed");
    uint32_t pcrs[24];
    for (size_t i = 0; i < n_pcrs; i++)
        pcrs[i] = raw[1 + i];
    TPM2B_PUBLIC pub = {0};
    TPM2B_PRIVATE priv = {0};
    if (sym_Tss2_MU_TPM2B_PUBLIC_Unmarshal(raw, (size_t)n, &off, &pub) != TSS2_RC_SUCCESS ||
        sym_Tss2_MU_TPM2B_PRIVATE_Unmarshal(raw, (size_t)n, &off, &priv) != TSS2_RC_SUCCESS || off != (size_t)n)
        return kf_err_set(err, -EBADMSG, "TPM blob: malformed");
    tpm t;
    int r = tpm_open(&t, tcti, err);
    if (r != 0)
        return r;
    TPML_PCR_SELECTION sel;
    pcr_selection(pcrs, n_pcrs, &sel);
    TSS2_RC rc;
    if ((r = kfa_tpm_create_srk(&t.k, t.primary, err)) == 0) {
        rc = sym_Esys_Load(t.k.esys, *t.primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &priv, &pub, t.object);
        if (rc != TSS2_RC_SUCCESS)
            r = kfa_tpm_error(err, "load (is this the TPM the key was sealed to?)", rc);
    }
    if (r == 0)
        r = pcr_policy(&t, TPM2_SE_POLICY, &sel, NULL, err);
    TPM2B_SENSITIVE_DATA *out = NULL;
    if (r == 0) {
        rc = sym_Esys_Unseal(t.k.esys, *t.object, *t.session, ESYS_TR_NONE, ESYS_TR_NONE, &out);
        if ((rc & 0xff) == (TPM2_RC_POLICY_FAIL & 0xff) && (rc & TPM2_RC_FMT1))
            r = kf_err_set(err, -EACCES, "TPM refused to unseal: the PCR values changed since the key was sealed "
                                         "(firmware, boot loader or Secure Boot state)");
        else if (rc != TSS2_RC_SUCCESS)
            r = kfa_tpm_error(err, "unseal", rc);
    }
    if (r == 0) {
        kf_secbuf *key = kf_secbuf_new(out->size > 0 ? out->size : 1);
        if (key == NULL)
            r = kf_err_set(err, -ENOMEM, "out of memory");
        else {
            memcpy(key->data, out->buffer, out->size);
            key->len = out->size;
            *ret_key = key;
        }
    }
    if (out != NULL) {
        OPENSSL_cleanse(out, sizeof(*out));
        sym_Esys_Free(out);
    }
    tpm_close(&t);
    return r;
}

static int do_seal(const char *tcti, const uint32_t *pcrs, size_t n_pcrs, const kf_secbuf *key, char **ret_blob,
                   kf_err *err)
{
    if (key->len == 0 || key->len > sizeof(((TPM2B_SENSITIVE_DATA *)0)->buffer) || n_pcrs == 0 || n_pcrs > 24)
        return kf_err_set(err, -EINVAL, "TPM seal: bad key or PCR list");
    tpm t;
    int r = tpm_open(&t, tcti, err);
    if (r != 0)
        return r;
    TPML_PCR_SELECTION sel;
    pcr_selection(pcrs, n_pcrs, &sel);
    TPM2B_DIGEST *policy = NULL;
    TPM2B_PUBLIC *out_pub = NULL;
    TPM2B_PRIVATE *out_priv = NULL;
    TSS2_RC rc;
    if ((r = kfa_tpm_create_srk(&t.k, t.primary, err)) == 0)
        r = pcr_policy(&t, TPM2_SE_TRIAL, &sel, &policy, err);
    if (r == 0) {
        sym_Esys_FlushContext(t.k.esys, *t.session);
        *t.session = ESYS_TR_NONE;
        TPM2B_SENSITIVE_CREATE sens = {0};
        sens.sensitive.data.size = (UINT16)key->len;
        memcpy(sens.sensitive.data.buffer, key->data, key->len);
        TPM2B_PUBLIC tmpl = {.publicArea = {.type = TPM2_ALG_KEYEDHASH,
                                            .nameAlg = TPM2_ALG_SHA256,
                                            /* no userWithAuth: only the PCR policy can unseal it */
                                            .objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT,
                                            .parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL}};
        tmpl.publicArea.authPolicy = *policy;
        TPM2B_DATA outside = {0};
        TPML_PCR_SELECTION creation_pcr = {0};
        rc = sym_Esys_Create(t.k.esys, *t.primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sens, &tmpl, &outside,
                         &creation_pcr, &out_priv, &out_pub, NULL, NULL, NULL);
        OPENSSL_cleanse(&sens, sizeof(sens));
        if (rc != TSS2_RC_SUCCESS)
            r = kfa_tpm_error(err, "create sealed object", rc);
    }
    char *blob = NULL;
    if (r == 0) {
        uint8_t raw[KFA_TPM_BLOB_MAX];
        size_t off = 0;
        raw[off++] = (uint8_t)n_pcrs;
        for (size_t i = 0; i < n_pcrs; i++)
            raw[off++] = (uint8_t)pcrs[i];
        if (sym_Tss2_MU_TPM2B_PUBLIC_Marshal(out_pub, raw, sizeof(raw), &off) != TSS2_RC_SUCCESS ||
            sym_Tss2_MU_TPM2B_PRIVATE_Marshal(out_priv, raw, sizeof(raw), &off) != TSS2_RC_SUCCESS ||
            (blob = malloc(sizeof(BLOB_PREFIX) + 4 * ((off + 2) / 3) + 1)) == NULL) {
            r = kf_err_set(err, -EIO, "TPM seal: cannot serialize the sealed object");
        } else {
            memcpy(blob, BLOB_PREFIX, sizeof(BLOB_PREFIX) - 1);
            EVP_EncodeBlock((unsigned char *)blob + sizeof(BLOB_PREFIX) - 1, raw, (int)off);
        }
    }
    sym_Esys_Free(policy);
    sym_Esys_Free(out_pub);
    sym_Esys_Free(out_priv);
    tpm_close(&t);
    if (r != 0)
        return r;
    /* Seal, then verify. */
    kf_secbuf *back = NULL;
    r = do_unseal(tcti, blob, &back, err);
    if (r == 0 && (back->len != key->len || CRYPTO_memcmp(back->data, key->data, key->len) != 0))
        r = kf_err_set(err, -EIO, "TPM seal: the sealed copy did not unseal to the same key");
    kf_secbuf_free(back);
    if (r != 0) {
        free(blob);
        return kf_err_wrap(err, "verifying the sealed copy");
    }
    *ret_blob = blob;
    return 0;
}

/* --- worker thread: ESAPI blocks; the caller waits at most timeout_ms --- */

typedef struct job {
    pthread_mutex_t lock;
    pthread_cond_t done_cond;
    bool done, abandoned;
    bool seal;
    char *tcti;
    uint32_t pcrs[24];
    size_t n_pcrs;
    const kf_secbuf *key; /* seal: owned by the caller until done */
    kf_secbuf *key_copy;
    char *blob;
    kf_secbuf *result_key;
    char *result_blob;
    int status;
    kf_err err;
} job;

static void job_free(job *j)
{
    free(j->tcti);
    free(j->blob);
    free(j->result_blob);
    kf_secbuf_free(j->key_copy);
    kf_secbuf_free(j->result_key);
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->done_cond);
    free(j);
}

static void *worker(void *arg)
{
    job *j = arg;
    if (j->seal)
        j->status = do_seal(j->tcti, j->pcrs, j->n_pcrs, j->key_copy, &j->result_blob, &j->err);
    else
        j->status = do_unseal(j->tcti, j->blob, &j->result_key, &j->err);
    /* Frees this thread's OpenSSL state (tss2 hashes through libcrypto) now: the detached thread's
     * exit handlers could otherwise still be running when the process exits after the answer. */
    OPENSSL_thread_stop();
    pthread_mutex_lock(&j->lock);
    j->done = true;
    bool abandoned = j->abandoned;
    pthread_cond_signal(&j->done_cond);
    pthread_mutex_unlock(&j->lock);
    if (abandoned)
        job_free(j);
    return NULL;
}

/* Runs j on a worker and returns its status. When the TPM does not answer in time the worker
 * keeps j and frees it when it finishes: *ret_abandoned is then set (under the lock) and the
 * caller must not touch j again. */
static int run_job(job *j, uint64_t timeout_ms, kf_err *err, bool *ret_abandoned)
{
    *ret_abandoned = false;
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->done_cond, NULL);
    int r = kfa_tss2_load(err);
    if (r != 0) {
        *ret_abandoned = true; /* freed here: nothing left for the caller */
        job_free(j);
        return r;
    }
    pthread_t th;
    if (pthread_create(&th, NULL, worker, j) != 0) {
        *ret_abandoned = true; /* freed here: nothing left for the caller */
        job_free(j);
        return kf_err_set(err, -EAGAIN, "cannot start the TPM worker");
    }
    pthread_detach(th);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(timeout_ms / 1000);
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&j->lock);
    while (!j->done)
        if (pthread_cond_timedwait(&j->done_cond, &j->lock, &until) != 0)
            break;
    if (!j->done) {
        j->abandoned = true; /* the worker frees the job when the TPM finally answers */
        *ret_abandoned = true;
        pthread_mutex_unlock(&j->lock);
        return kf_err_set(err, -ETIMEDOUT, "the TPM did not answer within %llu ms", (unsigned long long)timeout_ms);
    }
    pthread_mutex_unlock(&j->lock);
    if (j->status != 0 && err != NULL)
        *err = j->err;
    return j->status;
}

int kfa_tpm_seal(const char *tcti, const uint32_t *pcrs, size_t n_pcrs, const kf_secbuf *key, char **ret_blob,
                 uint64_t timeout_ms, kf_err *err)
{
    job *j = calloc(1, sizeof(*j));
    if (j == NULL || n_pcrs > 24 || (j->tcti = strdup(tcti)) == NULL || (j->key_copy = kf_secbuf_new(key->len)) == NULL) {
        if (j != NULL) {
            free(j->tcti);
            free(j);
        }
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    memcpy(j->key_copy->data, key->data, key->len);
    j->seal = true;
    memcpy(j->pcrs, pcrs, n_pcrs * sizeof(*pcrs));
    j->n_pcrs = n_pcrs;
    bool abandoned;
    int r = run_job(j, timeout_ms, err, &abandoned);
    if (abandoned)
        return r;
    if (r == 0) {
        *ret_blob = j->result_blob;
        j->result_blob = NULL;
    }
    job_free(j);
    return r;
}

int kfa_tpm_unseal(const char *tcti, const char *blob, kf_secbuf **ret_key, uint64_t timeout_ms, kf_err *err)
{
    job *j = calloc(1, sizeof(*j));
    if (j == NULL || (j->tcti = strdup(tcti)) == NULL || (j->blob = strdup(blob)) == NULL) {
        if (j != NULL) {
            free(j->tcti);
            free(j);
        }
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    bool abandoned;
    int r = run_job(j, timeout_ms, err, &abandoned);
    if (abandoned)
        return r;
    if (r == 0) {
        *ret_key = j->result_key;
        j->result_key = NULL;
    }
    job_free(j);
    return r;
}
