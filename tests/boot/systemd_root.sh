#!/usr/bin/env bash
# The boot units, proven by booting (issue #27): a Debian 12 root with systemd as PID 1 (built by
# scripts/install-deps with mmdebstrap from tests/boot/systemd-root.packages; this test only
# unpacks it) boots in QEMU with Debian's kernel, keyfleet installed into it as `cmake --install`
# puts it, and keyfleet-unlock.service and keyfleet-watch.service enabled the way an
# administrator enables them (systemctl enable: their [Install] sections, nothing else). A second
# disk is a LUKS2 volume enrolled from the host and listed in agent.yaml; a third one is in
# /etc/crypttab, for systemd-cryptsetup and keyfleet's token plugin; both are mounted from
# /etc/fstab with _netdev. The root itself is plain ext4 (the root in the initramfs is
# tests/boot/initramfs_tools.sh's case). A report unit prints what systemd says about the units,
# the mappings, the mounts and the boot's journal to the serial console, then powers off. Asserted:
#   - keyfleet-unlock.service ran in the boot and succeeded (active/exited, status 0);
#   - the volume is mapped (/dev/mapper/kfdata, cryptsetup status) through keyfleet, and the
#     coordinator's audit shows the release for this node and volume;
#   - its _netdev mount comes after it (remote-fs-pre.target), and holds what the host wrote;
#   - the crypttab volume is opened by systemd-cryptsetup through the token plugin and mounted,
#     though remote-cryptsetup.target is not in the boot (as Debian 12 ships);
#   - keyfleet-watch.service is running, started after keyfleet-unlock.service finished, and its
#     heartbeats reach the coordinator;
#   - no ordering cycle anywhere in the boot (journal and console);
#   - the VM powers off cleanly (both units stop).
. "$(dirname "$0")/../integration/lib.sh"
. "$(dirname "$0")/vm-lib.sh"
T_START=$SECONDS
boot_requirements

ROOT_TAR=${KF_BOOT_ROOT_TAR:-/var/cache/keyfleet/boot-root.tar}
LIST=$(cd "$(dirname "$0")" && pwd)/systemd-root.packages
if [ ! -s "$ROOT_TAR" ] || ! cmp -s "$LIST" "${ROOT_TAR%.tar}.packages"; then
    not_ok "the Debian root $ROOT_TAR is there and built from tests/boot/systemd-root.packages" \
        "missing or stale: run 'bash scripts/install-deps' (as root; it runs mmdebstrap, which downloads)"
    finish
fi

PASS="data-pass-$RANDOM"
NODE=vm-sd
F=$WORK/fleet
fleet_init "$F"
# The guest dials the coordinator at 10.0.2.100 (guestfwd): its certificate names that too.
"$CTL" cert issue coordinator coordinator-1 --dir "$F" --out "$F/coordinator" --force \
    --san DNS:localhost --san IP:127.0.0.1 --san "IP:$COORD_IP" >/dev/null
issue "$F" node "$NODE"
start_kfd "$F"
pin_port "$F"
allow_nodes "$F" "vm-*"

# The volumes: ext4 holding a marker, encrypted in place (no device-mapper here), enrolled from
# the host (activation off). The guest mounts both from /etc/fstab as _netdev file systems:
# kfdata is listed in agent.yaml (keyfleet-unlock.service opens it), kfcrypt in /etc/crypttab
# (systemd-cryptsetup opens it through keyfleet's token plugin).
MARK="keyfleet-data-$RANDOM$RANDOM"
agent_config "$WORK/host.yaml" "$NODE"
# volume FILE NAME: makes and enrolls it.
volume() {
    mkdir -p "$WORK/$2fs"
    echo "$2-$MARK" >"$WORK/$2fs/marker"
    mke2fs -q -t ext4 -L "$2" -d "$WORK/$2fs" "$1" 8M && truncate -s +16M "$1" &&
        printf '%s' "$PASS" | cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 16M --batch-mode \
            --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file=- "$1" >/dev/null ||
        { not_ok "the volume $2 is made"; finish; }
    out=$(printf '%s' "$PASS" | "$AGENT" -c "$WORK/host.yaml" enroll "luks:$1" 2>&1)
    expect_match "the volume $2 is enrolled from the host" "$out" "^enrolled luks2"
}
DATA=$WORK/data.img
CRYPT=$WORK/crypt.img
volume "$DATA" kfdata
volume "$CRYPT" kfcrypt
UUID=$(cryptsetup luksUUID "$DATA")
CUUID=$(cryptsetup luksUUID "$CRYPT")

