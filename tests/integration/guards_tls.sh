#!/usr/bin/env bash
# The clients check the coordinator they talk to: the agent's client code (node_client, the
# same kf_rpc_client), keyfleet-agent itself and keyfleetctl refuse a real keyfleetd that
# serves a certificate
#   - from another fleet's CA,
#   - of the fleet's CA but not a coordinator's: a node certificate with the right address
#     (clientAuth only), and one forged with serverAuth whose identity is keyfleet://node/...,
#   - of the fleet's CA, a coordinator's, whose SAN does not name the address dialed,
# and each refusal says it was the server certificate. The fleet's own coordinator certificate
# is the control, served the same way.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
G=$WORK/other
fleet_init "$F"
fleet_init "$G"
issue "$F" node n1
issue "$F" node srv-node --san IP:127.0.0.1 --san DNS:localhost
issue "$F" coordinator elsewhere --san IP:127.0.0.2 --san DNS:elsewhere.example
# A certificate the fleet CA never issues through keyfleetctl: serverAuth, but a node identity.
cat >"$WORK/forged.ext" <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:keyfleet://node/forged, IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EXT
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=forged \
    -keyout "$F/forged.key" -out "$WORK/forged.csr" 2>/dev/null
openssl x509 -req -in "$WORK/forged.csr" -CA "$F/ca.crt" -CAkey "$F/ca.key" -CAcreateserial -days 2 \
    -extfile "$WORK/forged.ext" -out "$F/forged.crt" 2>/dev/null
check "the forged certificate was made" test -s "$F/forged.crt"

cp "$F/keyfleetd.yaml" "$WORK/keyfleetd.yaml.orig"
# serve CERT KEY: (re)starts keyfleetd on the same state with this server certificate.
serve() {
    [ -n "${KFD_PID:-}" ] && stop_kfd TERM
    sed -e "s|^  cert: .*|  cert: $1|" -e "s|^  key: .*|  key: $2|" "$WORK/keyfleetd.yaml.orig" >"$F/keyfleetd.yaml"
    start_kfd "$F"
}
agent_status() { sed -i "s|^coordinators: .*|coordinators: [\"127.0.0.1:$PORT\"]|" "$WORK/agent.yaml"
    "$AGENT" -c "$WORK/agent.yaml" status 2>&1 | head -n 1; }

serve "$F/coordinator.crt" "$F/coordinator.key"
agent_config "$WORK/agent.yaml" n1 "deadline: 3s"
allow_nodes "$F" "n*"
expect_match "control: node_client talks to the fleet's coordinator" "$(node "$F" n1 enroll vol-1 data)" "^code=ok"
expect_match "control: keyfleetctl does" "$(ctl "$F" status 2>&1)" "coordinator-1"
expect_match "control: keyfleet-agent does" "$(agent_status)" "coordinators: reachable"

refused() { # refused WHAT CERT KEY REASON_REGEX
    local what=$1 reason=$4
    serve "$2" "$3"
    local out
    out=$(node "$F" n1 enroll vol-2 data)
    expect_match "node_client refuses $what" "$out" "^code=client_error message=\".*server certificate: $reason"
    out=$(ctl "$F" status 2>&1; echo "rc=$?")
    expect_match "keyfleetctl refuses $what" "$out" "server certificate: $reason.*rc=[1-9]"
    expect_match "keyfleet-agent refuses $what" "$(agent_status)" "coordinators: unreachable"
}
refused "a coordinator certificate from another fleet's CA" "$G/coordinator.crt" "$G/coordinator.key" \
    "unable to get local issuer certificate"
refused "a node certificate (clientAuth only) as the server's" "$F/srv-node.crt" "$F/srv-node.key" \
    "unsuitable certificate purpose"
refused "a forged serverAuth certificate with a node identity" "$F/forged.crt" "$F/forged.key" \
    "not a coordinator certificate of this fleet"
refused "a coordinator certificate whose SAN does not name 127.0.0.1" "$F/elsewhere.crt" "$F/elsewhere.key" \
    "IP address mismatch"

stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
# Read once keyfleetd has stopped: it commits in batches, so an enrollment read while it runs
# could still be uncommitted and the count pass whatever happened.
expect_eq "nothing was enrolled through a refused server" \
    "$(sqlite3 -cmd ".timeout 5000" "$F/state/keyfleet.db" "SELECT count(*) FROM volumes WHERE id = 'vol-2'")" "0"
check_sanitizers
finish
