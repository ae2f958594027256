#!/usr/bin/env bash
# Review rev40 F3 (docs/reviews/rev40-store-failover-client.md): a client that got `unavailable`
# naming no leader from one coordinator goes on to the next; a follower there naming that same
# coordinator as leader sent it back, and the request was sent to the coordinator that could not
# serve it again, once per hint followed (two more times); after a hint to another coordinator
# the turn started over and asked the first one again. A request that is not idempotent (an
# enroll, a rotation step, an approval) must reach a coordinator that answered it so no more.
# The "unready" coordinators are stand-ins answering every request 503 naming no leader, counting them.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
DIR=$(cd "$(dirname "$0")" && pwd)
start_unready() { # NAME: a stand-in answering 503 naming no leader; $WORK/NAME.count counts requests
    KF_INTEGRATION_DIR=$DIR /usr/bin/python3 - "$F/coordinator.crt" "$F/coordinator.key" "$WORK/$1.port" \
        "$WORK/$1.count" "$1" <<'PY' &
import os, sys
sys.path.insert(0, os.environ["KF_INTEGRATION_DIR"])
import h2_standin
cert, key, port_file, count, name = sys.argv[1:6]
BODY = ('{"code":"unavailable","message":"%s: state store failed"}' % name).encode()
def answer(stream):
    with open(count, "a") as f:
        f.write("request\n")
    return h2_standin.response(stream, "503", "application/json", BODY)
h2_standin.run(cert, key, answer, port_file=port_file)
PY
    PIDS+=($!)
    for _ in $(seq 1 100); do [ -s "$WORK/$1.port" ] && break; sleep 0.05; done
}
start_follower() { # NAME LEADER
    python3 "$DIR/follower_standin.py" "$F/coordinator.crt" "$F/coordinator.key" "$WORK/$1.port" "$2" &
    PIDS+=($!)
    for _ in $(seq 1 100); do [ -s "$WORK/$1.port" ] && break; sleep 0.05; done
}
addr() { echo "127.0.0.1:$(cat "$WORK/$1.port" 2>/dev/null)"; }
count() { wc -l <"$WORK/$1.count" 2>/dev/null | tr -d ' '; }
start_unready u1
start_unready u2
U1=$(addr u1)
U2=$(addr u2)
start_follower f1 "$U1"
start_follower f2 "$U2"
F1=$(addr f1)
F2=$(addr f2)
check "the stand-ins listen" test -n "${U1#127.0.0.1:}" -a -n "${U2#127.0.0.1:}" -a -n "${F1#127.0.0.1:}" -a -n "${F2#127.0.0.1:}"
coordinators() { sed -i "s|^coordinators:.*|coordinators: [$1]|; /^  - \"/d" "$F/keyfleetctl.yaml"; }

# u1 first, then a follower naming u1: u1 is asked once, and its answer is the one shown.
coordinators "\"$U1\", \"$F1\""
out=$("$CTL" -c "$F/keyfleetctl.yaml" status 2>&1)
expect_match "the answer is the unready coordinator's" "$out" "u1: state store failed"
expect_eq "the unready coordinator was asked once" "$(count u1)" "1"

# u1, a follower naming u2, u2: after the hint the turn starts over from u2 and skips u1.
rm -f "$WORK/u1.count" "$WORK/u2.count"
coordinators "\"$U1\", \"$F2\", \"$U2\""
out=$("$CTL" -c "$F/keyfleetctl.yaml" status 2>&1)
expect_match "... the first unready coordinator's answer is shown" "$out" "u1: state store failed"
expect_eq "... u1 asked once (not again after the hint to u2)" "$(count u1)" "1"
expect_eq "... u2 asked once" "$(count u2)" "1"
finish
