/* Boot unlock in an initramfs: what the image must hold, and the cryptroot keyscript that asks
 * the coordinators while the passphrase prompt stays open. */
#ifndef KFA_BOOT_H
#define KFA_BOOT_H

#include "agent.h"

/* `initramfs-files`: prints, one per line as KIND<TAB>VALUE, what an initramfs needs for this
 * config: "file" (the config, certificate, key, CA, AppRole files), "lib" (a soname the agent
 * loads at run time) and "exec" (a program it runs, such as zfs). Reads the config with the
 * agent's own parser, so image hooks never parse YAML. */
int kfa_cmd_initramfs_files(const kfa_config *cfg, int argc, char **argv);

/* `keyscript`: a cryptroot keyscript (crypttab keyscript=). Starts the passphrase prompt
 * (/lib/cryptsetup/askpass) and, beside it, a child that gets the key of $CRYPTTAB_SOURCE from a
 * coordinator (or the TPM where policy allowed it) and checks it opens the volume. Whichever
 * answers first is written to stdout; the other is stopped. The agent never delays the prompt:
 * it runs before the config is even read, so a broken config still leaves the prompt. */
int kfa_cmd_keyscript(const char *config_path, int argc, char **argv);

#endif
