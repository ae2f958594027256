# Helpers for tests that run keyfleetd clusters on loopback (sourced after lib.sh, with F set to
# the fleet directory): configs, start and stop, leader and catch-up waits, releases.
# A block of 50 ports below Linux's ephemeral range (32768 and up, where other tests' client
# connections take theirs), chosen from this shell's PID (two tests started together have
# different PIDs; RANDOM seeded at the same moment gave two of them the same block), claimed for
# this test's life in /tmp/kf-cluster-ports/SLOT (a directory naming the test's PID: a replica
# the test stopped leaves its ports free, and another test probing them took the block, so the
# restarted replica could not bind), and passed over while anything else listens in it.
cluster_base() {
    local k slot claims=/tmp/kf-cluster-ports owner
    mkdir -p "$claims" 2>/dev/null
    for k in $(seq 0 449); do
        slot=$(((${BASHPID:-$$} + k * 7) % 450))
        if ! mkdir "$claims/$slot" 2>/dev/null; then
            owner=$(cat "$claims/$slot/pid" 2>/dev/null)
            # Another test's while it runs; one being written (no pid yet) is left alone too,
            # unless it is a minute old (its test was killed between the two steps).
            if [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; then continue; fi
            if [ -z "$owner" ] && [ -z "$(find "$claims/$slot" -maxdepth 0 -mmin +1 2>/dev/null)" ]; then continue; fi
            rm -rf "$claims/$slot"
            mkdir "$claims/$slot" 2>/dev/null || continue
        fi
        echo "$$" >"$claims/$slot/pid"
        (exec 3<>"/dev/tcp/127.0.0.1/$((10000 + slot * 50 + 1))") 2>/dev/null && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$((10000 + slot * 50 + 21))") 2>/dev/null && continue
        break
    done
    echo $((10000 + slot * 50))
}
BASE=$(cluster_base)

# setup_cluster PREFIX N [EXTRA MEMBER]: configs for N coordinators PREFIX1..N (ports from BASE).
declare -A RPC RAFT PID
setup_cluster() {
    local prefix=$1 n=$2 off=$3 peers="" i
    for i in $(seq 1 "$n"); do
        RPC[$prefix$i]=127.0.0.1:$((BASE + off + i))
        RAFT[$prefix$i]=127.0.0.1:$((BASE + off + 20 + i))
        peers="$peers    - {name: $prefix$i, raft: \"${RAFT[$prefix$i]}\", rpc: \"${RPC[$prefix$i]}\"}"$'\n'
    done
    for i in $(seq 1 "$n"); do write_config "$prefix$i" "  peers:"$'\n'"$peers"; done
}
# write_config NAME CLUSTER_LINES: NAME's directory, certificate, shared KEK and config.
write_config() {
    local name=$1 d=$WORK/$1
    mkdir -p "$d/state"
    [ -f "$F/$name.crt" ] || issue "$F" coordinator "$name" --san IP:127.0.0.1 --san DNS:localhost
    [ -d "$d/state/kek" ] || cp -r "$F/state/kek" "$d/state/kek"
    cat >"$d/keyfleetd.yaml" <<YAML
name: $name
listen: ["${RPC[$name]}"]
port_file: keyfleetd.port
state_dir: state
tls: {cert: $F/$name.crt, key: $F/$name.key, ca: $F/ca.crt, client_auth: required}
log_level: info
cluster:
  election_timeout: 300ms
  heartbeat: 50ms
  snapshot_threshold: 64
  snapshot_trailing: 16
$2
YAML
}
start() { # NAME
    "$KFD" -c "$WORK/$1/keyfleetd.yaml" >>"$WORK/$1/keyfleetd.log" 2>&1 &
    PID[$1]=$!
    PIDS+=("$!")
}
status_of() { "$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[$1]}" status 2>/dev/null; }
leader_seen_by() { status_of "$1" | sed -n "s/^leader: //p" | grep -v "^(none)$"; }
applied_of() { status_of "$1" | sed -n "s/^  - $1 rpc=.* applied=//p"; }
now_ms() { date +%s%3N; }
# wait_leader NAME... : waits (at most 10 s) until the first named replica reports a leader
# among the named ones; prints it.
wait_leader() {
    local l
    for _ in $(seq 1 200); do
        l=$(leader_seen_by "$1")
        for n in "$@"; do [ "$l" = "$n" ] && { echo "$l"; return 0; }; done
        sleep 0.05
    done
    return 1
}
# caught_up NAME LEADER: waits (at most 15 s) until NAME has applied what LEADER has.
caught_up() {
    local a b
    for _ in $(seq 1 150); do
        a=$(applied_of "$1"); b=$(applied_of "$2")
        [ -n "$a" ] && [ "$a" = "$b" ] && return 0
        sleep 0.1
    done
    echo "# $1 applied=$a, $2 applied=$b"
    return 1
}
# stop_replicas NAME...: TERM to each; each must exit 0 within 15 s (a replica whose loop is
# stuck would never answer the signal: it is killed, and the log dump says where it stopped).
stop_replicas() {
    local n rc
    for n in "$@"; do kill -TERM "${PID[$n]}" 2>/dev/null; done
    for n in "$@"; do
        for _ in $(seq 1 150); do kill -0 "${PID[$n]}" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "${PID[$n]}" 2>/dev/null; then
            kill -9 "${PID[$n]}"
            wait "${PID[$n]}" 2>/dev/null
            not_ok "$n stops cleanly on TERM" "still running 15 s after TERM; killed"
            continue
        fi
        wait "${PID[$n]}"
        rc=$?
        expect_eq "$n stops cleanly on TERM" "$rc" "0"
    done
}
servers_of() { local s="" n; for n in "$@"; do s="$s${s:+,}${RPC[$n]}"; done; echo "$s"; }
# A newly elected leader answers "retry" until a majority confirms its audit head (tens of ms);
# release retries that answer only (at most 5 s), as the agent does.
release() { # NODE VOLUME WRAPPED SERVERS
    local out rc i
    for i in $(seq 1 50); do
        out=$("$NODE_CLIENT" "$4" "$F/$1.crt" "$F/$1.key" "$F/ca.crt" release "$2" "$3"); rc=$?
        [[ "$out" == *"newly elected leader is waiting"* ]] || break
        sleep 0.1
    done
    printf '%s\n' "$out"
    return $rc
}
# release_ok NODE VOLUME WRAPPED SERVERS: release, retried (at most 10 s) while a new leader
# confirms its audit head; prints the last answer.
release_ok() {
    local out i
    for i in $(seq 1 100); do
        out=$(release "$@")
        [[ "$out" == code=ok* ]] && break
        sleep 0.1
    done
    printf '%s\n' "$out"
}
# ctlx NAME ARGS...: keyfleetctl as the operator against replica NAME.
ctlx() { "$CTL" -c "$F/keyfleetctl.yaml" --server "${RPC[$1]}" "${@:2}"; }
# signed_on NAME: waits (at most 5 s) until NAME's newest audit record is a checkpoint.
signed_on() { wait_signed ctlx "$1"; }
# readyz NAME: the body of NAME's /readyz, then its HTTP status.
readyz() { curl -s --max-time 5 --http2 --cacert "$F/ca.crt" --cert "$F/operator.crt" --key "$F/operator.key" \
    -w ' %{http_code}' "https://${RPC[$1]}/readyz"; }
# start_cluster PREFIX N: N replicas PREFIX1..N (ports from BASE), started; keyfleetctl.yaml points
# at them and the policy allows nodes n*. Sets L (the leader) and CLUSTER (their RPC addresses).
start_cluster() {
    local prefix=$1 n=$2 names=() coords="" i
    setup_cluster "$prefix" "$n" 0
    for i in $(seq 1 "$n"); do
        names+=("$prefix$i")
        start "$prefix$i"
        coords="$coords${coords:+, }\"${RPC[$prefix$i]}\""
    done
    CLUSTER=$(servers_of "${names[@]}")
    L=$(wait_leader "${names[0]}" "${names[@]}")
    check "$n replicas elect a leader" test -n "$L"
    sed -i "s|^coordinators:.*|coordinators: [$coords]|; /^  - \"/d" "$F/keyfleetctl.yaml"
    PORT=${RPC[${names[0]}]##*:}
    for _ in $(seq 1 50); do allow_nodes "$F" "n*" 2>/dev/null && break; sleep 0.1; done
}
# pick_roles: A a follower, B the leader L, C the other (3 replicas c1..c3).
pick_roles() {
    A=$(for n in c1 c2 c3; do [ "$n" != "$L" ] && echo "$n" && break; done)
    B=$L
    C=$(for n in c1 c2 c3; do [ "$n" != "$A" ] && [ "$n" != "$B" ] && echo "$n"; done)
}
# stop_signed_cluster: waits until A, B and C each hold a checkpoint as their newest record and
# A and C hold what B holds, then stops all three (for edits to a stopped replica's database).
stop_signed_cluster() {
    local n
    for n in "$A" "$B" "$C"; do signed_on "$n"; done
    caught_up "$A" "$B"
    caught_up "$C" "$B"
    stop_replicas "$A" "$B" "$C"
}
# revoked_n1_cluster: a 3-replica cluster c1..c3 where n1 enrolled vol-1 (WRAP), got its key, was
# revoked and then refused; sets S3 (the servers), WRAP, and A, B, C (pick_roles).
# lock_db NAME: another process holds NAME's database locked (a write transaction, rolled back)
# until unlock_db (at most 20 s), so NAME's next write gets SQLITE_BUSY and its store fails.
lock_db() {
    rm -f "$WORK/locked" "$WORK/unlock"
    /usr/bin/python3 - "$WORK/$1/state/keyfleet.db" "$WORK/locked" "$WORK/unlock" <<'PY' &
import sqlite3, sys, time, pathlib
db = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
pathlib.Path(sys.argv[2]).touch()
end = time.monotonic() + 20
while time.monotonic() < end and not pathlib.Path(sys.argv[3]).exists():
    time.sleep(0.05)
db.execute("ROLLBACK")
PY
    LOCKER=$!
    PIDS+=("$LOCKER")
    for _ in $(seq 1 100); do [ -e "$WORK/locked" ] && break; sleep 0.05; done
}
# unlock_db NAME: once NAME logged its store failure (at most 10 s; a follower fails when it
# applies, after the release was answered), the lock is let go.
unlock_db() {
    for _ in $(seq 1 100); do grep -q "event=store_failed " "$WORK/$1/keyfleetd.log" && break; sleep 0.1; done
    touch "$WORK/unlock"
    wait "$LOCKER"
}
# n2_cluster: fleet $F with node n2, three replicas c1..c3 (start_cluster) and n2's volume vol-2
# enrolled (WRAP) and released once through them (asserted); S3 is their addresses.
n2_cluster() {
    fleet_init "$F"
    issue "$F" node n2
    start_cluster c 3
    S3=$CLUSTER
    WRAP=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n2.crt" "$F/n2.key" "$F/ca.crt" enroll vol-2 data)")
    expect_match "n2 gets its key" "$(release n2 vol-2 "$WRAP" "$S3")" "^code=ok status=released"
}
revoked_n1_cluster() {
    start_cluster c 3
    S3=$CLUSTER
    WRAP=$(field wrapped "$("$NODE_CLIENT" "$S3" "$F/n1.crt" "$F/n1.key" "$F/ca.crt" enroll vol-1 data)")
    expect_match "n1 gets its key before the revocation" "$(release n1 vol-1 "$WRAP" "$S3")" "^code=ok status=released"
    expect_match "n1 is revoked" "$(ctlx "$L" node revoke n1 stolen 2>&1)" "revoked"
    local out
    out=$(release n1 vol-1 "$WRAP" "$S3" 2>&1)
    check "the revoked n1 gets no key" test "${out#code=ok}" = "$out"
    pick_roles
}
