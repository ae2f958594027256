#!/usr/bin/env bash
# Signals and privileges: TERM and INT drain and exit 0 (also with a client connected), HUP
# reloads the certificate, and the daemon can drop to an unprivileged, non-dumpable user.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
"$CTL" init "$WORK/new/parents/fleet" --listen 127.0.0.1:0 >/dev/null
expect_eq "keyfleetctl init makes missing parents, each 0700" \
    "$(stat -c %a "$WORK/new" "$WORK/new/parents" "$WORK/new/parents/fleet" | tr '\n' ' ')" "700 700 700 "
cat >>"$F/keyfleetd.yaml" <<'YAML'
limits:
  shutdown_grace: 3s
YAML
umask 022
start_kfd "$F"
ctl "$F" status >/dev/null 2>&1 # a write or two, so the WAL exists
expect_eq "started with umask 022, keyfleetd's database, WAL and port file are 0600" \
    "$(stat -c %a "$F/state/keyfleet.db" "$F/state/keyfleet.db-wal" "$F/keyfleetd.port" 2>&1 | tr '\n' ' ')" "600 600 600 "

# The start-up line carries the index the store holds, which operations.md has operators compare.
stop_kfd TERM
db_index=$(sqlite3 "$F/state/keyfleet.db" "SELECT applied_index FROM raft_state")
start_kfd "$F"
expect_match "raft_started names the applied index the database holds ($db_index)" \
    "$(grep 'event=raft_started' "$F/keyfleetd.log" | tail -n 1)" " applied=$db_index "

serial() {
    timeout 10 openssl s_client -connect "127.0.0.1:$PORT" -cert "$F/operator.crt" -key "$F/operator.key" \
        -CAfile "$F/ca.crt" </dev/null 2>/dev/null | openssl x509 -noout -serial 2>/dev/null
}
before=$(serial)
"$CTL" cert issue coordinator coordinator-1 --dir "$F" --out "$F/coordinator" --force --san DNS:localhost --san IP:127.0.0.1 >/dev/null
kill -HUP "$KFD_PID"
after=""
for _ in $(seq 1 100); do
    after=$(serial)
    [ -n "$after" ] && [ "$after" != "$before" ] && break
    sleep 0.05
done
check "SIGHUP serves the new certificate" test -n "$after" -a "$after" != "$before"
expect_eq "the reload is counted" "$(metric "$F" keyfleet_tls_reloads_total)" "1"
expect_eq "the old operator certificate still works after reload" \
    "$(kcurl "$F" operator -o /dev/null -w '%{http_code}' "$URL/healthz")" "200"

# A broken certificate file on HUP keeps the old one.
cp "$F/coordinator.crt" "$WORK/good.crt"
echo garbage >"$F/coordinator.crt"
kill -HUP "$KFD_PID"
for _ in $(seq 1 100); do grep -q event=tls_reload_failed "$F/keyfleetd.log" && break; sleep 0.05; done
expect_match "a failed reload is logged" "$(cat "$F/keyfleetd.log")" "event=tls_reload_failed .*keeping=previous"
expect_eq "and service continues on the previous certificate" \
    "$(kcurl "$F" operator -o /dev/null -w '%{http_code}' "$URL/healthz")" "200"
cp "$WORK/good.crt" "$F/coordinator.crt"

# TERM with an idle HTTP/2 client connected: it drains within the grace and exits 0.
(sleep 20 | timeout 25 openssl s_client -quiet -connect "127.0.0.1:$PORT" -alpn h2 -cert "$F/operator.crt" \
    -key "$F/operator.key" -CAfile "$F/ca.crt") >/dev/null 2>&1 &
idle=$!
sleep 0.5
start=$(date +%s%N)
stop_kfd TERM
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
kill "$idle" 2>/dev/null
expect_eq "SIGTERM with a client connected exits 0" "$KFD_EXIT" "0"
check "... within the shutdown grace (took ${elapsed_ms} ms)" test "$elapsed_ms" -lt 5000
expect_match "stopping is logged" "$(cat "$F/keyfleetd.log")" "event=stopping signal=TERM"

start_kfd "$F"
stop_kfd INT
expect_eq "SIGINT exits 0" "$KFD_EXIT" "0"

if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
    chmod 0755 "$WORK"
    chown -R nobody "$F/state"
    echo "user: nobody" >>"$F/keyfleetd.yaml"
    start_kfd "$F"
    expect_eq "the daemon runs as the configured user" "$(awk '/^Uid:/ {print $2}' /proc/$KFD_PID/status)" "$(id -u nobody)"
    # A non-dumpable process's /proc files belong to root even when it runs as another user.
    expect_eq "the daemon is not dumpable" "$(stat -c %u /proc/$KFD_PID/environ)" "0"
    expect_eq "... and still serves" "$(kcurl "$F" operator -o /dev/null -w '%{http_code}' "https://127.0.0.1:$PORT/healthz")" "200"
    stop_kfd TERM
    expect_eq "the unprivileged daemon exits 0 on TERM" "$KFD_EXIT" "0"
else
    echo "# not root: the privilege drop is not exercised here (CI runs as root)"
fi
check_sanitizers
finish
