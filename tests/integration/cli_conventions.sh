#!/usr/bin/env bash
# The command-line conventions (issue #19, section 3; keyfleetctl(8), keyfleet-agent(8),
# keyfleetd(8)): every binary and command answers --help (usage on stdout, exit 0) and --version;
# `help COMMAND`; usage errors exit 2 with the command's usage; the documented exit codes
# (policy check: 0 allow, 3 approval, 4 deny); --json on the listing and reporting commands;
# unknown filter values refused with the valid list; volume names independent of the working
# directory.
. "$(dirname "$0")/lib.sh"

VERSION=$(sed -n 's/^project(keyfleet VERSION \([0-9.]*\).*/\1/p' "$KF_SOURCE_DIR/CMakeLists.txt")
# run CMD...: sets OUT (stdout), ERR (stderr) and RC.
run() { OUT=$("$@" 2>"$WORK/err"); RC=$?; ERR=$(cat "$WORK/err"); }

for prog in "$KFD" "$AGENT" "$CTL"; do
    name=$(basename "$prog")
    run "$prog" --version
    expect_eq "$name --version: '$name $VERSION', exit 0" "$RC:$OUT" "0:$name $VERSION"
    run "$prog" --help
    expect_match "$name --help: its usage on stdout, exit 0" "$RC:$OUT" "^0:usage: $name "
    run "$prog" --no-such-option
    expect_match "$name --no-such-option: usage on stderr, exit 2" "$RC:$OUT:$ERR" "^2::.*usage: $name "
done
run "$KFD" --check-config --help
expect_match "keyfleetd --check-config --help: the usage, not a config check" "$RC:$OUT" "^0:usage: keyfleetd "

# Every keyfleetctl command, and the subcommand forms, with --help; and help COMMAND. No config
# exists here: none of these may need one.
for cmd in init cert status pending approve deny audit policy node kms approle cluster; do
    run "$CTL" -c "$WORK/none.yaml" "$cmd" --help
    expect_match "keyfleetctl $cmd --help: exit 0, its usage" "$RC:$OUT" "^0:usage: keyfleetctl $cmd "
    run "$CTL" help "$cmd"
    expect_match "keyfleetctl help $cmd: the same" "$RC:$OUT" "^0:usage: keyfleetctl $cmd "
    run "$CTL" "$cmd" --version
    expect_eq "keyfleetctl $cmd --version" "$RC:$OUT" "0:keyfleetctl $VERSION"
done
for sub in "cert issue" "cert revoke" "audit verify" "audit checkpoint" "policy check" "policy put" \
    "approle create" "approle show" "cluster status" "node revoke" "kms rotate"; do
    set -- $sub
    run "$CTL" "$1" "$2" --help
    expect_match "keyfleetctl $sub --help: exit 0, the usage of $1" "$RC:$OUT" "^0:usage: keyfleetctl $1 "
done
run "$CTL" help
expect_match "keyfleetctl help: the whole usage, every command" "$RC:$OUT" "^0:usage: keyfleetctl .*commands.*approve REQUEST_ID.*cluster status"
run "$CTL" help no-such-command
expect_match "keyfleetctl help no-such-command: exit 2, naming the commands" "$RC:$ERR" "^2:keyfleetctl: unknown command 'no-such-command'; the commands are: init cert status"
run "$CTL" no-such-command
expect_match "keyfleetctl no-such-command: exit 2" "$RC:$ERR" "^2:keyfleetctl: unknown command 'no-such-command'"
run "$CTL" approve
expect_match "keyfleetctl approve without an id: exit 2, approve's usage on stderr" "$RC:$ERR" "^2:usage: keyfleetctl approve REQUEST_ID"
run "$CTL" approve --no-such-option x
expect_eq "keyfleetctl approve --no-such-option: exit 2" "$RC" 2

for cmd in enroll unlock status rewrap rotate recover identity seal-secret-id watch check-config initramfs-files keyscript; do
    run "$AGENT" -c "$WORK/none.yaml" "$cmd" --help
    expect_match "keyfleet-agent $cmd --help: exit 0, its usage (no config needed)" "$RC:$OUT" "^0:usage: keyfleet-agent $cmd"
    run "$AGENT" help "$cmd"
    expect_match "keyfleet-agent help $cmd: the same" "$RC:$OUT" "^0:usage: keyfleet-agent $cmd"
done
run "$AGENT" unlock --version
expect_eq "keyfleet-agent unlock --version" "$RC:$OUT" "0:keyfleet-agent $VERSION"

# Filters: an unknown value is refused with the valid ones, before any call.
run "$CTL" -c "$WORK/none.yaml" audit --action bogus
expect_match "audit --action bogus: exit 2, the valid actions listed" "$RC:$ERR" \
    "^2:keyfleetctl: --action 'bogus' is not an audit action; the actions are: .*approve.*release.*revoke"
