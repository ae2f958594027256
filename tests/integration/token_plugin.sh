#!/usr/bin/env bash
# libcryptsetup-token-keyfleet.so, loaded as libcryptsetup loads it (dlopen, dlvsym with
# CRYPTSETUP_TOKEN_1.0) by tests/integration/token_plugin_probe.c, against LUKS2 containers in
# files enrolled by the real agent with the real keyfleetd: open releases the key that opens the
# volume (checked with libcryptsetup, no device-mapper); revoked, approval pending, coordinator
# down and no config each fail with the errno libcryptsetup expects and a message naming the
# reason; the TPM copy answers when no coordinator does; validate refuses every kind of bad
# token an evil maid can write, each with a clear message; dump prints readable lines and no
# secret. Runs under the ASan build too (plugin and probe both instrumented). The same plugin
# under the real cryptsetup CLI: token_plugin_cli.sh.
. "$(dirname "$0")/lib.sh"

PLUGIN=$BUILD/agent/libcryptsetup-token-keyfleet.so
TPP=$BUILD/tests/token_plugin_probe
# P CONFIG ARGS...: the probe with the plugin, the agent config in KEYFLEET_CONFIG.
P() { local c=$1; shift; KEYFLEET_CONFIG=$c "$TPP" "$PLUGIN" "$@" 2>&1 | tee -a "$WORK/probe.out"; }

F=$WORK/fleet
fleet_init "$F"
for n in kn-1 kn-2 kn-3; do issue "$F" node "$n"; done
start_kfd "$F"
put_policy "$F" <<'YAML'
rules:
  - name: approval
    match: {nodes: {names: ["kn-3"]}}
    effect: allow
    approval: {approvers: 1}
  - name: fleet
    match: {nodes: {names: ["kn-*"]}}
    effect: allow
YAML
start_swtpm "$WORK/tpm"
for n in 1 2 3; do
    agent_config "$WORK/kn-$n.yaml" "kn-$n" "deadline: 4s" "call_timeout: 1s" "tpm: {tcti: \"$TCTI\", pcrs: [7]}"
done
luks_file "$WORK/root.luks" "pw" >/dev/null
printf 'pw' | "$AGENT" -c "$WORK/kn-1.yaml" enroll "luks:$WORK/root.luks" >/dev/null 2>&1
UUID=$(cryptsetup luksUUID "$WORK/root.luks")

out=$("$TPP" "$PLUGIN" symbols)
expect_match "the five entry points are exported as CRYPTSETUP_TOKEN_1.0" "$out" \
    "open@CRYPTSETUP_TOKEN_1.0 present.*buffer_free@CRYPTSETUP_TOKEN_1.0 present.*validate@CRYPTSETUP_TOKEN_1.0 present.*dump@CRYPTSETUP_TOKEN_1.0 present.*version@CRYPTSETUP_TOKEN_1.0 present"
expect_match "... no open_pin (the token takes no PIN)" "$out" "cryptsetup_token_open_pin absent"
expect_match "... and nothing of the agent's code" "$out" "kf_log hidden.*kfa_release hidden.*kfa_token_parse hidden.*kf_secbuf_new hidden.*kfa_config_load hidden"
expect_eq "... exactly five dynamic symbols defined" \
    "$(nm -D --defined-only "$PLUGIN" | grep -c ' T ')" "5"

out=$(P "$WORK/kn-1.yaml" open "$WORK/root.luks")
expect_match "open releases the key, and it opens the volume" "$out" "open ok len=32 keyslot=1 opens=yes"
expect_match "... recorded in the agent's status file" "$(cat "$WORK/kn-1-state.json")" "via=token-plugin.*\"method\": \"coordinator\""
expect_match "... and audited for the node" "$(ctl "$F" audit --volume "$UUID" --json 2>/dev/null)" \
    '"action":"release","actor":"kn-1"' 

out=$(P "$WORK/kn-1.yaml" dump "$WORK/root.luks")
expect_match "dump: the volume id" "$out" "log normal: .Volume id: +$UUID"
expect_match "dump: the wrapped key's KMS and key version, not the key" "$out" "Wrapped key: +KMS local, key v1"
expect_match "dump: the coordinators" "$out" "Coordinators: 127.0.0.1:$PORT"
expect_match "dump: no TPM copy" "$out" "TPM copy: +no"
wrapped=$(luks_json "$WORK/root.luks" | python3 -c 'import json,sys; t=json.load(sys.stdin)["tokens"]; print([v for v in t.values() if v["type"]=="keyfleet"][0]["keyfleet_wrapped_key"])')
case $out in *"${wrapped##*:}"*) not_ok "dump shows no wrapped key material" ;; *) ok "dump shows no wrapped key material" ;; esac

