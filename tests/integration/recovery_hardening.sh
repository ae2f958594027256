#!/usr/bin/env bash
# The recovery and wipe controls review rev26b asked for (docs/reviews/rev26b-recovery-erase-
# tpmnet.md F5, F6, F7, F9, F11): a repeated EnrollRecoveryKey returns the live recovery key only
# soon after, never once revealed or under a rule whose releases wait for operators; a node wipe
# needs two operators by default and --erase-all-keyslots is checked again when approved; a rule
# may not be named recovery; where admin.totp is set, fetching a revealed key and denying a
# request need a TOTP code, which keyfleetctl volume recovery-key never takes from argv.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
issue "$F" operator bob
issue "$F" operator carol
mkdir -p "$F/totp"
declare -A SECRET
for o in admin bob carol; do
    SECRET[$o]=$(head -c 20 /dev/urandom | base32 | tr -d '=')
    echo "${SECRET[$o]}" >"$F/totp/$o.b32"
done
code() { oathtool --totp -b "${SECRET[$1]}"; }
next_code() { oathtool --totp -b "${SECRET[$1]}" -N "now + 30 seconds"; }
start_kfd "$F"
# policy [ADMIN LINE] [RULE LINES...]: n1 allowed; v-held's releases wait for two operators.
policy() {
    local admin=$1
    shift
    put_policy "$F" <<YAML
$admin
groups:
  scrap: {nodes: ["n1"], wipe: {erase_all_keyslots: true}}
rules:
  - name: held
    match: {volumes: {ids: [v-held]}}
    effect: allow
    approval: {approvers: 2}
  - name: all
    match: {nodes: {names: [n1]}}
    effect: allow
$(printf '%s\n' "$@")
YAML
}
check "policy put" policy "# no admin section"
rid_of() { printf '%s\n' "$1" | grep -Eo '[0-9a-f]{32}' | head -n 1; }

# --- F11: the rule names held requests use are reserved
out=$(printf 'rules:\n  - name: ok\n    effect: deny\n  - name: recovery\n    effect: allow\n' >"$WORK/bad.yaml"
    ctl "$F" policy put "$WORK/bad.yaml" 2>&1)
expect_match "a rule named recovery is refused, with its line" "$out" "invalid_argument: policy:4:11: rule name 'recovery' is reserved"

# --- F5: a repeated EnrollRecoveryKey
check "n1 enrolls v-free" node "$F" n1 enroll v-free
check "n1 enrolls v-held" node "$F" n1 enroll v-held
RA=0123456789abcdef0123456789abcdef
RB=fedcba9876543210fedcba9876543210
K1=$(field key "$(node "$F" n1 recovery v-free "$RA")")
expect_match "escrow: a recovery key" "$K1" "^[0-9a-f]{64}$"
expect_eq "a repeat soon after (a lost answer) returns it" "$(field key "$(node "$F" n1 recovery v-free "$RA")")" "$K1"
H1=$(field key "$(node "$F" n1 recovery v-held "$RA")")
expect_match "escrow under a rule with approvals: a new key is fine" "$H1" "^[0-9a-f]{64}$"
out=$(node "$F" n1 recovery v-held "$RA")
expect_match "... but a repeat does not hand it out again" "$out" \
    "code=permission_denied .*releases wait for operators' approval"
expect_match "... audited" "$(ctl "$F" audit --action recovery_escrow --json)" \
    '"volume":"v-held".*"decision":"deny".*approval'
# revealed: a repeat of that escrow's request is refused
out=$(ctl "$F" volume recovery-key v-free)
RID=$(rid_of "$out")
check "bob approves the reveal" ctl_as "$F" bob approve "$RID"
out=$(ctl "$F" volume recovery-key v-free --request "$RID")
expect_match "the proposer is shown the key (no TOTP configured yet)" "$out" "recovery key of v-free"
out=$(node "$F" n1 recovery v-free "$RA")
expect_match "a repeat of a revealed escrow is refused" "$out" "code=permission_denied .*was revealed"

