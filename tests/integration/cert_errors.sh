#!/usr/bin/env bash
# Clear errors instead of network noise (issue #19, section 4): a certificate that would already
# be expired is not issued; keyfleetctl and the agent check their own certificate (validity and
# chain) before connecting and say what is wrong; a kernel without device-mapper is named.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
O=$WORK/other
fleet_init "$O" # another fleet's CA
start_kfd "$F"

out=$("$CTL" cert issue node web-03 --backdate 10 --days 1 --dir "$F" 2>&1) && rc=0 || rc=$?
expect_match "cert issue refuses an already expired certificate (exit 2)" "$out rc=$rc" \
    "would have expired 9 days ago.* rc=2"
check "... and writes nothing" test ! -e "$F/web-03.crt"
out=$("$CTL" cert issue node web-03 --backdate 1 --days 1 --dir "$F" 2>&1) && rc=0 || rc=$?
expect_match "--days equal to --backdate (expiring now) is refused too" "$out rc=$rc" "would have expired 0 days ago.* rc=2"
check "--allow-expired issues it (for tests of the refusal)" \
    "$CTL" cert issue node web-03 --backdate 10 --days 1 --dir "$F" --allow-expired
issue "$F" operator old-op --backdate 10 --days 1 --allow-expired
NOT_AFTER=$(date -u -d "$(openssl x509 -noout -enddate -in "$F/old-op.crt" | cut -d= -f2)" '+%Y-%m-%d')

# keyfleetctl with an expired operator certificate: said before any connection.
start=$(date +%s)
out=$(ctl "$F" --cert "$F/old-op.crt" --key "$F/old-op.key" status 2>&1) && rc=0 || rc=$?
expect_match "keyfleetctl with an expired certificate: 'old-op.crt expired on DATE', exit 1" "$out rc=$rc" \
    "old-op.crt expired on $NOT_AFTER .* rc=1"
if printf '%s' "$out" | grep -q "cannot reach"; then not_ok "... not 'cannot reach a coordinator'" "$out"; else ok "... not 'cannot reach a coordinator'"; fi
out=$(ctl "$F" --cert "$O/operator.crt" --key "$O/operator.key" status 2>&1) && rc=0 || rc=$?
expect_match "keyfleetctl with another fleet's certificate: named as not from this CA" "$out rc=$rc" \
    "operator.crt is not a certificate of the fleet CA in $F/ca.crt.* rc=1"

# A certificate this client trusts but the coordinator does not (another fleet's, with both CAs
# in the client's CA file): keyfleetd closes the connection after the handshake without an
# alert; that close is named for what it is, not "cannot reach".
cat "$F/ca.crt" "$O/ca.crt" >"$WORK/both-cas.crt"
out=$(ctl "$F" --cert "$O/operator.crt" --key "$O/operator.key" --ca "$WORK/both-cas.crt" status 2>&1) && rc=0 || rc=$?
expect_match "a certificate the coordinator refuses after the handshake: said so, exit 1" "$out rc=$rc" \
    "the coordinator closed the connection after the TLS handshake: it did not accept this certificate.* rc=1"
if printf '%s' "$out" | grep -q "cannot reach\|Protocol error\|Broken pipe"; then not_ok "... not as a network fault" "$out"; else ok "... not as a network fault"; fi

# The agent: unlock with an expired node certificate stops at once with the reason.
put_policy "$F" <<'YAML'
rules:
  - {name: all, effect: allow}
YAML
luks_file "$WORK/d.luks" "pass"
printf 'pass' >"$WORK/pass"
issue "$F" node web-01
agent_config "$WORK/good.yaml" web-01
"$AGENT" -c "$WORK/good.yaml" enroll "luks:$WORK/d.luks" --auth-file "$WORK/pass" >/dev/null 2>&1
agent_config "$WORK/old.yaml" web-03 "volumes:" "  - luks: $WORK/d.luks"
NOT_AFTER3=$(date -u -d "$(openssl x509 -noout -enddate -in "$F/web-03.crt" | cut -d= -f2)" '+%Y-%m-%d')
t0=$(date +%s)
out=$("$AGENT" -c "$WORK/old.yaml" unlock --all 2>&1) && rc=0 || rc=$?
t1=$(date +%s)
expect_match "agent unlock with an expired certificate: 'web-03.crt expired on DATE'" "$out" "web-03.crt expired on $NOT_AFTER3"
expect_eq "... exit 2, nothing unlocked" "$rc" 2
if [ $((t1 - t0)) -lt 30 ]; then ok "... at once, not after the retries of a network fault"; else not_ok "... at once" "$((t1 - t0)) s"; fi
out=$("$AGENT" -c "$WORK/old.yaml" check-config 2>&1) && rc=0 || rc=$?
expect_match "check-config says so too (exit 2)" "$out rc=$rc" "web-03.crt expired on $NOT_AFTER3.* rc=2"

# A kernel without device-mapper: the reason, as cryptsetup gives it.
if [ ! -e /sys/class/misc/device-mapper ]; then
    sed 's/activate: false/activate: true/' "$WORK/good.yaml" >"$WORK/dm.yaml"
    echo "volumes: [{luks: $WORK/d.luks, name: kf-test-dm}]" >>"$WORK/dm.yaml"
    out=$("$AGENT" -c "$WORK/dm.yaml" unlock --all 2>&1)
    expect_match "no device-mapper: 'is dm_mod loaded?'" "$out" "activation failed: no device-mapper in this kernel \(is dm_mod loaded\? modprobe dm_mod\)"
else
    echo "# device-mapper present: the dm_mod message is not exercised here"
fi
stop_kfd
finish
