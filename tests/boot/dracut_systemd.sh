#!/usr/bin/env bash
# Boot unlock through systemd's own cryptsetup (issues #15 and #30): an initrd built by the real
# dracut (systemd flavour, Debian's default) from the project as installed, in which
# systemd-cryptsetup opens the LUKS2 root through the keyfleet token plugin
# (libcryptsetup-token-keyfleet.so) with no keyfleet script, and falls back to its own
# passphrase prompt when no coordinator gives the key.
#   1. the token plugin unlocks the root; the boot reaches the root's marker; the audit shows it.
#   2. coordinator down: the plugin gives up at its deadline, systemd-cryptsetup's prompt takes
#      the passphrase typed on the console, and the boot goes on.
# Also: the image is 0600 and holds the plugin, the node's key and the config where the plugin
# reads it (/etc/keyfleet/agent.yaml).
. "$(dirname "$0")/../integration/lib.sh"
. "$(dirname "$0")/vm-lib.sh"
boot_requirements
dracut_requirements

KF_BOOT_DEADLINE=20s # the plugin holds the prompt back this long when no coordinator answers
boot_fleet
root_image "$WORK/root.img" "$PASS"
enroll_root "$WORK/root.img"
UUID=$(cryptsetup luksUUID "$WORK/root.img")

INITRD=$WORK/initrd-dracut.img
if ! dracut_image "$INITRD" >"$WORK/dracut.log" 2>&1; then
    not_ok "dracut builds the image" "$(tail -n 20 "$WORK/dracut.log")"
    finish
fi
expect_eq "the image is created 0600 (it holds the node's key)" "$(stat -c %a "$INITRD")" "600"
listing=$(lsinitrd "$INITRD" 2>/dev/null)
expect_match "the image holds the token plugin where libcryptsetup looks" "$listing" \
    "usr/lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-keyfleet.so"
expect_match "... the config where the plugin reads it" "$listing" "etc/keyfleet/agent.yaml"
expect_match "... the node key" "$listing" "etc/keyfleet/vm-1.key"
expect_match "... and systemd-cryptsetup" "$listing" "systemd-cryptsetup"

CMDLINE="root=/dev/mapper/cryptroot rd.luks.name=$UUID=cryptroot rd.neednet=1 \
ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off rd.shell=0 rd.emergency=poweroff \
systemd.show_status=1 systemd.journald.forward_to_console=1"
audit_releases() { ctl "$F" audit --json --action release | grep -c '"decision":"allow"'; }

# --- 1. The token plugin unlocks the root.
before=$(audit_releases)
vm_boot_start unlock "$WORK/root.img" "$INITRD" "$CMDLINE"
vm_boot_wait
C=$(cat "$WORK/unlock.console")
expect_match "1. systemd-cryptsetup opens the root" "$C" "Finished .*Cryptography Setup for cryptroot"
expect_match "1. the boot switches to the root and reaches its marker" "$C" "KEYFLEET-ROOT-REACHED root=/dev/mapper/cryptroot"
expect_eq "1. the audit shows one more release, for vm-1" "$(audit_releases)" "$((before + 1))"
T_KEYFLEET=$(awk -v a="$(console_time unlock 'Finished .*Cryptography Setup')" -v b="$(console_time unlock 'Running in initrd')" \
    'BEGIN { printf "%.1f", a - b }')

# --- 2. Coordinator down: the plugin gives up at its deadline; the prompt takes the passphrase.
stop_kfd TERM
vm_boot_start down "$WORK/root.img" "$INITRD" "$CMDLINE"
if console_wait down "Please enter passphrase for disk" 200; then
    sleep 2
    type_on_console down "$PASS"
fi
vm_boot_wait
C=$(cat "$WORK/down.console")
expect_match "2. the plugin says why it gave no key" "$C" "keyfleet: .*not unlocked: .*coordinator unreachable"
expect_match "2. systemd-cryptsetup then asks for the passphrase" "$C" "Please enter passphrase for disk"
expect_match "2. the typed passphrase opens the root" "$C" "Finished .*Cryptography Setup for cryptroot"
expect_match "2. and the boot reaches the marker" "$C" "KEYFLEET-ROOT-REACHED root=/dev/mapper/cryptroot"
T_PROMPT=$(awk -v a="$(console_time down 'Finished .*Cryptography Setup')" -v b="$(console_time down 'Running in initrd')" \
    'BEGIN { printf "%.1f", a - b }')

[ -n "${KF_BOOT_KEEP:-}" ] && cp "$WORK"/*.console "$KF_BOOT_KEEP"/
echo "# boot timing (dracut systemd initrd start to root opened): keyfleet ${T_KEYFLEET}s," \
    "coordinator down then typed passphrase ${T_PROMPT}s (the plugin's deadline, $KF_BOOT_DEADLINE, comes first)"
finish
