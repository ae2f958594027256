#!/usr/bin/env bash
# Raft HA with real keyfleetd processes on loopback: three replicas elect a leader and serve
# releases; kill -9 of the leader under load fails over within a second and loses nothing; every
# released key has exactly one audit record and the chain is identical on every replica; a
# restarted replica catches up, also from a snapshot; with two of three stopped nothing is
# released; membership changes; five replicas survive two failures; a certificate that is not a
# coordinator's is refused on the Raft port. Every wait is bounded.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
for i in 1 2 3 4 5 6 7 8; do issue "$F" node "n$i"; done
. "$(dirname "$0")/cluster_lib.sh"

# ---- three replicas ----------------------------------------------------------------------
start_cluster c 3
S3=$CLUSTER
# Followers learn of a commit with the next heartbeat, so a read there may lag by one.
for n in c1 c2 c3; do
    for _ in $(seq 1 40); do
        out=$("$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[$n]}" policy get 2>&1)
        [[ $out == *"n*"* ]] && break
        sleep 0.05
    done
    expect_match "the policy put through one replica is applied on $n" "$out" "n\*"
done

declare -A WRAP
for i in 1 2 3 4 5 6 7 8; do
    out=$("$NODE_CLIENT" "$S3" "$F/n$i.crt" "$F/n$i.key" "$F/ca.crt" enroll "vol-$i" data)
    WRAP[$i]=$(field wrapped "$out")
done
check "eight volumes enrolled through the cluster" test -n "${WRAP[8]}"
out=$(release n1 vol-1 "${WRAP[1]}" "$S3")
expect_match "a release through the cluster" "$out" "^code=ok status=released"
FOLLOWER=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
code=$(curl -s -o /dev/null -w '%{http_code} %header{keyfleet-leader}' --http2 --cacert "$F/ca.crt" \
    --cert "$F/n1.crt" --key "$F/n1.key" -X POST -H 'content-type: application/proto' --data-binary '' \
    "https://${RPC[$FOLLOWER]}/keyfleet.v1.NodeService/Release")
expect_eq "a follower answers a write with unavailable and the leader's address" "$code" "503 ${RPC[$L]}"

