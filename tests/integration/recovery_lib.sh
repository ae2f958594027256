# Shared by the recovery-key tests (sourced after lib.sh): reading a volume's recovery key back
# as an operator does, and trying it on a LUKS2 file.

# opens FILE KEYS: whether one of KEYS (one per line: a reveal prints the current key and, while
# one waits, the pending replacement) opens FILE.
opens() {
    local k
    while IFS= read -r k; do
        [ -n "$k" ] && printf '%s' "$k" | cryptsetup open --test-passphrase --key-file=- "$1" >/dev/null 2>&1 && return 0
    done <<<"$2"
    return 1
}

# reveal VOLUME: the recovery key of VOLUME in fleet $F, revealed after operator bob approves
# (the fleet issued bob); prints the key(s), or fails when the reveal is refused.
reveal() {
    local out rid
    out=$(ctl "$F" volume recovery-key "$1") || return 1
    rid=$(printf '%s\n' "$out" | sed -n 's/.*request \([0-9a-f-]*\),.*/\1/p')
    ctl_as "$F" bob approve "$rid" >/dev/null || return 1
    ctl "$F" volume recovery-key "$1" --request "$rid" | sed -n 's/^    \([0-9a-z-]\{77\}\)$/\1/p'
}

# recovery_fleet: fleet $WORK/fleet (F) with node n1 and operator bob, its keyfleetd started.
recovery_fleet() {
    F=$WORK/fleet
    fleet_init "$F"
    issue "$F" node n1
    issue "$F" operator bob
    start_kfd "$F"
}