# The root: the Debian tree, keyfleet as installed, the kernel modules the boot needs.
R=$WORK/root
mkdir -p "$R"
tar -xpf "$ROOT_TAR" -C "$R" --numeric-owner || { not_ok "unpack $ROOT_TAR"; finish; }
install_tree "$R"
M=/lib/modules/$KVER
mkdir -p "$R/usr/lib/modules/$KVER"
cp "$M"/modules.order "$M"/modules.builtin "$M"/modules.builtin.modinfo "$R/usr/lib/modules/$KVER/"
(cd "$M" && cp -r --parents kernel/drivers/md kernel/drivers/virtio kernel/drivers/block kernel/crypto \
    kernel/arch/x86/crypto kernel/lib kernel/net/core/failover.ko kernel/drivers/net/net_failover.ko \
    kernel/drivers/net/virtio_net.ko "$R/usr/lib/modules/$KVER/")
depmod -b "$R" "$KVER" || not_ok "depmod in the root"

# The node's configuration, as on a node: the coordinator as the guest sees it, the volume by UUID.
mkdir -p "$R/etc/keyfleet"
cp "$F/$NODE.crt" "$F/$NODE.key" "$F/ca.crt" "$R/etc/keyfleet/"
chmod 0600 "$R/etc/keyfleet/$NODE.key"
cat >"$R/etc/keyfleet/agent.yaml" <<YAML
coordinators: ["$COORD_IP:$PORT"]
identity: {cert: $NODE.crt, key: $NODE.key, ca: ca.crt}
deadline: 90s
watch_interval: 2s
volumes:
  - luks: /dev/disk/by-uuid/$UUID
    name: kfdata
YAML
echo "$NODE" >"$R/etc/hostname"
# The data volume is mounted as a network-dependent file system: _netdev puts it after
# remote-fs-pre.target, which keyfleet-unlock.service is ordered before (and pulls in). Its
# device timeout bounds the boot when the unlock does not run (the test then fails sooner).
{
    echo "/dev/vda / ext4 rw,errors=remount-ro 0 1"
    echo "/dev/mapper/kfdata /srv/kfdata ext4 _netdev,x-systemd.device-timeout=40s 0 2"
    echo "/dev/mapper/kfcrypt /srv/kfcrypt ext4 _netdev,x-systemd.device-timeout=40s 0 2"
} >"$R/etc/fstab"
echo "kfcrypt UUID=$CUUID none luks,_netdev,token-timeout=60s" >"$R/etc/crypttab"
mkdir -p "$R/srv/kfdata" "$R/srv/kfcrypt"
mkdir -p "$R/etc/systemd/network"
cat >"$R/etc/systemd/network/10-eth0.network" <<'NET'
[Match]
Name=eth0

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
NET

# The report: after both units and the remote mounts, what systemd says, then a clean power-off.
cat >"$R/usr/local/sbin/kf-boot-report" <<'SH'
#!/bin/sh
show() {
    echo "KF-SHOW $1 $(systemctl show -p ActiveState -p SubState -p Result -p ExecMainStatus \
        -p ActiveEnterTimestampMonotonic -p ExecMainStartTimestampMonotonic "$1" | tr '\n' ' ')"
}
# keyfleet-watch is Type=simple: give it time for a few heartbeats (watch_interval 2s).
sleep 5
show keyfleet-unlock.service
show keyfleet-watch.service
show remote-fs-pre.target
echo "KF-MOUNT $(systemctl show -p ActiveState -p InactiveExitTimestampMonotonic srv-kfdata.mount | tr '\n' ' ')" \
    "$(findmnt -n -o SOURCE,FSTYPE /srv/kfdata) marker=$(cat /srv/kfdata/marker 2>&1)"
