#!/usr/bin/env bash
# TPM-resident node keys (issue #16 part 1), one swtpm per simulated machine: the node makes its
# TLS key in its TPM (`identity create`), the fleet CA certifies the request, and the node
# enrolls and unlocks a LUKS2 file with it, the handshake signed in the TPM through the tpm2
# provider. Its files copied to a second machine, with another TPM, get nothing, and say why.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
start_kfd "$F"
put_policy "$F" <<'YAML'
rules:
  - name: nodes
    match: {nodes: {names: ["n*"]}}
    effect: allow
    offline_fallback: true
YAML
start_swtpm "$WORK/tpm-a"
TCTI_A=$TCTI
start_swtpm "$WORK/tpm-b"
TCTI_B=$TCTI
luks_file "$WORK/disk.luks" "pw"

# The node's config names its key as a TPM key from the start; the certificate comes later.
tpm_config() { # FILE DIR TCTI
    {
        echo "coordinators: [\"127.0.0.1:$PORT\"]"
        echo "identity: {cert: $2/n1.crt, tpm_key: $2/n1.tpmkey, ca: $F/ca.crt}"
        echo "state_file: $2/state.json"
        echo "deadline: 3s"
        echo "call_timeout: 1s"
        echo "luks: {activate: false}"
        echo "zfs: {command: $ZFS_STANDIN, discover: false}"
        echo "tpm: {tcti: \"$3\"}"
        echo "volumes:"
        echo "  - luks: $WORK/disk.luks"
    } >"$1"
}
mkdir -p "$WORK/a" "$WORK/thief"
tpm_config "$WORK/a/agent.yaml" "$WORK/a" "$TCTI_A"
A() { "$AGENT" -c "$WORK/a/agent.yaml" "$@"; }

out=$(A identity create n1 2>&1)
expect_eq "identity create succeeds" "$?" "0"
expect_match "... and says where the key and request are" "$out" "key in the TPM .*n1.tpmkey.*n1.tpmkey.csr"
expect_eq "the key file is a TSS2 PRIVATE KEY blob" "$(head -n 1 "$WORK/a/n1.tpmkey")" "-----BEGIN TSS2 PRIVATE KEY-----"
expect_eq "... readable by its owner only" "$(stat -c %a "$WORK/a/n1.tpmkey")" "600"
attrs=$(openssl asn1parse -in "$WORK/a/n1.tpmkey" | awk -F: '/OCTET STRING/ { print $NF; exit }' | cut -c13-20)
expect_eq "... fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, sign (TPMA_OBJECT 0x00060072)" "$attrs" "00060072"
check "the request's signature verifies (made in the TPM)" openssl req -in "$WORK/a/n1.tpmkey.csr" -verify -noout
out=$(A identity create n1 2>&1)
expect_match "identity create refuses to overwrite a key" "$out" "already exists"

out=$("$CTL" cert issue node n2 --dir "$F" --out "$WORK/a/n1" --csr "$WORK/a/n1.tpmkey.csr" 2>&1)
expect_match "cert issue --csr refuses a request naming another node" "$out" "names 'n1', not 'n2'"
# A request without a CN (or with two) could be any node's: refused, not issued under the name typed.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/nocn.key" 2>/dev/null
openssl req -new -key "$WORK/nocn.key" -subj "/O=somewhere" -out "$WORK/nocn.csr" 2>/dev/null
out=$("$CTL" cert issue node n1 --dir "$F" --out "$WORK/nocn" --csr "$WORK/nocn.csr" 2>&1)
expect_match "cert issue --csr refuses a request without a CN" "$out" "must name the node in exactly one CN \\(it has none\\)"
openssl req -new -key "$WORK/nocn.key" -subj "/CN=n1/CN=n2" -out "$WORK/twocn.csr" 2>/dev/null
out=$("$CTL" cert issue node n1 --dir "$F" --out "$WORK/nocn" --csr "$WORK/twocn.csr" 2>&1)
expect_match "... and one with two CNs" "$out" "must name the node in exactly one CN \\(it has several\\)"
expect_eq "... issuing nothing" "$(ls "$WORK"/nocn.crt 2>/dev/null | wc -l)" "0"
printf 'garbage' >"$WORK/garbage.csr"
out=$("$CTL" cert issue node n1 --dir "$F" --out "$WORK/garbage" --csr "$WORK/garbage.csr" 2>&1)
expect_match "... and one that is not a request" "$out" "garbage.csr: not a PEM certificate request"
expect_eq "... writing nothing" "$(ls "$WORK"/garbage.* | wc -l)" "1"
out=$("$CTL" cert issue node n1 --dir "$F" --out "$WORK/a/n1" --csr "$WORK/a/n1.tpmkey.csr" 2>&1)
expect_match "cert issue --csr certifies the TPM key" "$out" "issued keyfleet://node/n1 for the key of"
expect_eq "... and writes no key file" "$(ls "$WORK/a/n1.key" 2>/dev/null | wc -l)" "0"
expect_eq "the certificate carries the TPM key's public key" \
    "$(openssl x509 -in "$WORK/a/n1.crt" -noout -pubkey)" "$(openssl req -in "$WORK/a/n1.tpmkey.csr" -noout -pubkey)"

check "check-config accepts the TPM identity" A check-config
out=$(printf 'pw' | A enroll "$WORK/disk.luks" 2>&1)
expect_eq "a node with a TPM key enrolls (exit 0)" "$?" "0"
expect_match "... and seals the offline copy in the same TPM (the provider's connection closed first)" "$out" \
    "TPM-sealed copy stored for offline unlock"
