#!/usr/bin/env bash
# keyfleetctl init --peer: a cluster's whole set-up in one command (a CA, an operator, and per
# replica a directory with its certificate, the same member list and the same local KEK). The
# generated configs are started as written: three replicas elect a leader and release a key.
# Bad --peer lists are refused with exit 2 and write nothing. Every wait is bounded.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cluster_lib.sh"

refused() { # DESCRIPTION PATTERN ARGS...: exit 2, PATTERN on stderr, no directory made
    local d=$1 pat=$2 out rc
    shift 2
    out=$("$CTL" init "$WORK/bad" "$@" 2>&1)
    rc=$?
    expect_match "$d: refused" "$rc $out" "^2 .*$pat"
    check "... and nothing written" test ! -e "$WORK/bad"
}
P=127.0.0.1
refused "two coordinators" "a cluster needs 3, 5 or 7" --peer a=$P:7001 --peer b=$P:7003
refused "one --peer" "for a single coordinator use --name" --peer a=$P:7001
refused "a name given twice" "'a' is named twice" --peer a=$P:7001 --peer a=$P:7003 --peer c=$P:7005
refused "ports that overlap on one host" "'a' and 'b' share 127.0.0.1 and their ports overlap" \
    --peer a=$P:7001 --peer b=$P:7002 --peer c=$P:7005
refused "a wildcard address" "not a wildcard" --peer a=0.0.0.0 --peer b=$P:7003 --peer c=$P:7005
refused "a bad host" "neither an IPv4 address nor a host name" --peer "a=bad_host!" --peer b=$P --peer c=$P:7005
refused "an IPv6 address without brackets" "in brackets" --peer a=::1:7001 --peer b=$P --peer c=$P:7005
refused "port 65535 (Raft takes the next)" "the port must be 1..65534" --peer a=$P:65535 --peer b=$P --peer c=$P:7005
refused "--peer with --listen" "--name and --listen are for one" --listen $P:1 --peer a=$P --peer b=$P:7003 --peer c=$P:7005

refused "--listen with a port that is not a number" "--listen must be IPV4:PORT or \[IPV6\]:PORT" --listen $P:abc
refused "--listen with a host name (keyfleetd binds numeric addresses)" "--listen must be" --listen coord.example.net:7443

# One coordinator on a wildcard address: keyfleetctl reaches it on loopback, at its own port.
"$CTL" init "$WORK/single" --listen 0.0.0.0:9000 >/dev/null
expect_match "init --listen 0.0.0.0:9000: keyfleetctl.yaml points at 127.0.0.1:9000" "$(cat "$WORK/single/keyfleetctl.yaml")" \
    'coordinators: +- "127.0.0.1:9000"'

# Names and IPv6: what each replica's files say, nothing started.
out=$("$CTL" init "$WORK/named" --peer a=coord-a.example.net --peer b=coord-b.example.net:8443 --peer "c=[::1]:9443")
expect_match "init with host names and an IPv6 address" "$out" "3 coordinators sharing one local KEK"
cfg=$(cat "$WORK/named/b/keyfleetd.yaml")
expect_match "a replica known by name listens on all addresses, RPC and Raft" "$cfg" \
    'listen: +- "0.0.0.0:8443".*raft_listen: "0.0.0.0:8444"'
expect_match "... with the member list, Raft on the next port" "$cfg" \
    'peers: +- \{name: a, raft: "coord-a.example.net:7444", rpc: "coord-a.example.net:7443"\} +- \{name: b, raft: "coord-b.example.net:8444", rpc: "coord-b.example.net:8443"\} +- \{name: c, raft: "\[::1\]:9444", rpc: "\[::1\]:9443"\}'
expect_match "an IPv6 replica listens on its own address" "$(cat "$WORK/named/c/keyfleetd.yaml")" 'listen: +- "\[::1\]:9443"'
expect_match "a certificate names its host (DNS)" "$(openssl x509 -in "$WORK/named/b/coordinator.crt" -noout -ext subjectAltName)" \
    "URI:keyfleet://coordinator/b, DNS:localhost, IP Address:127.0.0.1, DNS:coord-b.example.net"
expect_match "... or its IPv6 address" "$(openssl x509 -in "$WORK/named/c/coordinator.crt" -noout -ext subjectAltName)" \
    "IP Address:0:0:0:0:0:0:0:1"

# Three replicas on loopback, started from the generated files as they are.
F=$WORK
specs=()
for i in 1 2 3; do
    RPC[c$i]=$P:$((BASE + 2 * i))
    specs+=(--peer "c$i=${RPC[c$i]}")
done
out=$("$CTL" init "$F" "${specs[@]}")
expect_match "init --peer c1 c2 c3" "$out" "3 coordinators sharing one local KEK.*copy $F/c1/ to it"
check "the CA key stays with the operator" test -z "$(find "$F"/c1 "$F"/c2 "$F"/c3 -name 'ca.key')"
check "every replica has the same KEK" cmp -s "$F/c1/state/kek/kek-1.key" "$F/c3/state/kek/kek-1.key"
expect_eq "... mode 0600" "$(stat -c %a "$F/c2/state/kek/kek-1.key")" "600"
expect_eq "keyfleetctl.yaml names all three" "$(grep -c "^  - \"$P:" "$F/keyfleetctl.yaml")" "3"
out=$("$CTL" init "$F" "${specs[@]}" 2>&1)
expect_match "init again over the same directory is refused" "$out" "already holds a fleet CA"
for n in c1 c2 c3; do start "$n"; done
L=$(wait_leader c1 c1 c2 c3)
check "the three replicas elect a leader" test -n "$L"
out=$("$CTL" -c "$F/keyfleetctl.yaml" cluster status 2>&1)
expect_match "cluster status shows three members, one leader" "$out" "c1 .*c2 .*c3 "
PORT=${RPC[c1]##*:} # ctl goes to c1 and follows its leader hint
for _ in $(seq 1 50); do allow_nodes "$F" "n*" 2>/dev/null && break; sleep 0.1; done
issue "$F" node n1
S=$(servers_of c1 c2 c3)
out=$("$NODE_CLIENT" "$S" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)
W=$(field wrapped "$out")
expect_match "a node enrolls a volume" "$W" "^kf:local:v1:"
for n in c1 c2 c3; do
    out=$("$NODE_CLIENT" "${RPC[$n]}" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" release vol-1 "$W" 2>&1)
    expect_match "... and gets its key through $n" "$out" "key="
done
stop_replicas c1 c2 c3
check_sanitizers
finish
