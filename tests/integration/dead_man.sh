#!/usr/bin/env bash
# The dead-man switch (docs/operations.md): a node group's dead_man.after reaches the agent in each
# heartbeat's answer; keyfleet-agent watch, with no coordinator answering for that long, locks
# every volume (a watcher started later counts from the last contact it remembers), and the lock is
# audited at the next contact. keyfleetctl node list shows each node's last heartbeat and marks
# one silent past its window. Without a window an unreachable coordinator locks nothing. Waits
# are bounded in count and time, never a fixed sleep that a loaded machine could outrun.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node edge-1
start_kfd "$F"
pin_port "$F" # the agent's config names the port; a restart keeps it
WINDOW=4
dead_man_policy() {
    put_policy "$F" <<YAML
groups:
  edge: {nodes: ["edge-*"]$1}
rules:
  - name: edge
    match: {nodes: {groups: [edge]}}
    effect: allow
YAML
}
dead_man_policy ", dead_man: {after: ${WINDOW}s}"
check "a policy with a group's dead_man window is accepted" test $? -eq 0

"$ZFS_STANDIN" __zpool_create tank
agent_config "$WORK/a.yaml" edge-1 "watch_interval: 1s" "call_timeout: 1s"
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
keystatus() { "$ZFS_STANDIN" get -H -o value keystatus tank/d; }
key_unloaded() { [ "$(keystatus)" = unavailable ]; }
check "enroll tank/d" A enroll zfs:tank/d
# wait_for DESC SECONDS CMD...: CMD succeeds within SECONDS (polled every 0.2 s).
wait_for() {
    local d=$1 n=$(($2 * 5))
    shift 2
    for _ in $(seq 1 "$n"); do "$@" && { ok "$d"; return 0; }; sleep 0.2; done
    not_ok "$d" "not within $((n / 5)) s: $*"
}
# not_past DESC SINCE: node list --json shows edge-1 seen at SINCE or later, and not past its
# window when the list came within it (a loaded machine may take longer: then only the time).
not_past() {
    local l seen
    l=$(ctl "$F" node list --json | grep '"node":"edge-1"')
    seen=$(printf '%s' "$l" | sed -n 's/.*"last_seen_at":\([0-9]*\).*/\1/p')
    check "$1: last seen at the heartbeat" test "${seen:-0}" -ge "$2"
    if [ $(($(date +%s) - seen)) -lt "$WINDOW" ]; then
        expect_match "$1: not past the window" "$l" "\"dead_man_past\":false"
    fi
}

t0=$(date +%s)
out=$(A watch --count 1 2>&1)
expect_eq "a heartbeat in good standing: exit 0" "$?" "0"
not_past "node list after it" "$t0"
expect_match "... the window is remembered in the state file" "$(cat "$WORK/edge-1-state.json")" \
    "\"dead_man\": \{ *\"after_s\": $WINDOW, *\"last_contact\": [0-9]+"
expect_match "node list: the node's last heartbeat and window" "$(ctl "$F" node list)" \
    "^NODE +STATE +LAST SEEN +DEAD MAN +PAST .*edge-1 +active +[0-9T:-]+Z +${WINDOW}s +(-|PAST) "
expect_match "... and as JSON" "$(ctl "$F" node list --json)" \
    "\"node\":\"edge-1\",\"last_seen_at\":[0-9]+,\"dead_man_after_s\":$WINDOW,\"dead_man_past\":(false|true),\"revoked\":false"
expect_eq "the key is loaded" "$(keystatus)" "available"
T='[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z'
expect_match "agent status: the window, the last contact and when it would lock" "$(A status 2>&1)" \
    "^coordinators: reachable dead-man: after ${WINDOW}s; last contact $T \\([0-9]+s ago\\); locks at $T without a coordinator KIND"
expect_match "... and as JSON, not locked" "$(A status --json 2>&1)" \
    "\"dead_man\":\\{\"after_s\":$WINDOW,\"last_contact\":\"$T\",\"silent_s\":[0-9]+,\"locks_at\":\"$T\",\"past\":(false|true),\"locked\":false,\"locked_at\":\"-\",\"unreported_locks\":0\\}"

