#!/usr/bin/env bash
# Review rev16e, finding E3: a cloned virtual TPM that sends no quote, under require: [tpm_key].
# The TPM clock check (review rev17, A1) runs only on quotes. Under a rule that requires tpm_key
# but not attested, the thief's copy (disk and swtpm state) runs the agent with
# tpm: {attest: false}: its TLS key is the node's (the same TPM state), no quote is checked, and
# the original, still quoting, is never held. Docs say a failed clock check holds the node
# "whatever the policy"; a copy that never quotes is never checked.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tpm_node_lib.sh"
command -v swtpm_setup >/dev/null || { echo "1..0 # SKIP swtpm_setup missing"; exit 77; }

tpm_node_setup "tpm_key"
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
