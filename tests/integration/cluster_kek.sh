#!/usr/bin/env bash
# The local KEK in a cluster: `keyfleetctl kms rotate` writes the new KEK file on the leader only
# (docs/cluster.md). Every replica learns the new version through Raft and, until the file is
# copied to it, says so: kek_missing in its log, /readyz 503, `cluster status` kms_missing and
# exit 1; a replica that lacks it refuses to rotate again (which would make a second, different
# key under the same number). Once the file is copied it is loaded within a second, and a key
# wrapped under the new version opens there. Every wait is bounded.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

start_cluster k 3
S=$CLUSTER
out=$("$NODE_CLIENT" "$S" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)
W1=$(field wrapped "$out")
expect_match "a volume enrolled under KEK version 1" "$W1" "^kf:local:v1:"

ctl_on() { local n=$1; shift; "$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[$n]}" "$@"; }
# wait_log NAME PATTERN: at most 5 s for PATTERN in NAME's log.
wait_log() { for _ in $(seq 1 50); do grep -Eq "$2" "$WORK/$1/keyfleetd.log" && return 0; sleep 0.1; done; return 1; }

out=$(ctl_on "$L" kms rotate 2>&1)
expect_match "kms rotate on the leader" "$out" "local KMS now wraps with key version 2"
FOLLOWERS=()
for n in k1 k2 k3; do [ "$n" != "$L" ] && FOLLOWERS+=("$n"); done
for n in "${FOLLOWERS[@]}"; do
    check "$n logs kek_missing for version 2" wait_log "$n" 'event=kek_missing version=2 .*kek-2.key'
    expect_match "... its /readyz says why" "$(readyz "$n")" \
        "not ready: KMS key version 2, which the cluster rotated to, is missing here.* 503$"
done
expect_match "the leader, which has it, is ready" "$(readyz "$L")" "^ok +200$"
out=$(ctl_on "${FOLLOWERS[0]}" status 2>&1) && rc=0 || rc=$?
expect_match "keyfleetctl status on a follower says why it is not ready, and fails" "$out rc=$rc" \
    "ready: no \(KMS key version 2, which the cluster rotated to, is missing here.*kms: version 1, missing version 2.* rc=1"
out=$(ctl_on "$L" cluster status 2>&1) && rc=0 || rc=$?
expect_match "cluster status shows who lacks it, and fails" "$out rc=$rc" \
    "${FOLLOWERS[0]} .*kms_version=1 kms_missing=2.* rc=1"
expect_match "... and the leader's version" "$out" "$L .*kms_version=2"

out=$(release n1 vol-1 "$W1" "$S")
expect_match "a release on the leader rewraps the key under version 2" "$out" "code=ok status=released .*rewrapped=kf:local:v2:"
W2=$(sed -n 's/.* rewrapped=//p' <<<"$out")

# The leader dies before anyone copied the file: the new leader cannot open version-2 keys, and
# must not mint a different version 2 of its own.
kill -9 "${PID[$L]}"
wait "${PID[$L]}" 2>/dev/null
NL=$(wait_leader "${FOLLOWERS[0]}" "${FOLLOWERS[@]}")
check "a new leader is elected" test -n "$NL"
# A new leader writes nothing until a majority confirmed its audit head (a second or so under
# load): asked before, it answers `unavailable`, which is not the refusal this step is about.
for _ in $(seq 1 100); do
    out=$(ctl_on "$NL" kms rotate 2>&1) && rc=0 || rc=$?
    [[ "$out" == *"waiting for a majority of replicas to confirm"* ]] || break
    sleep 0.1
done
expect_match "kms rotate on a replica that lacks version 2 is refused" "$out rc=$rc" \
    "failed_precondition: KMS key version 2, which the cluster rotated to, is missing here .*copy it here before rotating rc=1"
check "... and writes no KEK file" test ! -e "$WORK/$NL/state/kek/kek-2.key"
out=$(release n1 vol-1 "$W2" "$(servers_of "${FOLLOWERS[@]}")")
expect_match "a key wrapped under version 2 does not open there yet" "$out" "^code=(failed_precondition|invalid_argument|unavailable|internal)"

for n in "${FOLLOWERS[@]}"; do install -m 0600 "$WORK/$L/state/kek/kek-2.key" "$WORK/$n/state/kek/kek-2.key"; done
for n in "${FOLLOWERS[@]}"; do
    check "$n loads the copied file by itself" wait_log "$n" "event=kek_loaded version=2"
    expect_match "... and is ready again" "$(readyz "$n")" "^ok +200$"
done
out=$(release n1 vol-1 "$W2" "$(servers_of "${FOLLOWERS[@]}")")
expect_match "the version-2 key opens on the new leader" "$out" "^code=ok status=released"
out=$(ctl_on "$NL" kms rotate 2>&1)
expect_match "and the next rotation makes version 3" "$out" "local KMS now wraps with key version 3"
stop_replicas "${FOLLOWERS[@]}"
check_sanitizers
finish
