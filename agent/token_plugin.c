/* libcryptsetup-token-keyfleet.so: the external LUKS2 token handler for the "keyfleet" token
 * that keyfleet-agent enrolls, so that `cryptsetup open --token-only`, systemd-cryptsetup
 * (/etc/crypttab) and a systemd initrd unlock keyfleet volumes with no keyfleet script. It runs
 * the agent's own release path (kfa_core: config, token parser, release loop, TPM fallback,
 * status file), linked in statically; the version script (token_plugin.sym) exports the
 * CRYPTSETUP_TOKEN_1.0 entry points below and nothing else.
 *
 * It runs inside someone else's process: no process-wide changes beyond what the release path
 * needs (SIGPIPE ignored where it was default, as kf_rpc_client does), log lines go to crypt_log,
 * never a secret. Errors are what libcryptsetup's token loop expects of a plugin:
 *   -ENOENT  this token is of no use here (malformed, not this volume, no or broken agent config);
 *   -EPERM   the coordinators refused (revoked, policy, a wrapped key they cannot unwrap);
 *   -EAGAIN  not now (no coordinator answered; approval still pending at the deadline).
 * libcryptsetup turns -EPERM from an external plugin into -ENOENT and goes on with the next
 * token; -EAGAIN also goes on, and is what the caller gets when no token worked. Neither ends the
 * caller's loop, so systemd-cryptsetup still falls back to the passphrase prompt. The message
 * naming the reason goes to crypt_log at CRYPT_LOG_ERROR. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <libcryptsetup.h>
#include <openssl/crypto.h>

#include "agent.h"
#include "kf_log.h"
#include "kf_time.h"
#include "luks2_token.h"
#include "tpm_net.h"

#define PUBLIC __attribute__((visibility("default")))
#define DEFAULT_CONFIG "/etc/keyfleet/agent.yaml"

PUBLIC const char *cryptsetup_token_version(void);
PUBLIC int cryptsetup_token_open(struct crypt_device *cd, int token, char **buffer, size_t *buffer_len, void *usrptr);
PUBLIC void cryptsetup_token_buffer_free(void *buffer, size_t buffer_len);
PUBLIC int cryptsetup_token_validate(struct crypt_device *cd, const char *json);
PUBLIC void cryptsetup_token_dump(struct crypt_device *cd, const char *json);

const char *cryptsetup_token_version(void)
{
    return KF_VERSION;
}

/* kf_log lines of the release loop (retries, the approval wait with its countdown) go to the
 * caller's log: systemd-cryptsetup's journal, cryptsetup's terminal. */
static void to_crypt_log(kf_log_level level, const char *line, void *userdata)
{
    crypt_logf(userdata, level >= KF_LOG_ERROR ? CRYPT_LOG_ERROR : level >= KF_LOG_INFO ? CRYPT_LOG_NORMAL : CRYPT_LOG_DEBUG,
               "keyfleet: %s\n", line);
}

/* The agent's config: $KEYFLEET_CONFIG when the caller passes its environment on (and is not
 * set-uid), else /etc/keyfleet/agent.yaml. systemd-cryptsetup runs with a clean environment, so
 * there it is always the default. */
static const char *config_path(void)
{
    const char *p = secure_getenv("KEYFLEET_CONFIG");
    return p != NULL && p[0] == '/' ? p : DEFAULT_CONFIG;
}

/* The key for libcryptsetup, in locked, non-dumpable pages; cryptsetup_token_buffer_free wipes
 * and unmaps them. */
static char *locked_copy(const kf_secbuf *key)
{
    size_t psz = (size_t)sysconf(_SC_PAGESIZE), cap = (key->len + psz - 1) / psz * psz;
    void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    (void)madvise(p, cap, MADV_DONTDUMP);
    (void)madvise(p, cap, MADV_WIPEONFORK);
    (void)mlock(p, cap);
    memcpy(p, key->data, key->len);
    return p;
}

