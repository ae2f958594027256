#!/bin/bash
# dracut module: keyfleet-agent in the initramfs, for the shell initrd (initqueue hook) and the
# systemd initrd (the same script as a unit ordered before cryptsetup.target). What goes in comes
# from the agent itself (keyfleet-agent initramfs-files), never from parsing YAML here. Needs
# dracut-network for the network module. KEYFLEET_CONFIG and KEYFLEET_AGENT override the
# config and the agent (tests, staging).
KEYFLEET_CONFIG=${KEYFLEET_CONFIG:-/etc/keyfleet/agent.yaml}
KEYFLEET_AGENT=${KEYFLEET_AGENT:-/usr/sbin/keyfleet-agent}

check() {
    [ -x "$KEYFLEET_AGENT" ] || return 1
    [ -r "$KEYFLEET_CONFIG" ] || return 255
    return 0
}

depends() { echo network crypt; }

install() {
    local list kind value path
    if ! list=$("$KEYFLEET_AGENT" -c "$KEYFLEET_CONFIG" initramfs-files); then
        derror "keyfleet: $KEYFLEET_AGENT -c $KEYFLEET_CONFIG initramfs-files failed"
        return 1
    fi
    inst_binary "$KEYFLEET_AGENT" /usr/sbin/keyfleet-agent
    while IFS=$'\t' read -r kind value; do
        case "$kind" in
        file) inst_simple "$value" ;;
        lib)
            # Loaded with dlopen, so inst_binary cannot see them: by soname.
            path=$(ldconfig -p | awk -v l="$value" '$1 == l { print $NF; exit }')
            [ -n "$path" ] && inst_library "$path"
            ;;
        exec) inst_binary "$value" ;;
        module) inst_library "$value" ;; # an OpenSSL provider module, with its libraries
        esac
    done <<<"$list"
    mkdir -p "$initdir/etc/keyfleet"
    echo "KEYFLEET_CONFIG='$KEYFLEET_CONFIG'" >"$initdir/etc/keyfleet/initramfs.env"
    chmod -R go-rwx "$initdir/etc/keyfleet" "$initdir$(dirname "$KEYFLEET_CONFIG")"
    inst_script "$moddir/keyfleet-unlock.sh" /usr/lib/keyfleet/keyfleet-unlock.sh
    if dracut_module_included "systemd"; then
        inst_simple "$moddir/keyfleet-initrd.service" "$systemdsystemunitdir/keyfleet-initrd.service"
        $SYSTEMCTL -q --root "$initdir" enable keyfleet-initrd.service
    else
        inst_hook initqueue/settled 90 "$moddir/keyfleet-unlock.sh"
    fi
}
