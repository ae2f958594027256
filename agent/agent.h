/* keyfleet-agent: shared state of one run. */
#ifndef KFA_AGENT_H
#define KFA_AGENT_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "kf_identity.h"
#include "kf_node_client.h"
#include "tpm_attest.h"
#include "volume.h"

#define KFA_TPM_TIMEOUT_MS 15000

#define KFA_EXIT_ALL 0
#define KFA_EXIT_NONE 1
#define KFA_EXIT_USAGE 2

/* Prints the usage of cmd (main.c's table; the whole agent's when NULL) to stderr; returns
 * KFA_EXIT_USAGE. */
int kfa_usage(const char *cmd);
#define KFA_EXIT_SOME 3

typedef struct kfa_ctx {
    kfa_config *cfg;
    kf_identity me;
    kf_rpc_client *client;
    kf_seal_receiver *receiver; /* the run's X25519 key: one HPKE context per connection */
    uint64_t deadline; /* monotonic ms */
    bool reachable;    /* a coordinator answered during this run */
    bool logged_in;    /* AppRole: a bearer token is set on client */
    uint64_t dead_man_after_s; /* the last heartbeat's dead-man window (0: none) */
    bool live;       /* stderr is a terminal of its own (not the keyscript's console): a live countdown */
    bool no_pending; /* a release held for approval fails at once, making no request (rewrap) */
    /* The last heartbeat's volumes whose recovery key was revealed (watch replaces them). */
    char *recovery_replace[100];
    size_t n_recovery_replace;
    /* Carries out a heartbeat's crypt-erase orders (kfa_erase_ordered, set by keyfleet-agent's
     * main); NULL in the token plugin, which leaves them to the next agent run. */
    void (*erase)(struct kfa_ctx *ctx, char *const *ids, size_t n_ids, char *const *all_ids, size_t n_all);
} kfa_ctx;

/* Creates the Connect client (TLS context, certificate parsed; no network) if there is none. */
int kfa_client(kfa_ctx *ctx, kf_err *err);
/* Opens the client (once) and, with AppRole, logs in when there is no token: 0, -EACCES (the
 * login was refused), or another -errno when no coordinator answered. */
int kfa_connect(kfa_ctx *ctx, kf_err *err);
/* Before the agent's own TPM work: with a TPM-resident node key, closes the client and unloads
 * the tpm2 provider, whose TPM connection would block ours on a TPM without a resource manager
 * (swtpm serves one connection at a time). The next kfa_client makes a new one. */
void kfa_client_close_for_tpm(kfa_ctx *ctx);
/* Who this node is: with a certificate, the keyfleet://node/NAME it names (ctx->me; the client
 * is created, no network); with AppRole, nothing yet (the name comes with the login). 0, or
 * -EINVAL with err naming the certificate. */
int kfa_identify(kfa_ctx *ctx, kf_err *err);
/* The run's receiver, made on first use for ctx->me (NULL if that failed: each call then makes its own). */
kf_seal_receiver *kfa_receiver(kfa_ctx *ctx);

/* The TPM quote for one request (docs/attestation.md), made on the client's current connection,
 * which the next call is pinned to: 0 with *msg pointing into *q, 1 when this node does not
 * attest (no TPM-bound identity, or tpm.attest: false), or a negative errno: -ENXIO when the TPM
 * refused the quote, -ENOMEM, or a transport error connecting (worth a retry). The client's TPM
 * key is let go of first (the provider's TPM connection closed; swtpm serves one at a time): a
 * new client is made when the connection goes. */
int kfa_attest(kfa_ctx *ctx, const char *method, const char *volume_id, const char *request_id, kfa_quote *q,
               Keyfleet__V1__TpmQuote *msg, kf_err *err);
/* As kfa_attest, for a request that carries no ephemeral key (RotateKey COMMIT). */
int kfa_attest_keyless(kfa_ctx *ctx, const char *method, const char *volume_id, const char *request_id, kfa_quote *q,
                       Keyfleet__V1__TpmQuote *msg, kf_err *err);