# The coordinator goes away; a watcher started now counts from the last contact it remembers.
stop_kfd
"$AGENT" -c "$WORK/a.yaml" watch >"$WORK/watch.out" 2>&1 &
wpid=$!
PIDS+=("$wpid")
wait_for "silent past the window, watch locks the volume (key unloaded)" 30 key_unloaded
kill -TERM "$wpid"
wait "$wpid"
out=$(cat "$WORK/watch.out")
expect_match "... logs dead_man_lock with how long it was silent" "$out" \
    "level=error event=dead_man_lock node=\"edge-1\" silent_s=[0-9]+ after_s=$WINDOW"
expect_match "... and the volume it locked" "$out" "zfs tank/d: locked"
check "... heartbeats before the window warned of the switch, not 'nothing is locked'" \
    bash -c "! grep -q 'nothing is locked' '$WORK/watch.out'"
expect_match "... the lock is queued for the next contact" "$(cat "$WORK/edge-1-state.json")" \
    "\"dead_man_pending\": \[ *\{ *\"after_s\": $WINDOW, *\"at\": [0-9]+, *\"failed\": 0, *\"locked\": 1"
expect_match "agent status (coordinator down): LOCKED, not reported yet" "$(A status 2>&1)" \
    "coordinators: unreachable dead-man: after ${WINDOW}s; last contact $T \\([0-9]+s ago\\); LOCKED at $T \\(not reported yet\\)"
expect_match "... and as JSON" "$(A status --json 2>&1)" \
    "\"past\":true,\"locked\":true,\"locked_at\":\"$T\",\"unreported_locks\":1\\}"

# Back again: before the node's next heartbeat, node list marks it past its window.
start_kfd "$F"
for _ in $(seq 1 100); do ctl "$F" status >/dev/null 2>&1 && break; sleep 0.1; done
# keyfleetd counts in whole seconds (past when more than WINDOW have gone by since the last
# heartbeat), the agent's watch more finely: on a fast machine the list can come in the second
# after the lock, so wait (at most WINDOW + 2 s) until keyfleetd's own count has passed it.
seen=$(ctl "$F" node list --json | grep '"node":"edge-1"' | sed -n 's/.*"last_seen_at":\([0-9]*\).*/\1/p')
for _ in $(seq 1 $(((WINDOW + 2) * 10))); do [ $(($(date +%s) - ${seen:-0})) -gt "$WINDOW" ] && break; sleep 0.1; done
expect_match "node list marks the silent node PAST" "$(ctl "$F" node list)" "edge-1 +active +[0-9T:-]+Z +${WINDOW}s +PAST "
expect_match "... and as JSON" "$(ctl "$F" node list --json)" "\"node\":\"edge-1\",[^}]*\"dead_man_past\":true"
t0=$(date +%s)
out=$(A watch --count 1 2>&1)
expect_eq "the next heartbeat: exit 0" "$?" "0"
not_past "node list after it" "$t0"
expect_match "... reports the lock" "$out" "event=dead_man_locks_reported count=1"
expect_eq "... the volume stays locked" "$(keystatus)" "unavailable"
audit=$(ctl "$F" audit --node edge-1 --action dead_man_lock --json)
expect_match "the lock is audited at the next contact" "$audit" \
    "\"action\":\"dead_man_lock\",\"actor\":\"edge-1\".*dead-man switch: locked 1 volume\(s\) \(0 could not be locked\) at [0-9]+ after [0-9]+ s without reaching a coordinator \(dead_man.after $WINDOW s\)"
expect_match "agent status after the contact: not locked now, the last lock named" "$(A status 2>&1)" \
    "dead-man: after ${WINDOW}s; last contact $T \\([0-9]+s ago\\); locks at $T without a coordinator; last lock $T KIND"
check "... and dropped from the queue" bash -c "! grep -q '\"at\"' <<<\"\$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(\"dead_man_pending\"))' '$WORK/edge-1-state.json')\""
out=$(A watch --count 1 2>&1)
check "a second heartbeat reports nothing again" bash -c "! grep -q dead_man_locks_reported <<<'$out'"
expect_eq "... one audit record" "$(ctl "$F" audit --node edge-1 --action dead_man_lock --json | grep -c dead_man_lock)" "1"