# The agent, given only a follower, enrolls and unlocks a LUKS2 file through the leader.
luks_file "$WORK/d.luks" "pw"
PORT=${RPC[$FOLLOWER]##*:} agent_config "$WORK/agent.yaml" n8 "volumes:" "  - luks: $WORK/d.luks"
printf 'pw' | "$AGENT" -c "$WORK/agent.yaml" enroll "$WORK/d.luks" >"$WORK/agent.out" 2>&1
expect_eq "the agent, given only a follower, enrolls through the leader" "$?" "0"
"$AGENT" -c "$WORK/agent.yaml" unlock --all >>"$WORK/agent.out" 2>&1
expect_eq "... and unlocks through the leader" "$?" "0"

# Eight clients release in a loop; the leader is killed -9 in the middle.
STOP=$WORK/stop
client_loop() { # I
    local i=$1 out
    for _ in $(seq 1 600); do
        [ -e "$STOP" ] && break
        t=$(now_ms)
        out=$(release "n$i" "vol-$i" "${WRAP[$i]}" "$S3" 2>&1)
        if [[ $out == "code=ok status=released"* ]]; then
            echo "$t $(now_ms) $(field request "$out") $(field key "$out")" >>"$WORK/ok.$i"
        else
            echo "$(now_ms) $out" >>"$WORK/fail.$i"
            sleep 0.05
        fi
    done
}
LOOPS=()
for i in 1 2 3 4 5 6 7 8; do client_loop "$i" & LOOPS+=($!); done
sleep 2
T0=$(now_ms)
kill -9 "${PID[$L]}"
SURV=()
for n in c1 c2 c3; do [ "$n" != "$L" ] && SURV+=("$n"); done
NL=""
for _ in $(seq 1 400); do
    NL=$(leader_seen_by "${SURV[0]}")
    [ -n "$NL" ] && [ "$NL" != "$L" ] && break
    NL=""
    sleep 0.01
done
check "a new leader is elected after kill -9 of the leader" test -n "$NL"
# When it became leader, from its own log (polling with keyfleetctl adds its own latency).
T_ELECT=99999
for _ in $(seq 1 40); do
    ts=$(grep "event=raft_state state=leader" "$WORK/$NL/keyfleetd.log" | tail -n 1 | sed 's/^ts=\([^ ]*\).*/\1/')
    [ -n "$ts" ] && [ "$(date -d "$ts" +%s%3N)" -gt "$T0" ] && { T_ELECT=$(($(date -d "$ts" +%s%3N) - T0)); break; }
    sleep 0.05
done
# 0.22-0.70 s over 20 runs of the release build on a quiet machine (docs/performance.md, where the
# 1 s target is measured). A test asserts behaviour, not speed, so here the election must only
# happen within Raft's own bounds (election timeouts of a few seconds even on a loaded machine);
# the time taken is reported.
echo "# election took ${T_ELECT} ms"
check "within Raft's election bounds (10 s; took ${T_ELECT} ms)" test "$T_ELECT" -lt 10000
sleep 2.5
touch "$STOP"
wait "${LOOPS[@]}"
# The first release that started after the kill, and when it completed.
first_after=$(cat "$WORK"/ok.* | awk -v t="$T0" '$1 > t {print $2}' | sort -n | head -n 1)
check "clients released keys again after the kill" test -n "$first_after"
FAILOVER=$((first_after - T0))
echo "# failover: leader elected ${T_ELECT} ms, first release ${FAILOVER} ms after kill -9"
carried=0
for i in 1 2 3 4 5 6 7 8; do
    awk -v t="$T0" '$1 > t' "$WORK/ok.$i" | grep -q . && carried=$((carried + 1))
done
expect_eq "every client carried on after the failover" "$carried" "8"
TOTAL=$(cat "$WORK"/ok.* | wc -l)
echo "# releases during the run: $TOTAL"

start "$L"
check "the killed replica, restarted, catches up" caught_up "$L" "$NL"

audit_json() { "$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[$1]}" audit --json 2>/dev/null; }
audit_json "$NL" >"$WORK/audit.json"
dups=$(cat "$WORK"/ok.* | awk '{print $3}' | while read -r id; do
    grep -c "\"request_id\":\"$id\".*\"action\":\"release\"\|\"action\":\"release\".*\"request_id\":\"$id\"" \
        "$WORK/audit.json"
done | sort | uniq -c | tr -s ' ')
expect_eq "every key that went out has exactly one audit record" "$dups" " $TOTAL 1"
for n in c1 c2 c3; do
    out=$("$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[$n]}" audit verify 2>&1)
    expect_match "the chain verifies on $n" "$out" "^audit chain ok"
done
# A signed checkpoint may still be on its way to a follower: the heads agree within a second.
for _ in $(seq 1 20); do
    heads=$(for n in c1 c2 c3; do audit_json "$n" | tail -n 1 | sha256sum; done | sort -u | wc -l)
    [ "$heads" = 1 ] && break
    sleep 0.1
done
expect_eq "the chain is identical on all three replicas" "$heads" "1"

# Snapshot catch-up: a follower misses more than the snapshot threshold (64 entries).
OFF=$(for n in c1 c2 c3; do [ "$n" != "$NL" ] && echo "$n" && break; done)
kill -9 "${PID[$OFF]}"
wait "${PID[$OFF]}" 2>/dev/null
for k in $(seq 1 90); do release n2 vol-2 "${WRAP[2]}" "$S3" >/dev/null; done
start "$OFF"
check "a replica that missed 90 releases catches up" caught_up "$OFF" "$NL"
check "it caught up from a snapshot" grep -q "event=raft_restored" "$WORK/$OFF/keyfleetd.log"
check "the leader took snapshots, and says when the next is due" grep -Eq "event=raft_snapshot .*next_after_entries=[0-9]+" "$WORK/$NL/keyfleetd.log"
a=$(audit_json "$OFF" | sha256sum); b=$(audit_json "$NL" | sha256sum)
expect_eq "the restored replica's audit chain equals the leader's" "$a" "$b"

# No quorum: two of three stopped.
L=$(wait_leader "$NL" c1 c2 c3)
STOPPED=()
for n in c1 c2 c3; do [ "$n" != "$L" ] && STOPPED+=("$n"); done
before=$(audit_json "$L" | grep -c '"action":"release"')
kill -STOP "${PID[${STOPPED[0]}]}" "${PID[${STOPPED[1]}]}"
sleep 1
out=$("$NODE_CLIENT" "${RPC[$L]}" "$F/n3.crt" "$F/n3.key" "$F/ca.crt" release vol-3 "${WRAP[3]}")
expect_match "without a quorum the remaining replica says unavailable" "$out" "^code=(unavailable|deadline_exceeded)"
after=$(audit_json "$L" | grep -c '"action":"release"')
expect_eq "and releases nothing" "$after" "$before"
expect_match "... and its /readyz says it cannot serve" "$(readyz "$L")" "not ready: no leader: .*lost its quorum.* 503$"
kill -CONT "${PID[${STOPPED[0]}]}" "${PID[${STOPPED[1]}]}"
ok_again=""
for _ in $(seq 1 100); do
    out=$(release n3 vol-3 "${WRAP[3]}" "$S3" 2>&1)
    [[ $out == "code=ok status=released"* ]] && { ok_again=1; break; }
    sleep 0.1
done
check "after SIGCONT service resumes" test -n "$ok_again"
for _ in $(seq 1 30); do out=$(readyz "$L"); [[ $out == *" 200" ]] && break; sleep 0.1; done
expect_match "... and /readyz is 200 again" "$out" "^ok +200$"

# A certificate that is not a coordinator's is refused on the Raft port.
L=$(wait_leader c1 c1 c2 c3)
refused_before=$(grep -c "event=raft_peer_refused" "$WORK/$L/keyfleetd.log")
for who in n1 operator; do
    printf 'GARBAGE-ENTRIES' | timeout 5 openssl s_client -quiet -connect "${RAFT[$L]}" -alpn keyfleet-raft/1 \
        -cert "$F/$who.crt" -key "$F/$who.key" -CAfile "$F/ca.crt" >/dev/null 2>&1
done
sleep 0.2
refused_after=$(grep -c "event=raft_peer_refused" "$WORK/$L/keyfleetd.log")
expect_eq "a node's and an operator's certificate are refused on the Raft port" \
    "$((refused_after - refused_before))" "2"
check "the refusal names the reason" grep -q 'reason="certificate is not a coordinator' "$WORK/$L/keyfleetd.log"
# s_client prints the server's alert only if it reads it before its own input ends; a slow
# (sanitized, loaded) server can lose that race, so up to three tries, each a full handshake.
for _ in 1 2 3; do
    out=$(printf 'GARBAGE' | timeout 5 openssl s_client -quiet -connect "${RAFT[$L]}" -alpn keyfleet-raft/1 \
        -CAfile "$F/ca.crt" 2>&1)
    printf '%s' "$out" | grep -Eq "alert|error" && break
    sleep 0.5
done
expect_match "a client without a certificate is refused in the handshake" "$out" "alert|error"
out=$(release n4 vol-4 "${WRAP[4]}" "$S3")
expect_match "the cluster still serves after the refusals" "$out" "^code=ok status=released"
m=$(curl -s --http2 --cacert "$F/ca.crt" --cert "$F/operator.crt" --key "$F/operator.key" "https://${RPC[$L]}/metrics")
expect_match "metrics show the leader, its term and the refusals" "$m" \
    "keyfleet_raft_leader 1 .*keyfleet_raft_term [1-9].*keyfleet_raft_peers_refused_total [2-9]"

# Membership: a fourth coordinator joins, becomes a voter, and is removed again.
RPC[c4]=127.0.0.1:$((BASE + 4))
RAFT[c4]=127.0.0.1:$((BASE + 24))
write_config c4 "  join: true"$'\n'"  raft_listen: \"${RAFT[c4]}\""
start c4
out=$("$CTL" -c "$F/keyfleetctl.yaml" cluster add c4 --raft "${RAFT[c4]}" --rpc "${RPC[c4]}" 2>&1)
expect_match "cluster add makes a fourth member a voter" "$out" "added c4 as a voter"
out=$("$CTL" -c "$F/keyfleetctl.yaml" cluster status 2>&1)
expect_match "cluster status lists four voters with their applied indexes" "$out" \
    "c4 raft=${RAFT[c4]} rpc=${RPC[c4]} voter.*applied=[0-9]+"
expect_eq "cluster status shows every member's applied index" "$(grep -c 'applied=' <<<"$out")" "4"
caught_up c4 "$L"
a=$(audit_json c4 | sha256sum); b=$(audit_json "$L" | sha256sum)
expect_eq "the new member holds the whole audit chain" "$a" "$b"
out=$("$CTL" -c "$F/keyfleetctl.yaml" cluster remove c4 2>&1)
expect_match "cluster remove" "$out" "removed c4"
out=$("$CTL" -c "$F/keyfleetctl.yaml" cluster status 2>&1)
expect_eq "three members remain" "$(grep -c 'raft=' <<<"$out")" "3"
out=$("$CTL" -c "$F/keyfleetctl.yaml" cluster add "bad name" --raft x --rpc y 2>&1)
expect_match "a bad member is refused with a clear error" "$out" "invalid_argument"
kill -9 "${PID[c4]}"

out=$("$CTL" -c "$F/keyfleetctl.yaml" audit --action cluster_add 2>&1)
expect_match "membership changes are audited" "$out" "cluster_add"

# Checkpoint records (docs/audit.md) are not counted: the rebuilt cluster's leader signs its own.
RECORDS=$(audit_json "$L" | grep -vc '"action":"checkpoint"')
stop_replicas c1 c2 c3

# ---- rebuilding a cluster from one replica's database (docs/operations.md) -----------------
setup_cluster e 3 200
for n in e1 e2 e3; do cp "$WORK/c1/state/keyfleet.db" "$WORK/$n/state/keyfleet.db"; done
for n in e1 e2 e3; do start "$n"; done
LE=$(wait_leader e1 e1 e2 e3)
check "a cluster rebuilt from one replica's database elects a leader" test -n "$LE"
SE=$(servers_of e1 e2 e3)
for _ in $(seq 1 50); do
    out=$(release n1 vol-1 "${WRAP[1]}" "$SE" 2>&1)
    [[ $out == "code=ok status=released"* ]] && break
    sleep 0.1
done
KEY1=$(head -n 1 "$WORK/ok.1" | awk '{print $4}')
expect_match "it releases a volume enrolled before the rebuild, with the same key" "$out" \
    "^code=ok status=released key=$KEY1 "
caught_up e3 "$LE"
expect_eq "it holds the whole audit chain, plus the new release" "$(audit_json e3 | grep -vc '"action":"checkpoint"')" "$((RECORDS + 1))"
out=$("$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[e2]}" audit verify 2>&1)
expect_match "and the chain verifies" "$out" "^audit chain ok"
stop_replicas e1 e2 e3

# ---- five replicas: two killed, service continues ------------------------------------------
setup_cluster d 5 100
for n in d1 d2 d3 d4 d5; do start "$n"; done
S5=$(servers_of d1 d2 d3 d4 d5)
L5=$(wait_leader d1 d1 d2 d3 d4 d5)
check "five replicas elect a leader" test -n "$L5"
sed "s|^coordinators:.*|coordinators: [\"${RPC[d1]}\", \"${RPC[d2]}\", \"${RPC[d3]}\"]|" "$F/keyfleetctl.yaml" \
    >"$F/ctl5.yaml"
printf 'rules:\n  - {name: all, match: {nodes: {names: ["n*"]}}, effect: allow}\n' >"$WORK/p5.yaml"
for _ in $(seq 1 50); do "$CTL" -c "$F/ctl5.yaml" policy put "$WORK/p5.yaml" >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 1 100); do
    out=$("$NODE_CLIENT" "$S5" "$F/n5.crt" "$F/n5.key" "$F/ca.crt" enroll vol-5b data 2>&1)
    [[ $out == code=ok* ]] && break
    sleep 0.1
done
W5=$(field wrapped "$out")
OTHER=$(for n in d1 d2 d3 d4 d5; do [ "$n" != "$L5" ] && echo "$n" && break; done)
kill -9 "${PID[$L5]}" "${PID[$OTHER]}"
ok5=""
for _ in $(seq 1 100); do
    out=$(release n5 vol-5b "$W5" "$S5" 2>&1)
    [[ $out == "code=ok status=released"* ]] && { ok5=1; break; }
    sleep 0.1
done
check "five replicas with two killed (the leader among them) still release" test -n "$ok5"

# Releases per second through the 3-replica path are measured by keyfleet-bench (docs/performance.md).
check_sanitizers
finish
