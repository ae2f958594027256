/* keyfleet-agent identity create NAME: this node's TLS key, made inside its TPM, and a
 * certificate request for the fleet CA (keyfleetctl cert issue node NAME --csr FILE). Only the
 * key's TPM blob leaves the TPM: a TSS2 PRIVATE KEY that loads into this TPM and no other. */
#include "identity.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "agent.h"
#include "kf_tpmkey.h"

static int usage(void)
{
    fprintf(stderr, "usage: keyfleet-agent identity create NAME [--key FILE] [--csr FILE]\n"
                    "  makes an ECC P-256 key in the TPM (tpm.tcti) and a certificate request;\n"
                    "  FILE defaults: identity.tpm_key of the config, and that path + \".csr\"\n");
    return KFA_EXIT_USAGE;
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
    if (argc < 2 || strcmp(argv[1], "create") != 0)
        return usage();
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
            return usage();
    }
    if (optind + 1 != argc || key == NULL)
        return usage();
    const char *name = argv[optind];
    if (!kf_name_valid(name, strlen(name))) {
        fprintf(stderr, "keyfleet-agent: name '%s' must be 1..63 of [A-Za-z0-9._-], starting alphanumeric\n", name);
        return KFA_EXIT_USAGE;
    }
    char csr_default[4096];
    if (csr == NULL) {
        if ((size_t)snprintf(csr_default, sizeof(csr_default), "%s.csr", key) >= sizeof(csr_default))
            return usage();
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
    printf("created a P-256 key in the TPM (fixedTPM, fixedParent): %s\n"
           "certificate request for keyfleet://node/%s: %s\n"
           "next: keyfleetctl cert issue node %s --csr %s, and name the certificate in identity.cert\n",
           key, name, csr, name, csr);
    return 0;
}
