# Boot tests: Debian's kernel and a real initramfs in QEMU (TCG; no KVM on these machines), a
# LUKS2 root made offline from a file (cryptsetup reencrypt --encrypt needs no device-mapper), a
# keyfleetd on the host's loopback. The guest's network is QEMU user networking with
# restrict=on: its one way out is guestfwd 10.0.2.100:PORT, which runs socat to 127.0.0.1:PORT
# for each connection. Sourced after tests/integration/lib.sh.

COORD_IP=10.0.2.100
KVER=$(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' 2>/dev/null | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
BOOT_TIMEOUT=${KF_BOOT_TIMEOUT:-240}

# boot_requirements: every tool the boot tests need, or not ok naming what is missing.
boot_requirements() {
    local missing=""
    for t in qemu-system-x86_64 socat mkinitramfs lsinitramfs cryptsetup mke2fs; do
        command -v "$t" >/dev/null || missing="$missing $t"
    done
    [ -n "$KVER" ] && [ -r "/boot/vmlinuz-$KVER" ] || missing="$missing linux-image-cloud-amd64"
    [ -x /bin/busybox ] && ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' || missing="$missing busybox-static"
    [ -x /lib/cryptsetup/askpass ] || missing="$missing cryptsetup-initramfs"
    if [ -n "$missing" ]; then
        not_ok "boot test requirements (scripts/install-deps installs them)" "missing:$missing"
        finish
    fi
}

# install_tree DIR: the project as installed (cmake --install, prefix /usr) into DIR.
install_tree() {
    DESTDIR=$1 cmake --install "$BUILD" --prefix /usr >/dev/null || { not_ok "cmake --install"; finish; }
}

# root_image FILE PASSPHRASE [EXTRA DIR]: a tiny root (static busybox; /sbin/init prints a marker
# with the root device and powers off) in ext4, encrypted in place with LUKS2. EXTRA DIR's
# contents are added to the root; where that holds /usr/sbin/keyfleet-agent (root_add_agent),
# init waits for a line on the console, then runs `keyfleet-agent watch --count 1`: the node's
# next contact with the coordinators after the boot.
root_image() {
    local img=$1 pass=$2 extra=${3:-} dir=$WORK/rootfs size=24
    rm -rf "$dir"
    mkdir -p "$dir/bin" "$dir/sbin" "$dir/proc" "$dir/sys" "$dir/dev" "$dir/run" "$dir/tmp"
    cp /bin/busybox "$dir/bin/busybox"
    if [ -n "$extra" ]; then
        cp -a "$extra/." "$dir/"
        size=$(( $(du -sm "$dir" | cut -f1) + 24 ))
    fi
    cat >"$dir/sbin/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "KEYFLEET-ROOT-REACHED root=$(/bin/busybox awk '$2 == "/" { print $1 }' /proc/mounts | /bin/busybox tail -n 1)" >/dev/console
# With a TPM: the SHA-256 PCRs attestation quotes by default, as the kernel reads them (not the agent).
[ -d /sys/class ] || /bin/busybox mount -t sysfs sysfs /sys # the initramfs may have moved its own here
for p in 0 2 4 7; do
    [ -r /sys/class/tpm/tpm0/pcr-sha256/$p ] && echo "KEYFLEET-ROOT-PCR $p=$(/bin/busybox cat /sys/class/tpm/tpm0/pcr-sha256/$p)" >/dev/console
done
if [ -x /usr/sbin/keyfleet-agent ]; then
    echo "KEYFLEET-ROOT-AGENT: press Enter for the next contact" >/dev/console
    read -r _ </dev/console
    /usr/sbin/keyfleet-agent -c /etc/keyfleet/agent.yaml watch --count 1 >/dev/console 2>&1
    echo "KEYFLEET-ROOT-WATCH rc=$?" >/dev/console
fi
/bin/busybox sync
/bin/busybox poweroff -f
INIT
    chmod 0755 "$dir/sbin/init"
    # systemd's switch-root (dracut's systemd initrd) wants an OS tree: os-release says it is one.
    mkdir -p "$dir/etc"
    printf 'ID=keyfleet-boot-test\nNAME="keyfleet boot test root"\n' >"$dir/etc/os-release"
    rm -f "$img"
    mke2fs -q -t ext4 -L kfroot -d "$dir" "$img" "${size}M"
    truncate -s +16M "$img"
    printf '%s' "$pass" | cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 16M --batch-mode \
        --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file=- "$img" >/dev/null
}

# boot_fleet: what every boot scenario shares. A coordinator on the host whose certificate also
# names $COORD_IP (the guest dials it there), node vm-1, a policy (label approval=yes needs one
# approval; other vm-* volumes are released), keyfleet as installed in $INST, the host's agent
# config $WORK/host.yaml (enrolls the images), and the node's config dir $VMCONF as it lives on
# the node. Sets PASS, F, INST, VMCONF.
boot_fleet() {
    PASS="boot-pass-$RANDOM"
    F=$WORK/fleet
    fleet_init "$F"
    "$CTL" cert issue coordinator coordinator-1 --dir "$F" --out "$F/coordinator" --force \
        --san DNS:localhost --san IP:127.0.0.1 --san "IP:$COORD_IP" >/dev/null
    issue "$F" node vm-1
    start_kfd "$F"
    pin_port "$F" # the guest's config names the port
    put_policy "$F" <<YAML || { not_ok "the boot tests' policy is stored"; finish; }
rules:
  - name: approval
    match: {volumes: {labels: {approval: "yes"}}}
    effect: allow
    approval: {approvers: 1, timeout: 5m}
  - name: vms
    match: {nodes: {names: ["vm-*"]}}
    effect: allow
    offline_fallback: ${KF_BOOT_OFFLINE:-false}
YAML
    INST=$WORK/inst
    install_tree "$INST"
    agent_config "$WORK/host.yaml" vm-1
    VMCONF=$WORK/node
    mkdir -p "$VMCONF"
    cp "$F/vm-1.crt" "$F/vm-1.key" "$F/ca.crt" "$VMCONF/"
    cat >"$VMCONF/agent.yaml" <<YAML
coordinators: ["$COORD_IP:$PORT"]
identity: {cert: vm-1.crt, key: vm-1.key, ca: ca.crt}
state_file: /run/keyfleet/state.json
deadline: ${KF_BOOT_DEADLINE:-45s}
YAML
}

# enroll_root IMAGE [ENROLL ARGS...]: enrolls a root image from the host, as node vm-1.
enroll_root() {
    local img=$1 out
    shift
    out=$(printf '%s' "$PASS" | "$INST/usr/sbin/keyfleet-agent" -c "$WORK/host.yaml" enroll "luks:$img" "$@" 2>&1)
    expect_match "${img##*/} is enrolled from the host${*:+ ($*)}" "$out" "^enrolled luks2"
}

# keyfleet_initrd FILE: an initramfs built by the real mkinitramfs from a copy of the host's
# /etc/initramfs-tools plus keyfleet's hook, local-top script and UMASK snippet as installed in
# $INST, for the node config $VMCONF/agent.yaml. not ok (and finish) when mkinitramfs fails.
keyfleet_initrd() {
    local confdir=$WORK/initramfs-tools
    rm -rf "$confdir"
    cp -a /etc/initramfs-tools "$confdir"
    # The VM's own drivers only (MODULES=list, as MODULES=dep gives a host its own): the host's
    # MODULES=most takes 30 s per image copying every storage and network driver. The hooks add
    # what they need themselves (cryptroot: dm-crypt and its ciphers).
    sed -i 's/^MODULES=.*/MODULES=list/' "$confdir/initramfs.conf"
    printf 'virtio_pci\nvirtio_blk\nvirtio_net\n' >>"$confdir/modules"
    mkdir -p "$confdir/hooks" "$confdir/scripts/local-top" "$confdir/conf.d"
    cp "$INST/usr/share/initramfs-tools/hooks/keyfleet" "$confdir/hooks/"
    cp "$INST/usr/share/initramfs-tools/scripts/local-top/keyfleet" "$confdir/scripts/local-top/"
    cp "$INST/usr/share/initramfs-tools/conf.d/keyfleet" "$confdir/conf.d/"
    if ! KEYFLEET_CONFIG=$VMCONF/agent.yaml KEYFLEET_AGENT=$INST/usr/sbin/keyfleet-agent \
        KEYFLEET_KEYSCRIPT=$INST/usr/lib/keyfleet/keyscript \
        mkinitramfs -d "$confdir" -o "$1" "$KVER" >"$WORK/mkinitramfs.log" 2>&1; then
        not_ok "mkinitramfs builds the image" "$(tail -n 20 "$WORK/mkinitramfs.log")"
        finish
    fi
}

# root_add_agent DIR: keyfleet-agent as installed in $INST, the libraries it links and loads
# (libcryptsetup, tpm2-tss; with a TPM-resident node key, OpenSSL's tpm2 provider and what it
# links), and the node's config ($VMCONF as /etc/keyfleet), into DIR.
root_add_agent() {
    local dir=$1 f lib
    mkdir -p "$dir/usr/sbin" "$dir/etc/keyfleet"
    cp "$INST/usr/sbin/keyfleet-agent" "$dir/usr/sbin/"
    cp -a "$VMCONF/." "$dir/etc/keyfleet/"
    local objs=("$INST/usr/sbin/keyfleet-agent")
    for lib in libcryptsetup.so.12 libtss2-esys.so.0 libtss2-mu.so.0 libtss2-rc.so.0 libtss2-tctildr.so.0 \
        libtss2-tcti-device.so.0; do
        f=$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')
        [ -n "$f" ] && objs+=("$f")
    done
    if grep -q 'tpm_key:' "$VMCONF/agent.yaml"; then
        f=$(openssl version -m | sed -n 's/^MODULESDIR: "\(.*\)"$/\1/p')/tpm2.so
        [ -r "$f" ] && objs+=("$f")
    fi
    for f in $( (printf '%s\n' "${objs[@]}"; ldd "${objs[@]}" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }') | sort -u); do
        [ "$f" = "$INST/usr/sbin/keyfleet-agent" ] && continue
        mkdir -p "$dir$(dirname "$f")"
        cp -L "$f" "$dir$f"
    done
}

# vm_boot_start NAME IMAGE INITRD [KERNEL ARGS...]: vm_boot_disks_start with IMAGE as the only disk.
vm_boot_start() {
    local name=$1 img=$2 initrd=$3
    shift 3
    vm_boot_disks_start "$name" "$initrd" "$*" "$img"
}

vm_boot_wait() {
    wait "$VM_PID"
    VM_EXIT=$?
    kill "$VM_HOLD" 2>/dev/null
    wait "$VM_READER" 2>/dev/null
}

# console_wait NAME REGEX [SECONDS]: waits for a console line; 0 when it came.
console_wait() {
    local f=$WORK/$1.console deadline=$((SECONDS + ${3:-$BOOT_TIMEOUT}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        grep -Eq -- "$2" "$f" 2>/dev/null && return 0
        kill -0 "$VM_PID" 2>/dev/null || { grep -Eq -- "$2" "$f" 2>/dev/null; return; }
        sleep 0.5
    done
    return 1
}

# type_on_console NAME TEXT: types TEXT and Enter at the guest's serial console.
type_on_console() { printf '%s\r' "$2" >"$WORK/$1.in"; }

# console_time NAME REGEX: seconds from the VM's start to the first line matching REGEX.
console_time() { grep -E -m 1 -- "$2" "$WORK/$1.console" | cut -d' ' -f1; }

# dracut_requirements: dracut (dracut-core), its network module (dracut-network) and
# systemd-cryptsetup, or not ok naming what is missing.
dracut_requirements() {
    local missing=""
    command -v dracut >/dev/null && command -v lsinitrd >/dev/null || missing="$missing dracut-core"
    [ -d /usr/lib/dracut/modules.d/35network-legacy ] || [ -d /usr/lib/dracut/modules.d/40network ] ||
        missing="$missing dracut-network"
    [ -x /lib/systemd/systemd-cryptsetup ] || missing="$missing systemd-cryptsetup"
    if [ -n "$missing" ]; then
        not_ok "dracut boot test requirements (scripts/install-deps installs them)" "missing:$missing"
        finish
    fi
}

# dracut_image FILE: a systemd-flavoured dracut image with the keyfleet module as installed in
# $INST (a copy of dracut's own module tree, with keyfleet's module added to it), the node's
# config in /etc/keyfleet, network through systemd-networkd (ip= on the command line). Only the
# VM's own drivers (--drivers; the modules dracut's crypt module adds come on top): without it a
# --no-hostonly image takes every storage driver of the kernel (16 s more to build).
dracut_image() {
    local base=$WORK/dracut-base
    rm -rf "$base"
    mkdir -p "$base/modules.d"
    for f in /usr/lib/dracut/*; do [ "${f##*/}" = modules.d ] || ln -s "$f" "$base/"; done
    for m in /usr/lib/dracut/modules.d/*; do ln -s "$m" "$base/modules.d/"; done
    cp -a "$INST/usr/lib/dracut/modules.d/90keyfleet" "$base/modules.d/"
    mkdir -p "$WORK/dracut-conf"
    KEYFLEET_CONFIG=$VMCONF/agent.yaml KEYFLEET_AGENT=$INST/usr/sbin/keyfleet-agent \
        KEYFLEET_TOKEN_PLUGIN=$INST/usr/lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-keyfleet.so \
        dracutbasedir=$base dracut --force --no-hostonly --no-early-microcode --conf /dev/null \
        --confdir "$WORK/dracut-conf" --kver "$KVER" \
        --add "systemd systemd-networkd crypt keyfleet" --omit "plymouth i18n btrfs lvm mdraid multipath nfs iscsi fcoe" \
        --drivers "virtio_pci virtio_blk virtio_net" \
        --include "$VMCONF" /etc/keyfleet "$1"
}

# vm_boot_disks_start NAME INITRD CMDLINE DISK...: boots Debian's kernel with one virtio disk per
# DISK in order (vda, vdb, ...), 768 MiB (enough for a full systemd), CMDLINE after console= and
# panic=, and $VM_QEMU_EXTRA (word-split) added to QEMU's arguments. The console goes to
# $WORK/NAME.console with host timestamps (seconds since the start), the guest's input comes from
# the FIFO $WORK/NAME.in (type_on_console writes to it). vm_boot_wait returns when the VM powers
# off or after BOOT_TIMEOUT s; console_wait and console_time read the console.
vm_boot_disks_start() {
    local name=$1 initrd=$2 cmdline=$3
    shift 3
    local base=$WORK/$name drives=() d
    for d in "$@"; do drives+=(-drive "file=$d,format=raw,if=virtio"); done
    rm -f "$base.in" "$base.out" "$base.console"
    mkfifo "$base.in" "$base.out"
    VM_T0=$(date +%s.%N)
    (
        # A prompt ends with no newline: a line still unfinished after 2 s is written as it stands
        # (the rest follows on a line of its own), or console_wait would never see the prompt
        # whenever nothing else happened to be printed after it.
        start=$VM_T0 line=""
        while :; do
            IFS= read -r -t 2 line
            rc=$?
            if [ "$rc" -gt 128 ] && [ -z "$line" ]; then continue; fi
            [ "$rc" -ne 0 ] && [ "$rc" -le 128 ] && [ -z "$line" ] && break
            printf '%s %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.2f", a - b }')" \
                "${line%$'\r'}"
            [ "$rc" -ne 0 ] && [ "$rc" -le 128 ] && break
        done <"$base.out" >"$base.console"
    ) &
    VM_READER=$!
    sleep "$BOOT_TIMEOUT" >"$base.in" &
    VM_HOLD=$!
    timeout "$BOOT_TIMEOUT" qemu-system-x86_64 -machine q35 -m 768 -smp 1 -display none -no-reboot \
        -kernel "/boot/vmlinuz-$KVER" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 net.ifnames=0 $cmdline" \
        "${drives[@]}" \
        -netdev "user,id=n0,restrict=on,guestfwd=tcp:$COORD_IP:$PORT-cmd:socat - TCP:127.0.0.1:$PORT" \
        -device virtio-net-pci,netdev=n0 ${VM_QEMU_EXTRA:-} \
        -chardev "pipe,id=ser0,path=$base" -serial chardev:ser0 -monitor none \
        >"$base.qemu.log" 2>&1 &
    VM_PID=$!
    PIDS+=("$VM_PID" "$VM_HOLD" "$VM_READER")
}

# plain_initrd OUT: an initramfs-tools image from the host's configuration with only the virtio
# disk drivers (MODULES=list) and nothing of keyfleet: it mounts an unencrypted ext4 root=.
plain_initrd() {
    local out=$1 conf=$WORK/initramfs-plain
    rm -rf "$conf"
    cp -a /etc/initramfs-tools "$conf"
    sed -i 's/^MODULES=.*/MODULES=list/' "$conf/initramfs.conf"
    printf 'virtio_pci\nvirtio_blk\n' >"$conf/modules"
    if ! mkinitramfs -d "$conf" -o "$out" "$KVER" >"$WORK/mkinitramfs-plain.log" 2>&1; then
        not_ok "mkinitramfs builds a plain image" "$(tail -n 20 "$WORK/mkinitramfs-plain.log")"
        finish
    fi
}
