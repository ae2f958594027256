#!/usr/bin/env bash
# Boots with QEMU's TPM (tpm-tis) backed by an swtpm that this test starts, manufactured with an
# EK certificate as a TPM maker ships one, an initramfs built by the real mkinitramfs as in
# initramfs_tools.sh, and a LUKS2 root enrolled with offline fallback from the host against the
# same swtpm. The node's TLS key is TPM-resident: made by `keyfleet-agent identity create` in
# that swtpm (the state QEMU then uses), vouched for by keyfleetctl cert issue --tpm-evidence,
# opened by identity activate; the image carries OpenSSL's tpm2 provider for it.
#   1. TPM fallback (issue #15 §5.3): with no coordinator, the agent in the initramfs unseals
#      the root's key from the TPM; once a coordinator is back, the node's next contact
#      (keyfleet-agent watch in the booted root) reports the offline unlock, which is audited.
#   2. Attested boot (issue #16): the policy now requires [tpm_key, attested]. The node has no
#      accepted PCR values (its root was enrolled from the host, without a quote): the release is
#      denied and names why, its quoted values are kept; the operator accepts them (--expect: the
#      values the booted kernel read from the TPM in boot 1, not the quote), the next try of
#      cryptroot (a wrong passphrase typed) gets the key with a quote, the root opens, and the
#      audit shows the release to vm-1 under the attested rule.
#   3. A PCR the policy covers changed (QEMU without its VGA option ROM: SeaBIOS measures one
#      ROM less into PCR 2): the release is denied naming PCR 2, the typed passphrase opens the root.
#
# PCR 7: the TPM copy is sealed under PCR 7 (the coordinator's default). In the VM, SeaBIOS
# extends PCRs 0-7 with its separator event (the 4 bytes ff ff ff ff) before it boots the kernel;
# the test extends the host-side swtpm's PCR 7 the same way before enrolling, so the sealed value
# is the one this VM's firmware produces. A wrong value shows as "the PCR values changed".
. "$(dirname "$0")/../integration/lib.sh"
. "$(dirname "$0")/vm-lib.sh"
boot_requirements
for t in swtpm swtpm_setup tpm2_pcrextend; do
    command -v "$t" >/dev/null || { not_ok "TPM boot test requirements" "missing: $t (scripts/install-deps)"; finish; }
done

KF_BOOT_OFFLINE=true KF_BOOT_DEADLINE=8s boot_fleet
cat >>"$VMCONF/agent.yaml" <<'YAML'
tpm: {tcti: "device:/dev/tpmrm0"}
YAML

# The machine's TPM, first on loopback for the set-up from the host.
TPMDIR=$WORK/tpm
tpm_manufacture "$TPMDIR"
start_swtpm "$TPMDIR"
SEPARATOR=$(printf '\377\377\377\377' | sha256sum | cut -d' ' -f1)
if ! TPM2TOOLS_TCTI="$TCTI" tpm2_pcrextend "7:sha256=$SEPARATOR" >/dev/null 2>&1; then
    not_ok "PCR 7 is extended as SeaBIOS does"
    finish
fi
printf 'tpm: {tcti: "%s"}\n' "$TCTI" >>"$WORK/host.yaml"

# The node's TLS key, made in this TPM as on the node (docs/attestation.md parts 1 and 2); the
# image gets it instead of the file key. The host's enrollment below stays with the file key.
ID=$WORK/identity
mkdir -p "$ID"
cp "$F/ca.crt" "$ID/"
cat >"$ID/agent.yaml" <<YAML
coordinators: ["127.0.0.1:$PORT"]
identity: {cert: vm-1.crt, tpm_key: vm-1.tpmkey, ca: ca.crt}
state_file: $ID/state.json
tpm: {tcti: "$TCTI"}
YAML
out=$("$INST/usr/sbin/keyfleet-agent" -c "$ID/agent.yaml" identity create vm-1 2>&1)
expect_match "identity create makes vm-1's key in the machine's TPM, with its evidence" "$out" "TPM evidence"
out=$("$CTL" cert issue node vm-1 --dir "$F" --out "$ID/vm-1" --csr "$ID/vm-1.tpmkey.csr" \
    --tpm-evidence "$ID/vm-1.tpmkey.evidence" --ek-ca "$WORK/ek-cas.pem" 2>&1)
expect_match "cert issue checks the evidence (EK certificate verified) and seals the certificate to that TPM" "$out" \
    "TPM-bound \\(EK certificate verified\\)"
