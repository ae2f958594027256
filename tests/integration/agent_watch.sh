#!/usr/bin/env bash
# keyfleet-agent watch, the node side of the kill switch: heartbeats change nothing while the
# node is in good standing or no coordinator answers; once the node is revoked, the next
# heartbeat locks every volume (ZFS: children unmounted first, then the key unloaded) and keeps
# them locked; SIGTERM stops it at once. Offline unlocks queued on the node ride on heartbeats.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
start_kfd "$F"
put_policy "$F" <<'YAML'
rules:
  - name: servers
    match: {nodes: {names: ["n1"]}}
    effect: allow
YAML
"$ZFS_STANDIN" __zpool_create tank
luks_file "$WORK/disk.luks" "pw"
agent_config "$WORK/a.yaml" n1 "watch_interval: 1s" "call_timeout: 2s" "volumes:" "  - luks: $WORK/disk.luks"
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
keystatus() { "$ZFS_STANDIN" get -H -o value keystatus "$1"; }
mounted() { "$ZFS_STANDIN" get -H -o value mounted "$1"; }

A enroll zfs:tank/secure >/dev/null 2>&1
printf 'pw' | A enroll "$WORK/disk.luks" >/dev/null 2>&1
"$ZFS_STANDIN" create tank/secure/home # inherits the encryption root, mounted with it
expect_eq "a child dataset shares the encryption root" "$("$ZFS_STANDIN" get -H -o value encryptionroot tank/secure/home)" "tank/secure"

# In good standing: a heartbeat changes nothing.
out=$(A watch --count 2 2>&1)
expect_eq "watch while in good standing: exit 0" "$?" "0"
expect_match "... two heartbeats a second apart" "$out" "event=watching interval_ms=1000"
expect_eq "... the key stays loaded" "$(keystatus tank/secure)" "available"
expect_eq "... and the datasets mounted" "$(mounted tank/secure)/$(mounted tank/secure/home)" "yes/yes"

# No coordinator answers: nothing is locked (an outage must not lock a fleet).
agent_config "$WORK/down.yaml" n1 "watch_interval: 1s" "call_timeout: 300ms"
sed -i 's/127.0.0.1:[0-9]*/127.0.0.1:1/' "$WORK/down.yaml"
out=$("$AGENT" -c "$WORK/down.yaml" watch --count 1 2>&1)
expect_eq "watch with no coordinator: exit 1" "$?" "1"
expect_match "... says why, and that nothing is locked" "$out" "event=heartbeat_failed .*nothing is locked while no coordinator answers"
expect_eq "... the key stays loaded" "$(keystatus tank/secure)" "available"

# An invalid interval is a config error with its line.
agent_config "$WORK/bad.yaml" n1 "watch_interval: 10ms"
out=$("$AGENT" -c "$WORK/bad.yaml" watch --count 1 2>&1)
expect_eq "watch_interval below 1s is refused (exit 2)" "$?" "2"
expect_match "... naming file:line" "$out" "bad.yaml:6:[0-9]+: must be between 1000ms and 86400000ms, got '10ms'"
expect_match "--count must be a positive number" "$(A watch --count 0 2>&1)" "--count takes 1..1000000"

# Revoked: the next heartbeat locks everything, children first.
ctl "$F" node revoke n1 "stolen" >/dev/null
out=$(A watch --count 1 2>&1)
expect_eq "watch after the node is revoked: exit 0 (everything locked)" "$?" "0"
expect_match "... says the coordinator ordered the lock" "$out" "event=lock_ordered node=\"n1\""
expect_match "... locks the ZFS encryption root" "$out" "zfs tank/secure: locked"
expect_eq "... its key is unloaded" "$(keystatus tank/secure)" "unavailable"
expect_eq "... and its datasets unmounted, the child too" "$(mounted tank/secure)/$(mounted tank/secure/home)" "no/no"
expect_match "... logged as a warning per volume" "$out" "level=warn event=locked kind=zfs volume=\"tank/secure\""
out=$(A watch --count 1 2>&1)
expect_eq "a second heartbeat: still exit 0, nothing left to lock" "$?" "0"
check "... and no volume is reported locked again" bash -c "! grep -q ': locked' <<<'$out'"
st=$(A status --json 2>/dev/null)
expect_match "status shows the dataset locked" "$st" "\"name\":\"tank/secure\",\"key\":\"locked\""
expect_match "status --json says the node is revoked" "$st" '"coordinators_reachable":true,"node_revoked":true'
expect_match "status says so in words" "$(A status 2>/dev/null)" "^coordinators: reachable; this node is REVOKED"
audit=$(ctl "$F" audit --node n1 2>&1)
expect_match "the revocation is in the audit log" "$audit" "revoke"

# SIGTERM stops a watcher between heartbeats, promptly and cleanly (here one whose coordinator
# is down, so its first heartbeat ends at once and it waits for the next).
agent_config "$WORK/slow.yaml" n1 "watch_interval: 1h" "call_timeout: 300ms"
sed -i 's/127.0.0.1:[0-9]*/127.0.0.1:1/' "$WORK/slow.yaml"
"$AGENT" -c "$WORK/slow.yaml" watch >"$WORK/watch.out" 2>&1 &
wpid=$!
for _ in $(seq 1 100); do grep -q 'event=heartbeat_failed' "$WORK/watch.out" && break; sleep 0.05; done
start=$(date +%s%N)
kill -TERM "$wpid"
wait "$wpid"
rc=$?
ms=$((($(date +%s%N) - start) / 1000000))
expect_eq "a watcher stops on SIGTERM, exit 0" "$rc" "0"
check "... within half a second (${ms} ms)" test "$ms" -lt 500
expect_match "... saying so" "$(cat "$WORK/watch.out")" "event=watch_stopped reason=signal"
check_sanitizers
finish
