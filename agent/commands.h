/* The agent's commands that have a file each (enroll.c, unlock.c, rewrap.c, status.c,
 * seal_secret_id.c, recover.c); rotate and watch are in agent.h. Each takes the command's argv (argv[0] is
 * the command) and returns the exit status. */
#ifndef KFA_COMMANDS_H
#define KFA_COMMANDS_H

#include <pthread.h>
#include <stdbool.h>

#include "agent.h"

/* At boot the TLS set-up (context, certificate, handshake) and reading the volumes' LUKS
 * headers take about as long as each other; unlock does them at once, on two threads. The
 * helper thread touches only ctx->client and ctx->me until it is joined. */
typedef struct kfa_identity_job {
    kfa_ctx *ctx;
    pthread_t thread;
    bool started;
    int r;
    kf_err err;
} kfa_identity_job;
/* Joins the helper thread (main.c): 0, or the identity's error (reported). */
int kfa_await_identity(kfa_identity_job *job);

int kfa_cmd_enroll(kfa_ctx *ctx, int argc, char **argv);
/* job: the identity being resolved meanwhile, or NULL when it already is. */
int kfa_cmd_unlock(kfa_ctx *ctx, int argc, char **argv, kfa_identity_job *job);
int kfa_cmd_rewrap(kfa_ctx *ctx, int argc, char **argv);
int kfa_cmd_status(kfa_ctx *ctx, int argc, char **argv);
int kfa_cmd_seal_secret_id(kfa_ctx *ctx, int argc, char **argv);
/* recover.c: a recovery key typed at the console; run before the identity is read (it needs none). */
int kfa_cmd_recover(const kfa_config *cfg, int argc, char **argv);
/* recovery-key add VOLUME... (recovery_key.c) */
int kfa_cmd_recovery_key(kfa_ctx *ctx, int argc, char **argv);

#endif