# A watcher started after the window has passed since the last contact (a reboot, a restarted
# service) locks at its first heartbeat: the clock is the remembered contact, not its own start.
check "unlock again" A unlock zfs:tank/d
A watch --count 1 >/dev/null 2>&1
last=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dead_man"]["last_contact"])' "$WORK/edge-1-state.json")
stop_kfd
past_window() { [ $(($(date +%s) - last)) -gt "$WINDOW" ]; }
wait_for "the window passes with the coordinator down" 30 past_window
expect_match "agent status: silent past the window, before a watcher locks" "$(A status 2>&1)" \
    "dead-man: after ${WINDOW}s; last contact $T \\([0-9]+s ago\\); PAST the window: keyfleet-agent watch locks at its next failed heartbeat"
out=$(A watch --count 1 2>&1)
expect_match "a new watcher locks at its first heartbeat" "$out" "event=dead_man_lock node=\"edge-1\" silent_s=[0-9]+ .*zfs tank/d: locked"
expect_eq "... the key is unloaded" "$(keystatus)" "unavailable"
start_kfd "$F"
for _ in $(seq 1 100); do ctl "$F" status >/dev/null 2>&1 && break; sleep 0.1; done
out=$(A watch --count 1 2>&1)
expect_match "... reported at the next contact" "$out" "event=dead_man_locks_reported count=1"
expect_eq "... two audit records now" "$(ctl "$F" audit --node edge-1 --action dead_man_lock --json | grep -c dead_man_lock)" "2"

# A wall clock set back behind the last contact (review rev26: before, it counted as no silence,
# so a thief setting the clock back won a new window at each boot) counts as the whole window.
check "unlock again" A unlock zfs:tank/d
A watch --count 1 >/dev/null 2>&1
stop_kfd
python3 - "$WORK/edge-1-state.json" <<'PY'
import json, sys, time
state = json.load(open(sys.argv[1]))
state["dead_man"]["last_contact"] = int(time.time()) + 3600
json.dump(state, open(sys.argv[1], "w"))
PY
out=$(A watch --count 1 2>&1)
expect_match "a watcher whose clock is an hour behind the last contact locks at its first heartbeat" "$out" \
    "event=dead_man_lock node=\"edge-1\" silent_s=[0-9]+ .*zfs tank/d: locked"
expect_eq "... the key is unloaded" "$(keystatus)" "unavailable"
start_kfd "$F"
for _ in $(seq 1 100); do ctl "$F" status >/dev/null 2>&1 && break; sleep 0.1; done

# Without a window, an outage locks nothing (the agent learns it in the next heartbeat).
check "unlock again" A unlock zfs:tank/d
dead_man_policy ""
out=$(A watch --count 1 2>&1)
expect_match "node list: no window, not past" "$(ctl "$F" node list)" "edge-1 +active +[0-9T:-]+Z +- +- "
stop_kfd
start=$(date +%s)
out=$(A watch --count $((WINDOW + 3)) 2>&1)
elapsed=$(($(date +%s) - start))
check "watch ran past the old window with no coordinator ($elapsed s)" test "$elapsed" -gt "$WINDOW"
expect_match "... said nothing is locked" "$out" "event=heartbeat_failed .*nothing is locked while no coordinator answers"
expect_eq "... and the key stays loaded" "$(keystatus)" "available"

# Validation: a bad window changes nothing.
start_kfd "$F"
for _ in $(seq 1 100); do ctl "$F" status >/dev/null 2>&1 && break; sleep 0.1; done
printf 'groups:\n  g: {nodes: [a], dead_man: {after: 0s}}\n' >"$WORK/bad.yaml"
out=$(ctl "$F" policy put "$WORK/bad.yaml" 2>&1)
expect_match "a dead_man.after of 0s is refused with its position" "$out" "policy:2:37: must be between"

