#!/usr/bin/env bash
# Boot unlock, proven by booting (issue #15): an initramfs built by the real mkinitramfs from
# the project as installed (hook, keyscript, UMASK snippet), Debian's kernel, and a LUKS2 root
# that keyfleet unlocks through cryptroot's keyscript while the passphrase prompt stays open.
#   1. keyfleet unlocks the root; the boot reaches the root's marker; the audit shows the release.
#   2. coordinator down: the prompt takes the passphrase typed on the console; the boot goes on.
#   3. revoked node: the root stays locked, the console names the reason, the prompt still works.
#   4. approval required: the console shows the wait; keyfleetctl approve lets the boot go on.
# Scenario 2 runs last, as it stops the coordinator; 3 follows 4, as a revoke is for good.
# Also: the image is 0600 and holds the node's certificate and key (lsinitramfs).
. "$(dirname "$0")/../integration/lib.sh"
. "$(dirname "$0")/vm-lib.sh"
boot_requirements

boot_fleet
root_image "$WORK/root.img" "$PASS"
root_image "$WORK/root-approval.img" "$PASS" # its own LUKS UUID: a volume of its own
enroll_root "$WORK/root.img"
enroll_root "$WORK/root-approval.img" --label approval=yes

INITRD=$WORK/initrd.img
keyfleet_initrd "$INITRD"
expect_eq "the image is created 0600 (it holds the node's key)" "$(stat -c %a "$INITRD")" "600"
listing=$(lsinitramfs "$INITRD")
expect_match "the image holds the node key" "$listing" "${VMCONF#/}/vm-1.key"
expect_match "... the certificate and the CA" "$listing" "${VMCONF#/}/vm-1.crt.*|${VMCONF#/}/ca.crt"
expect_match "... the agent and the keyscript" "$listing" "usr/lib/keyfleet/keyscript"
expect_match "... libcryptsetup, which the agent loads at run time" "$listing" "libcryptsetup.so.12"

CMDLINE="root=/dev/mapper/cryptroot ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"
crypt() { echo "cryptopts=target=cryptroot,source=/dev/vda,luks,keyscript=/usr/lib/keyfleet/keyscript"; }
audit_releases() { ctl "$F" audit --json --action release | grep -c '"decision":"allow"'; }

# --- 1. keyfleet unlocks the root.
before=$(audit_releases)
vm_boot_start unlock "$WORK/root.img" "$INITRD" "$CMDLINE $(crypt)"
vm_boot_wait
C=$(cat "$WORK/unlock.console")
expect_match "1. the prompt is offered while keyfleet asks" "$C" "Please unlock disk cryptroot"
expect_match "1. keyfleet gets the key from the coordinator" "$C" "keyfleet: cryptroot: released by a coordinator"
expect_match "1. cryptroot opens the root with it" "$C" "cryptroot: set up successfully"
expect_match "1. the boot switches to the root and reaches its marker" "$C" "KEYFLEET-ROOT-REACHED root=/dev/mapper/cryptroot"
expect_eq "1. the audit shows one more release, for vm-1" "$(audit_releases)" "$((before + 1))"
T_KEYFLEET=$(awk -v a="$(console_time unlock 'set up successfully')" -v b="$(console_time unlock 'Loading, please wait')" \
    'BEGIN { printf "%.1f", a - b }')
# The agent's part, from its start to the key (file key, no quote; tpm_fallback.sh prints the
# same for a TPM key and a quote).
T_AGENT=$(awk -v a="$(console_time unlock 'released by a coordinator')" -v b="$(console_time unlock 'keyfleet: cryptroot: asking')" \
    'BEGIN { printf "%.1f", a - b }')

# --- 4. Approval required: the console shows the wait; an operator's approval lets it boot.
vm_boot_start approval "$WORK/root-approval.img" "$INITRD" "$CMDLINE $(crypt)"
if console_wait approval "waiting_for_approval" 150; then
    R=$(ctl "$F" pending | awk '$2 == "vm-1" { print $1; exit }')
    [ -n "$R" ] && ctl "$F" approve "$R" >/dev/null
fi
vm_boot_wait
C=$(cat "$WORK/approval.console")
expect_match "4. the console shows the wait, with the time left" "$C" "event=waiting_for_approval .*seconds_left=[0-9]+"
expect_match "4. once approved the key is released and the root opens" "$C" \
    "keyfleet: cryptroot: released by a coordinator"
expect_match "4. the boot reaches the marker" "$C" "KEYFLEET-ROOT-REACHED"
expect_eq "4. the audit shows that release" "$(audit_releases)" "$((before + 2))"

# --- 3. Revoked node: no key; the console says why; the prompt still works.
ctl "$F" node revoke vm-1 "boot test: revoked" >/dev/null
vm_boot_start revoked "$WORK/root.img" "$INITRD" "$CMDLINE $(crypt)"
if console_wait revoked "keyfleet: cryptroot: not unlocked through keyfleet" 150; then
    type_on_console revoked "$PASS"
fi
vm_boot_wait
C=$(cat "$WORK/revoked.console")
expect_match "3. a revoked node gets no key, and the console names the reason" "$C" \
    "keyfleet: cryptroot: not unlocked through keyfleet: .*revoked"
expect_match "3. the typed passphrase still opens the root" "$C" "KEYFLEET-ROOT-REACHED"
expect_eq "3. no release was allowed to vm-1 after the revoke" "$(audit_releases)" "$((before + 2))"

# --- 2. Coordinator down: the passphrase typed on the console opens the root.
stop_kfd TERM
vm_boot_start down "$WORK/root.img" "$INITRD" "$CMDLINE $(crypt)"
if console_wait down "Please unlock disk cryptroot" 150; then
    sleep 2
    type_on_console down "$PASS"
fi
vm_boot_wait
C=$(cat "$WORK/down.console")
expect_match "2. with no coordinator the typed passphrase opens the root" "$C" "cryptroot: set up successfully"
expect_match "2. and the boot reaches the marker" "$C" "KEYFLEET-ROOT-REACHED"
T_PROMPT=$(awk -v a="$(console_time down 'set up successfully')" -v b="$(console_time down 'Loading, please wait')" \
    'BEGIN { printf "%.1f", a - b }')
[ -n "${KF_BOOT_KEEP:-}" ] && cp "$WORK"/*.console "$KF_BOOT_KEEP"/

echo "# boot timing (initramfs start to root opened): keyfleet ${T_KEYFLEET}s, typed passphrase ${T_PROMPT}s" \
    "(the typed path includes the test's wait for the prompt)"
echo "# boot timing (agent start to key, in the VM): file key ${T_AGENT}s"
finish
