#!/bin/bash
# dracut module: keyfleet-agent in the initramfs, run after the network is up and before
# cryptsetup asks for a passphrase.
check() {
    require_binaries keyfleet-agent || return 1
    [ -r /etc/keyfleet/agent.yaml ] || return 255
    return 0
}

depends() { echo network crypt; }

install() {
    inst_binary /usr/sbin/keyfleet-agent
    # Loaded at run time (dlopen), so not found by inst_binary; the TPM device TCTI too.
    inst_libdir_file "libcryptsetup.so.12*" "libtss2-esys.so.0*" "libtss2-mu.so.0*" "libtss2-rc.so.0*" \
        "libtss2-tctildr.so.0*" "libtss2-tcti-device.so.0*"
    inst_simple /etc/keyfleet/agent.yaml
    local f
    for f in $(sed -n 's/.*\(cert\|key\|ca\): *\([^,} ]*\).*/\2/p' /etc/keyfleet/agent.yaml); do
        case "$f" in /*) ;; *) f="/etc/keyfleet/$f" ;; esac
        [ -r "$f" ] && inst_simple "$f"
    done
    inst_hook initqueue/settled 90 "$moddir/keyfleet-unlock.sh"
}
