/* keyfleet-agent identity create NAME: this node's TLS key, made inside its TPM, and a
 * certificate request for the fleet CA (keyfleetctl cert issue node NAME --csr FILE). Only the
 * key's TPM blob leaves the TPM: a TSS2 PRIVATE KEY that loads into this TPM and no other. */
#include "identity.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "agent.h"
#include "kf_tpm_evidence.h"
#include "kf_tpmkey.h"
#include "tpm_attest.h"

/* identity activate CREDENTIAL [--cert FILE]: TPM2_ActivateCredential recovers the secret the
 * certificate was sealed under; the certificate must be for this node's TPM key. */
static int activate(const kfa_config *cfg, int argc, char **argv)
{
    const char *cert = cfg->cert;
    static const struct option opts[] = {{"cert", required_argument, NULL, 'c'}, {NULL, 0, NULL, 0}};
    optind = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c != 'c')
            return kfa_usage("identity");
        cert = optarg;
    }
    if (optind + 1 != argc || cert == NULL || cfg->tpm_key == NULL)
        return kfa_usage("identity");
    kf_err err = {0};
    kf_tpm_credential cred;
    unsigned char secret[64];
    size_t secret_len = 0;
    char *pem = NULL;
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    int r = kf_tpm_credential_read(argv[optind], &cred, &err);
    if (r == 0) {
        r = kfa_tpm_activate(cfg->tpm_tcti, cred.id, cred.id_len, cred.es, cred.es_len, secret, &secret_len, &err);
        if (r == 0)
            r = kf_tpm_credential_open(&cred, secret, secret_len, &pem, &err);
        OPENSSL_cleanse(secret, sizeof(secret));
        kf_tpm_credential_clear(&cred);
    }
    if (r == 0) {
        BIO *b = BIO_new_mem_buf(pem, -1);
        x = b != NULL ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        if (x == NULL)
            r = kf_err_set(&err, -EINVAL, "the sealed certificate does not parse");
    }
    if (r == 0 && (r = kf_tpmkey_load(cfg->tpm_key, cfg->tpm_tcti, &key, &err)) == 0 &&
        X509_check_private_key(x, key) != 1)
        r = kf_err_set(&err, -EACCES, "the certificate is not for %s", cfg->tpm_key);
    EVP_PKEY_free(key);
    X509_free(x);
    if (r == 0) {
        FILE *f = fopen(cert, "wx");
        if (f == NULL || fputs(pem, f) < 0) {
            r = kf_err_set(&err, -errno, "%s: %s", cert, errno == EEXIST ? "already exists" : strerror(errno));
            if (f != NULL)
                fclose(f);
        } else if (fclose(f) != 0) {
            r = kf_err_set(&err, -EIO, "%s: write failed", cert);
        }
    }
    free(pem);
    if (r != 0) {
        fprintf(stderr, "keyfleet-agent: identity activate: %s\n", err.msg);
        return 1;
    }
    printf("activated: the certificate was sealed to this TPM's EK and AK; written to %s\n", cert);
    return 0;
}

/* FILE.evidence: the EK (and its certificate), the AK, and TPM2_Certify of the key by the AK. */
static int write_evidence(const kfa_config *cfg, const char *key, kf_err *err)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s.evidence", key);
    kf_tpmkey_info info;
    kf_tpm_evidence ev = {0};
    unsigned char q[32];
    int r = kf_tpmkey_parse_file(key, &info, err);
    if (r == 0) {
        kf_tpm_certify_qualifying(info.pub, info.pub_len, q);
        r = kfa_tpm_evidence(cfg->tpm_tcti, &info, q, sizeof(q), &ev, err);
    }
    if (r == 0)
        r = kf_tpm_evidence_write(&ev, path, err);
    if (r == 0)
        printf("TPM evidence (EK%s, AK, TPM2_Certify of the key): %s\n", ev.ek_cert != NULL ? " and its certificate" : "",
               path);
    kf_tpm_evidence_clear(&ev);
    return r;
}

