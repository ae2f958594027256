#include "ca.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

/* Opens path for writing a new file with mode; O_EXCL unless force. */
static FILE *create_file(const char *path, mode_t mode, bool force, kf_err *err)
{
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (force ? O_TRUNC : O_EXCL);
    int fd = open(path, flags, mode);
    if (fd < 0) {
        kf_err_set(err, -errno, "%s: %s", path, errno == EEXIST ? "already exists" : strerror(errno));
        return NULL;
    }
    if (fchmod(fd, mode) != 0) {
        kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
        close(fd);
    }
    return f;
}

static int write_key(const char *path, EVP_PKEY *key, bool force, kf_err *err)
{
    FILE *f = create_file(path, 0600, force, err);
    if (f == NULL)
        return err->code;
    int ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    if (fclose(f) != 0 || !ok)
        return kf_err_openssl(err, -EIO, path);
    return 0;
}

static int write_cert(const char *path, X509 *x, bool force, kf_err *err)
{
    FILE *f = create_file(path, 0644, force, err);
    if (f == NULL)
        return err->code;
    int ok = PEM_write_X509(f, x);
    if (fclose(f) != 0 || !ok)
        return kf_err_openssl(err, -EIO, path);
    return 0;
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ext == NULL)
        return -EINVAL;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -EINVAL;
}

/* A new certificate with serial, validity, subject and key; not yet signed. */
static X509 *new_cert(EVP_PKEY *key, const char *cn, int backdate_days, int days)
{
    X509 *x = X509_new();
    BIGNUM *serial = BN_new();
    ASN1_INTEGER *sn = NULL;
    if (x == NULL || serial == NULL || !BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
        (sn = BN_to_ASN1_INTEGER(serial, NULL)) == NULL || !X509_set_version(x, 2) || !X509_set_serialNumber(x, sn))
        goto fail;
    /* Five minutes of slack for clocks that lag the issuer's. */
    long before = -(long)backdate_days * 86400L - 300L;
    if (X509_gmtime_adj(X509_getm_notBefore(x), before) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(x), days - backdate_days, 0, NULL) == NULL)
        goto fail;
    X509_NAME *subject = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_ASC, (const unsigned char *)"keyfleet", -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) ||
        !X509_set_pubkey(x, key))
        goto fail;
    ASN1_INTEGER_free(sn);
    BN_free(serial);
    return x;
fail:
    ASN1_INTEGER_free(sn);
    BN_free(serial);
    X509_free(x);
    return NULL;
}

int kfctl_ca_create(const char *ca_cert, const char *ca_key, const char *cn, kf_err *err)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (key == NULL)
        return kf_err_openssl(err, -EIO, "generating the CA key");
    int r = -EINVAL;
    X509 *x = new_cert(key, cn, 0, 3650);
    if (x == NULL || !X509_set_issuer_name(x, X509_get_subject_name(x)) ||
        add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != 0 ||
        add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") != 0 ||
        add_ext(x, x, NID_subject_key_identifier, "hash") != 0 ||
        add_ext(x, x, NID_authority_key_identifier, "keyid:always") != 0 || !X509_sign(x, key, EVP_sha256())) {
        r = kf_err_openssl(err, -EIO, "building the CA certificate");
        goto out;
    }
    if ((r = write_key(ca_key, key, false, err)) == 0)
        r = write_cert(ca_cert, x, false, err);
out:
    X509_free(x);
    EVP_PKEY_free(key);
    return r;
}

static int load_ca(const char *ca_cert, const char *ca_key, X509 **ret_cert, EVP_PKEY **ret_key, kf_err *err)
{
    FILE *f = fopen(ca_cert, "r");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: %s", ca_cert, strerror(errno));
    *ret_cert = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (*ret_cert == NULL)
        return kf_err_openssl(err, -EINVAL, ca_cert);
    f = fopen(ca_key, "r");
    if (f == NULL) {
        X509_free(*ret_cert);
        return kf_err_set(err, -errno, "%s: %s", ca_key, strerror(errno));
    }
    *ret_key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (*ret_key == NULL || X509_check_private_key(*ret_cert, *ret_key) != 1) {
        X509_free(*ret_cert);
        EVP_PKEY_free(*ret_key);
        return kf_err_openssl(err, -EINVAL, "CA key does not load or does not match the CA certificate");
    }
    return 0;
}

