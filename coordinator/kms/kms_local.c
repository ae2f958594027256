/* The `local` KMS backend, the embedded default: 256-bit KEKs in files (DIR/kek-N.key, mode
 * 0600, created by keyfleetctl init and by rotation; a file others may read or write is refused),
 * AES-256-GCM with an AAD that binds the volume id and the KEK version. Format: "kf:local:vN:"
 * BASE64(nonce[12] || ciphertext[32] || tag[16]), N in canonical decimal.
 * No I/O per call, so callbacks run before the call returns. */
#include <stdbool.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "kf_cleanup.h"
#include "kf_log.h"
#include "kms/kms.h"
#include "kms/kms_local.h"
#include "kms/kms_kek.h"

#define MAX_VERSIONS KFD_KEK_MAX_VERSIONS
_Static_assert(KFD_KEK_LEN == KFD_DATA_KEY_LEN, "a KEK is an AES-256 key");
#define NONCE_LEN 12
#define TAG_LEN 16
#define BLOB_LEN (NONCE_LEN + KFD_DATA_KEY_LEN + TAG_LEN)
#define PREFIX "kf:local:v"

typedef struct kms_local {
    kfd_kms super;
    char *dir;
    kf_secbuf *kek[MAX_VERSIONS + 1]; /* index = version */
    uint32_t latest;
} kms_local;

/* Fetched once: an implicit fetch per call costs more than the AES-GCM itself in OpenSSL 3.0. */
static EVP_CIPHER *aes256gcm;
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;
static void fetch_cipher(void) { aes256gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL); }
static const EVP_CIPHER *cipher(void)
{
    pthread_once(&fetch_once, fetch_cipher);
    return aes256gcm;
}

static void aad_for(const char *volume_id, uint32_t version, uint8_t *aad, size_t *len)
{
    static const char label[] = "keyfleet/local-kek/v1";
    size_t n = 0, vlen = strlen(volume_id);
    memcpy(aad, label, sizeof(label)); /* with its NUL as separator */
    n += sizeof(label);
    aad[n++] = (uint8_t)(version >> 24);
    aad[n++] = (uint8_t)(version >> 16);
    aad[n++] = (uint8_t)(version >> 8);
    aad[n++] = (uint8_t)version;
    memcpy(aad + n, volume_id, vlen);
    *len = n + vlen;
}

#define AAD_MAX (32 + 4 + 256)

static int seal(kms_local *k, uint32_t version, const char *volume_id, const uint8_t key[KFD_DATA_KEY_LEN],
                char *out, size_t out_size)
{
    uint8_t blob[BLOB_LEN], aad[AAD_MAX];
    size_t aad_len;
    if (strlen(volume_id) > 200)
        return -EINVAL;
    aad_for(volume_id, version, aad, &aad_len);
    if (RAND_bytes(blob, NONCE_LEN) != 1)
        return -EIO;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int len, ok = c != NULL && EVP_EncryptInit_ex2(c, cipher(), k->kek[version]->data, blob, NULL) &&
                  EVP_EncryptUpdate(c, NULL, &len, aad, (int)aad_len) &&
                  EVP_EncryptUpdate(c, blob + NONCE_LEN, &len, key, KFD_DATA_KEY_LEN) &&
                  EVP_EncryptFinal_ex(c, blob + NONCE_LEN + KFD_DATA_KEY_LEN, &len) &&
                  EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, blob + NONCE_LEN + KFD_DATA_KEY_LEN);
    EVP_CIPHER_CTX_free(c);
    if (!ok)
        return -EIO;
    int n = snprintf(out, out_size, PREFIX "%u:", version);
    if (n < 0 || (size_t)n + 4 * ((BLOB_LEN + 2) / 3) + 1 > out_size)
        return -ENOSPC;
    EVP_EncodeBlock((unsigned char *)out + n, blob, BLOB_LEN);
    return 0;
}

