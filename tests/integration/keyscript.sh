#!/usr/bin/env bash
# keyfleet-agent keyscript on the host, without a VM: the contract with cryptroot (the key on
# stdout, nothing else; the prompt offered at once) and the race between the agent and the
# person, with a stand-in for /lib/cryptsetup/askpass. The LUKS2 header is attacker-controlled
# (an evil maid can edit it): bad tokens get a clear message and the prompt stays. Keys are
# checked with cryptsetup --test-passphrase (no device-mapper here). tests/boot/ does the same
# in a real boot.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node kn-1
start_kfd "$F"
pin_port "$F"
allow_nodes "$F" "kn-*"
luks_file "$WORK/root.luks" "typed secret"
agent_config "$WORK/a.yaml" kn-1 "deadline: 20s"
printf 'typed secret' | "$AGENT" -c "$WORK/a.yaml" enroll "luks:$WORK/root.luks" >/dev/null 2>&1

# askpass stand-ins: one that waits (a person who never types), one that types at once.
cat >"$WORK/askpass-wait" <<'SH'
#!/bin/sh
echo "$1" >&2
sleep 30
SH
cat >"$WORK/askpass-type" <<SH
#!/bin/sh
echo "\$1" >&2
sleep 0.5
printf 'typed secret'
SH
chmod +x "$WORK/askpass-wait" "$WORK/askpass-type"
# keyscript ASKPASS SOURCE: runs it as cryptroot does; stdout to $WORK/key, stderr to $WORK/console.
keyscript() {
    CRYPTTAB_NAME=cryptroot CRYPTTAB_SOURCE=$2 CRYPTTAB_TRIED=0 timeout 60 \
        "$AGENT" -c "$WORK/a.yaml" keyscript --askpass "$WORK/$1" >"$WORK/key" 2>"$WORK/console"
}
opens() { cryptsetup open --test-passphrase --key-file="$WORK/key" "$1" >/dev/null 2>&1 && echo yes || echo no; }
MARKER=/run/keyfleet/keyscript-cryptroot.agent
rm -f "$MARKER"

keyscript askpass-wait "$WORK/root.luks"
expect_eq "the agent's key wins over a person who does not type: exit 0" "$?" "0"
expect_eq "... stdout holds exactly the 32-byte key" "$(stat -c %s "$WORK/key")" "32"
expect_eq "... which opens the volume" "$(opens "$WORK/root.luks")" "yes"
expect_match "... the prompt was offered at once, and the console says how the key came" "$(cat "$WORK/console")" \
    "Please unlock disk cryptroot: .*keyfleet: cryptroot: released by a coordinator"
if grep -aqE 'keyfleet|event=|ts=' "$WORK/key"; then
    not_ok "... and nothing of the agent's output reached stdout"
else
    ok "... and nothing of the agent's output reached stdout"
fi

keyscript askpass-type "$WORK/root.luks"
expect_match "cryptroot's retry after our key: only the prompt is offered" "$(cat "$WORK/console")" \
    "refused before; only the prompt is offered"
expect_eq "... and the typed passphrase is the answer" "$(cat "$WORK/key")" "typed secret"
rm -f "$MARKER"

stop_kfd TERM
keyscript askpass-type "$WORK/root.luks"
expect_eq "coordinator down: the person's passphrase wins" "$(cat "$WORK/key")" "typed secret"
# A recovery key typed loosely (upper case, spaces, O for 0) goes on in its canonical form, the
# recovery keyslot's passphrase (docs/recovery.md).
RK=$(recovery_text "$(openssl rand -hex 32)")
printf '%s' "$RK" >"$WORK/rk.txt"
printf 'typed secret' | cryptsetup luksAddKey --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file=- "$WORK/root.luks" "$WORK/rk.txt"
rm -f "$WORK/rk.txt"
printf '#!/bin/sh\necho "$1" >&2\nprintf "%%s" "%s"\n' "$(printf '%s' "$RK" | tr 'a-z-' 'A-Z ' | tr 0 O)" \
    >"$WORK/askpass-recovery"
chmod +x "$WORK/askpass-recovery"
keyscript askpass-recovery "$WORK/root.luks"
expect_eq "a recovery key typed loosely goes on in its canonical form" "$(cat "$WORK/key")" "$RK"
expect_match "... saying so" "$(cat "$WORK/console")" "keyfleet: cryptroot: a recovery key was typed; passed on in its canonical form"
expect_eq "... which opens the volume" "$(opens "$WORK/root.luks")" "yes"
start_kfd "$F"

# An evil maid's edits to the keyfleet token: the console says what is wrong; the prompt answers.
token_set() { # token_set JSON: replaces the keyfleet token (id 0 after import)
    cp "$WORK/root.luks" "$WORK/evil.luks"
    local id
    id=$(cryptsetup luksDump --dump-json-metadata "$WORK/evil.luks" | python3 -c \
        'import json,sys; t=json.load(sys.stdin)["tokens"]; print([k for k,v in t.items() if v["type"]=="keyfleet"][0])')
    cryptsetup token remove --token-id "$id" "$WORK/evil.luks"
    printf '%s' "$1" | cryptsetup token import --json-file=- "$WORK/evil.luks"
}
good=$(cryptsetup luksDump --dump-json-metadata "$WORK/root.luks" | python3 -c \
    'import json,sys; t=json.load(sys.stdin)["tokens"]; print(json.dumps([v for v in t.values() if v["type"]=="keyfleet"][0]))')
evil() { python3 -c "import json,sys; t=json.loads(sys.argv[1]); $1; print(json.dumps(t))" "$good"; }
while IFS='|' read -r what edit want; do
    token_set "$(evil "$edit")" || { not_ok "$what: token imported"; continue; }
    keyscript askpass-type "$WORK/evil.luks"
    expect_match "$what: named on the console" "$(cat "$WORK/console")" "not unlocked through keyfleet: .*$want"
    expect_eq "$what: the prompt still answers" "$(cat "$WORK/key")" "typed secret"
done <<'CASES'
a wrapped key that is not ours|t["keyfleet_wrapped_key"]="kf:local:v1:AAAA"|failed_precondition|invalid_argument
another volume's id|t["keyfleet_volume_id"]="00000000-0000-0000-0000-000000000000"|names volume
a missing wrapped key|del t["keyfleet_wrapped_key"]|malformed|no valid wrapped key
an oversized wrapped key|t["keyfleet_wrapped_key"]="kf:"+"A"*5000|malformed|no valid wrapped key
CASES
stop_kfd TERM
check_sanitizers
finish