int kfctl_cert_issue(const char *ca_cert, const char *ca_key, const kfctl_cert_opts *opts, const char *cert_out,
                     const char *key_out, bool force, kf_err *err)
{
    if (!kf_name_valid(opts->name, strlen(opts->name)))
        return kf_err_set(err, -EINVAL, "name '%s' must be 1..63 of [A-Za-z0-9._-], starting alphanumeric",
                          opts->name);
    if (opts->days < 1 || opts->days > 3650 || opts->backdate_days < 0 || opts->backdate_days > 3650)
        return kf_err_set(err, -EINVAL, "days must be 1..3650 and backdate 0..3650");
    X509 *ca = NULL;
    EVP_PKEY *cakey = NULL;
    int r = load_ca(ca_cert, ca_key, &ca, &cakey, err);
    if (r != 0)
        return r;
    EVP_PKEY *key = opts->public_key != NULL ? opts->public_key : EVP_EC_gen("P-256");
    if (opts->public_key != NULL)
        EVP_PKEY_up_ref(key);
    X509 *x = key != NULL ? new_cert(key, opts->name, opts->backdate_days, opts->days) : NULL;
    char san[1024];
    int n = snprintf(san, sizeof(san), "URI:keyfleet://%s/%s", kf_peer_kind_name(opts->kind), opts->name);
    for (size_t i = 0; i < opts->n_extra_sans && n > 0 && (size_t)n < sizeof(san); i++)
        n += snprintf(san + n, sizeof(san) - (size_t)n, ",%s", opts->extra_sans[i]);
    const char *eku = opts->kind == KF_PEER_COORDINATOR ? "serverAuth,clientAuth" : "clientAuth";
    if (x == NULL || (size_t)n >= sizeof(san) || !X509_set_issuer_name(x, X509_get_subject_name(ca)) ||
        add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
        add_ext(x, ca, NID_key_usage, "critical,digitalSignature") != 0 ||
        add_ext(x, ca, NID_ext_key_usage, eku) != 0 || add_ext(x, ca, NID_subject_alt_name, san) != 0 ||
        add_ext(x, ca, NID_subject_key_identifier, "hash") != 0 ||
        add_ext(x, ca, NID_authority_key_identifier, "keyid:always") != 0 ||
        (opts->tpm != NULL && kf_tpm_ext_add(x, opts->tpm, err) != 0) || !X509_sign(x, cakey, EVP_sha256())) {
        r = kf_err_openssl(err, -EINVAL, "building the certificate (check --san values)");
        goto out;
    }
    if (opts->ret_pem != NULL) {
        BIO *b = BIO_new(BIO_s_mem());
        char *data = NULL;
        long pem_len = b != NULL && PEM_write_bio_X509(b, x) == 1 ? BIO_get_mem_data(b, &data) : 0;
        *opts->ret_pem = pem_len > 0 ? strndup(data, (size_t)pem_len) : NULL;
        BIO_free(b);
        r = *opts->ret_pem != NULL ? 0 : kf_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if ((r = opts->public_key != NULL ? 0 : write_key(key_out, key, force, err)) == 0)
        r = write_cert(cert_out, x, force, err);
out:
    X509_free(x);
    EVP_PKEY_free(key);
    X509_free(ca);
    EVP_PKEY_free(cakey);
    return r;
}

int kfctl_csr_read(const char *path, const char *name, EVP_PKEY **ret_key, kf_err *err)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
    X509_REQ *req = PEM_read_X509_REQ(f, NULL, NULL, NULL);
    fclose(f);
    int r = -EINVAL;
    EVP_PKEY *key = req != NULL ? X509_REQ_get_pubkey(req) : NULL;
    if (key == NULL) {
        r = kf_err_openssl(err, -EINVAL, "not a PEM certificate request");
        goto out;
    }
    if (X509_REQ_verify(req, key) != 1) {
        r = kf_err_openssl(err, -EINVAL, "the request's signature does not verify");
        goto out;
    }
    char group[32] = "";
    if (!EVP_PKEY_is_a(key, "EC") || EVP_PKEY_get_group_name(key, group, sizeof(group), NULL) != 1 ||
        strcmp(group, "prime256v1") != 0) {
        r = kf_err_set(err, -EINVAL, "the request's key must be ECDSA P-256");
        goto out;
    }
    /* The request must name the node, in exactly one CN: one without a name (or with two)
     * could be any node's, and an operator would issue it under whatever name was typed. */
    const X509_NAME *subject = X509_REQ_get_subject_name(req);
    int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (at < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, at) >= 0) {
        r = kf_err_set(err, -EINVAL, "the request must name the node in exactly one CN (it has %s)",
                       at < 0 ? "none" : "several");
        goto out;
    }
    char cn[256] = "";
    int n = X509_NAME_get_text_by_NID(subject, NID_commonName, cn, sizeof(cn));
    if (n < 0 || (size_t)n != strlen(name) || strcmp(cn, name) != 0) {
        r = kf_err_set(err, -EINVAL, "the request names '%.*s', not '%s'", n > 64 ? 64 : n < 0 ? 0 : n, cn, name);
        goto out;
    }
    *ret_key = key;
    key = NULL;
    r = 0;
out:
    if (r != 0)
        kf_err_wrap(err, "%s", path);
    ERR_clear_error();
    EVP_PKEY_free(key);
    X509_REQ_free(req);
    return r;
}
