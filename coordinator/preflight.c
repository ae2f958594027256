#include "preflight.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "kf_tls.h"
#include "kms/kms.h"
#include "kms/kms_local.h"

static int readable(const char *what, const char *path, kf_err *err)
{
    if (path == NULL || access(path, R_OK) == 0)
        return 0;
    return kf_err_set(err, -errno, "kms.%s: %s: %s", what, path, strerror(errno));
}

int kfd_preflight(const kfd_config *cfg, kf_err *err)
{
    kf_tls_opts opts = {
        .role = KF_TLS_SERVER,
        .cert_file = cfg->tls_cert,
        .key_file = cfg->tls_key,
        .ca_file = cfg->tls_ca,
        .peer_mode = cfg->client_auth,
        .server_accept_http11 = true,
    };
    SSL_CTX *ctx = NULL;
    int r = kf_tls_ctx_new(&opts, &ctx, err);
    SSL_CTX_free(ctx);
    if (r != 0)
        return kf_err_wrap(err, "tls");
    const kfd_kms_config *k = &cfg->kms;
    if (k->backend == NULL || strcmp(k->backend, "local") == 0) {
        kfd_kms *kms = NULL;
        r = kfd_kms_local_open(NULL, k->local_dir, &kms, err);
        if (kms != NULL)
            kms->ops->destroy(kms);
        return r != 0 ? kf_err_wrap(err, "kms (local KEK)") : 0;
    }
    const char *names[] = {"ca_file", "token_file", "role_id_file", "secret_id_file", "client_secret_file"};
    const char *paths[] = {k->ca_file, k->token_file, k->role_id_file, k->secret_id_file, k->client_secret_file};
    for (size_t i = 0; r == 0 && i < sizeof(names) / sizeof(names[0]); i++)
        r = readable(names[i], paths[i], err);
    return r;
}