/* Parses and opens a wrapped key. Returns 0, -EINVAL (malformed or unknown version) or -EBADMSG. */
static int open_wrapped(kms_local *k, const char *volume_id, const char *wrapped, uint8_t key[KFD_DATA_KEY_LEN],
                        uint32_t *ret_version)
{
    if (strncmp(wrapped, PREFIX, sizeof(PREFIX) - 1) != 0)
        return -EINVAL;
    const char *end = NULL;
    uint32_t version = 0;
    if (kfd_kek_parse_version(wrapped + sizeof(PREFIX) - 1, &version, &end) != 0 || *end != ':')
        return -EINVAL;
    const char *b64 = end + 1;
    size_t b64_len = strlen(b64);
    if (b64_len != 4 * ((BLOB_LEN + 2) / 3))
        return -EINVAL;
    uint8_t blob[4 * ((BLOB_LEN + 2) / 3)];
    int n = EVP_DecodeBlock(blob, (const unsigned char *)b64, (int)b64_len);
    /* EVP_DecodeBlock counts padding bytes; BLOB_LEN is a multiple of 3, so there are none. */
    if (n != BLOB_LEN)
        return -EINVAL;
    if (k->kek[version] == NULL)
        return -EINVAL;
    if (strlen(volume_id) > 200)
        return -EINVAL;
    uint8_t aad[AAD_MAX];
    size_t aad_len;
    aad_for(volume_id, version, aad, &aad_len);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int len, ok = c != NULL &&
                  EVP_DecryptInit_ex2(c, cipher(), k->kek[version]->data, blob, NULL) &&
                  EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, blob + NONCE_LEN + KFD_DATA_KEY_LEN) &&
                  EVP_DecryptUpdate(c, NULL, &len, aad, (int)aad_len) &&
                  EVP_DecryptUpdate(c, key, &len, blob + NONCE_LEN, KFD_DATA_KEY_LEN);
    int fin = ok && EVP_DecryptFinal_ex(c, key + KFD_DATA_KEY_LEN, &len) == 1;
    EVP_CIPHER_CTX_free(c);
    if (!fin) {
        kf_wipe(key, KFD_DATA_KEY_LEN);
        return ok ? -EBADMSG : -EIO;
    }
    *ret_version = version;
    return 0;
}

static void fail(kfd_kms_cb cb, void *arg, int status, const char *message)
{
    kfd_kms_result res = {.status = status, .message = message};
    cb(arg, &res);
}

static const char *open_error(int r)
{
    return r == -EBADMSG ? "wrapped key does not open under this volume id"
                         : r == -EINVAL ? "wrapped key is malformed or names an unknown KEK version"
                                        : "local KMS failure";
}

static void local_wrap(kfd_kms *base, const char *volume_id, const kf_secbuf *key, kfd_kms_cb cb, void *arg)
{
    kms_local *k = (kms_local *)base;
    char out[256];
    if (key->len != KFD_DATA_KEY_LEN) {
        fail(cb, arg, -EINVAL, "data keys are 32 bytes");
        return;
    }
    int r = seal(k, k->latest, volume_id, key->data, out, sizeof(out));
    if (r != 0) {
        fail(cb, arg, r, "local KMS could not wrap");
        return;
    }
    kfd_kms_result res = {.wrapped = out, .key_version = k->latest, .latest_version = k->latest};
    cb(arg, &res);
}

static void local_generate(kfd_kms *base, const char *volume_id, kfd_kms_cb cb, void *arg)
{
    kms_local *k = (kms_local *)base;
    KF_CLEANUP(kf_secbuf_freep) kf_secbuf *key = kf_secbuf_new(KFD_DATA_KEY_LEN);
    char out[256];
    if (key == NULL || RAND_priv_bytes(key->data, KFD_DATA_KEY_LEN) != 1) {
        fail(cb, arg, -EIO, "no randomness for a data key");
        return;
    }
    int r = seal(k, k->latest, volume_id, key->data, out, sizeof(out));
    if (r != 0) {
        fail(cb, arg, r, "local KMS could not wrap");
        return;
    }
    kfd_kms_result res = {.plaintext = key, .wrapped = out, .key_version = k->latest, .latest_version = k->latest};
    cb(arg, &res);
}

static void local_unwrap(kfd_kms *base, const char *volume_id, const char *wrapped, kfd_kms_cb cb, void *arg)
{
    kms_local *k = (kms_local *)base;
    KF_CLEANUP(kf_secbuf_freep) kf_secbuf *key = kf_secbuf_new(KFD_DATA_KEY_LEN);
    if (key == NULL) {
        fail(cb, arg, -ENOMEM, "out of memory");
        return;
    }
    uint32_t version = 0;
    int r = open_wrapped(k, volume_id, wrapped, key->data, &version);
    if (r != 0) {
        fail(cb, arg, r, open_error(r));
        return;
    }
    kfd_kms_result res = {
        .plaintext = key, .key_version = version, .latest_version = k->latest, .stale = version < k->latest};
    cb(arg, &res);
}

static void local_rewrap(kfd_kms *base, const char *volume_id, const char *wrapped, kfd_kms_cb cb, void *arg)
{
    kms_local *k = (kms_local *)base;
    kf_secbuf *key = kf_secbuf_new(KFD_DATA_KEY_LEN);
    char out[256];
    uint32_t version = 0;
    int r = key != NULL ? open_wrapped(k, volume_id, wrapped, key->data, &version) : -ENOMEM;
    if (r == 0)
        r = seal(k, k->latest, volume_id, key->data, out, sizeof(out));
    kf_secbuf_free(key);
    if (r != 0) {
        fail(cb, arg, r, open_error(r));
        return;
    }
    kfd_kms_result res = {.wrapped = out, .key_version = k->latest, .latest_version = k->latest};
    cb(arg, &res);
}

