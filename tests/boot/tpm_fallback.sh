#!/usr/bin/env bash
# Boot unlock with the coordinators down and a TPM copy (issue #15 §5.3): QEMU's TPM (tpm-tis)
# backed by an swtpm that this test starts, an initramfs built by the real mkinitramfs as in
# initramfs_tools.sh, and a LUKS2 root enrolled with offline fallback from the host against the
# same swtpm. With no coordinator, the agent in the initramfs unseals the root's key from the
# TPM; once a coordinator is back, the node's next contact (keyfleet-agent watch in the booted
# root) reports the offline unlock, and the coordinator audits it.
#
# PCR 7: the copy is sealed under PCR 7 (the coordinator's default). In the VM, SeaBIOS extends
# PCRs 0-7 with its separator event (the 4 bytes ff ff ff ff) before it boots the kernel; the test
# extends the host-side swtpm's PCR 7 the same way before enrolling, so the sealed value is the
# one this VM's firmware produces. A wrong value shows as "the PCR values changed".
. "$(dirname "$0")/../integration/lib.sh"
. "$(dirname "$0")/vm-lib.sh"
boot_requirements
for t in swtpm tpm2_pcrextend; do
    command -v "$t" >/dev/null || { not_ok "TPM boot test requirements" "missing: $t (scripts/install-deps)"; finish; }
done

KF_BOOT_OFFLINE=true KF_BOOT_DEADLINE=8s boot_fleet
cat >>"$VMCONF/agent.yaml" <<'YAML'
tpm: {tcti: "device:/dev/tpmrm0"}
YAML

# The machine's TPM, first on loopback for the enrollment from the host.
TPMDIR=$WORK/tpm
start_swtpm "$TPMDIR"
SEPARATOR=$(printf '\377\377\377\377' | sha256sum | cut -d' ' -f1)
if ! TPM2TOOLS_TCTI="$TCTI" tpm2_pcrextend "7:sha256=$SEPARATOR" >/dev/null 2>&1; then
    not_ok "PCR 7 is extended as SeaBIOS does"
    finish
fi
printf 'tpm: {tcti: "%s"}\n' "$TCTI" >>"$WORK/host.yaml"
EXTRA=$WORK/root-extra
root_add_agent "$EXTRA"
root_image "$WORK/root.img" "$PASS" "$EXTRA"
enroll_root "$WORK/root.img"
expect_match "the root's token carries the TPM copy" "$(luks_json "$WORK/root.img")" '"keyfleet_tpm_sealed":"kftpm1:'
# The same TPM state, now for QEMU: swtpm's control channel on a unix socket.
old_tpm=$(cat "$TPMDIR/pid")
kill "$old_tpm" 2>/dev/null
for _ in $(seq 1 100); do kill -0 "$old_tpm" 2>/dev/null || break; sleep 0.05; done
rm -f "$TPMDIR/pid"
swtpm socket --tpmstate dir="$TPMDIR" --tpm2 --ctrl type=unixio,path="$TPMDIR/sock" --log file="$TPMDIR/log" \
    --pid file="$TPMDIR/pid" --daemon
for _ in $(seq 1 100); do [ -S "$TPMDIR/sock" ] && [ -s "$TPMDIR/pid" ] && break; sleep 0.05; done
PIDS+=("$(cat "$TPMDIR/pid")")

INITRD=$WORK/initrd.img
keyfleet_initrd "$INITRD"
expect_match "the image holds tpm2-tss and its device TCTI" "$(lsinitramfs "$INITRD")" "libtss2-tcti-device.so.0"

CMDLINE="root=/dev/mapper/cryptroot ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"
CMDLINE="$CMDLINE cryptopts=target=cryptroot,source=/dev/vda,luks,keyscript=/usr/lib/keyfleet/keyscript"
offline_audits() { ctl "$F" audit --json | grep -c '"action":"offline_unlock"'; }
before=$(offline_audits)

stop_kfd TERM
VM_QEMU_EXTRA="-chardev socket,id=chrtpm,path=$TPMDIR/sock -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0"
vm_boot_start tpm "$WORK/root.img" "$INITRD" "$CMDLINE"
if console_wait tpm "KEYFLEET-ROOT-AGENT" 200; then
    start_kfd "$F" # the same port: pinned in its config
    type_on_console tpm ""
fi
vm_boot_wait
C=$(cat "$WORK/tpm.console")
expect_match "with no coordinator, the TPM copy opens the root" "$C" "keyfleet: cryptroot: unsealed from the TPM"
expect_match "cryptroot opens the root with it" "$C" "cryptroot: set up successfully"
expect_match "the boot reaches the root" "$C" "KEYFLEET-ROOT-REACHED root=/dev/mapper/cryptroot"
expect_match "the next contact succeeds" "$C" "KEYFLEET-ROOT-WATCH rc=0"
expect_eq "the coordinator audits the offline unlock it was told of" "$(offline_audits)" "$((before + 1))"
expect_match "... for vm-1" "$(ctl "$F" audit --json | grep '"action":"offline_unlock"' | tail -n 1)" '"node":"vm-1"'
T_TPM=$(awk -v a="$(console_time tpm 'set up successfully')" -v b="$(console_time tpm 'Loading, please wait')" \
    'BEGIN { printf "%.1f", a - b }')
[ -n "${KF_BOOT_KEEP:-}" ] && cp "$WORK"/*.console "$KF_BOOT_KEEP"/
echo "# boot timing (initramfs start to root opened): TPM fallback with the coordinators down ${T_TPM}s (deadline 8 s)"
finish
