#!/usr/bin/env bash
# Review rev26e (docs/reviews/rev26e-keyslot-intents.md), T1: keyfleetctl refuses a TOTP code in
# argv in every form (--totp CODE, --totp=CODE, an abbreviation) for every command that takes
# one, before it reads a config or connects (no coordinator runs here: a refusal is the usage
# error naming --totp-fd; an accepted code would fail later, on the missing config). Passes on
# main at 37ef7db; a regression guard for the forms the r26d tests did not try.
. "$(dirname "$0")/lib.sh"

refused() { # name args...
    local name=$1 out rc
    shift
    out=$("$CTL" -c "$WORK/none.yaml" "$@" </dev/null 2>&1)
    rc=$?
    if [ "$rc" -ne 0 ] && printf '%s' "$out" | grep -Eq -- "--totp takes '-'|--totp-fd takes a file descriptor|is ambiguous|^usage: keyfleetctl (policy|node attest)"; then
        ok "$name"
    else
        not_ok "$name" "exit $rc: $(printf '%s' "$out" | head -n 1)"
    fi
}
for form in "--totp 123456" "--totp=123456"; do
    # shellcheck disable=SC2086 # the form is two words or one on purpose
    refused "approve $form" approve 0123456789abcdef0123456789abcdef $form
    refused "deny $form" deny 0123456789abcdef0123456789abcdef $form
    refused "node wipe $form" node wipe n1 $form
    refused "node unrevoke $form" node unrevoke n1 $form
    refused "node attest accept $form" node attest accept n1 TOKEN --expect "7=00" $form
    refused "node attest unhold $form" node attest unhold n1 TOKEN $form
    refused "policy put $form" policy put /dev/null $form
    refused "volume recovery-key $form" volume recovery-key 2d132479-a7f4-461a-9655-f1e475d34da3 $form
    refused "approle create $form" approle create r1 --node n1 $form
    refused "approle secret-id $form" approle secret-id r1 $form
done
refused "approve --tot 123456 (an abbreviation)" approve 0123456789abcdef0123456789abcdef --tot 123456
refused "approve --totp-fd with a code as the descriptor" approve 0123456789abcdef0123456789abcdef --totp-fd 123456
finish
