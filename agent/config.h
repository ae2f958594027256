/* keyfleet-agent's configuration (YAML, /etc/keyfleet/agent.yaml by default). Relative paths
 * are resolved against the file's folder. */
#ifndef KFA_CONFIG_H
#define KFA_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "kf_err.h"
#include "kf_yaml.h"

/* The status file, and the queue of offline (TPM) unlocks still to report. Under /run: the
 * initramfs's /run moves into the booted system, so an unlock made in the initramfs is reported
 * by the system's agent (keyfleet-watch, keyfleet-unlock); a file elsewhere in the initramfs is
 * gone after the switch to the root, and with it the report. */
#define KFA_DEFAULT_STATE_FILE "/run/keyfleet/agent-state.json"

typedef enum { KFA_VOL_LUKS2, KFA_VOL_ZFS } kfa_vol_kind;

typedef struct kfa_volume_cfg {
    kfa_vol_kind kind;
    char *path;   /* LUKS2 device or file, or ZFS dataset */
    char *spec;   /* as written in the config file */
    char *name;   /* LUKS2: device-mapper name when activating (default keyfleet-UUID) */
} kfa_volume_cfg;

typedef struct kfa_config {
    char *path;
    kf_strlist coordinators;
    char *cert, *key, *ca;       /* cert and key are NULL with AppRole */
    char *tpm_key;               /* instead of key: a TSS2 PRIVATE KEY used in the TPM (tpm.tcti) */
    char *role_id_file, *secret_id_file; /* AppRole credentials, or NULL */
    char *secret_id_tpm_file;            /* AppRole: the secret id sealed to the TPM (kftpm1:...) */
    char *state_file;
    uint64_t deadline_ms;     /* overall, per run */
    uint64_t call_timeout_ms; /* per RPC attempt */
    uint64_t watch_interval_ms; /* watch mode: time between heartbeats */
    uint64_t approval_log_interval_ms; /* while a release waits for approval: a log line this often */
    char *zfs_command;        /* absolute path */
    bool zfs_mount;
    bool zfs_discover;
    bool luks_activate;       /* false: only verify the key (no device-mapper) */
    char *tpm_tcti;
    uint32_t tpm_pcrs[24];
    size_t n_tpm_pcrs;
    /* Measured-boot attestation (docs/attestation.md): with a TPM-bound identity, every Enroll
     * and Release carries a quote over these PCRs (bit i: PCR i; default 0, 2, 4, 7);
     * tpm.attest: false turns it off. */
    bool tpm_attest;
    uint32_t tpm_attest_pcrs;
    kfa_volume_cfg *volumes;
    size_t n_volumes;
} kfa_config;

int kfa_config_load(const char *path, kfa_config **ret, kf_err *err);
void kfa_config_free(kfa_config *cfg);

#endif