void cryptsetup_token_buffer_free(void *buffer, size_t buffer_len)
{
    if (buffer == NULL)
        return;
    size_t psz = (size_t)sysconf(_SC_PAGESIZE), cap = (buffer_len + psz - 1) / psz * psz;
    OPENSSL_cleanse(buffer, cap);
    munlock(buffer, cap);
    munmap(buffer, cap);
}

/* The token's JSON, checked against this header's UUID. */
static int token_of(struct crypt_device *cd, int token, kfa_token *ret, kf_err *err)
{
    const char *json = NULL;
    int r = crypt_token_json_get(cd, token, &json);
    if (r < 0)
        return kf_err_set(err, -ENOENT, "token %d: unreadable (%s)", token, strerror(-r));
    r = kfa_token_parse(json, crypt_get_uuid(cd), ret, err);
    return r != 0 ? kf_err_wrap(err, "token %d", token) : 0;
}

int cryptsetup_token_validate(struct crypt_device *cd, const char *json)
{
    kfa_token t;
    kf_err err = {0};
    int r = kfa_token_parse(json, cd != NULL ? crypt_get_uuid(cd) : NULL, &t, &err);
    if (r != 0) {
        crypt_logf(cd, CRYPT_LOG_ERROR, "keyfleet: token refused: %s\n", err.msg);
        return -EINVAL;
    }
    kfa_token_clear(&t);
    return 0;
}

void cryptsetup_token_dump(struct crypt_device *cd, const char *json)
{
    kfa_token t;
    kf_err err = {0};
    if (kfa_token_parse(json, crypt_get_uuid(cd), &t, &err) != 0) {
        crypt_logf(cd, CRYPT_LOG_NORMAL, "\tkeyfleet token is not usable: %s\n", err.msg);
        return;
    }
    crypt_logf(cd, CRYPT_LOG_NORMAL, "\tVolume id:    %s\n", t.volume_id);
    crypt_logf(cd, CRYPT_LOG_NORMAL, "\tWrapped key:  KMS %s, key %s (released by a coordinator)\n", t.backend,
               t.key_ref);
    if (t.n_coordinators == 0)
        crypt_logf(cd, CRYPT_LOG_NORMAL, "\tCoordinators: (none recorded; agent.yaml names them)\n");
    for (size_t i = 0; i < t.n_coordinators; i++)
        crypt_logf(cd, CRYPT_LOG_NORMAL, "\t%s %s\n", i == 0 ? "Coordinators:" : "             ", t.coordinators[i]);
    crypt_logf(cd, CRYPT_LOG_NORMAL, "\tTPM copy:     %s\n",
               t.tpm_blob != NULL   ? "yes (offline unlock when no coordinator answers)"
               : t.tpm_part != NULL ? "no; a TPM part: TPM and network both required, no offline unlock"
                                    : "no");
    kfa_token_clear(&t);
}

/* Sets err to code and "what: " followed by the message err holds now. */
static int reason(kf_err *err, int code, const char *what)
{
    char was[KF_ERR_MSG_MAX];
    snprintf(was, sizeof(was), "%s", err->msg);
    return kf_err_set(err, code, "%s: %s", what, was);
}