out=$("$INST/usr/sbin/keyfleet-agent" -c "$ID/agent.yaml" identity activate "$ID/vm-1.crt.tpmcred" 2>&1)
expect_match "identity activate opens it in that TPM" "$out" "activated: "
rm -f "$VMCONF/vm-1.key"
cp "$ID/vm-1.crt" "$ID/vm-1.tpmkey" "$VMCONF/"
sed -i 's/^identity: .*/identity: {cert: vm-1.crt, tpm_key: vm-1.tpmkey, ca: ca.crt}/' "$VMCONF/agent.yaml"
EXTRA=$WORK/root-extra
root_add_agent "$EXTRA"
root_image "$WORK/root.img" "$PASS" "$EXTRA"
enroll_root "$WORK/root.img"
expect_match "the root's token carries the TPM copy" "$(luks_json "$WORK/root.img")" '"keyfleet_tpm_sealed":"kftpm1:'
# swtpm_for_qemu: the same TPM state, now for QEMU: swtpm's control channel on a unix socket.
# The swtpm before it (on loopback, or QEMU's last, which ends with the VM) is stopped first.
swtpm_for_qemu() {
    local old_tpm
    old_tpm=$(cat "$TPMDIR/pid" 2>/dev/null)
    if [ -n "$old_tpm" ]; then
        kill "$old_tpm" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$old_tpm" 2>/dev/null || break; sleep 0.05; done
    fi
    rm -f "$TPMDIR/pid" "$TPMDIR/sock"
    swtpm socket --tpmstate dir="$TPMDIR" --tpm2 --ctrl type=unixio,path="$TPMDIR/sock" --log file="$TPMDIR/log" \
        --pid file="$TPMDIR/pid" --daemon
    for _ in $(seq 1 100); do [ -S "$TPMDIR/sock" ] && [ -s "$TPMDIR/pid" ] && break; sleep 0.05; done
    PIDS+=("$(cat "$TPMDIR/pid")")
}
swtpm_for_qemu