# Report budget (review rev26): each offline unlock and dead-man lock a heartbeat reports is an
# audit record and a Raft entry; one node wrote 1,000 per request, any number of requests. A node
# has 200 recorded one by one at once (then 1 a minute); the rest are counted in one record, and
# the heartbeat still succeeds.
issue "$F" node edge-2
agent_config "$WORK/b.yaml" edge-2
check "edge-2 enrolls tank/e (its reports must name its own volumes)" "$AGENT" -c "$WORK/b.yaml" enroll zfs:tank/e
node_volume() { ctl "$F" node list --json | grep "\"node\":\"$1\"" | sed -n 's/.*"volumes":\["\([^"]*\)".*/\1/p' | head -n 1; }
VOL2=$(node_volume edge-2)
check "... and its volume id is listed" test -n "$VOL2"
heartbeat_body() { # N [VOLUME [AT] [REPEAT]]: a HeartbeatRequest with N offline unlocks of VOLUME
    # (default edge-2's), at AT, AT+1, ... (default 1700000000), or all at AT when REPEAT is set
    python3 - "$1" "${2:-$VOL2}" "${3:-1700000000}" "${4:-}" <<'PY'
import sys
def varint(n):
    out = b""
    while True:
        b, n = n & 0x7f, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])
def field(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data
n, vol_id, at, repeat = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4] != ""
vol = field(1, vol_id) + varint(2 << 3) + varint(2) + field(3, b"tank/x")
def unlock(t):
    return field(1, vol) + field(2, varint(1 << 3) + varint(t)) + field(3, b"test")
sys.stdout.buffer.write(b"".join(field(1, unlock(at if repeat else at + i)) for i in range(n)))
PY
}
recorded() { ctl "$F" audit --node edge-2 --action offline_unlock --json | grep -c "$VOL2"; }
PROTO=(-H 'content-type: application/proto')

# Reports a node may make (review rev26 R6): only of volumes it enrolled, each (volume, time)
# once; any node wrote offline_unlock records naming another node's volume, 1,000 per request.
# 5 naming edge-1's volume, 3 of edge-2's at one time and 2 more at others: 3 recorded, the
# other 7 refused in one reports_refused record.
VOL1=$(node_volume edge-1)
{ heartbeat_body 5 "$VOL1" 1600000000 repeat; heartbeat_body 3 "$VOL2" 1600000100 repeat
  heartbeat_body 2 "$VOL2" 1600000101; } >"$WORK/hbmixed"
expect_match "a heartbeat with reports of another node's volume and repeats: answered" \
    "$(rpc "$F" edge-2 NodeService/Heartbeat "${PROTO[@]}" --data-binary "@$WORK/hbmixed")" "^200 "
expect_eq "... its own 3 distinct reports recorded" "$(recorded)" "3"
expect_eq "... none naming edge-1's volume" \
    "$(ctl "$F" audit --node edge-2 --action offline_unlock --json | grep -c "\"volume\":\"$VOL1\"")" "0"
expect_match "... the other 7 refused in one record" \
    "$(ctl "$F" audit --node edge-2 --action reports_refused --json)" \
    '"action":"reports_refused".*7 offline unlock report\(s\) refused: 5 name a volume this node did not enroll, 2 repeat'
expect_match "... and logged" "$(cat "$F/keyfleetd.log")" "event=reports_refused node=edge-2 not_own=5 repeated=2"

heartbeat_body 150 "$VOL2" 1700000000 >"$WORK/hb150"
heartbeat_body 150 "$VOL2" 1700001000 >"$WORK/hb150b"
heartbeat_body 10 "$VOL2" 1700002000 >"$WORK/hb10"
expect_match "150 offline unlocks in one heartbeat: answered" \
    "$(rpc "$F" edge-2 NodeService/Heartbeat "${PROTO[@]}" --data-binary "@$WORK/hb150")" "^200 "
expect_eq "... each recorded (within the budget of 200, 3 taken above)" "$(recorded)" "153"
expect_match "150 more: answered too" \
    "$(rpc "$F" edge-2 NodeService/Heartbeat "${PROTO[@]}" --data-binary "@$WORK/hb150b")" "^200 "
