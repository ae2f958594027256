#!/usr/bin/env bash
# Review rev16e, finding E2: a TPM clock past 2^63 ms switched the clone check off for that node.
# The store keeps the TPM clock in a signed integer; a quote whose clock is past INT64_MAX was
# recorded with counters only, and a record without a clock is checked by the counters only
# (rule 1). Whoever provisions a virtual TPM (or roots the node once) sets its clock there with
# TPM2_ClockSet; a later copy of its state then passes at the same counters with a clock behind
# the original's, which rule 2 refuses for any other TPM. Fixed: such a quote does not hold.
. "$(dirname "$0")/lib.sh"
command -v swtpm_setup >/dev/null || { echo "1..0 # SKIP swtpm_setup missing"; exit 77; }
command -v tpm2_setclock >/dev/null || { echo "1..0 # SKIP tpm2_setclock missing"; exit 77; }

measure() { TPM2TOOLS_TCTI="$1" tpm2_pcrextend "$2:sha256=$(printf '%s' "$3" | sha256sum | cut -c1-64)" >/dev/null 2>&1; }
boot_measurements() { for p in 0 2 4 7; do measure "$1" "$p" "firmware $p"; done; }
tpm_clock() { TPM2TOOLS_TCTI="$1" tpm2_readclock 2>/dev/null | sed -n 's/^ *clock: *\([0-9]*\).*/\1/p' | head -n 1; }
stop_pid() { kill "$1" 2>/dev/null; for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done; }

tpm_manufacture "$WORK/tpm-a"
start_swtpm "$WORK/tpm-a"
TCTI_A=$TCTI
boot_measurements "$TCTI_A"
TPM2TOOLS_TCTI="$TCTI_A" tpm2_setclock 9223372036854800000 >/dev/null 2>&1
expect_match "set-up: the TPM's clock is past 2^63 ms" "$(tpm_clock "$TCTI_A")" "^92233720368[0-9]{8}$"
F=$WORK/fleet
fleet_init "$F"
start_kfd "$F"
put_policy "$F" <<'YAML'
rules:
  - name: measured
    match: {nodes: {names: ["n1"]}}
    effect: allow
    require: [tpm_key]
YAML
luks_file "$WORK/disk.luks" "pw"
tpm_config() { # FILE TCTI
    {
        echo "coordinators: [\"127.0.0.1:$PORT\"]"
        echo "identity: {cert: $WORK/a/n1.crt, tpm_key: $WORK/a/n1.tpmkey, ca: $F/ca.crt}"
        echo "state_file: $WORK/a/state.json"
        echo "luks: {activate: false}"
        echo "zfs: {command: $ZFS_STANDIN, discover: false}"
        echo "tpm: {tcti: \"$2\"}"
    } >"$1"
}
mkdir -p "$WORK/a"
tpm_config "$WORK/a/agent.yaml" "$TCTI_A"
A() { "$AGENT" -c "$WORK/a/agent.yaml" "$@"; }
A identity create n1 >/dev/null 2>&1
"$CTL" cert issue node n1 --dir "$F" --out "$WORK/a/n1" --csr "$WORK/a/n1.tpmkey.csr" \
    --tpm-evidence "$WORK/a/n1.tpmkey.evidence" --ek-ca "$WORK/ek-cas.pem" >/dev/null 2>&1
A identity activate "$WORK/a/n1.crt.tpmcred" >/dev/null 2>&1
printf 'pw' | A enroll "luks:$WORK/disk.luks" >/dev/null 2>&1
put_policy "$F" <<'YAML'
rules:
  - name: measured
    match: {nodes: {names: ["n1"]}}
    effect: allow
    require: [tpm_key, attested]
YAML
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "a quote with a clock past 2^63 ms does not attest" "$out" "permission_denied.*past 2\\^63 ms"
show=$(ctl "$F" node attest show n1 2>&1)
expect_eq "... and records no TPM state without a clock" "$(printf '%s\n' "$show" | grep 'TPM counters' | grep -vc 'clock=')" "0"

# The machine powers off; its TPM state is copied. The original boots and requests a key, then
# the copy boots (the same counters, its clock behind the original's).
SWTPM_A_PID=$(cat "$WORK/tpm-a/pid")
stop_pid "$SWTPM_A_PID"
rm -rf "$WORK/tpm-c" && cp -a "$WORK/tpm-a" "$WORK/tpm-c"
rm -f "$WORK/tpm-a/pid"
start_swtpm "$WORK/tpm-a"
TCTI_A=$TCTI
boot_measurements "$TCTI_A"
tpm_config "$WORK/a/agent.yaml" "$TCTI_A"
A unlock "luks:$WORK/disk.luks" >/dev/null 2>&1
sleep 2
A unlock "luks:$WORK/disk.luks" >/dev/null 2>&1
rm -f "$WORK/tpm-c/pid"
start_swtpm "$WORK/tpm-c"
TCTI_C=$TCTI
boot_measurements "$TCTI_C"
tpm_config "$WORK/a/clone.yaml" "$TCTI_C"
out=$("$AGENT" -c "$WORK/a/clone.yaml" unlock "luks:$WORK/disk.luks" 2>&1)
expect_eq "the copy (clock behind the original's at the same counters) gets no key" \
    "$(printf '%s' "$out" | grep -c 'disk.luks: unlocked')" "0"
finish
