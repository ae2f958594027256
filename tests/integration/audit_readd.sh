#!/usr/bin/env bash
# A coordinator removed and added back under the same name (review of #17, finding 9; review
# rev17, R1). Added back with a certificate issued after its removal, it joins, leads and signs
# checkpoints that every replica and `audit verify` accept. Its certificate from before the
# removal (a key stolen with it) speaks for it nowhere: the Raft port refuses it while the
# re-added member runs with its new one, and the member restarted with the old one is refused by
# every peer and signs nothing. A revoked certificate of a current member is refused at the Raft
# port too (before R1 the transport checked only membership). Every wait is bounded.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

# wait_log NAME PATTERN [BEFORE]: at most 10 s for more than BEFORE (0) lines matching PATTERN in
# NAME's log.
count_log() { grep -Ec "$2" "$WORK/$1/keyfleetd.log"; }
wait_log() {
    for _ in $(seq 1 100); do [ "$(count_log "$1" "$2")" -gt "${3:-0}" ] && return 0; sleep 0.1; done
    return 1
}
# raft_hello NAME CERT KEY TARGET: a TLS client at TARGET's Raft port with CERT that sends NAME's
# member address, as a replica does.
raft_hello() {
    local hello="name=$1 raft=${RAFT[$1]} rpc=${RPC[$1]}"
    # Held open 3 s: the refusal naming the member comes once keyfleetd read the hello, which takes
    # longer than a second under ASan on a loaded machine.
    { printf "\\x$(printf %02x $((${#hello} >> 8)))\\x$(printf %02x $((${#hello} & 255)))%s" "$hello"; sleep 3; } |
        timeout 10 openssl s_client -quiet -connect "${RAFT[$4]}" -alpn keyfleet-raft/1 -cert "$2" -key "$3" \
            -CAfile "$F/ca.crt" >/dev/null 2>&1
}
serial_of() { openssl x509 -noout -serial -in "$1" | sed 's/^serial=//; s/^0*//' | tr 'A-F' 'a-f'; }

start_cluster c 3
WRAP=$(field wrapped "$("$NODE_CLIENT" "$CLUSTER" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
expect_match "a release through the cluster" "$(release n1 vol-1 "$WRAP" "$CLUSTER")" "^code=ok status=released"
GONE=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
OTHER=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && [ "$n" != "$GONE" ] && echo "$n"; done)
cp "$F/$GONE.crt" "$F/$GONE-old.crt"
cp "$F/$GONE.key" "$F/$GONE-old.key"
OLD_SERIAL=$(serial_of "$F/$GONE-old.crt")

# ---- removed, then added back with a certificate issued after the removal ---------------------
out=$(ctlx "$L" cluster remove "$GONE" 2>&1)
expect_match "cluster remove $GONE" "$out" "removed $GONE"
kill -9 "${PID[$GONE]}"
wait "${PID[$GONE]}" 2>/dev/null
sleep 1.2 # the new certificate is issued in a later second than the removal record
issue "$F" coordinator "$GONE" --san IP:127.0.0.1 --san DNS:localhost --force
NEW_SERIAL=$(serial_of "$F/$GONE.crt")
check "$GONE has a new certificate" test "$NEW_SERIAL" != "$OLD_SERIAL"
rm -rf "$WORK/$GONE/state/raft" "$WORK/$GONE/state"/keyfleet.db*
cp "$WORK/$GONE/keyfleetd.yaml" "$WORK/$GONE/member.yaml"
write_config "$GONE" "  join: true"$'\n'"  raft_listen: \"${RAFT[$GONE]}\""
start "$GONE"
out=$(ctlx "$L" cluster add "$GONE" --raft "${RAFT[$GONE]}" --rpc "${RPC[$GONE]}" 2>&1)
expect_match "$GONE is added back as a voter" "$out" "added $GONE as a voter"
caught_up "$GONE" "$L"

# ---- its old certificate at the Raft port, while it is a member again --------------------------
raft_hello "$GONE" "$F/$GONE-old.crt" "$F/$GONE-old.key" "$L"
check "the leader refuses $GONE's certificate from before its removal" \
    wait_log "$L" "event=raft_peer_refused direction=in name=\"$GONE\" reason=\"certificate $OLD_SERIAL was issued before $GONE was removed"
