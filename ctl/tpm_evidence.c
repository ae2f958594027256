#include "tpm_evidence.h"

#include <errno.h>

#include <openssl/err.h>
#include <openssl/x509.h>

int kfctl_tpm_evidence_check(const char *path, const char *const *ek_cas, size_t n_ek_cas, EVP_PKEY *csr_key,
                             kf_tpm_verified *ret, kf_err *err)
{
    kf_tpm_evidence ev;
    int r = kf_tpm_evidence_read(path, &ev, err);
    if (r != 0)
        return r;
    X509_STORE *store = NULL;
    if (n_ek_cas > 0) {
        store = X509_STORE_new();
        for (size_t i = 0; r == 0 && i < n_ek_cas; i++)
            if (store == NULL || X509_STORE_load_file(store, ek_cas[i]) != 1)
                r = kf_err_openssl(err, -EINVAL, ek_cas[i]);
    }
    kf_tpm_verified v = {0};
    if (r == 0 && (r = kf_tpm_evidence_verify(&ev, store, &v, err)) != 0)
        kf_err_wrap(err, "%s", path);
    if (r == 0 && EVP_PKEY_eq(v.key, csr_key) != 1) {
        r = kf_err_set(err, -EACCES, "%s: the TPM certified another key than the request's", path);
        kf_tpm_verified_clear(&v);
    }
    ERR_clear_error();
    X509_STORE_free(store);
    kf_tpm_evidence_clear(&ev);
    if (r == 0)
        *ret = v;
    return r;
}