expect_eq "... 47 of them recorded one by one" "$(recorded)" "200"
expect_match "... the other 100 counted in one record" \
    "$(ctl "$F" audit --node edge-2 --action reports_over_budget --json)" \
    '"action":"reports_over_budget".*103 offline unlock and 0 dead-man lock reports past the node.s report budget'
rpc "$F" edge-2 NodeService/Heartbeat "${PROTO[@]}" --data-binary "@$WORK/hb10" >/dev/null
expect_eq "10 more right after: none recorded one by one" "$(recorded)" "200"
expect_eq "... two summary records in all" \
    "$(ctl "$F" audit --node edge-2 --action reports_over_budget --json | grep -c reports_over_budget)" "2"

# Heartbeats (review rev26): each is a Raft write, so a node may send 60 at once, then 2 a second
# (an agent sends one per watch_interval, at least 1 s). 100 on one connection: the first 60 are
# answered, then most are refused with resource_exhausted (429) and Retry-After.
issue "$F" node edge-3
urls=()
for _ in $(seq 1 100); do urls+=(-o /dev/null "$URL/keyfleet.v1.NodeService/Heartbeat"); done
codes=$(kcurl "$F" edge-3 --max-time 30 -X POST "${PROTO[@]}" --data-binary '' -w '%{http_code}\n' "${urls[@]}")
expect_eq "the first 60 heartbeats are answered" "$(printf '%s\n' "$codes" | head -n 60 | sort -u)" "200"
refused=$(printf '%s\n' "$codes" | grep -c '^429$')
check "... and of the next 40, most are refused (429: $refused)" test "$refused" -ge 20

# Contact under require: [attested] (review rev26 R10): a heartbeat without a quote is answered,
# but is not the node's contact, so a copy of a file-based node key cannot keep a silent machine
# off the PAST list. edge-4 is under such a rule, edge-2 (the control) is not.
put_policy "$F" <<YAML
groups:
  edge: {nodes: ["edge-*"], dead_man: {after: ${WINDOW}s}}
rules:
  - name: edge-4-attested
    match: {nodes: {names: [edge-4]}}
    effect: allow
    require: [attested]
  - name: edge
    match: {nodes: {groups: [edge]}}
    effect: allow
YAML
issue "$F" node edge-4
seen_at() { ctl "$F" node list --json | grep "\"node\":\"$1\"" | sed -n 's/.*"last_seen_at":\([0-9]*\).*/\1/p'; }
t1=$(date +%s)
expect_match "edge-4 (require: [attested]) sends a heartbeat without a quote: answered" \
    "$(rpc "$F" edge-4 NodeService/Heartbeat "${PROTO[@]}" --data-binary '')" "^200 "
expect_match "edge-2 (no such rule) too" "$(rpc "$F" edge-2 NodeService/Heartbeat "${PROTO[@]}" --data-binary '')" "^200 "
check "... edge-2's heartbeat is its contact" test "$(seen_at edge-2)" -ge "$t1"
s4=$(seen_at edge-4)
check "... edge-4's is not: never seen (last_seen_at ${s4:-absent})" test "${s4:-0}" -eq 0
expect_match "... and that is logged" "$(cat "$F/keyfleetd.log")" "event=heartbeat_not_contact node=edge-4 reason=no_quote"

# Review rev19, F1: an answer that says revoked is no contact: neither status nor watch renews
# the remembered last contact, which the offline fallback's window counts from.
contact_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dead_man"]["last_contact"])' "$WORK/edge-1-state.json"; }
A status >/dev/null 2>&1
c0=$(contact_of)
sleep 1.1
A status >/dev/null 2>&1
check "control: status renews the last contact of a node in good standing" test "$(contact_of)" -gt "$c0"
c0=$(contact_of)
ctl "$F" node revoke edge-1 "stolen" >/dev/null
sleep 1.1
A status >/dev/null 2>&1
A watch --count 1 >/dev/null 2>&1
expect_eq "a revoked node's status and watch do not renew its last contact" "$(contact_of)" "$c0"

finish