# validate: every kind of bad token, each refused with a message naming what is wrong.
good=$(luks_json "$WORK/root.luks" | python3 -c \
    'import json,sys; t=json.load(sys.stdin)["tokens"]; print(json.dumps([v for v in t.values() if v["type"]=="keyfleet"][0]))')
printf '%s' "$good" >"$WORK/t.json"
expect_eq "validate accepts the agent's token" "$(P "$WORK/kn-1.yaml" validate "$WORK/root.luks" "$WORK/t.json")" "validate r=0"
edit() { python3 -c "import json,sys; t=json.loads(sys.argv[1]); $1; print(json.dumps(t))" "$good"; }
while IFS='|' read -r what json want; do
    case $json in py:*) edit "${json#py:}" >"$WORK/t.json" ;; *) printf '%s' "$json" >"$WORK/t.json" ;; esac
    out=$(P "$WORK/kn-1.yaml" validate "$WORK/root.luks" "$WORK/t.json")
    expect_match "validate refuses $what" "$out" "log error: keyfleet: token refused: .*$want.*validate r=-22"
done <<'CASES'
bad JSON|{"type":"keyfleet","keyslots":["1"],|not JSON
a JSON array|["keyfleet"]|not a JSON object
a duplicated field|{"type":"keyfleet","type":"keyfleet"}|not JSON \(duplicate
oversized JSON|py:t["keyfleet_coordinators"]=["h%d:1" % i for i in range(4000)]|more than 16384 bytes of JSON
too many coordinators|py:t["keyfleet_coordinators"]=["h%d:1" % i for i in range(65)]|at most 64 host:port
an oversized wrapped key|py:t["keyfleet_wrapped_key"]="kf:local:v1:"+"A"*5000|keyfleet_wrapped_key is 5012 bytes, more than 4096
a missing wrapped key|py:del t["keyfleet_wrapped_key"]|keyfleet_wrapped_key is missing
a missing volume id|py:del t["keyfleet_volume_id"]|keyfleet_volume_id is missing
missing coordinators|py:del t["keyfleet_coordinators"]|keyfleet_coordinators is missing
missing keyslots|py:del t["keyslots"]|keyslots must name exactly one keyslot
two keyslots|py:t["keyslots"]=["1","2"]|keyslots must name exactly one keyslot
a keyslot that is not a number|py:t["keyslots"]=["01"]|keyslots names no valid keyslot
a volume id that is a number|py:t["keyfleet_volume_id"]=7|keyfleet_volume_id must be a string
another volume's id|py:t["keyfleet_volume_id"]="00000000-0000-0000-0000-000000000000"|names volume 00000000-0000-0000-0000-000000000000, not this one
a volume id that is no UUID|py:t["keyfleet_volume_id"]="../../etc/passwd"|keyfleet_volume_id is not a LUKS UUID
a wrapped key that is not keyfleet's|py:t["keyfleet_wrapped_key"]="age1qyqszqgpqyqszqgpqyqszqgpqyqszqgp"|not a keyfleet wrapped key \(no kf: prefix\)
a wrapped key without its parts|py:t["keyfleet_wrapped_key"]="kf:local"|not kf:BACKEND:REF:DATA
a wrapped key naming no backend|py:t["keyfleet_wrapped_key"]="kf:LOCAL!:v1:AAAA"|names no valid KMS backend
a wrapped key with control characters|py:t["keyfleet_wrapped_key"]="kf:local:v1:AA\u0001\u001b[2J"|printable ASCII
a wrapped key that is a number|py:t["keyfleet_wrapped_key"]=1|keyfleet_wrapped_key must be a string
coordinators that are a string|py:t["keyfleet_coordinators"]="127.0.0.1:1"|keyfleet_coordinators must be a list
a coordinator that is not host:port|py:t["keyfleet_coordinators"]=["nohost"]|keyfleet_coordinators entry 1 is not host:port
a bad TPM blob|py:t["keyfleet_tpm_sealed"]="kftpm1:<script>"|not a keyfleet TPM blob
a bad TPM part|py:t["keyfleet_tpm_sealed"]="kftpmnet1:"|not a keyfleet TPM blob
a TPM part in a rotating token|py:t["keyfleet_tpm_sealed"]="kftpmnet1:AAAA"; t["keyfleet_rotating"]=True|holds a tpm_and_network TPM part in a token marked rotating
an unknown field|py:t["keyfleet_extra"]=1|unknown field keyfleet_extra
an unknown version|py:t["keyfleet_version"]=2|keyfleet_version is not 1: written by a newer keyfleet
another token type|py:t["type"]="systemd-tpm2"|type is not "keyfleet"
CASES

# The header edited by an evil maid: the token is refused before anything is asked, or the
# coordinators refuse a wrapped key that is not theirs.
token_set() { # token_set FILE JSON: FILE becomes a copy of root.luks with this keyfleet token
    cp "$WORK/root.luks" "$1"
    cryptsetup token remove --token-id 0 "$1"
    printf '%s' "$2" | cryptsetup token import --token-id 0 --json-file=- "$1"
}
token_set "$WORK/evil1.luks" "$(edit 't["keyfleet_volume_id"]="00000000-0000-0000-0000-000000000000"')"
out=$(P "$WORK/kn-1.yaml" open "$WORK/evil1.luks")
expect_match "open: another volume's token is not used (ENOENT), named" "$out" "names volume 00000000-.*open r=-ENOENT"
token_set "$WORK/evil2.luks" "$(edit 't["keyfleet_wrapped_key"]="kf:local:v1:AAAA"')"
out=$(P "$WORK/kn-1.yaml" open "$WORK/evil2.luks")
expect_match "open: a wrapped key the coordinators cannot unwrap is refused (EPERM), named" "$out" \
    "not unlocked: refused by the coordinators: .*(failed_precondition|invalid_argument).*open r=-EPERM"

# A revoked node.
luks_file "$WORK/rev.luks" "pw" >/dev/null
printf 'pw' | "$AGENT" -c "$WORK/kn-2.yaml" enroll "luks:$WORK/rev.luks" >/dev/null 2>&1
ctl "$F" node revoke kn-2 "stolen" >/dev/null
out=$(P "$WORK/kn-2.yaml" open "$WORK/rev.luks")
expect_match "open on a revoked node: refused (EPERM), saying revoked" "$out" \
    "not unlocked: refused by the coordinators: .*permission_denied.*revoked.*open r=-EPERM"

# Approval: pending until the deadline (EAGAIN, with the countdown), then approved.
luks_file "$WORK/appr.luks" "pw" >/dev/null
printf 'pw' | "$AGENT" -c "$WORK/kn-3.yaml" enroll "luks:$WORK/appr.luks" >/dev/null 2>&1
out=$(P "$WORK/kn-3.yaml" open "$WORK/appr.luks")
expect_match "open while approval is pending: EAGAIN at the deadline, with the wait on the log" "$out" \
    "log normal: keyfleet: event=waiting_for_approval .*seconds_left=[0-9]+.*not unlocked: approval pending: .*open r=-EAGAIN"
# The operator approves whatever is pending (the first attempt's request too) until told to stop.
( for _ in $(seq 1 150); do
      [ -e "$WORK/approved" ] && break
      for id in $(ctl "$F" pending | awk 'NR > 1 {print $1}'); do ctl "$F" approve "$id" >/dev/null 2>&1; done
      sleep 0.1
  done ) &
approver=$!
out=$(P "$WORK/kn-3.yaml" open "$WORK/appr.luks")
touch "$WORK/approved"
wait "$approver"
expect_match "... and once an operator approves, the key opens the volume" "$out" "open ok len=32 keyslot=1 opens=yes"

# No agent config on this machine: the token is of no use here.
out=$(P "$WORK/none.yaml" open "$WORK/root.luks")
expect_match "open without an agent config: ENOENT, naming the file" "$out" "no usable agent config: .*none.yaml.*open r=-ENOENT"

# The TPM copy, where policy allowed it: used only when no coordinator answers.
put_policy "$F" <<'YAML'
rules:
  - name: fleet
    match: {nodes: {names: ["kn-1"]}}
    effect: allow
    offline_fallback: true
YAML
luks_file "$WORK/tpm.luks" "pw" >/dev/null
printf 'pw' | "$AGENT" -c "$WORK/kn-1.yaml" enroll "luks:$WORK/tpm.luks" >/dev/null 2>&1
expect_match "dump: a TPM copy exists" "$(P "$WORK/kn-1.yaml" dump "$WORK/tpm.luks")" "TPM copy: +yes"
stop_kfd TERM
out=$(P "$WORK/kn-1.yaml" open "$WORK/root.luks")
expect_match "coordinator down, no TPM copy: EAGAIN, saying unreachable" "$out" \
    "event=release_retry.*not unlocked: coordinator unreachable: .*open r=-EAGAIN"
out=$(P "$WORK/kn-1.yaml" open "$WORK/tpm.luks")
expect_match "coordinator down, TPM copy: unsealed, and it opens the volume" "$out" \
    "event=offline_unlock .*open ok len=32 keyslot=1 opens=yes"
expect_match "... queued for reporting at the next contact" "$(cat "$WORK/kn-1-state.json")" '"offline_pending".*"reason": "no coordinator answered'

if grep -q -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$WORK/probe.out"; then
    not_ok "no sanitizer reports from the plugin" "$(grep -m 3 -E 'Sanitizer|runtime error' "$WORK/probe.out")"
else
    ok "no sanitizer reports from the plugin"
fi
check_sanitizers
finish