run "$CTL" -c "$WORK/none.yaml" audit --decision maybe
expect_match "audit --decision maybe: exit 2, the valid decisions listed" "$RC:$ERR" "^2:.*the decisions are: allow deny pending error"
run "$CTL" -c "$WORK/none.yaml" status --bogus
expect_match "status --bogus: exit 2" "$RC:$ERR" "^2:.*unexpected argument '--bogus'"

# Against a coordinator: --json and the exit codes.
F=$WORK/fleet
fleet_init "$F"
issue "$F" node node-a
start_kfd "$F"
json_ok() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert eval(sys.argv[2]), d' "$1" "$2" 2>&1; }
run ctl "$F" status --json
expect_eq "status --json: one JSON object, ready" "$RC:$(json_ok "$OUT" 'd["ready"] is True and d["coordinator"]=="coordinator-1" and len(d["members"])==1')" "0:"
run ctl "$F" cluster status --json
expect_eq "cluster status --json: the leader and its members" "$RC:$(json_ok "$OUT" 'd["leader"]=="coordinator-1" and d["members"][0]["reachable"]')" "0:"
run ctl "$F" pending --json
expect_eq "pending --json: an empty array" "$RC:$OUT" "0:[]"
run ctl "$F" approle create r1 --node node-a
run ctl "$F" approle show r1 --json
expect_eq "approle show --json: the role" "$RC:$(json_ok "$OUT" 'd["name"]=="r1" and d["node"]=="node-a" and len(d["role_id"])>0')" "0:"

WORK_VOL=$WORK/vols
mkdir -p "$WORK_VOL"
put_policy "$F" <<YAML
rules:
  - name: by-path
    match: {volumes: {names: ["$WORK_VOL/data.luks"]}, nodes: {names: [node-a]}}
    effect: allow
  - name: gated
    match: {nodes: {names: [node-b]}}
    effect: allow
    approval: {approvers: 1}
YAML
run ctl "$F" policy check node-a some-volume
expect_match "policy check: deny exits 4" "$RC:$OUT" "^4:decision: deny"
run ctl "$F" policy check node-b some-volume --json
expect_eq "policy check: allow after approval exits 3, --json says approval" "$RC:$(json_ok "$OUT" 'd["decision"]=="approval" and d["rule"]=="gated" and d["approvals_needed"]==1')" "3:"

# Volume names: a relative path is made absolute, so the enrolled name (which policy matches)
# is the same from any working directory and any spelling.
luks_file "$WORK_VOL/data.luks" "pass"
agent_config "$WORK/a.yaml" node-a
printf 'pass' >"$WORK/pass"
out=$(cd "$WORK_VOL" && "$AGENT" -c "$WORK/a.yaml" enroll luks:./data.luks --auth-file "$WORK/pass" 2>&1)
expect_match "enroll luks:./data.luks from its directory: enrolled as $WORK_VOL/data.luks (the policy matched that name)" \
    "$out" "^enrolled luks2 $WORK_VOL/data.luks "
out=$(cd / && "$AGENT" -c "$WORK/a.yaml" unlock "luks:$WORK_VOL/../vols/./data.luks" 2>&1) && rc=0 || rc=$?

expect_match "unlock by another spelling, from /: the same volume, released (the name still matches)" \
    "$out rc=$rc" "^luks2 $WORK_VOL/data.luks: unlocked.* rc=0"

# The man pages name every command the binaries' --help lists (docs/man/*.scd, built by scdoc).
MAN_DIR=$(cd "$(dirname "$0")/../.." && pwd)/docs/man
for pair in "$AGENT:keyfleet-agent.8" "$CTL:keyfleetctl.8"; do
    bin=${pair%%:*} page=${pair##*:} missing=""
    for c in $("$bin" --help | sed -n 's/^  \([a-z][a-z-]*\).*/\1/p' | sort -u); do
        grep -Eq "(^|, )\*$c( |\*)" "$MAN_DIR/$page.scd" || missing="$missing $c"
    done
    expect_eq "$page names every command of $(basename "$bin") --help" "$missing" ""
done

# The shipped example policy (README quick start) is accepted as it is, and decides as it says.
EXAMPLE=$(cd "$(dirname "$0")/../.." && pwd)/examples/policy.yaml
run ctl "$F" policy put "$EXAMPLE"
expect_match "policy put examples/policy.yaml is accepted" "$RC:$OUT" "^0:"
run ctl "$F" policy check node-1 some-volume
expect_match "... the quick start's node-1 is allowed" "$RC:$OUT" "^0:decision: allow.*quickstart"
run ctl "$F" policy check quarantined-7 some-volume
expect_match "... a quarantined node is denied" "$RC:$OUT" "^4:decision: deny.*quarantine"
stop_kfd
finish
