# Shared by the review_rev16e tests (sourced after lib.sh): node n1 with a TPM-resident identity
# on swtpm tpm-a, one LUKS2 file enrolled, keyfleetd with a rule for n1.

# measure TCTI PCR TEXT, boot_measurements TCTI: what firmware does at boot (a fresh swtpm's PCRs
# are zeros, which the coordinator refuses as never extended).
measure() { TPM2TOOLS_TCTI="$1" tpm2_pcrextend "$2:sha256=$(printf '%s' "$3" | sha256sum | cut -c1-64)" >/dev/null 2>&1; }
boot_measurements() { for p in 0 2 4 7; do measure "$1" "$p" "firmware $p"; done; }
tpm_clock() { TPM2TOOLS_TCTI="$1" tpm2_readclock 2>/dev/null | sed -n 's/^ *clock: *\([0-9]*\).*/\1/p' | head -n 1; }
stop_pid() { kill "$1" 2>/dev/null; for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done; }
# tpm_config FILE TCTI: an agent config for n1's TPM identity in $WORK/a.
tpm_config() {
    {
        echo "coordinators: [\"127.0.0.1:$PORT\"]"
        echo "identity: {cert: $WORK/a/n1.crt, tpm_key: $WORK/a/n1.tpmkey, ca: $F/ca.crt}"
        echo "state_file: $WORK/a/state.json"
        echo "luks: {activate: false}"
        echo "zfs: {command: $ZFS_STANDIN, discover: false}"
        echo "tpm: {tcti: \"$2\"}"
    } >"$1"
}
A() { "$AGENT" -c "$WORK/a/agent.yaml" "$@"; }
# n1_policy REQUIRE [LINE]: one rule allowing n1 with require: [REQUIRE] (after LINE, a top-level
# setting such as attestation's).
n1_policy() {
    put_policy "$F" <<YAML
${2:-}
rules:
  - name: measured
    match: {nodes: {names: ["n1"]}}
    effect: allow
    require: [$1]
YAML
}
# tpm_node_setup REQUIRE: swtpm tpm-a (TCTI_A) with boot measurements (then the caller's
# tpm_node_prepare, if it defines one), the fleet F with keyfleetd and n1_policy REQUIRE, n1's TPM
# identity (identity create, cert issue with the TPM evidence and EK CA, activate) and
# $WORK/disk.luks enrolled.
tpm_node_setup() {
    tpm_manufacture "$WORK/tpm-a"
    start_swtpm "$WORK/tpm-a"
    TCTI_A=$TCTI
    boot_measurements "$TCTI_A"
    if declare -F tpm_node_prepare >/dev/null; then tpm_node_prepare; fi
    F=$WORK/fleet
    fleet_init "$F"
    start_kfd "$F"
    n1_policy "$1"
    luks_file "$WORK/disk.luks" "pw"
    mkdir -p "$WORK/a"
    tpm_config "$WORK/a/agent.yaml" "$TCTI_A"
    A identity create n1 >/dev/null 2>&1
    "$CTL" cert issue node n1 --dir "$F" --out "$WORK/a/n1" --csr "$WORK/a/n1.tpmkey.csr" \
        --tpm-evidence "$WORK/a/n1.tpmkey.evidence" --ek-ca "$WORK/ek-cas.pem" >/dev/null 2>&1
    A identity activate "$WORK/a/n1.crt.tpmcred" >/dev/null 2>&1
    printf 'pw' | A enroll "luks:$WORK/disk.luks" >/dev/null 2>&1
}
# restart_a [STATE [MEASUREMENT]]: n1's machine rebooted: swtpm tpm-a stopped (SWTPM_A_PID) and
# started again, from a copy of STATE when given (a TPM state restored), with the boot
# measurements (and MEASUREMENT into PCR 4: another boot loader); the agent's config follows.
restart_a() {
    stop_pid "$SWTPM_A_PID"
    if [ -n "${1:-}" ]; then rm -rf "$WORK/tpm-a" && cp -a "$1" "$WORK/tpm-a"; fi
    rm -f "$WORK/tpm-a/pid"
    start_swtpm "$WORK/tpm-a"
    SWTPM_A_PID=$(cat "$WORK/tpm-a/pid")
    TCTI_A=$TCTI
    boot_measurements "$TCTI_A"
    [ -z "${2:-}" ] || measure "$TCTI_A" 4 "$2"
    tpm_config "$WORK/a/agent.yaml" "$TCTI_A"
}
# tpm_node_advance: n1 (set up, unlocking) keeps a copy of its TPM state (tpm-a.saved), then
# reboots twice, unlocking each time: the recorded counters pass the copy's.
tpm_node_advance() {
    SWTPM_A_PID=$(cat "$WORK/tpm-a/pid")
    stop_pid "$SWTPM_A_PID"
    cp -a "$WORK/tpm-a" "$WORK/tpm-a.saved"
    restart_a
    A unlock "luks:$WORK/disk.luks" >/dev/null 2>&1
    restart_a
    A unlock "luks:$WORK/disk.luks" >/dev/null 2>&1
}
