#!/bin/bash
# dracut module: keyfleet in the initramfs.
#  - systemd initrd (Debian's default with dracut): LUKS2 volumes open through systemd-cryptsetup
#    and the keyfleet token plugin (libcryptsetup-token-keyfleet.so), tried before the passphrase
#    prompt; the prompt follows when no coordinator gives the key. A ZFS root needs the agent
#    itself: keyfleet-initrd.service, enabled only when the config names ZFS datasets.
#  - shell initrd: keyfleet-unlock.sh as an initqueue hook, run again until it succeeds, while
#    the crypt module's prompt stays available.
# What goes in comes from the agent itself (keyfleet-agent initramfs-files), never from parsing
# YAML here. Needs dracut-network for the network module. KEYFLEET_CONFIG, KEYFLEET_AGENT and
# KEYFLEET_TOKEN_PLUGIN override the config, the agent and the plugin (tests, staging).
KEYFLEET_CONFIG=${KEYFLEET_CONFIG:-/etc/keyfleet/agent.yaml}
KEYFLEET_AGENT=${KEYFLEET_AGENT:-/usr/sbin/keyfleet-agent}

check() {
    [ -x "$KEYFLEET_AGENT" ] || return 1
    [ -r "$KEYFLEET_CONFIG" ] || return 255
    return 0
}

depends() { echo network crypt; }

# Where libcryptsetup loads token plugins (crypt_token_external_path()): "cryptsetup" beside
# libcryptsetup itself, /usr/lib/<multiarch>/cryptsetup on Debian.
keyfleet_token_dir() {
    local lib
    lib=$(ldconfig -p | awk '$1 == "libcryptsetup.so.12" { print $NF; exit }')
    [ -n "$lib" ] || return 1
    lib=$(readlink -f "$lib")
    echo "${lib%/*}/cryptsetup"
}

install() {
    local list kind value path zfs="" tokendir plugin
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
        exec)
            inst_binary "$value"
            [ "${value##*/}" = zfs ] && zfs=1
            ;;
        module) inst_library "$value" ;; # an OpenSSL provider module, with its libraries
        esac
    done <<<"$list"
    mkdir -p "$initdir/etc/keyfleet"
    echo "KEYFLEET_CONFIG='$KEYFLEET_CONFIG'" >"$initdir/etc/keyfleet/initramfs.env"
    chmod -R go-rwx "$initdir/etc/keyfleet" "$initdir$(dirname "$KEYFLEET_CONFIG")"
    inst_script "$moddir/keyfleet-unlock.sh" /usr/lib/keyfleet/keyfleet-unlock.sh
    if dracut_module_included "systemd"; then
        if ! tokendir=$(keyfleet_token_dir); then
            derror "keyfleet: libcryptsetup.so.12 not found: cannot place the token plugin"
            return 1
        fi
        plugin=${KEYFLEET_TOKEN_PLUGIN:-$tokendir/libcryptsetup-token-keyfleet.so}
        if ! inst_library "$plugin" "$tokendir/libcryptsetup-token-keyfleet.so"; then
            derror "keyfleet: $plugin: the token plugin is not installed"
            return 1
        fi
        # systemd-cryptsetup runs with a clean environment: the plugin reads
        # /etc/keyfleet/agent.yaml, so the config must be there in the image.
        [ "$KEYFLEET_CONFIG" = /etc/keyfleet/agent.yaml ] ||
            dwarning "keyfleet: the token plugin reads /etc/keyfleet/agent.yaml, not $KEYFLEET_CONFIG"
        if [ -n "$zfs" ]; then
            inst_simple "$moddir/keyfleet-initrd.service" "$systemdsystemunitdir/keyfleet-initrd.service"
            $SYSTEMCTL -q --root "$initdir" enable keyfleet-initrd.service
        fi
    else
        inst_hook initqueue/settled 90 "$moddir/keyfleet-unlock.sh"
    fi
}
