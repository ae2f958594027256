#!/usr/bin/env bash
# libcryptsetup-token-keyfleet.so under the real cryptsetup CLI: `cryptsetup open --token-only
# --test-passphrase` (no device-mapper here) and `cryptsetup luksDump`, against LUKS2 files
# enrolled by the real agent with the real keyfleetd.
#
# libcryptsetup 2.6.1 loads token plugins only from its fixed directory,
# crypt_token_external_path() (Debian 12: /usr/lib/x86_64-linux-gnu/cryptsetup), so this test
# COPIES THE BUILT PLUGIN INTO THAT SYSTEM DIRECTORY for its run and removes it on exit (trap;
# a plugin that was there before is put back). It therefore runs only as root, and not in the
# sanitizer build (an ASan plugin cannot load into the uninstrumented cryptsetup); otherwise it
# prints SKIP and exits 77, which ctest reports as skipped. ctest runs it alone (RUN_SERIAL):
# while the plugin is installed, libcryptsetup validates every keyfleet token written by any
# process, also the deliberately bad ones of other tests.
. "$(dirname "$0")/lib.sh"

skip() { echo "SKIP: $1"; trap - EXIT; rm -rf "$WORK"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root to put the plugin into libcryptsetup's system token directory"
[ "${KF_SANITIZED:-0}" = 1 ] && skip "sanitizer build: an ASan plugin cannot load into the system cryptsetup"
PLUGIN=$BUILD/agent/libcryptsetup-token-keyfleet.so
TOKDIR=$(python3 -c 'import ctypes; l = ctypes.CDLL("libcryptsetup.so.12")
l.crypt_token_external_path.restype = ctypes.c_char_p; p = l.crypt_token_external_path(); print(p.decode() if p else "")')
[ -n "$TOKDIR" ] || skip "this libcryptsetup has external token plugins disabled"
INSTALLED=$TOKDIR/libcryptsetup-token-keyfleet.so

F=$WORK/fleet
fleet_init "$F"
issue "$F" node kn-1
issue "$F" node kn-2
start_kfd "$F"
allow_nodes "$F" "kn-*"
agent_config "$WORK/kn-1.yaml" kn-1 "deadline: 4s" "call_timeout: 1s"
agent_config "$WORK/kn-2.yaml" kn-2 "deadline: 4s" "call_timeout: 1s"
luks_file "$WORK/root.luks" "pw" >/dev/null
printf 'pw' | "$AGENT" -c "$WORK/kn-1.yaml" enroll "luks:$WORK/root.luks" >/dev/null 2>&1
luks_file "$WORK/rev.luks" "pw" >/dev/null
printf 'pw' | "$AGENT" -c "$WORK/kn-2.yaml" enroll "luks:$WORK/rev.luks" >/dev/null 2>&1
UUID=$(cryptsetup luksUUID "$WORK/root.luks")
# An evil maid's edit, made while no plugin is installed (with it, libcryptsetup refuses it).
cp "$WORK/root.luks" "$WORK/evil.luks"
cryptsetup token export --token-id 0 "$WORK/evil.luks" |
    sed 's/"keyfleet_volume_id":"[^"]*"/"keyfleet_volume_id":"00000000-0000-0000-0000-000000000000"/' >"$WORK/evil.json"
cryptsetup token import --token-id 0 --token-replace --json-file "$WORK/evil.json" "$WORK/evil.luks"

# Install for this run only; put back whatever was there.
uninstall() {
    rm -f "$INSTALLED"
    if [ -e "$WORK/previous-plugin.so" ]; then mv "$WORK/previous-plugin.so" "$INSTALLED"; fi
}
trap 'uninstall; cleanup' EXIT
[ -e "$INSTALLED" ] && cp -p "$INSTALLED" "$WORK/previous-plugin.so"
install -m 0644 "$PLUGIN" "$INSTALLED"

export KEYFLEET_CONFIG=$WORK/kn-1.yaml
out=$(cryptsetup luksDump "$WORK/root.luks" 2>&1)
expect_match "luksDump names the token and shows it readably" "$out" \
    "Tokens:[[:space:]]+[0-9]+: keyfleet[[:space:]]+Volume id:[[:space:]]+$UUID[[:space:]]+Wrapped key:[[:space:]]+KMS local, key v1 .*Coordinators: 127.0.0.1:$PORT[[:space:]]+TPM copy:[[:space:]]+no[[:space:]]+Keyslot:[[:space:]]+1"
out=$(cryptsetup -v open --token-only --test-passphrase "$WORK/root.luks" 2>&1)
expect_eq "cryptsetup open --token-only --test-passphrase: exit 0" "$?" "0"
expect_match "... the keyfleet keyslot opened" "$out" "Key slot 1 unlocked"

out=$(KEYFLEET_CONFIG=$WORK/kn-2.yaml cryptsetup open --token-only --test-passphrase "$WORK/rev.luks" 2>&1)
expect_eq "before revocation kn-2 opens its volume too" "$?" "0"
ctl "$F" node revoke kn-2 "stolen" >/dev/null
out=$(KEYFLEET_CONFIG=$WORK/kn-2.yaml cryptsetup open --token-only --test-passphrase "$WORK/rev.luks" 2>&1)
expect_eq "revoked: cryptsetup open --token-only fails" "$?" "1"
expect_match "... and the console names the reason" "$out" "keyfleet: .*not unlocked: refused by the coordinators: .*revoked"
expect_eq "... the passphrase still opens it" \
    "$(printf 'pw' | cryptsetup open --test-passphrase --key-file=- "$WORK/rev.luks" && echo yes)" "yes"

out=$(cryptsetup open --token-only --test-passphrase "$WORK/evil.luks" 2>&1)
expect_eq "an edited token (another volume's id): open --token-only fails" "$?" "1"
expect_match "... naming what is wrong" "$out" "keyfleet: token refused: .*names volume 00000000-0000-0000-0000-000000000000, not this one"
expect_match "luksDump says so too" "$(cryptsetup luksDump "$WORK/evil.luks" 2>&1)" "keyfleet token is not usable: .*names volume"
out=$(cryptsetup token import --json-file "$WORK/evil.json" "$WORK/root.luks" 2>&1)
expect_eq "with the plugin installed, importing a bad keyfleet token is refused" "$?" "1"
expect_match "... naming what is wrong" "$out" "keyfleet: token refused: .*names volume"

stop_kfd TERM
out=$(cryptsetup open --token-only --test-passphrase "$WORK/root.luks" 2>&1)
expect_eq "coordinator down: open --token-only fails" "$?" "1"
expect_match "... saying the coordinators are unreachable" "$out" "keyfleet: .*not unlocked: coordinator unreachable"
out=$(KEYFLEET_CONFIG=$WORK/none.yaml cryptsetup open --token-only --test-passphrase "$WORK/root.luks" 2>&1)
expect_match "no agent config: named" "$out" "keyfleet: not unlocked: no usable agent config"

had_one=no
[ -e "$WORK/previous-plugin.so" ] && had_one=yes
uninstall
if [ "$had_one" = yes ]; then
    check "the plugin that was installed before is back" test -e "$INSTALLED"
else
    check "the plugin is gone from $TOKDIR again" test ! -e "$INSTALLED"
fi
check_sanitizers
finish
