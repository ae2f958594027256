#!/usr/bin/env bash
# A missing or malformed config is reported with file:line and exit code 2, and changes nothing.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"

run_kfd() { timeout 10 "$KFD" -c "$1" >"$WORK/out" 2>&1; echo $?; }

expect_eq "a missing config exits 2" "$(run_kfd "$WORK/nope.yaml")" "2"
expect_match "... and names the file" "$(cat "$WORK/out")" "$WORK/nope.yaml: cannot open"

printf 'name: c1\nlisten: ["127.0.0.1:0"\nstate_dir: s\n' >"$WORK/broken.yaml"
expect_eq "malformed YAML exits 2" "$(run_kfd "$WORK/broken.yaml")" "2"
expect_match "... and names file:line" "$(cat "$WORK/out")" "$WORK/broken.yaml:[0-9]+:[0-9]+: "

cp "$F/keyfleetd.yaml" "$WORK/unknown.yaml"
echo "colour: blue" >>"$WORK/unknown.yaml"
line=$(wc -l <"$WORK/unknown.yaml")
expect_eq "an unknown key exits 2" "$(run_kfd "$WORK/unknown.yaml")" "2"
expect_match "... and names file:line:column and the key" "$(cat "$WORK/out")" "unknown.yaml:$line:1: unknown key 'colour'"

sed 's/^state_dir: .*$//' "$F/keyfleetd.yaml" >"$WORK/missing.yaml"
expect_eq "a missing required key exits 2" "$(run_kfd "$WORK/missing.yaml")" "2"
expect_match "... and says which" "$(cat "$WORK/out")" "missing required key 'state_dir'"

sed 's/^log_level: .*$/log_level: chatty/' "$F/keyfleetd.yaml" >"$F/bad-level.yaml"
expect_eq "a bad value exits 2" "$(run_kfd "$F/bad-level.yaml")" "2"
expect_match "... naming the line" "$(cat "$WORK/out")" "bad-level.yaml:[0-9]+:12: log_level must be"

expect_eq "--check-config accepts the config init wrote" "$(timeout 10 "$KFD" --check-config -c "$F/keyfleetd.yaml" >/dev/null 2>&1; echo $?)" "0"
expect_eq "an unknown option exits 2" "$(timeout 10 "$KFD" --frobnicate >/dev/null 2>&1; echo $?)" "2"

sed "s#^  cert: .*#  cert: $WORK/absent.crt#" "$F/keyfleetd.yaml" >"$F/no-cert.yaml"
expect_eq "an unreadable certificate fails start-up with exit 1" "$(run_kfd "$F/no-cert.yaml")" "1"
out=$(timeout 10 "$KFD" --check-config -c "$F/no-cert.yaml" 2>&1)
expect_eq "... and --check-config sees it first (exit 2)" "$?" "2"
expect_match "... naming the file" "$out" "no-cert.yaml: tls: .*absent.crt"
cp -r "$F/state/kek" "$WORK/kek-saved"
rm -f "$F/state/kek"/kek-*.key
out=$(timeout 10 "$KFD" --check-config -c "$F/keyfleetd.yaml" 2>&1)
expect_eq "--check-config refuses a state directory without KEK files (exit 2)" "$?" "2"
expect_match "... saying what to do" "$out" "kms \\(local KEK\\): .*no KEK files \\(kek-1.key\\); run keyfleetctl init"
cp "$WORK/kek-saved"/kek-*.key "$F/state/kek/"
expect_eq "... and accepts it once they are back" "$(timeout 10 "$KFD" --check-config -c "$F/keyfleetd.yaml" >/dev/null 2>&1; echo $?)" "0"
expect_match "... and says which file" "$(cat "$WORK/out")" "event=tls_setup_failed error=.*absent.crt"

# The cluster section: each mistake named with file:line, nothing started.
cluster_case() { # DESC SECTION_LINES REGEX
    { cat "$F/keyfleetd.yaml"; printf 'cluster:\n%s\n' "$2"; } >"$F/cluster.yaml"
    expect_eq "cluster: $1 exits 2" "$(timeout 10 "$KFD" --check-config -c "$F/cluster.yaml" >"$WORK/out" 2>&1; echo $?)" "2"
    expect_match "... and says why, with file:line" "$(cat "$WORK/out")" "cluster.yaml:[0-9]+:[0-9]+: $3"
}
cluster_case "peers without this coordinator" '  peers: [{name: other, raft: "127.0.0.1:7001", rpc: "127.0.0.1:7002"}]' \
    "peers must list this coordinator"
cluster_case "a peer listed twice" '  peers:
    - {name: coordinator-1, raft: "127.0.0.1:7001", rpc: "127.0.0.1:7002"}
    - {name: coordinator-1, raft: "127.0.0.1:7003", rpc: "127.0.0.1:7004"}' "peer 'coordinator-1' is listed twice"
cluster_case "a peer without a fixed port" '  peers: [{name: coordinator-1, raft: "127.0.0.1:0", rpc: "127.0.0.1:7002"}]' \
    "peer .coordinator-1.: raft and rpc must be host:port with a fixed port"
cluster_case "a heartbeat too close to the election timeout" '  heartbeat: 200ms
  peers: [{name: coordinator-1, raft: "127.0.0.1:7001", rpc: "127.0.0.1:7002"}]' "heartbeat must be"
cluster_case "a peer without an rpc address" '  peers: [{name: coordinator-1, raft: "127.0.0.1:7001"}]' \
    "missing required key 'rpc'"
cluster_case "join without raft_listen" '  join: true' "a joining coordinator needs raft_listen"
{ cat "$F/keyfleetd.yaml"; printf 'cluster:\n  peers: [{name: coordinator-1, raft: "127.0.0.1:7001", rpc: "127.0.0.1:7002"}]\n'; } >"$F/cluster.yaml"
expect_eq "a valid cluster section passes --check-config" \
    "$(timeout 10 "$KFD" --check-config -c "$F/cluster.yaml" >/dev/null 2>&1; echo $?)" "0"

# keyfleetctl refuses bad input too, and never overwrites a CA.
expect_eq "init refuses an existing fleet" "$("$CTL" init "$F" >/dev/null 2>&1; echo $?)" "1"
expect_eq "cert issue refuses an unknown kind" "$("$CTL" cert issue admin bob --dir "$F" >/dev/null 2>&1; echo $?)" "2"
expect_eq "cert issue refuses a bad name" "$("$CTL" cert issue node 'bad/name' --dir "$F" >/dev/null 2>&1; echo $?)" "1"
expect_eq "cert issue refuses a bad --days" "$("$CTL" cert issue node n1 --days -3 --dir "$F" >/dev/null 2>&1; echo $?)" "2"
perm=$(stat -c %a "$F/ca.key")
expect_eq "the CA key is mode 0600" "$perm" "600"
expect_eq "the coordinator key is mode 0600" "$(stat -c %a "$F/coordinator.key")" "600"
expect_eq "the operator key is mode 0600" "$(stat -c %a "$F/operator.key")" "600"
finish
