#!/usr/bin/env bash
# Review rev17, R4: a new leader's AuditHead questions are answered only by the voter asked. A
# stand-in at a stopped voter's RPC address, with a fleet certificate for that host that does
# not name that coordinator (another coordinator's, never a member, with the same SAN; a node's
# could not serve TLS: its EKU is clientAuth only), answers "another head": its
# answer is refused and logged (`audit_head_peer_refused`, late answers included) and never
# counted as a dispute; the honest voter's answer confirms the leader. Then the same with a
# revoked certificate of c3 itself: refused as revoked. Before R4 only the TLS host name was
# checked, and such answers counted like the voter's.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
issue "$F" coordinator x9 --san IP:127.0.0.1
. "$(dirname "$0")/cluster_lib.sh"

start_cluster c 3
WRAP=$(field wrapped "$("$NODE_CLIENT" "$CLUSTER" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
expect_match "a release through the cluster" "$(release n1 vol-1 "$WRAP" "$CLUSTER")" "^code=ok status=released"
# A certificate of c3 itself (its name and host), stolen and then revoked: used below.
issue "$F" coordinator c3 --out "$F/c3-stolen" --san IP:127.0.0.1 --san DNS:localhost
STOLEN=$(openssl x509 -in "$F/c3-stolen.crt" -noout -serial | sed 's/^serial=//; s/^0*//' | tr 'A-F' 'a-f')
expect_match "the stolen certificate of c3 is revoked" "$(ctlx "$L" cert revoke --cert "$F/c3-stolen.crt" 2>&1)" "revoked"
for n in c1 c2 c3; do signed_on "$n"; done
caught_up c2 "$L"
caught_up c3 "$L"
stop_replicas c1 c2 c3

# AuditHeadResponse{known: true, seq: 1, root: 32 zero bytes, chain: 32 zero bytes}
Z=$(printf '00%.0s' $(seq 1 32))
BODY=08011001"1a20${Z}2220${Z}"
# standin CERT KEY: the stand-in at c3's RPC address; waits (at most 10 s) until it listens, so
# that the new leader's first question to c3 reaches it (a loaded machine starts python slowly).
standin() {
    rm -f "$WORK/standin.ready"
    python3 "$(dirname "$0")/peer_standin.py" "$1" "$2" "${RPC[c3]##*:}" "$BODY" "$WORK/standin.ready" &
    STANDIN=$!
    PIDS+=("$STANDIN")
    for _ in $(seq 1 200); do [ -s "$WORK/standin.ready" ] && break; sleep 0.05; done
}
standin "$F/x9.crt" "$F/x9.key"
start c1
start c2
LEAD=$(wait_leader c1 c1 c2)
check "c1 and c2 elect a leader" test -n "$LEAD"
REFUSED="event=audit_head_peer_refused peer=c3 reason=\"the answering certificate does not name this coordinator\""
for _ in $(seq 1 100); do grep -q "$REFUSED" "$WORK/$LEAD/keyfleetd.log" && break; sleep 0.05; done
grep -q "$REFUSED" "$WORK/$LEAD/keyfleetd.log"
check "$LEAD refuses the answer of x9's certificate at c3's address" test $? -eq 0
grep -q "event=audit_head_disputed peer=c3" "$WORK/$LEAD/keyfleetd.log"
check "... and does not count it as a dispute" test $? -ne 0
for _ in $(seq 1 200); do grep -q "event=audit_head_confirmed .*how=majority" "$WORK/$LEAD/keyfleetd.log" && break; sleep 0.05; done
grep -q "event=audit_head_confirmed .*how=majority" "$WORK/$LEAD/keyfleetd.log"
check "the honest voter's answer confirms $LEAD (within 10 s)" test $? -eq 0
for _ in $(seq 1 50); do
    out=$(release n1 vol-1 "$WRAP" "$(servers_of c1 c2)" 2>&1)
    [[ $out == "code=ok status=released"* ]] && break
    sleep 0.1
done
expect_match "the cluster serves" "$out" "^code=ok status=released"
kill "$STANDIN" 2>/dev/null
wait "$STANDIN" 2>/dev/null
stop_replicas c1 c2

# The same with c3's own name on a revoked certificate of c3: refused too (the denylist, R4).
standin "$F/c3-stolen.crt" "$F/c3-stolen.key"
start c1
start c2
LEAD=$(wait_leader c1 c1 c2)
REFUSED="event=audit_head_peer_refused peer=c3 reason=\"certificate $STOLEN is revoked"
for _ in $(seq 1 100); do grep -qi "$REFUSED" "$WORK/$LEAD/keyfleetd.log" && break; sleep 0.05; done
grep -qi "$REFUSED" "$WORK/$LEAD/keyfleetd.log"
check "$LEAD refuses the answer of c3's revoked certificate at c3's address" test $? -eq 0
kill "$STANDIN" 2>/dev/null
wait "$STANDIN" 2>/dev/null
stop_replicas c1 c2
check_sanitizers
finish
