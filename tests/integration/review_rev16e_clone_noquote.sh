#!/usr/bin/env bash
# Review rev16e, finding E3: a cloned virtual TPM that sends no quote, under require: [tpm_key].
# The TPM clock check (review rev17, A1) runs only on quotes. Under a rule that requires tpm_key
# but not attested, the thief's copy (disk and swtpm state) runs the agent with
# tpm: {attest: false}: its TLS key is the node's (the same TPM state), no quote is checked, and
# the original, still quoting, is never held. Docs say a failed clock check holds the node
# "whatever the policy"; a copy that never quotes is never checked.
. "$(dirname "$0")/lib.sh"
command -v swtpm_setup >/dev/null || { echo "1..0 # SKIP swtpm_setup missing"; exit 77; }

measure() { TPM2TOOLS_TCTI="$1" tpm2_pcrextend "$2:sha256=$(printf '%s' "$3" | sha256sum | cut -c1-64)" >/dev/null 2>&1; }
boot_measurements() { for p in 0 2 4 7; do measure "$1" "$p" "firmware $p"; done; }
stop_pid() { kill "$1" 2>/dev/null; for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done; }

tpm_manufacture "$WORK/tpm-a"
start_swtpm "$WORK/tpm-a"
TCTI_A=$TCTI
boot_measurements "$TCTI_A"
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
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
expect_match "set-up: the node enrolled attested (tofu) and unlocks" "$out" "disk.luks: unlocked \\(key verified"

# The machine keeps running; the thief copies its disk and TPM state (a live copy: swtpm keeps its
# state in files) and boots the copy on another host.
cp -a "$WORK/tpm-a" "$WORK/tpm-c"
rm -f "$WORK/tpm-c/pid"
start_swtpm "$WORK/tpm-c"
TCTI_C=$TCTI
boot_measurements "$TCTI_C"
tpm_config "$WORK/a/clone.yaml" "$TCTI_C"
sed -i 's/^tpm: {/tpm: {attest: false, /' "$WORK/a/clone.yaml"
out=$("$AGENT" -c "$WORK/a/clone.yaml" unlock "luks:$WORK/disk.luks" 2>&1)
CLONE_GOT=$(printf '%s' "$out" | grep -c 'disk.luks: unlocked')
out=$(A unlock "luks:$WORK/disk.luks" 2>&1)
ORIG_GOT=$(printf '%s' "$out" | grep -c 'disk.luks: unlocked')
out=$(A watch --count 1 2>&1)
show=$(ctl "$F" node attest show n1 2>&1)
expect_eq "the original keeps its key (original=$ORIG_GOT)" "$ORIG_GOT" "1"
expect_eq "the copy of a node that quotes, sending no quote, gets no key (clone=$CLONE_GOT)" "$CLONE_GOT" "0"
finish
