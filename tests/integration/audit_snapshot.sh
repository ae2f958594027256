#!/usr/bin/env bash
# Issue #17: a poisoned snapshot is refused. The leader's database is edited while it runs (an
# attacker with write access to it); the next snapshot it takes carries the edit, and a follower
# far enough behind to need that snapshot verifies it before installing it: its audit log fails
# verification, so the follower refuses it (raft_snapshot_refused, a metric) and keeps its own
# state, which still verifies.
. "$(dirname "$0")/lib.sh"
# Under ASan: libraft's own 16-byte leak when a restore is refused (see the file).
export LSAN_OPTIONS="suppressions=$(cd "$(dirname "$0")" && pwd)/lsan-raft-restore.supp:print_suppressions=0"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

start_cluster c 3
S3=$CLUSTER
WRAP=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
X=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
Y=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && [ "$n" != "$X" ] && echo "$n"; done)
release n1 vol-1 "$WRAP" "$S3" >/dev/null
caught_up "$X" "$L"
stop_replicas "$X"
BEFORE=$(sqlite3 "$WORK/$X/state/keyfleet.db" "SELECT max(seq) FROM audit")

# Releases (the follower left behind), then the edit, then enough entries for a new snapshot.
releases() { for _ in $(seq 1 "$1"); do release n1 vol-1 "$WRAP" "$(servers_of "$L" "$Y")" >/dev/null; done; }
releases 80
# Both replicas that run are edited alike, so whichever leads sends a poisoned snapshot; after
# the checkpoint that follows the releases, so no commit meets the editor's lock (keyfleetd does
# not wait for one: it would fail closed).
signed_on "$L"
signed_on "$Y"
for n in "$L" "$Y"; do
    sqlite3 -cmd ".timeout 5000" "$WORK/$n/state/keyfleet.db" "UPDATE audit SET node = 'n9' WHERE seq = 3"
done
snaps() { grep -c "event=raft_snapshot " "$WORK/$1/keyfleetd.log"; }
TL=$(snaps "$L")
TY=$(snaps "$Y")
for _ in $(seq 1 20); do
    releases 20
    [ "$(snaps "$L")" -gt "$TL" ] && [ "$(snaps "$Y")" -gt "$TY" ] && break
done
check "both took a snapshot after the edit" test "$(snaps "$L")" -gt "$TL" -a "$(snaps "$Y")" -gt "$TY"

start "$X"
for _ in $(seq 1 100); do grep -q "event=raft_snapshot_refused" "$WORK/$X/keyfleetd.log" && break; sleep 0.1; done
expect_match "$X refuses the poisoned snapshot, saying why" "$(grep "event=raft_snapshot_refused" "$WORK/$X/keyfleetd.log" | head -n 1)" \
    "snapshot's audit log fails verification at seq 3: its content does not match its hash \(edited\)"
REFUSED=$(curl -s --http2 --cacert "$F/ca.crt" --cert "$F/operator.crt" --key "$F/operator.key" "https://${RPC[$X]}/metrics" |
    awk '$1 == "keyfleet_raft_snapshots_refused_total" {print $2}')
check "keyfleet_raft_snapshots_refused_total counts it ($REFUSED)" test "${REFUSED:-0}" -ge 1
grep -q "event=raft_restored" "$WORK/$X/keyfleetd.log"
check "$X installed nothing" test $? -ne 0
expect_eq "$X kept its own log" "$("$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[$X]}" audit --json | wc -l)" "$BEFORE"
expect_match "... which still verifies" "$("$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[$X]}" audit verify)" "audit chain ok"
expect_match "the edited replicas' own verify names the edit" "$("$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[$L]}" audit verify)" "BROKEN at record 3"
stop_replicas "$X" "$Y" "$L"
check_sanitizers
finish
