#!/usr/bin/env bash
# keyfleet-bench runs end to end against a real keyfleetd: 40 nodes with fresh mTLS connections,
# the handshake floor, the warm path; every release opens, and it reports what the issue names.
# scripts/bench-agent runs too, for three rounds.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
start_kfd "$F"
out=$("$BUILD/bench/keyfleet-bench" --fleet "$F" --server "127.0.0.1:$PORT" --pid "$KFD_PID" --nodes 40 \
    --concurrency 8 --warm 3 --json 2>&1)
rc=$?
expect_eq "the bench completes with no errors" "$rc" "0"
expect_match "it reports the floor, fresh and warm releases" "$out" '"handshake_floor":\{"ok":40,"errors":0.*"release_fresh":\{"ok":40,"errors":0.*"release_warm":\{"ok":24,"errors":0'
expect_match "... the ratio, latency percentiles, server CPU and RSS" "$out" '"p99_ms":[0-9.]+.*"server_cpu_us_per_op":[0-9.]+.*"ratio_to_floor":[0-9.]+,"server_peak_rss_kb":[0-9]+'
expect_match "the audit has every release" "$(ctl "$F" audit --action release --decision allow --json | wc -l)" "^64$"
out=$("$BUILD/bench/keyfleet-bench" --fleet "$F" --server "10.0.0.1:$PORT" --pid "$KFD_PID" 2>&1)
expect_match "it refuses a server outside 127.0.0.0/8" "$out" "must be on 127.0.0.0/8"
G=$WORK/other
fleet_init "$G"
mkdir -p "$WORK/foreign-cache"
cp "$G/ca.crt" "$WORK/foreign-cache/fleet-ca.crt"
out=$("$BUILD/bench/keyfleet-bench" --fleet "$F" --server "127.0.0.1:$PORT" --pid "$KFD_PID" --nodes 2 \
    --cache "$WORK/foreign-cache" 2>&1)
expect_match "it refuses a cache made for another fleet" "$out" "was made for another fleet"
stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"

# scripts/bench-agent (issue 4's figure) runs end to end: agent, reference and floor each unlock.
out=$(bash "$(dirname "$0")/../../scripts/bench-agent" "$BUILD" 3 2>&1)
expect_match "bench-agent times the agent, the reference and the floor" "$out" \
    "keyfleet-agent unlock, one LUKS2 volume: median [0-9.]+ ms over 3 runs.*cryptsetup open --test-passphrase.*median [0-9.]+ ms.*unlock-floor.*median [0-9.]+ ms.*ratio agent/reference: [0-9.]+"
check_sanitizers
finish