show systemd-cryptsetup@kfcrypt.service
show remote-cryptsetup.target
echo "KF-CMOUNT $(findmnt -n -o SOURCE,FSTYPE /srv/kfcrypt) marker=$(cat /srv/kfcrypt/marker 2>&1)"
journalctl -b --no-pager -o short-monotonic -u systemd-cryptsetup@kfcrypt.service | sed 's/^/KF-CRYPTLOG /'
echo "KF-WANTEDBY $(systemctl show -p WantedBy --value keyfleet-unlock.service)"
echo "KF-MAPPER $(ls /dev/mapper | tr '\n' ' ')"
cryptsetup status kfdata 2>&1 | sed 's/^/KF-CRYPTSETUP /'
echo "KF-FAILED $(systemctl list-units --failed --no-legend --plain | awk '{ print $1 }' | tr '\n' ' ')"
journalctl -b --no-pager -o short-monotonic -u keyfleet-unlock.service -u keyfleet-watch.service | sed 's/^/KF-UNITLOG /'
journalctl -b --no-pager -o short-monotonic | grep -E 'ordering cycle|order is cyclic|Job .* deleted to break' | sed 's/^/KF-CYCLE /'
echo "KF-REPORT-END"
systemctl --no-block poweroff
SH
chmod 0755 "$R/usr/local/sbin/kf-boot-report"
cat >"$R/etc/systemd/system/kf-boot-report.service" <<'UNIT'
[Unit]
Description=keyfleet boot test: report to the serial console
After=keyfleet-unlock.service keyfleet-watch.service remote-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/kf-boot-report
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
UNIT
# As an administrator would: enable the two units; nothing else of keyfleet's is touched.
out=$(systemctl --root="$R" enable systemd-networkd.service systemd-networkd-wait-online.service \
    keyfleet-unlock.service keyfleet-watch.service kf-boot-report.service 2>&1) ||
    not_ok "systemctl enable in the root" "$out"

IMG=$WORK/root.img
size=$(($(du -sm "$R" | cut -f1) + 128))
mke2fs -q -t ext4 -L kfroot -d "$R" "$IMG" "${size}M" || { not_ok "mke2fs -d the root"; finish; }
INITRD=$WORK/initrd.img
plain_initrd "$INITRD"
T_PREP=$((SECONDS - T_START))

audit_releases() { ctl "$F" audit --json --action release | grep '"decision":"allow"' | grep -c "\"node\":\"$NODE\""; }
before=$(audit_releases)
vm_boot_disks_start systemd "$INITRD" "root=/dev/vda rw" "$IMG" "$DATA" "$CRYPT"
vm_boot_wait
if [ ! -s "$WORK/systemd.console" ]; then
    not_ok "the VM boots (QEMU exit $VM_EXIT)" "no console output; QEMU said: $(tail -n 5 "$WORK/systemd.qemu.log" 2>&1)"
    finish
fi
C=$(cat "$WORK/systemd.console")
[ -n "${KF_BOOT_KEEP:-}" ] && cp "$WORK/systemd.console" "$KF_BOOT_KEEP/"
# line REGEX: the first console text from REGEX on (a login prompt may stand before it).
line() { printf '%s\n' "$C" | grep -o -m 1 -E -- "$1.*"; }
# console_has DESC REGEX: ok when a console line matches (the console itself is too long to quote).
console_has() {
    if grep -E -q -- "$2" "$WORK/systemd.console"; then ok "$1"; else
        not_ok "$1" "no console line matches /$2/ (KF_BOOT_KEEP=DIR keeps the console)"; fi
}
prop() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

console_has "systemd runs as PID 1 in the root" "systemd\[1\]: |Welcome to .*Debian"
console_has "the report ran after the boot units" "KF-REPORT-END"
U=$(line 'KF-SHOW keyfleet-unlock.service ')
W=$(line 'KF-SHOW keyfleet-watch.service ')
u_done=$(prop "$U" ActiveEnterTimestampMonotonic)
expect_eq "keyfleet-unlock.service is active (exited) after the boot" \
    "$(prop "$U" ActiveState)/$(prop "$U" SubState)" "active/exited"
expect_eq "... and succeeded (result success, exit status 0)" "$(prop "$U" Result):$(prop "$U" ExecMainStatus)" "success:0"
console_has "... it unlocked the volume through the coordinator" \
    "KF-UNITLOG .*luks2 /dev/disk/by-uuid/$UUID: unlocked"
expect_match "the mapping is open: /dev/mapper/kfdata" "$(line 'KF-MAPPER ')" "kfdata"
expect_match "... cryptsetup status: active, on the second disk" "$(printf '%s\n' "$C" | grep 'KF-CRYPTSETUP')" \
    "/dev/mapper/kfdata is active.*device: +/dev/vdb"
expect_eq "the audit shows two more releases for $NODE (one per volume)" "$(audit_releases)" "$((before + 2))"
expect_match "... one of that volume" \
    "$(ctl "$F" audit --json --action release | grep "\"node\":\"$NODE\"" | grep '"decision":"allow"')" "$UUID"
P=$(line 'KF-SHOW remote-fs-pre.target ')
p_done=$(prop "$P" ActiveEnterTimestampMonotonic)
if [ "$(prop "$P" ActiveState)" = active ] && [ -n "$u_done" ] && [ "$u_done" -gt 0 ] && [ "${p_done:-0}" -ge "$u_done" ]; then
    ok "remote-fs-pre.target is in the boot, reached after keyfleet-unlock finished (${p_done} >= ${u_done} us)"