# ---- a revoked certificate of a current member ------------------------------------------------
issue "$F" coordinator "$OTHER" --out "$F/$OTHER-stolen" --san IP:127.0.0.1
STOLEN=$(serial_of "$F/$OTHER-stolen.crt")
expect_match "the stolen certificate is revoked" "$(ctlx "$L" cert revoke --cert "$F/$OTHER-stolen.crt" 2>&1)" "revoked"
sleep 0.5
raft_hello "$OTHER" "$F/$OTHER-stolen.crt" "$F/$OTHER-stolen.key" "$L"
check "the leader refuses a revoked certificate of member $OTHER" \
    wait_log "$L" "event=raft_peer_refused direction=in name=\"$OTHER\" reason=\"certificate $STOLEN is revoked"
expect_match "the cluster still releases" "$(release n1 vol-1 "$WRAP" "$CLUSTER")" "^code=ok status=released"

# ---- the re-added member leads and signs with its new certificate -----------------------------
# The other two restart with a long election timeout, so $GONE (300 ms) is elected.
caught_up "$GONE" "$L"
caught_up "$OTHER" "$L"
stop_replicas "$L" "$OTHER"
for n in "$L" "$OTHER"; do sed -i "s/election_timeout: 300ms/election_timeout: 5s/" "$WORK/$n/keyfleetd.yaml"; done
start "$L"
start "$OTHER"
LEAD=$(wait_leader "$GONE" "$GONE" "$L" "$OTHER")
expect_eq "the re-added $GONE is elected" "$LEAD" "$GONE"
expect_match "it serves releases" "$(release n1 vol-1 "$WRAP" "${RPC[$GONE]}")" "^code=ok status=released"
check "it signs a checkpoint" signed_on "$GONE"
out=$(ctlx "$GONE" audit checkpoint 2>&1)
expect_match "the newest checkpoint is $GONE's" "$out" "signer $GONE"
caught_up "$L" "$GONE"
for n in "$GONE" "$L" "$OTHER"; do
    expect_match "$n's log verifies, $GONE's new checkpoints included" "$(ctlx "$n" audit verify 2>&1)" "audit chain ok"
    grep -q "event=audit_diverged" "$WORK/$n/keyfleetd.log"
    check "$n never diverged" test $? -ne 0
done

# ---- restarted with its old certificate: refused by every peer, signs nothing ------------------
stop_replicas "$GONE"
sed -i "s|$F/$GONE.crt|$F/$GONE-old.crt|; s|$F/$GONE.key|$F/$GONE-old.key|" "$WORK/$GONE/keyfleetd.yaml"
OLDREF="event=raft_peer_refused direction=in name=\"$GONE\" reason=\"certificate $OLD_SERIAL was issued before"
declare -A BEFORE
for n in "$L" "$OTHER"; do BEFORE[$n]=$(count_log "$n" "$OLDREF"); done
LEADS=$(count_log "$GONE" "event=raft_state state=leader")
start "$GONE"
for n in "$L" "$OTHER"; do
    check "$n refuses $GONE with its old certificate" wait_log "$n" "$OLDREF" "${BEFORE[$n]}"
done
NEWL=$(wait_leader "$L" "$L" "$OTHER")
check "$L or $OTHER leads" test -n "$NEWL"
expect_match "the cluster serves releases again" "$(release n1 vol-1 "$WRAP" "$(servers_of "$L" "$OTHER")")" \
    "^code=ok status=released"
check "the new leader signs" signed_on "$NEWL"
sleep 1
expect_eq "$GONE with its old certificate never led" "$(count_log "$GONE" "event=raft_state state=leader")" "$LEADS"
expect_match "$NEWL's newest checkpoint is its own" "$(ctlx "$NEWL" audit checkpoint 2>&1)" "signer $NEWL"
expect_match "$NEWL's log verifies" "$(ctlx "$NEWL" audit verify 2>&1)" "audit chain ok"
kill -9 "${PID[$GONE]}"
wait "${PID[$GONE]}" 2>/dev/null
stop_replicas "$L" "$OTHER"
check_sanitizers
finish
