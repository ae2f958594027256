#!/usr/bin/env bash
# The README's "Quick start by hand", run as written: its sh block is taken from README.md and
# run with bash -e, with these substitutions only: the build directory for $PWD/build, a scratch
# directory for /etc/keyfleet and /var/tmp/keyfleet-demo, a random port for 7443, no
# install-deps or build lines (the build exists), activate: false (no device-mapper here), a
# cheap PBKDF for the container's passphrase, and keyfleetd's pid kept to stop it. It must end
# with the volume enrolled and unlocked, the release audited.
. "$(dirname "$0")/lib.sh"

SRC=${KF_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
QPORT=$(test_port)
block=$(awk '/^## Quick start by hand/ {q = 1} q && /^```sh$/ {b = 1; next} b && /^```$/ {exit} b {print}' "$SRC/README.md")
check "README.md has a quick start block" test -n "$block"
check "... that enrolls and unlocks" bash -c 'grep -q "keyfleet-agent .* enroll" <<<"$1" && grep -q "keyfleet-agent .* unlock" <<<"$1"' _ "$block"
script=$(printf '%s\n' "$block" | grep -v -e '^scripts/install-deps' -e '^cmake ' |
    sed -e "s#\$PWD/build#$BUILD#g" -e "s#/etc/keyfleet#$WORK/etc#g" -e "s#/var/tmp/keyfleet-demo#$WORK/demo#g" \
        -e "s#7443#$QPORT#g" -e 's#activate: true#activate: false#' \
        -e 's#--batch-mode#--batch-mode --pbkdf pbkdf2 --iter-time 20#' \
        -e "s#^\(keyfleetd .*\) &\$#\1 >>$WORK/etc/keyfleetd.log 2>\&1 \& echo \$! >$WORK/kfd.pid#")
out=$(cd "$SRC" && timeout 120 bash -e -c "$script" 2>&1)
rc=$?
[ -s "$WORK/kfd.pid" ] && PIDS+=("$(cat "$WORK/kfd.pid")")
expect_eq "the quick start runs to its end (bash -e)" "$rc" "0"
expect_match "keyfleetctl init makes the fleet" "$out" "initialised $WORK/etc: fleet CA"
expect_match "the coordinator answers status" "$out" "leader"
expect_match "the example policy is accepted" "$out" "policy version [0-9]+"
expect_match "node-1's volume is enrolled" "$out" "enrolled luks2 $WORK/demo/data.luks \(volume id [0-9a-f-]{36}\)"
expect_match "... and unlocked through the coordinator" "$out" "luks2 $WORK/demo/data.luks: unlocked"
expect_match "status shows the last unlock by the coordinator" "$out" "coordinators: reachable .*luks2 +[0-9a-f-]{36} +.*data.luks .*coordinator"
expect_match "the audit log holds node-1's release, allowed" "$out" "release +allow +node-1 +node-1 "
if [ "$rc" != 0 ]; then printf '%s\n' "$out" | tail -n 20 | sed 's/^/# /'; fi
if [ -s "$WORK/kfd.pid" ]; then
    pid=$(cat "$WORK/kfd.pid")
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
fi
check_sanitizers
finish