else
    not_ok "remote-fs-pre.target is in the boot, reached after keyfleet-unlock finished" \
        "remote-fs-pre.target: $(prop "$P" ActiveState) at '$p_done', unlock done at '$u_done'"
fi
MNT=$(line 'KF-MOUNT ')
expect_match "the volume's file system is mounted from fstab (_netdev) and holds the host's marker" "$MNT" \
    "ActiveState=active .*/dev/mapper/kfdata ext4 marker=kfdata-$MARK"
m_start=$(prop "$MNT" InactiveExitTimestampMonotonic)
if [ -n "$u_done" ] && [ -n "$m_start" ] && [ "$u_done" -gt 0 ] && [ "$m_start" -ge "$u_done" ]; then
    ok "... mounted after keyfleet-unlock finished (${m_start} >= ${u_done} us)"
else
    not_ok "... mounted after keyfleet-unlock finished" "mount started at '$m_start', unlock done at '$u_done'"
fi
# crypttab: systemd-cryptsetup, through the token plugin, with no keyfleet unit involved.
S=$(line 'KF-SHOW systemd-cryptsetup@kfcrypt.service ')
expect_eq "crypttab: systemd-cryptsetup@kfcrypt.service is active (exited), result success" \
    "$(prop "$S" ActiveState)/$(prop "$S" SubState)/$(prop "$S" Result)" "active/exited/success"
console_has "... the token plugin got the key from the coordinator (systemd-cryptsetup's journal)" \
    "KF-CRYPTLOG .*systemd-cryptsetup\[[0-9]+\]: keyfleet: /dev/disk/by-uuid/$CUUID: key released"
expect_match "... and its _netdev mount holds the host's marker" "$(line 'KF-CMOUNT ')" \
    "/dev/mapper/kfcrypt ext4 marker=kfcrypt-$MARK"
expect_eq "... though remote-cryptsetup.target is not in the boot (Debian 12 does not enable it)" \
    "$(prop "$(line 'KF-SHOW remote-cryptsetup.target ')" ActiveState)" "inactive"
expect_match "the audit shows that release too" \
    "$(ctl "$F" audit --json --action release | grep "\"node\":\"$NODE\"" | grep '"decision":"allow"')" "$CUUID"
expect_eq "keyfleet-watch.service is running" "$(prop "$W" ActiveState)/$(prop "$W" SubState)" "active/running"
w_start=$(prop "$W" ExecMainStartTimestampMonotonic)
if [ -n "$u_done" ] && [ -n "$w_start" ] && [ "$u_done" -gt 0 ] && [ "$w_start" -ge "$u_done" ]; then
    ok "keyfleet-watch started after keyfleet-unlock finished (${w_start} >= ${u_done} us)"
else
    not_ok "keyfleet-watch started after keyfleet-unlock finished" "watch started at '$w_start', unlock done at '$u_done'"
fi
console_has "... and it watches" "KF-UNITLOG .*event=watching"
# Only the VM sends heartbeats to this coordinator.
beats=$(kcurl "$F" operator "$URL/metrics" | awk '/^keyfleet_rpc_requests_total\{method="keyfleet.v1.NodeService\/Heartbeat",code="ok"\}/ { print $2 }')
if [ "${beats:-0}" -ge 1 ] 2>/dev/null && ! grep -q 'KF-UNITLOG .*heartbeat_failed' "$WORK/systemd.console"; then
    ok "... its heartbeats reach the coordinator ($beats answered, none failed)"
else
    not_ok "... its heartbeats reach the coordinator" "answered: '${beats:-}'; $(grep -m 1 heartbeat_failed "$WORK/systemd.console")"
fi
expect_eq "no failed unit in the boot" "$(line 'KF-FAILED ' | sed 's/^KF-FAILED *//')" ""
if printf '%s\n' "$C" | grep -E -q 'ordering cycle|order is cyclic|deleted to break'; then
    not_ok "no ordering cycle in the boot" "$(printf '%s\n' "$C" | grep -E -m 3 'ordering cycle|order is cyclic|deleted to break')"
else
    ok "no ordering cycle in the boot (journal and console)"
fi
expect_eq "the VM powered off by itself (clean shutdown, within ${BOOT_TIMEOUT}s)" "$VM_EXIT" "0"

T_BOOT=$(console_time systemd 'KF-REPORT-END')
echo "# timing: preparing the root and initramfs ${T_PREP}s; VM start to the report ${T_BOOT:-?}s (5 s of it the" \
    "report's own wait); whole test $((SECONDS - T_START))s"
finish
