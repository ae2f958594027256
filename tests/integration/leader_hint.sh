#!/usr/bin/env bash
# Clients follow leader hints: a coordinator that is not the leader answers `unavailable` with a
# keyfleet-leader header, and keyfleetctl, the agent and the shared client retry there. A hint
# loop ends after two hops with a clear error.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
start_kfd "$F"
allow_nodes "$F" "n*"
start_follower() { # PORT_FILE LEADER
    python3 "$(dirname "$0")/follower_standin.py" "$F/coordinator.crt" "$F/coordinator.key" "$1" "$2" &
    PIDS+=($!)
    for _ in $(seq 1 100); do [ -s "$1" ] && break; sleep 0.05; done
}
start_follower "$WORK/f1.port" "127.0.0.1:$PORT"
FOLLOWER=127.0.0.1:$(cat "$WORK/f1.port")

out=$("$PROBE" "$FOLLOWER" "$F/operator.crt" "$F/operator.key" "$F/ca.crt" keyfleet.v1.AdminService/ClusterStatus ok)
expect_match "the shared client follows the hint to the leader" "$out" "^code=ok http=200 version=2"
out=$("$CTL" -c "$F/keyfleetctl.yaml" --server "$FOLLOWER" status 2>&1)
expect_match "keyfleetctl, pointed at a follower, reaches the leader" "$out" "ready: yes"

luks_file "$WORK/d.luks" "pw"
agent_config "$WORK/a.yaml" n1 "volumes:" "  - luks: $WORK/d.luks"
printf 'pw' | "$AGENT" -c "$WORK/a.yaml" enroll "$WORK/d.luks" >/dev/null 2>&1
sed -i "s/^coordinators: .*/coordinators: [\"$FOLLOWER\"]/" "$WORK/a.yaml"
out=$("$AGENT" -c "$WORK/a.yaml" unlock --all 2>&1)
expect_eq "the agent, configured with a follower only, unlocks through the leader" "$?" "0"

# A follower that names itself, or another follower, forever: stop after two hops.
start_follower "$WORK/f2.port" "127.0.0.1:1"
out=$("$PROBE" "127.0.0.1:$(cat "$WORK/f2.port")" "$F/operator.crt" "$F/operator.key" "$F/ca.crt" \
    keyfleet.v1.AdminService/ClusterStatus unavailable)
expect_match "a hint to nowhere ends clearly" "$out" "^code=(unavailable|transport_error)"
# A TLS server that does not agree to HTTP/2 is refused with a clear error, not misread.
H1=127.0.0.1:$(test_port)
openssl s_server -quiet -accept "$H1" -cert "$F/coordinator.crt" -key "$F/coordinator.key" -alpn http/1.1 \
    -www >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 40); do
    out=$("$PROBE" "$H1" "$F/operator.crt" "$F/operator.key" "$F/ca.crt" keyfleet.v1.AdminService/ClusterStatus ok)
    [[ $out == *"connect: Connection refused"* ]] || break
    sleep 0.05
done
expect_match "a server that does not speak HTTP/2 is refused clearly" "$out" "did not agree to HTTP/2|no application protocol"
stop_kfd TERM
check_sanitizers
finish
