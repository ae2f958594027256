/* keyfleet-agent seal-secret-id --out FILE: an AppRole secret id sealed to this TPM. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "boot.h"
#include "commands.h"
#include "kf_secmem.h"
#include "tpm2.h"

/* seal-secret-id --out FILE: the AppRole secret id on stdin, sealed to this TPM under the
 * configured PCRs (seal, then verify), written to a new 0600 file. */
int kfa_cmd_seal_secret_id(kfa_ctx *ctx, int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], "--out") != 0) {
        kfa_usage("seal-secret-id");
        return KFA_EXIT_USAGE;
    }
    kf_err err = {0};
    kf_secbuf *secret = NULL;
    char *blob = NULL;
    int r = kf_secbuf_read_fd(STDIN_FILENO, "stdin", 128, &secret, &err);
    if (r == 0)
        r = kfa_tpm_seal(ctx->cfg->tpm_tcti, ctx->cfg->tpm_pcrs, ctx->cfg->n_tpm_pcrs, secret, &blob,
                         KFA_TPM_TIMEOUT_MS, &err);
    kf_secbuf_free(secret);
    int fd = r == 0 ? open(argv[2], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600) : -1;
    if (r == 0 && fd < 0)
        r = kf_err_set(&err, -errno, "%s: %s", argv[2], strerror(errno));
    if (r == 0) {
        size_t n = strlen(blob);
        if (write(fd, blob, n) != (ssize_t)n || write(fd, "\n", 1) != 1 || fsync(fd) != 0)
            r = kf_err_set(&err, -EIO, "%s: write failed", argv[2]);
    }
    if (fd >= 0)
        close(fd);
    if (r != 0 && fd >= 0)
        unlink(argv[2]);
    free(blob);
    if (r != 0) {
        fprintf(stderr, "keyfleet-agent: %s\n", err.msg);
        return 1;
    }
    printf("sealed the secret id to this TPM (PCRs");
    for (size_t i = 0; i < ctx->cfg->n_tpm_pcrs; i++)
        printf(" %u", ctx->cfg->tpm_pcrs[i]);
    printf(") in %s\n", argv[2]);
    return 0;
}