/* As kfa_attest, for a Heartbeat (no volume, ephemeral key or request id). */
int kfa_attest_heartbeat(kfa_ctx *ctx, kfa_quote *q, Keyfleet__V1__TpmQuote *msg, kf_err *err);

/* Releases v's key: retries transport errors and unavailable with jittered backoff, and polls
 * while PENDING, until the run's deadline. Returns 0 with *ret filled, -ETIMEDOUT at the
 * deadline, or another negative errno with err naming the coordinator's answer. */
int kfa_release(kfa_ctx *ctx, const kfa_volume *v, kf_released *ret, kf_err *err);

/* The offline fallback (no coordinator answered; why is the last transport error): unseals v's
 * TPM copy into *ret_key, records the unlock in the status file and queues it for the next
 * contact. 0, or a negative errno with err saying why the TPM refused. */
int kfa_unseal_offline(kfa_ctx *ctx, const kfa_volume *v, const char *why, kf_secbuf **ret_key, kf_err *err);

/* Seals e's key to this TPM under the PCRs e names (the config's when it names none), for
 * offline unlock (enroll, rotate; seal, then verify). *ret_blob is malloc'ed. */
int kfa_seal_copy(kfa_ctx *ctx, const kf_enrolled *e, char **ret_blob, kf_err *err);

/* The status file: per volume, how and when it was last unlocked (no secrets). */
int kfa_state_record(const kfa_config *cfg, const char *volume_id, const char *method, const char *detail);
/* Queues an offline (TPM) unlock for reporting to a coordinator. */
int kfa_state_queue_offline(const kfa_config *cfg, const kfa_volume *v, const char *reason);
/* The same for any way of unlocking without a coordinator (method: Keyfleet__V1__OfflineMethod). */
int kfa_state_queue_unlock(const kfa_config *cfg, const kfa_volume *v, int method, const char *reason);
/* Reports queued offline unlocks through Heartbeat; clears them once a coordinator accepted
 * them. Quiet when there is nothing to report or no coordinator answers. */
void kfa_report_offline(kfa_ctx *ctx);

/* Sends a Heartbeat carrying the queued offline unlocks (always, or only when some are queued),
 * clears those the coordinator accepted, and says whether it answered lock (the kill switch).
 * 0, or a negative errno with err set when no coordinator took it. */
int kfa_heartbeat(kfa_ctx *ctx, bool always, bool *ret_lock, kf_err *err);
/* A heartbeat's 200 answer (state.c; fuzzed by tests/fuzz/fuzz_agent_answer.c): *ret_lock, the
 * dead-man window and the recovery keys to replace into ctx (quoted: the heartbeat carried a quote,
 * whose verdict is logged); then, once the sent reports are dropped, kfa_heartbeat_erase carries
 * out the crypt-erase orders through ctx->erase and says whether there were any. */
void kfa_heartbeat_answer(kfa_ctx *ctx, const Keyfleet__V1__HeartbeatResponse *resp, bool quoted, bool *ret_lock);
bool kfa_heartbeat_erase(kfa_ctx *ctx, const Keyfleet__V1__HeartbeatResponse *resp);

/* Dead-man switch (watch.c): the window and the last contact (wall clock) kept in the state
 * file, so that a restarted watcher keeps counting; a lock made while silent, queued for the
 * next heartbeat (HeartbeatRequest.dead_man_locks) and dropped once a coordinator took it. */
void kfa_state_dead_man_get(const kfa_config *cfg, uint64_t *ret_after_s, int64_t *ret_last_contact);
/* All the state file says of the switch, for keyfleet-agent status: as kfa_state_dead_man_get,
 * with the last lock (Unix seconds, 0: never) and how many locks wait to be reported. */