out=$(A unlock --all 2>&1)
expect_eq "... and unlocks (exit 0)" "$?" "0"
expect_match "... saying so" "$out" "disk.luks: unlocked \\(key verified"
expect_match "the audit shows the release to n1" "$(ctl "$F" audit --action release --json)" '"node":"n1".*"decision":"allow"'
# The libcryptsetup token plugin (systemd-cryptsetup, cryptsetup open --token-only) takes the
# same identity: the plugin loads the tpm2 provider inside the caller's process.
out=$(KEYFLEET_CONFIG="$WORK/a/agent.yaml" "$BUILD/tests/token_plugin_probe" "$BUILD/agent/libcryptsetup-token-keyfleet.so" \
    open "$WORK/disk.luks" 2>&1)
expect_match "the token plugin releases the key with the TPM key" "$out" "open ok len=32 keyslot=1 opens=yes"
out=$(A watch --count 1 2>&1)
expect_eq "watch heartbeats with the TPM key" "$?" "0"
expect_eq "no TPM object is left loaded after the runs" \
    "$(TPM2TOOLS_TCTI="$TCTI_A" tpm2_getcap handles-transient 2>/dev/null | wc -l)" "0"

files=$(A initramfs-files)
expect_match "initramfs-files lists the TPM key" "$files" "file	$WORK/a/n1.tpmkey"
expect_match "... the tpm2 provider module" "$files" "module	/.*/ossl-modules/tpm2.so"
expect_match "... and the TPM libraries and TCTI" "$(echo $files)" "lib libtss2-esys.so.0 .*lib libtss2-tctildr.so.0 lib libtss2-tcti-swtpm.so.0 .*lib libtss2-sys.so.1"

# The thief copies everything the disk holds (config, certificate, key blob, CA) to a machine
# with another TPM.
cp "$WORK/a/n1.crt" "$WORK/a/n1.tpmkey" "$WORK/thief/"
tpm_config "$WORK/thief/agent.yaml" "$WORK/thief" "$TCTI_B"
n_before=$(ctl "$F" audit --action release --json | grep -c '"node":"n1"')
out=$("$AGENT" -c "$WORK/thief/agent.yaml" unlock --all 2>&1)
expect_eq "the copied files on another TPM unlock nothing (exit 2: the identity does not load)" "$?" "2"
expect_match "... and the refusal is visible: the other TPM cannot load the key" "$out" \
    "n1.tpmkey: the TPM refused to load the key \\(made by another TPM\\?\\)"
expect_eq "... no release reached the coordinator" "$(ctl "$F" audit --action release --json | grep -c '"node":"n1"')" "$n_before"

# A key file used as a plain key says what it is.
sed -e "s#tpm_key: #key: #" "$WORK/a/agent.yaml" >"$WORK/a/plain.yaml"
out=$("$AGENT" -c "$WORK/a/plain.yaml" unlock --all 2>&1)
expect_match "a TPM key named as key: says to name it tpm_key" "$out" "is a TPM key \\(TSS2 PRIVATE KEY\\): name it as the identity's tpm_key"
# A key that could exist outside a TPM (its public area without fixedTPM; here the attribute
# bit cleared in a copy) is refused before the TPM is asked.
python3 - "$WORK/a/n1.tpmkey" "$WORK/thief/n1.tpmkey" <<'PY'
import base64, sys
lines = open(sys.argv[1]).read().split("\n")
der = bytearray(base64.b64decode("".join(l for l in lines if l and not l.startswith("-----"))))
i = der.find(bytes.fromhex("00060072"))
der[i + 3] &= ~0x02 & 0xff  # TPMA_OBJECT fixedTPM
b64 = base64.b64encode(bytes(der)).decode()
open(sys.argv[2], "w").write("-----BEGIN TSS2 PRIVATE KEY-----\n" + "\n".join(b64[j:j + 64] for j in range(0, len(b64), 64)) + "\n-----END TSS2 PRIVATE KEY-----\n")
PY
tpm_config "$WORK/thief/agent.yaml" "$WORK/thief" "$TCTI_A"
out=$("$AGENT" -c "$WORK/thief/agent.yaml" unlock --all 2>&1)
expect_match "a key without fixedTPM is refused, saying why" "$out" "attributes 0x00060070 lack fixedTPM"
# A corrupt blob is refused before the TPM sees it.
head -c 200 "$WORK/a/n1.tpmkey" >"$WORK/thief/n1.tpmkey"
out=$("$AGENT" -c "$WORK/thief/agent.yaml" unlock --all 2>&1)
expect_match "a truncated key file is refused clearly" "$out" "n1.tpmkey: not a TPM key|malformed"
# No coordinator answers: the TPM copy sealed at enrollment unlocks, in the same TPM the node
# key lives in (the client, and its provider's TPM connection, closed first).
stop_kfd TERM
out=$(A unlock --all 2>&1)
expect_eq "coordinator down: a TPM-key node falls back to its TPM copy (exit 0)" "$?" "0"
expect_match "... saying so" "$out" "disk.luks: unlocked from the TPM"
expect_eq "... and leaves no TPM object loaded" \
    "$(TPM2TOOLS_TCTI="$TCTI_A" tpm2_getcap handles-transient 2>/dev/null | wc -l)" "0"
check_sanitizers
finish
