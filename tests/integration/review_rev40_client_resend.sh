#!/usr/bin/env bash
# Review rev40 F3 (docs/reviews/rev40-store-failover-client.md): a client that got `unavailable`
# naming no leader from one coordinator goes on to the next; a follower there naming that same
# coordinator as leader sent it back, and the request was sent to the coordinator that could not
# serve it again, once per hint followed (two more times). A request that is not idempotent
# (an enroll, a rotation step, an approval) must reach a coordinator that answered it once no more.
# Here the "leader" is a stand-in that answers every request 503 naming no leader and counts them.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
UNREADY_FILE=$WORK/unready.port
COUNT=$WORK/unready.count
KF_INTEGRATION_DIR=$(cd "$(dirname "$0")" && pwd) /usr/bin/python3 - "$F/coordinator.crt" "$F/coordinator.key" "$UNREADY_FILE" "$COUNT" <<'PY' &
import os, sys
sys.path.insert(0, os.environ["KF_INTEGRATION_DIR"])
import h2_standin
cert, key, port_file, count = sys.argv[1:5]
BODY = b'{"code":"unavailable","message":"coordinator cannot release keys: state store failed"}'
def answer(stream):
    with open(count, "a") as f:
        f.write("request\n")
    return h2_standin.response(stream, "503", "application/json", BODY)
h2_standin.run(cert, key, answer, port_file=port_file)
PY
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$UNREADY_FILE" ] && break; sleep 0.05; done
UNREADY=127.0.0.1:$(cat "$UNREADY_FILE")
python3 "$(dirname "$0")/follower_standin.py" "$F/coordinator.crt" "$F/coordinator.key" "$WORK/f.port" "$UNREADY" &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/f.port" ] && break; sleep 0.05; done
FOLLOWER=127.0.0.1:$(cat "$WORK/f.port")
check "the stand-ins listen" test -n "${UNREADY#127.0.0.1:}" -a -n "${FOLLOWER#127.0.0.1:}"

sed -i "s|^coordinators:.*|coordinators: [\"$UNREADY\", \"$FOLLOWER\"]|; /^  - \"/d" "$F/keyfleetctl.yaml"
out=$("$CTL" -c "$F/keyfleetctl.yaml" status 2>&1)
expect_match "the answer is the unready coordinator's" "$out" "state store failed"
expect_eq "the unready coordinator was asked once" "$(wc -l <"$COUNT" 2>/dev/null | tr -d ' ')" "1"
finish