/* The request: CN and the SAN URI keyfleet://node/NAME, signed in the TPM. */
static int write_csr(const char *path, const char *name, EVP_PKEY *key, kf_err *err)
{
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    char san[128];
    snprintf(san, sizeof(san), "URI:keyfleet://node/%s", name);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
    int r = -EIO;
    if (req == NULL || exts == NULL || ext == NULL || X509_REQ_set_version(req, 0) != 1 ||
        X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_ASC, (const unsigned char *)name,
                                   -1, -1, 0) != 1 ||
        X509_REQ_set_pubkey(req, key) != 1 || sk_X509_EXTENSION_push(exts, ext) <= 0) {
        r = kf_err_openssl(err, -ENOMEM, "building the certificate request");
        goto out;
    }
    ext = NULL; /* owned by exts */
    if (X509_REQ_add_extensions(req, exts) != 1 || X509_REQ_sign(req, key, EVP_sha256()) <= 0) {
        r = kf_err_openssl(err, -EIO, "signing the certificate request in the TPM");
        goto out;
    }
    FILE *f = fopen(path, "wx");
    if (f == NULL) {
        r = kf_err_set(err, -errno, "%s: %s", path, errno == EEXIST ? "already exists" : strerror(errno));
        goto out;
    }
    int ok = PEM_write_X509_REQ(f, req);
    if (fclose(f) != 0 || ok != 1) {
        r = kf_err_set(err, -EIO, "%s: write failed", path);
        goto out;
    }
    r = 0;
out:
    X509_EXTENSION_free(ext);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    return r;
}

int kfa_cmd_identity(const kfa_config *cfg, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "activate") == 0)
        return activate(cfg, argc - 1, argv + 1);
    if (argc < 2 || strcmp(argv[1], "create") != 0)
        return kfa_usage("identity");
    const char *key = cfg->tpm_key, *csr = NULL;
    static const struct option opts[] = {{"key", required_argument, NULL, 'k'},
                                         {"csr", required_argument, NULL, 'r'},
                                         {NULL, 0, NULL, 0}};
    argc--;
    argv++;
    optind = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'k')
            key = optarg;
        else if (c == 'r')
            csr = optarg;
        else
            return kfa_usage("identity");
    }
    if (optind + 1 != argc || key == NULL)
        return kfa_usage("identity");
    const char *name = argv[optind];
    if (!kf_name_valid(name, strlen(name))) {
        fprintf(stderr, "keyfleet-agent: name '%s' must be 1..63 of [A-Za-z0-9._-], starting alphanumeric\n", name);
        return KFA_EXIT_USAGE;
    }
    char csr_default[4096];
    if (csr == NULL) {
        if ((size_t)snprintf(csr_default, sizeof(csr_default), "%s.csr", key) >= sizeof(csr_default))
            return kfa_usage("identity");
        csr = csr_default;
    }
    kf_err err = {0};
    EVP_PKEY *pk = NULL;
    int r = kf_tpmkey_generate(key, cfg->tpm_tcti, &err);
    if (r == 0 && (r = kf_tpmkey_load(key, cfg->tpm_tcti, &pk, &err)) != 0)
        remove(key);
    if (r == 0 && (r = write_csr(csr, name, pk, &err)) != 0)
        remove(key);
    EVP_PKEY_free(pk);
    if (r != 0) {
        fprintf(stderr, "keyfleet-agent: identity create: %s\n", err.msg);
        return 1;
    }
    /* The provider keeps a TPM connection open; swtpm (no resource manager) serves one. */
    kf_tpmkey_unload();
    kf_err eerr = {0};
    if (write_evidence(cfg, key, &eerr) != 0)
        fprintf(stderr, "keyfleet-agent: identity create: no TPM evidence: %s\n"
                        "  (the certificate can still be issued from the request, but not as TPM-bound)\n",
                eerr.msg);
    printf("created a P-256 key in the TPM (fixedTPM, fixedParent): %s\n"
           "certificate request for keyfleet://node/%s: %s\n"
           "next: keyfleetctl cert issue node %s --csr %s [--tpm-evidence %s.evidence --ek-ca FILE]\n",
           key, name, csr, name, csr, key);
    return 0;
}
