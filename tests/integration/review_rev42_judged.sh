#!/usr/bin/env bash
# Review rev42, S1: what only the handler judges (the policy, a volume's name and labels, the
# accepted PCR values) is judged again at apply, from each replica's own rows
# (coordinator/store/store_judged.h). A follower whose volume labels were edited while it was
# stopped refuses, at apply, the release (and the rotation, and the repeated Enroll) the honest
# leader decided on its own labels: it records each as a denial ("refused at apply"), and so its
# log parts from the others' at once (diverged at the next checkpoint), whenever the next state
# note comes. The honest replicas record the keys and do not diverge. Before, the follower recorded
# the release like the others and only a state note could find the edit. A row the apply checks
# again itself (n3 revoked on the follower only) is refused and recorded the same way (rev44b K1).
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
issue "$F" node n2
issue "$F" node n3
issue "$F" operator op2
. "$(dirname "$0")/cluster_lib.sh"

start_cluster c 3
S3=$CLUSTER
WRAP=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
expect_match "n1 gets its key" "$(release n1 vol-1 "$WRAP" "$S3")" "^code=ok status=released"
# vol-2: enrolled, never released, so its enrollment may be repeated (the Enroll replay) below.
RID2=0123456789abcdef0123456789abcd02
out=$(NODE_CLIENT_REQUEST_ID=$RID2 "$NODE_CLIENT" "$S3" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-2 data2)
expect_match "n1 enrolls vol-2" "$out" "^code=ok"
WRAP4=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n2.crt" "$F/n2.key" "$F/ca.crt" enroll vol-4 data4)")
check "n2 enrolls vol-4" test -n "$WRAP4"
WRAP5=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n3.crt" "$F/n3.key" "$F/ca.crt" enroll vol-5 data5)")
check "n3 enrolls vol-5" test -n "$WRAP5"
serial_of() { openssl x509 -in "$1" -noout -serial | sed 's/^serial=//; s/^0*//' | tr 'A-F' 'a-f'; }
N2_SERIAL=$(serial_of "$F/n2.crt")
OP2_SERIAL=$(serial_of "$F/op2.crt")
# An AppRole role and secret id, for a login judged again at apply (review rev44 J1).
out=$(ctlx "$L" approle create web-role --node web-7 --cidr 127.0.0.1/32)
ROLE_ID=$(printf '%s' "$out" | grep -Eo '[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}' | head -n 1)
SECRET=$(ctlx "$L" approle secret-id web-role | sed -n 's/^secret_id: //p')
check "a role and a secret id" test -n "$ROLE_ID" -a -n "$SECRET"
login_pb() { printf '\x0a\x24%s\x12%b%s' "$1" "$(printf '\\x%02x' "${#2}")" "$2"; }
A=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
B=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && [ "$n" != "$A" ] && echo "$n"; done)
for n in c1 c2 c3; do signed_on "$n"; done
check "$A has applied all the leader has" caught_up "$A" "$L"
stop_replicas "$A"
RELEASES="SELECT count(*) FROM audit WHERE action = 'release' AND volume_id = 'vol-1' AND decision = 1"
released_on() { # NAME: the releases of vol-1 NAME recorded (read once it is stopped or synced)
    sqlite3 -cmd ".timeout 5000" "$WORK/$1/state/keyfleet.db" "$RELEASES"
}
expect_eq "$A recorded the first release" "$(released_on "$A")" "1"

# One row of the stopped follower's state, outside the audit log: vol-1's labels.
sqlite3 "$WORK/$A/state/keyfleet.db" "UPDATE volumes SET labels = '{\"tier\":\"edited\"}' WHERE id IN ('vol-1', 'vol-2')"
sqlite3 "$WORK/$A/state/keyfleet.db" "UPDATE secret_ids SET secret_hash = zeroblob(32) WHERE role_name = 'web-role'"
sqlite3 "$WORK/$A/state/keyfleet.db" "UPDATE policy SET yaml = yaml || '# edited' WHERE version = (SELECT max(version) FROM policy)"
# ... and n2's certificate on its denylist (review rev44b K3): the front door is the leader's.
sqlite3 "$WORK/$A/state/keyfleet.db" "INSERT INTO revoked_certs (serial, kind, name, reason, revoked_at) VALUES ('$N2_SERIAL', 'node', 'n2', 'edited', 1)"
# ... and operator op2's (an operator command carries its caller's serial: rev44b K3) ...
sqlite3 "$WORK/$A/state/keyfleet.db" "INSERT INTO revoked_certs (serial, kind, name, reason, revoked_at) VALUES ('$OP2_SERIAL', 'operator', 'op2', 'edited', 1)"
# ... and n3 revoked there only (review rev44b K1: a row the apply checks again itself).
sqlite3 "$WORK/$A/state/keyfleet.db" "INSERT OR REPLACE INTO nodes (name, revoked, revoked_at, reason) VALUES ('n3', 1, 1, 'edited')"
start "$A"
check "$A catches up" caught_up "$A" "$L"
# The leader decides on its own (honest) rows; the commands carry their digests. Once $A has
# refused the first, the leader is disputed until a head round outvotes $A (a second or so), and
# answers `unavailable` meanwhile: each step is retried (at most 10 s) until it is answered.
retry_ok() { # CMD...: its output once it starts with code=ok
    local out
    for _ in $(seq 1 100); do
        out=$("$@" 2>&1)
        [[ "$out" == code=ok* ]] && break
        sleep 0.1
    done
    printf '%s\n' "$out"
}
expect_match "the leader releases n1's key" "$(release_ok n1 vol-1 "$WRAP" "${RPC[$L]}")" "^code=ok status=released"
# The other commands that hand out a key on the handler's judgement carry the digests too.
out=$(retry_ok "$NODE_CLIENT" "${RPC[$L]}" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" rotate-begin vol-1 0123456789abcdef0123456789abcd03)
expect_match "the leader begins a rotation of vol-1" "$out" "^code=ok"
out=$(NODE_CLIENT_REQUEST_ID=$RID2 retry_ok "$NODE_CLIENT" "${RPC[$L]}" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-2 data2)
expect_match "the leader answers vol-2's repeated Enroll" "$out" "^code=ok"
expect_match "the leader releases vol-4 to n2 (its certificate is on no denylist there)" \
    "$(release_ok n2 vol-4 "$WRAP4" "${RPC[$L]}")" "^code=ok status=released"
expect_match "the leader releases vol-5 to n3 (revoked nowhere but on $A)" \
    "$(release_ok n3 vol-5 "$WRAP5" "${RPC[$L]}")" "^code=ok status=released"
out=$(retry_ok "$NODE_CLIENT" "${RPC[$L]}" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-3 data3)
expect_match "the leader enrolls vol-3" "$out" "^code=ok"
login_pb "$ROLE_ID" "$SECRET" >"$WORK/login.pb"
for _ in $(seq 1 100); do
    code=$(curl -sS --max-time 5 --http2 --cacert "$F/ca.crt" -H 'content-type: application/proto' \
        --cert "$F/n1.crt" --key "$F/n1.key" --data-binary "@$WORK/login.pb" -o /dev/null -w '%{http_code}' \
        "https://${RPC[$L]}/keyfleet.v1.NodeService/Login")
    [ "$code" = 200 ] && break
    sleep 0.1
done
expect_eq "the leader answers an AppRole login" "$code" "200"
for _ in $(seq 1 100); do
    out=$(ctlx "$L" --cert "$F/op2.crt" --key "$F/op2.key" approle create op2-role --node web-8 --cidr 127.0.0.1/32 2>&1) && break
    sleep 0.1
done
expect_match "the leader lets op2 create a role (its certificate is on no denylist there)" "$out" "op2-role"
for n in c1 c2 c3; do signed_on "$n" >/dev/null 2>&1; done
check "$A applied up to the leader" caught_up "$A" "$L"
for n in "$L" "$B"; do
    expect_eq "the honest $n recorded the second release" \
        "$(db_value_when "$WORK/$n/state/keyfleet.db" "SELECT ($RELEASES) >= 2" 1)" "1"
done
for _ in $(seq 1 50); do [[ "$(readyz "$A")" == *diverged* ]] && break; sleep 0.1; done
stop_replicas "$A"
expect_eq "the edited $A refused the release at apply (its labels are not the ones it was decided on)" \
    "$(released_on "$A")" "1"
# ... and recorded each refusal, so its log keeps the trace of what the leader handed out.
REFUSED="SELECT action || ':' || volume_id FROM audit WHERE decision = 2 AND reason LIKE 'refused at apply: the volume owner, name and labels%' GROUP BY action, volume_id ORDER BY min(seq)"
expect_eq "$A recorded the release, the rotation and the repeated Enroll as refused at apply" \
    "$(sqlite3 -cmd ".timeout 5000" "$WORK/$A/state/keyfleet.db" "$REFUSED" | tr '\n' ' ')" \
    "release:vol-1 rotate_begin:vol-1 enroll_replay:vol-2 "
ENROLL_REFUSED="SELECT count(*) > 0 FROM audit WHERE action = 'enroll' AND volume_id = 'vol-3' AND decision = 2 AND reason LIKE 'refused at apply: the policy rules%'"
expect_eq "$A recorded vol-3's enrollment (its policy text is not the one it was decided under) as refused at apply" \
    "$(sqlite3 -cmd ".timeout 5000" "$WORK/$A/state/keyfleet.db" "$ENROLL_REFUSED")" "1"
CERT_REFUSED="SELECT count(*) > 0 FROM audit WHERE action = 'release' AND volume_id = 'vol-4' AND decision = 2 AND reason LIKE 'refused at apply: the caller''s certificate%'"
expect_eq "$A recorded vol-4's release (n2's certificate is on its denylist) as refused at apply" \
    "$(sqlite3 -cmd ".timeout 5000" "$WORK/$A/state/keyfleet.db" "$CERT_REFUSED")" "1"
LOGIN_REFUSED="SELECT count(*) > 0 FROM audit WHERE action = 'login' AND decision = 2 AND reason LIKE 'refused at apply: the secret id this login was decided on%'"
expect_eq "$A recorded the login (its secret id's hash is not the one matched) as refused at apply" \
    "$(sqlite3 -cmd ".timeout 5000" "$WORK/$A/state/keyfleet.db" "$LOGIN_REFUSED")" "1"
expect_eq "$A refused op2's role at apply (op2's certificate is on its denylist)" \
    "$(sqlite3 -cmd ".timeout 5000" "$WORK/$A/state/keyfleet.db" "SELECT count(*) FROM roles WHERE name = 'op2-role'")" "0"
for n in "$L" "$B"; do
    expect_eq "the honest $n created op2's role" \
        "$(db_value_when "$WORK/$n/state/keyfleet.db" "SELECT count(*) FROM roles WHERE name = 'op2-role'" 1)" "1"
done
REVOKED_REFUSED="SELECT count(*) > 0 FROM audit WHERE action = 'release' AND volume_id = 'vol-5' AND decision = 2 AND reason LIKE 'refused at apply: node n3 is revoked%'"
expect_eq "$A recorded vol-5's release (n3 is revoked there) as refused at apply, not rolled it back" \
    "$(sqlite3 -cmd ".timeout 5000" "$WORK/$A/state/keyfleet.db" "$REVOKED_REFUSED")" "1"
grep -q "event=audit_diverged" "$WORK/$A/keyfleetd.log"
check "$A diverges" test $? -eq 0
for n in "$L" "$B"; do
    grep -q "event=audit_diverged" "$WORK/$n/keyfleetd.log"
    check "the honest $n does not diverge" test $? -ne 0
    expect_eq "the honest $n refused nothing at apply" \
        "$(sqlite3 -cmd ".timeout 5000" "$WORK/$n/state/keyfleet.db" "$REFUSED" | wc -l) $(sqlite3 -cmd ".timeout 5000" "$WORK/$n/state/keyfleet.db" "$LOGIN_REFUSED") $(sqlite3 -cmd ".timeout 5000" "$WORK/$n/state/keyfleet.db" "$ENROLL_REFUSED") $(sqlite3 -cmd ".timeout 5000" "$WORK/$n/state/keyfleet.db" "$CERT_REFUSED") $(sqlite3 -cmd ".timeout 5000" "$WORK/$n/state/keyfleet.db" "$REVOKED_REFUSED")" "0 0 0 0 0"
done
expect_match "the honest two serve on" "$(release_ok n1 vol-1 "$WRAP" "$(servers_of "$L" "$B")")" "^code=ok status=released"
stop_replicas "$L" "$B"
check_sanitizers
finish