static void local_describe(kfd_kms *base, kfd_kms_info *ret)
{
    kms_local *k = (kms_local *)base;
    ret->backend = "local";
    ret->latest_version = k->latest;
    ret->min_decrypt_version = 1;
    ret->reachable = true;
    for (uint32_t v = 1; v <= k->latest && k->kek[v] == NULL; v++)
        ret->min_decrypt_version = v + 1;
}

static int load_kek(kms_local *k, uint32_t version, kf_err *err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/kek-%u.key", k->dir, version);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int r = -errno;
        close(fd);
        return kf_err_set(err, r, "%s: %s", path, strerror(-r));
    }
    /* As sshd with a private key: a key others may read is no longer ours alone, and one others
     * may write could be swapped. Refused, so start-up and --check-config fail, not a warning. */
    if ((st.st_mode & 077) != 0) {
        close(fd);
        return kf_err_set(err, -EACCES, "%s: mode %04o lets other users read or write the KEK; run chmod 600 %s",
                          path, (unsigned)(st.st_mode & 07777), path);
    }
    kf_secbuf *b = kf_secbuf_new(KFD_DATA_KEY_LEN);
    ssize_t n = -1;
    if (b != NULL && S_ISREG(st.st_mode) && st.st_size == KFD_DATA_KEY_LEN)
        n = read(fd, b->data, KFD_DATA_KEY_LEN);
    close(fd);
    if (n != KFD_DATA_KEY_LEN) {
        kf_secbuf_free(b);
        return kf_err_set(err, -EINVAL, "%s: a KEK file holds exactly 32 bytes", path);
    }
    k->kek[version] = b;
    return 0;
}

static int write_new_kek(const char *dir, uint32_t version, kf_err *err)
{
    return kfd_kek_write_new(&dir, 1, version, err);
}

static void local_rotate(kfd_kms *base, kfd_kms_cb cb, void *arg)
{
    kms_local *k = (kms_local *)base;
    uint32_t next = k->latest + 1;
    kf_err err = {0};
    int r = next > MAX_VERSIONS ? kf_err_set(&err, -ENOSPC, "at most %d KEK versions", MAX_VERSIONS)
                                : write_new_kek(k->dir, next, &err);
    if (r == 0)
        r = load_kek(k, next, &err);
    if (r != 0) {
        fail(cb, arg, r, err.msg);
        return;
    }
    k->latest = next;
    kfd_kms_result res = {.key_version = next, .latest_version = next};
    cb(arg, &res);
}

/* Rotations on another replica wrote kek-N.key there; the operator copies them here
 * (docs/cluster.md). Every version above the newest one loaded must be present, in order. */
static int local_sync(kfd_kms *base, uint32_t version, kf_err *err)
{
    kms_local *k = (kms_local *)base;
    if (version == 0 || version > MAX_VERSIONS)
        return kf_err_set(err, -EINVAL, "KEK version %u is out of range", version);
    for (uint32_t v = k->latest + 1; v <= version; v++) {
        if (k->kek[v] == NULL) {
            int r = load_kek(k, v, err);
            if (r != 0)
                return r;
            kf_log_info("kek_loaded", "version=%u dir=%s", v, kf_log_q(k->dir));
        }
        k->latest = v;
    }
    return 0;
}

static void local_destroy(kfd_kms *base)
{
    kms_local *k = (kms_local *)base;
    for (size_t v = 0; v <= MAX_VERSIONS; v++)
        kf_secbuf_free(k->kek[v]);
    free(k->dir);
    free(k);
}

static const kfd_kms_ops local_ops = {
    .name = "local",
    .generate = local_generate,
    .wrap = local_wrap,
    .unwrap = local_unwrap,
    .rewrap = local_rewrap,
    .describe = local_describe,
    .rotate = local_rotate,
    .sync = local_sync,
    .destroy = local_destroy,
};

int kfd_kms_local_open(uv_loop_t *loop, const char *dir, kfd_kms **ret, kf_err *err)
{
    kms_local *k = calloc(1, sizeof(*k));
    if (k == NULL || (k->dir = strdup(dir)) == NULL) {
        free(k);
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    k->super.ops = &local_ops;
    k->super.loop = loop;
    bool present[MAX_VERSIONS + 1] = {false};
    uint32_t max = 0;
    int r = kfd_kek_scan(dir, &max, present, err);
    if (r == 0 && max == 0)
        r = kf_err_set(err, -ENOENT, "%s: no KEK files (kek-1.key); run keyfleetctl init", dir);
    for (uint32_t v = 1; r == 0 && v <= max; v++)
        if (present[v])
            r = load_kek(k, v, err);
    if (r != 0) {
        local_destroy(&k->super);
        return r;
    }
    k->latest = max;
    *ret = &k->super;
    return 0;
}
