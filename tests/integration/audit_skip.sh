#!/usr/bin/env bash
# Second review of #17, F3: a follower rewritten while stopped (its newest record edited, every
# hash recomputed) whose attacker also put every coordinator's certificate serial into its
# revoked_certs table used to refuse the leader's checkpoints as "revoked" and so never compared
# them with its log: it skipped them and kept serving. Since review rev17 (R1) such a replica
# refuses the leader at its Raft port (its denylist names the leader's certificate), so it is cut
# off and serves nothing. The same skip through the membership records (a forged `cluster_remove`
# of the leader, dated long before its certificate, so the Raft port still takes it): it compares
# the signed head first and diverges at the next checkpoint, whatever its local state says.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"
FORGE="python3 $(dirname "$0")/audit_forge.py"

start_cluster c 3
S3=$CLUSTER
WRAP=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
for i in 1 2 3; do release n1 vol-1 "$WRAP" "$S3" >/dev/null; done
X=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
check "the leader's checkpoint reaches follower $X" signed_on "$X"
caught_up "$X" "$L"
stop_replicas "$X"
DBX=$WORK/$X/state/keyfleet.db
LASTX=$(sqlite3 "$DBX" "SELECT max(seq) FROM audit")
$FORGE "$DBX" edit "$LASTX" source 203.0.113.66
for n in c1 c2 c3; do
    serial=$(openssl x509 -in "$F/$n.crt" -noout -serial | sed 's/^serial=//' | tr 'A-F' 'a-f' | sed 's/^0*//')
    sqlite3 "$DBX" "INSERT INTO revoked_certs (serial, kind, name, reason, revoked_at) VALUES ('$serial', 'coordinator', '$n', 'forged', 0)"
done
start "$X"
for _ in $(seq 1 100); do grep -q "event=raft_peer_refused direction=.* name=\"$L\" reason=\"certificate [0-9a-f]* is revoked" \
    "$WORK/$X/keyfleetd.log" && break; sleep 0.05; done
grep -q "event=raft_peer_refused direction=.* name=\"$L\" reason=\"certificate [0-9a-f]* is revoked" "$WORK/$X/keyfleetd.log"
check "$X, its denylist edited, refuses the leader at its Raft port" test $? -eq 0
release n1 vol-1 "$WRAP" "${RPC[$L]}" >/dev/null
sleep 1
expect_match "... and serves nothing" "$(readyz "$X")" "503"
stop_replicas "$X"

# The membership records instead: a forged removal of the leader, long ago.
sqlite3 "$DBX" "DELETE FROM revoked_certs WHERE reason = 'forged'"
$FORGE "$DBX" append 1
LASTX=$(sqlite3 "$DBX" "SELECT max(seq) FROM audit")
$FORGE "$DBX" edit "$LASTX" action cluster_remove
$FORGE "$DBX" edit "$LASTX" reason "member $L"
$FORGE "$DBX" edit "$LASTX" time_s 1000
start "$X"
for _ in $(seq 1 100); do [ "$(leader_seen_by "$X")" = "$L" ] && break; sleep 0.05; done
release n1 vol-1 "$WRAP" "${RPC[$L]}" >/dev/null
# Disputed at the signed head first, then outvoted by the head round (review rev17c, C1).
# Bounded at 15 s: the round needs the dispute report, a Raft entry and every voter's answer (a loaded machine).
for _ in $(seq 1 150); do [[ "$(readyz "$X")" == *diverged* ]] && break; sleep 0.1; done
expect_match "$X diverges at the leader's next checkpoint despite its forged membership record" "$(readyz "$X")" \
    "not ready: audit log diverged at seq [0-9]+: the leader's signed head at [0-9]+ differs from this replica's.*503"
expect_match "the leader serves on" "$(release n1 vol-1 "$WRAP" "${RPC[$L]}")" "^code=ok status=released"
caught_up "$X" "$L"
stop_replicas c1 c2 c3
cps() { sqlite3 "$WORK/$1/state/keyfleet.db" "SELECT count(*) FROM audit_checkpoints"; }
check "(its forged record did refuse the leader's checkpoints: $(cps "$X") recorded, $(cps "$L") on the leader)" \
    test "$(cps "$X")" -lt "$(cps "$L")"
check_sanitizers
finish