INITRD=$WORK/initrd.img
keyfleet_initrd "$INITRD"
listing=$(lsinitramfs "$INITRD")
expect_match "the image holds tpm2-tss and its device TCTI" "$listing" "libtss2-tcti-device.so.0"
expect_match "... OpenSSL's tpm2 provider" "$listing" "ossl-modules/tpm2.so"
expect_match "... the SAPI library the provider links" "$listing" "libtss2-sys.so.1"
expect_match "... and the node's TPM key blob" "$listing" "${VMCONF#/}/vm-1.tpmkey"
expect_eq "... and not the file key" "$(printf '%s\n' "$listing" | grep -c "${VMCONF#/}/vm-1.key")" "0"

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
# The PCRs as the booted kernel read them: what the operator expects the node to quote.
KERNEL_PCRS=$(grep -o 'KEYFLEET-ROOT-PCR [0-9]*=[0-9A-Fa-f]\{64\}' "$WORK/tpm.console" | cut -d' ' -f2 |
    tr 'A-F' 'a-f' | paste -sd' ')
expect_match "the booted kernel reads PCRs 0, 2, 4 and 7 from the TPM" "$KERNEL_PCRS" "^0=[0-9a-f]{64} 2=[0-9a-f]{64} 4=[0-9a-f]{64} 7=[0-9a-f]{64}$"

# --- 2. Attested boot: the policy requires a TPM-bound key and measured-boot attestation.
# attested_policy [GOLDEN]: the vms rule with require: [tpm_key, attested] (and golden_pcrs).
attested_policy() {
    put_policy "$F" <<YAML || { not_ok "the attested policy is stored"; finish; }
rules:
  - name: vms
    match: {nodes: {names: ["vm-*"]}}
    effect: allow
    offline_fallback: true
    require: [tpm_key, attested]
${1:+    golden_pcrs: [$1]}
YAML
}
# console_wait_n NAME REGEX N [SECONDS]: waits for the Nth console line matching REGEX.
console_wait_n() {
    local deadline=$((SECONDS + ${4:-$BOOT_TIMEOUT}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        [ "$(grep -Ec -- "$2" "$WORK/$1.console" 2>/dev/null)" -ge "$3" ] && return 0
        kill -0 "$VM_PID" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}
# wrong_passphrase NAME: a wrong passphrase at the open prompt: cryptroot runs its keyscript, and
# with it the agent, again (tries=3).
wrong_passphrase() { console_wait "$1" "Please unlock disk cryptroot" 30 && sleep 1; type_on_console "$1" "not-the-passphrase"; }
release_audit() { ctl "$F" audit --json --action release | grep '"node":"vm-1"' | grep -c '"decision":"allow"'; }
attested_policy
releases=$(release_audit)
# A golden PCR 2 that no firmware of this fleet measures (an operator's typo).
GOLDEN_BAD=$(printf '%s' "$KERNEL_PCRS" | sed "s/ 2=[0-9a-f]*/ 2=$(printf 'typo' | sha256sum | cut -c1-64)/; s/\([0-9]*=[0-9a-f]*\)/\"\1\"/g; s/ /, /g")
swtpm_for_qemu
vm_boot_start attest "$WORK/root.img" "$INITRD" "$CMDLINE"
accepted=""
DENIED="keyfleet: cryptroot: not unlocked through keyfleet"
if console_wait attest "$DENIED" 200; then
    # Try 1 was denied: no accepted values. The operator accepts the quoted ones, expecting what
    # the booted kernel read, and pins golden values for the group, with PCR 2 wrong.
    shown=$(ctl "$F" node attest show vm-1 2>&1)
    token=$(printf '%s' "$shown" | sed -n 's/.*node attest accept vm-1 \([0-9a-f]\{32\}\).*/\1/p')
    accepted=$(ctl "$F" node attest accept vm-1 "$token" --expect "$KERNEL_PCRS" 2>&1)
    attested_policy "$GOLDEN_BAD"
    wrong_passphrase attest
    # Try 2 is denied for PCR 2; the operator takes the golden values out again.
    if console_wait_n attest "$DENIED" 2 60; then
        attested_policy
        sleep 1
        type_on_console attest "not-the-passphrase"
    fi
fi
if console_wait attest "KEYFLEET-ROOT-AGENT" 200; then type_on_console attest ""; fi
vm_boot_wait
C=$(cat "$WORK/attest.console")
expect_match "2. a TPM-bound node without accepted PCR values is denied, and the console says why" "$C" \
    "$DENIED: .*requires measured-boot attestation.*has no accepted PCR values"
expect_match "2. attest show lists the quoted values for acceptance" "$shown" "PCR  2  [0-9a-f]{64}"
expect_match "2. the operator accepts them, expecting the values the booted kernel read" "$accepted" "accepted"
expect_match "2. a PCR that differs from the rule's golden values: denied, and the console names it" "$C" \
    "$DENIED: .*PCR 2 differs from the rule's golden_pcrs"
expect_match "... and the audit" "$(ctl "$F" audit --json --action policy_deny | grep '"node":"vm-1"')" \
    "PCR 2 differs from the rule's golden_pcrs"
expect_eq "2. a denied release never falls back to the TPM copy" "$(grep -c 'unsealed from the TPM' "$WORK/attest.console")" "0"
expect_match "2. at cryptroot's third try the agent gets the key, with a quote, over its TPM key" "$C" \
    "keyfleet: cryptroot: released by a coordinator"
expect_match "2. cryptroot opens the root with it" "$C" "cryptroot: set up successfully"
expect_match "2. the boot reaches the root" "$C" "KEYFLEET-ROOT-REACHED root=/dev/mapper/cryptroot"
expect_match "2. the booted node's heartbeat quote attests" "$C" "event=attest_heartbeat attested=yes"
expect_eq "2. the audit shows one release to vm-1" "$(release_audit)" "$((releases + 1))"
expect_match "... under the rule that requires [tpm_key, attested], to its TPM key" \
    "$(grep 'event=released node=vm-1 ' "$F/keyfleetd.log" | tail -n 1)" 'rule="vms" tpm_key=yes'
# The agent's part, from its start at cryptroot's last try to the key: TPM key, quote, release.
t_ask=$(grep 'keyfleet: cryptroot: asking the coordinators' "$WORK/attest.console" | tail -n 1 | cut -d' ' -f1)
T_ATTEST=$(awk -v a="$(console_time attest 'released by a coordinator')" -v b="$t_ask" 'BEGIN { printf "%.1f", a - b }')

# --- 3. (KF_BOOT_TPM_CHANGED=1; one more boot, about 50 s) PCR 2 changed for the next boot: QEMU
# without its VGA option ROM, which SeaBIOS measures into PCR 2. Denied naming it; the passphrase works.
if [ -n "${KF_BOOT_TPM_CHANGED:-}" ]; then
    swtpm_for_qemu
    VM_QEMU_EXTRA="$VM_QEMU_EXTRA -vga none"
    vm_boot_start changed "$WORK/root.img" "$INITRD" "$CMDLINE"
    if console_wait changed "$DENIED" 200; then
        console_wait changed "Please unlock disk cryptroot" 30 && sleep 1
        type_on_console changed "$PASS"
    fi
    if console_wait changed "KEYFLEET-ROOT-AGENT" 200; then type_on_console changed ""; fi
    vm_boot_wait
    C=$(cat "$WORK/changed.console")
    expect_match "3. a changed PCR 2: the release is denied, and the console names the PCR" "$C" \
        "$DENIED: .*PCR 2 changed since the values accepted for node 'vm-1'"
    expect_match "3. the typed passphrase still opens the root" "$C" "KEYFLEET-ROOT-REACHED root=/dev/mapper/cryptroot"
    expect_eq "3. no release was allowed" "$(release_audit)" "$((releases + 1))"
    # A denial for changed PCRs under an attested rule also holds the node (lock on drift): attest_hold.
    expect_match "3. the audit records the denial, naming the PCR" \
        "$(ctl "$F" audit --json | grep '"node":"vm-1"' | grep '"decision":"deny"')" "PCR 2 changed"
fi
[ -n "${KF_BOOT_KEEP:-}" ] && cp "$WORK"/*.console "$KF_BOOT_KEEP"/
echo "# boot timing (initramfs start to root opened): TPM fallback with the coordinators down ${T_TPM}s (deadline 8 s)"
echo "# boot timing (agent start to key, in the VM): TPM key and quote ${T_ATTEST}s"
finish