/* Releases the key as keyfleet-agent does; the TPM copy when no coordinator answered at all. */
static int release(kfa_ctx *ctx, kfa_volume *v, kf_secbuf **ret_key, kf_err *err)
{
    kf_released rel = {0};
    int r = kfa_identify(ctx, err);
    if (r != 0)
        return reason(err, -ENOENT, "agent identity");
    r = kfa_release(ctx, v, &rel, err);
    if (r == 0 && kfa_tpmnet_combine(ctx, v, &rel.key, err) != 0) {
        /* tpm_and_network: the coordinator's part alone opens nothing, and there is no fallback */
        kf_released_clear(&rel);
        return reason(err, -EPERM, "the TPM refused its part");
    }
    if (r == 0) {
        char detail[128];
        snprintf(detail, sizeof(detail), "request=%s audit_seq=%llu via=token-plugin", rel.request_id,
                 (unsigned long long)rel.audit_seq);
        kfa_state_record(ctx->cfg, v->id, "coordinator", detail);
        if (rel.rewrapped != NULL)
            kf_log_info("rewrap_pending", "volume=%s hint=\"run keyfleet-agent rewrap to store the newer wrapped key\"",
                        kf_log_q(v->path));
        *ret_key = rel.key;
        rel.key = NULL;
        kf_released_clear(&rel);
        return 0;
    }
    bool pending = rel.pending;
    kf_released_clear(&rel);
    if (r == -EHOSTUNREACH && v->tpm_blob != NULL) {
        kf_err terr = {0};
        if (kfa_unseal_offline(ctx, v, err->msg, ret_key, &terr) != 0) {
            reason(err, -EAGAIN, "coordinator unreachable");
            return kf_err_wrap(err, "%s", terr.msg);
        }
        return 0;
    }
    if (r == -EACCES || r == -EPROTO)
        return reason(err, -EPERM, "refused by the coordinators");
    if (pending)
        return reason(err, -EAGAIN, "approval pending");
    if (r == -EHOSTUNREACH || r == -ETIMEDOUT)
        return reason(err, -EAGAIN, "coordinator unreachable");
    return reason(err, -ENOENT, "release failed");
}

int cryptsetup_token_open(struct crypt_device *cd, int token, char **buffer, size_t *buffer_len, void *usrptr)
{
    (void)usrptr;
    kf_err err = {0};
    kfa_token t;
    int r = token_of(cd, token, &t, &err);
    if (r != 0) {
        crypt_logf(cd, CRYPT_LOG_ERROR, "keyfleet: not unlocked: token malformed: %s\n", err.msg);
        return -ENOENT;
    }
    kfa_volume v = {.kind = KFA_VOL_LUKS2, .keyslot = t.keyslot, .token = token, .wrapped = t.wrapped,
                    .tpm_blob = t.tpm_blob, .tpm_part = t.tpm_part};
    const char *dev = crypt_get_device_name(cd);
    snprintf(v.path, sizeof(v.path), "%s", dev != NULL ? dev : "?");
    snprintf(v.id, sizeof(v.id), "%s", t.volume_id);
    kfa_ctx ctx = {0};
    const char *path = config_path();
    r = kfa_config_load(path, &ctx.cfg, &err);
    if (r != 0) {
        crypt_logf(cd, CRYPT_LOG_ERROR, "keyfleet: not unlocked: no usable agent config: %s\n", err.msg);
        kfa_token_clear(&t);
        return -ENOENT;
    }
    ctx.deadline = kf_monotonic_ms() + ctx.cfg->deadline_ms;
    crypt_logf(cd, CRYPT_LOG_VERBOSE, "keyfleet: %s: asking the coordinators for the key (at most %llu s)\n", v.path,
               (unsigned long long)(ctx.cfg->deadline_ms / 1000));
    kf_log_set_sink(to_crypt_log, cd);
    kf_secbuf *key = NULL;
    r = release(&ctx, &v, &key, &err);
    kf_log_set_sink(NULL, NULL);
    char *out = r == 0 ? locked_copy(key) : NULL;
    if (r == 0 && out == NULL)
        r = kf_err_set(&err, -ENOMEM, "out of memory");
    if (r == 0) {
        *buffer = out;
        *buffer_len = key->len;
        crypt_logf(cd, CRYPT_LOG_VERBOSE, "keyfleet: %s: key released\n", v.path);
    } else {
        crypt_logf(cd, CRYPT_LOG_ERROR, "keyfleet: %s: not unlocked: %s\n", v.path, err.msg);
    }
    kf_secbuf_free(key);
    kf_seal_receiver_free(ctx.receiver);
    kf_rpc_client_free(ctx.client);
    kfa_config_free(ctx.cfg);
    kfa_token_clear(&t);
    return r;
}