# --- F6: two operators for a wipe by default; --erase-all-keyslots checked again at approval
out=$(ctl "$F" node wipe n1 --volumes v-free --reason test)
expect_match "node wipe needs two operators by default (admin.approvers is 1)" "$out" "held as request .*: 2 approvals needed"
W1=$(rid_of "$out")
check "bob denies it" ctl_as "$F" bob deny "$W1"
out=$(ctl "$F" node wipe n1 --volumes v-free --erase-all-keyslots)
W2=$(rid_of "$out")
expect_match "an --erase-all-keyslots wipe, allowed now, is held" "$out" "held as request"
sed -i 's/wipe: {erase_all_keyslots: true}/wipe: {erase_all_keyslots: false}/' "$F/policy.yaml"
check "the policy stops allowing it" ctl "$F" policy put "$F/policy.yaml"
out=$(ctl_as "$F" bob approve "$W2" 2>&1)
expect_match "... and the approval is refused" "$out" "permission_denied: --erase-all-keyslots is no longer allowed"
expect_match "... the volume is not being erased" "$(ctl "$F" volume list | grep '^v-free ')" ' -$'
# Lowering it is held for the two a wipe needs now (review rev26c W1): bob approves.
out=$(put_policy() { cat >"$F/policy.yaml"; }
    policy "admin: {approvers: 1, wipe_approvers: 1}" && ctl "$F" policy put "$F/policy.yaml")
check "admin.wipe_approvers: 1, approved by bob" ctl_as "$F" bob approve "$(rid_of "$out")"
expect_match "... lets one operator wipe" "$(ctl "$F" node wipe n1 --volumes v-held)" "approved: the keys are refused now"

# --- F7, F9: with TOTP (approvals.totp_dir, admin.totp), the fetch and a denial need a code;
# never from argv. Each operator's code is accepted once per 30 s step.
check "n1 enrolls v2" node "$F" n1 enroll v2
check "escrow for v2" node "$F" n1 recovery v2 "$RB"
check "admin.totp: true" policy "admin: {approvers: 1, totp: true}"
stop_kfd TERM
printf 'approvals:\n  totp_dir: totp\n' >>"$F/keyfleetd.yaml"
start_kfd "$F"
out=$(ctl "$F" volume recovery-key v2 --totp 123456 2>&1) && rc=0 || rc=$?
expect_eq "recovery-key refuses a code in argv (usage)" "$rc" "2"
expect_match "... saying why" "$out" "a code in the command line is visible"
out=$(code admin | ctl "$F" volume recovery-key v2 --totp -)
R2=$(rid_of "$out")
expect_match "the reveal is proposed with the code read from stdin" "$out" "1 of 2 approvals"
out=$(ctl_as "$F" carol deny "$R2" 2>&1) && rc=0 || rc=$?
expect_match "a denial without TOTP is refused" "$out" "invalid_argument: a TOTP code is required"
check "bob approves with TOTP" ctl_as "$F" bob approve "$R2" --totp-fd 3 3< <(code bob)
out=$(ctl "$F" volume recovery-key v2 --request "$R2" 2>&1)
expect_match "the fetch without TOTP is refused" "$out" "invalid_argument: a TOTP code is required"
exec 9< <(next_code admin)
out=$(ctl "$F" volume recovery-key v2 --request "$R2" --totp-fd 9)
exec 9<&-
expect_match "the fetch with a fresh code (--totp-fd) shows the key" "$out" "^recovery key of v2 .*    ([0-9a-z]{5}-){12}[0-9a-z]{5} "
out=$(code carol | ctl_as "$F" carol volume recovery-key v2 --totp -)
R3=$(rid_of "$out")
out=$(next_code bob | ctl_as "$F" bob deny "$R3" --totp - 2>&1)
expect_match "a denial with TOTP (stdin) is accepted" "$out" "denied"

# --- F5: the replay window, with the coordinator's clock 400 s ahead (last: TOTP codes would be off)
check "n1 enrolls v-win" node "$F" n1 enroll v-win
check "escrow for v-win" node "$F" n1 recovery v-win "$RA"
SHIM=$WORK/clock_shift.so
cc -shared -fPIC -O1 -o "$SHIM" "$(dirname "$0")/clock_shift.c" -ldl || exit 77
stop_kfd TERM
KF_CLOCK_SHIFT=400 ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" LD_PRELOAD=$SHIM start_kfd "$F"
out=$(node "$F" n1 recovery v-win "$RA")
expect_match "a repeat more than 5 minutes after the escrow is refused" "$out" "code=permission_denied .*within 5 minutes"

finish