typedef struct kfa_dead_man_state {
    uint64_t after_s;
    int64_t last_contact, locked_at;
    size_t unreported;
} kfa_dead_man_state;
void kfa_state_dead_man_read(const kfa_config *cfg, kfa_dead_man_state *ret);
/* keyfleet-agent status's dead-man line (watch.c), or its "dead_man" member set in json_obj when
 * that is not NULL. */
struct json_t;
void kfa_dead_man_status(const kfa_config *cfg, struct json_t *json_obj);
/* How far the wall clock may be behind the remembered last contact (a clock corrected at boot)
 * before the silence since it counts as the whole dead-man window: a clock set back cannot tell
 * how long the node was silent. */
#define KFA_DEAD_MAN_CLOCK_SLACK_S 300
int kfa_state_dead_man_contact(const kfa_config *cfg, uint64_t after_s, int64_t at);
int kfa_state_queue_dead_man(const kfa_config *cfg, int64_t at, uint64_t silent_s, uint64_t after_s, unsigned locked,
                             unsigned failed);

/* One volume from a spec: luks:PATH, zfs:DATASET, or a configured volume's path or spec
 * (volumes.c). Not yet probed. */
int kfa_resolve_volume(const kfa_config *cfg, const char *spec, kfa_volume *v, kf_err *err);
/* This node's volumes: the specs given, or (n_specs 0) the configured ones plus discovered ZFS
 * encryption roots (only those whose key is not loaded, when locked_only). Not yet probed. */
int kfa_collect_volumes(kfa_ctx *ctx, int n_specs, char **specs, bool locked_only, kfa_volume **ret, size_t *ret_n);

/* Remote crypto-erase (erase.c): locks and erases each of this node's volumes with these ids
 * (HeartbeatResponse.erase_volume_ids; every keyslot of those in all_ids) and queues the outcomes
 * for the next heartbeat. */
void kfa_erase_ordered(kfa_ctx *ctx, char *const *ids, size_t n_ids, char *const *all_ids, size_t n_all);
/* Queues an erase's outcome (detail: what went, or why not). A failure already queued or reported
 * with the same detail is not queued again, so an erase that keeps failing alike is audited once. */
int kfa_state_queue_erased(const kfa_config *cfg, const char *volume_id, bool ok, const char *detail);

/* The rotate command (rotate.c). */
int kfa_rotate(kfa_ctx *ctx, int argc, char **argv);
/* The volume's lock (rotate-ID.lock beside the state file, flock): one run changing its keys
 * at a time on this machine; -EBUSY at once while another holds it. Close *ret_fd to release. */
int kfa_volume_lock(const kfa_config *cfg, const kfa_volume *v, int *ret_fd, kf_err *err);
/* Rotates one enrolled volume's key, under the rotation lock (probed again under it). */
int kfa_rotate_volume(kfa_ctx *ctx, kfa_volume *v, kf_err *err);
/* Recovery keys (recovery_key.c; docs/recovery.md). Escrows a new recovery key for v (probed,
 * enrolled) and, LUKS2, gives it a keyslot authorised by key (the volume's keyfleet key; NULL:
 * released by a coordinator), killing the keyslot of the one it replaces; ZFS, rotate first
 * (the revealed key is the dataset's) when rotate_zfs. *ret_how says what was done. */
int kfa_recovery_add(kfa_ctx *ctx, kfa_volume *v, const kf_secbuf *key, bool rotate_zfs, const char **ret_how,
                     kf_err *err);
/* After a heartbeat: replaces the recovery key of each volume (by id) a coordinator listed as
 * revealed; failures are logged and retried at the next contact. */
void kfa_recovery_replace(kfa_ctx *ctx, char **ids, size_t n);

/* The watch command (watch.c). */
int kfa_watch(kfa_ctx *ctx, int argc, char **argv);

/* Returns the last unlock of volume_id ("" when never): method, detail and time. */
void kfa_state_lookup(const kfa_config *cfg, const char *volume_id, char *method, size_t msize, int64_t *at);

#endif
