#!/usr/bin/env bash
# The Ansible roles and the fleet health check, run for real with a local connection: the roles
# install a coordinator and a node under a scratch root (no systemd here), the rendered configs
# pass the binaries' own checks, a second run changes nothing, keyfleetd starts from what was
# installed and the agent unlocks through it; health.yml passes on that fleet and fails, naming
# the reason, on a volume that is not enrolled, on a key overdue for rotation, on a node past
# its dead-man window, on a certificate about to expire, on a revoked node and on a coordinator
# that is down.
. "$(dirname "$0")/lib.sh"

PLAY=ansible-playbook
command -v "$PLAY" >/dev/null || { not_ok "ansible-playbook is installed (scripts/install-deps)"; finish; }
export ANSIBLE_NOCOLOR=1 ANSIBLE_HOST_KEY_CHECKING=0 ANSIBLE_LOCAL_TEMP=$WORK/ansible-tmp \
    ANSIBLE_REMOTE_TEMP=$WORK/ansible-tmp ANSIBLE_RETRY_FILES_ENABLED=0
A=$KF_SOURCE_DIR/ansible
F=$WORK/fleet
ROOT=$WORK/root
fleet_init "$F"
issue "$F" coordinator kfa --san IP:127.0.0.1
issue "$F" node n1
RPC=127.0.0.1:$(test_port)
luks_file "$WORK/d.luks" "pw"

cat >"$WORK/inventory.yml" <<YAML
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: /usr/bin/python3
    keyfleet_root: $ROOT
    keyfleet_manage_service: false
    keyfleet_pki_dir: $F
    keyfleetd_bin: $KFD
    keyfleet_agent_bin: $AGENT
    keyfleetctl_bin: $CTL
    keyfleetctl_config: $F/keyfleetctl.yaml
    keyfleet_agent_config: $ROOT/etc/keyfleet/agent.yaml
  children:
    coordinators:
      hosts:
        kfa: {keyfleet_name: kfa, keyfleet_rpc_address: "$RPC"}
    nodes:
      hosts:
        n1:
          keyfleet_node_name: n1
          keyfleet_volumes: [{luks: "$WORK/d.luks"}]
          keyfleet_luks_activate: false
          keyfleet_zfs_discover: false
          keyfleet_health_key_states: [unlocked, locked]
          keyfleet_initramfs: true
YAML
# An image built before keyfleet was installed: the role makes it 0600 (it is about to hold the key).
mkdir -p "$ROOT/boot" && : >"$ROOT/boot/initrd.img-test" && chmod 0644 "$ROOT/boot/initrd.img-test"

out=$("$PLAY" -i "$WORK/inventory.yml" --syntax-check "$A/site.yml" "$A/health.yml" 2>&1)
expect_eq "the playbooks pass ansible's syntax check" "$?" "0"

out=$("$PLAY" -i "$WORK/inventory.yml" "$A/site.yml" 2>&1)
rc=$?
expect_eq "site.yml installs a coordinator and a node" "$rc" "0"
[ "$rc" = 0 ] || { echo "$out" >"${KF_PLAY_LOG:-/dev/null}"; echo "$out" | grep -A3 -E "fatal|failed:|FAILED!|ERROR" | head -n 20 | sed "s/^/# /"; }
check "keyfleetd.yaml was rendered and checked by keyfleetd" "$KFD" --check-config -c "$ROOT/etc/keyfleet/keyfleetd.yaml"
check "agent.yaml was rendered and checked by the agent" "$AGENT" -c "$ROOT/etc/keyfleet/agent.yaml" check-config
expect_eq "private keys are installed 0600" "$(stat -c %a "$ROOT/etc/keyfleet/kfa.key" "$ROOT/etc/keyfleet/n1.key" \
    "$ROOT/var/lib/keyfleet/kek/kek-1.key" | sort -u)" "600"
check "no key material in the play's output" test "$(grep -c "PRIVATE KEY" <<<"$out")" = 0
expect_eq "the role installs the initramfs-tools hook, script and UMASK=0077 snippet" \
    "$(cat "$ROOT/etc/initramfs-tools/conf.d/keyfleet" | grep -v '^#'; stat -c %a "$ROOT/etc/initramfs-tools/hooks/keyfleet" \
        "$ROOT/etc/initramfs-tools/scripts/local-top/keyfleet")" "UMASK=0077
755
755"
expect_eq "... and makes existing images 0600" "$(stat -c %a "$ROOT/boot/initrd.img-test")" "600"
out=$("$PLAY" -i "$WORK/inventory.yml" "$A/site.yml" 2>&1)
expect_match "a second run changes nothing" "$out" "kfa +: ok=[0-9]+ +changed=0 .*n1 +: ok=[0-9]+ +changed=0 "

# A rendered config that keyfleetd refuses is not installed.
out=$("$PLAY" -i "$WORK/inventory.yml" "$A/site.yml" -e keyfleet_log_level=chatty 2>&1)
expect_match "a config keyfleetd refuses is not installed" "$out" "failed to validate"
check "... and the installed one is unchanged" grep -q "^log_level: info" "$ROOT/etc/keyfleet/keyfleetd.yaml"

# keyfleetd from what the role installed; the agent from what the role installed.
"$KFD" -c "$ROOT/etc/keyfleet/keyfleetd.yaml" >"$WORK/kfd.log" 2>&1 &
KFD_PID=$!
PIDS+=("$KFD_PID")
PORT=${RPC##*:}
for _ in $(seq 1 100); do ctl "$F" status >/dev/null 2>&1 && break; sleep 0.05; done
allow_nodes "$F" "n*"
printf 'pw' | "$AGENT" -c "$ROOT/etc/keyfleet/agent.yaml" enroll "$WORK/d.luks" >/dev/null 2>&1
expect_eq "the installed agent enrolls through the installed coordinator" "$?" "0"
"$AGENT" -c "$ROOT/etc/keyfleet/agent.yaml" unlock --all >/dev/null 2>&1
expect_eq "... and unlocks" "$?" "0"

out=$("$PLAY" -i "$WORK/inventory.yml" "$A/health.yml" 2>&1)
rc=$?
expect_eq "health.yml passes on a healthy fleet" "$rc" "0"
expect_match "... and says why" "$out" "keyfleet coordinator kfa is ready; leader: kfa.*keyfleet node n1: 1 volume\(s\) healthy"

# With an anchor file, the play saves the newest signed checkpoint and checks the log against it.
sleep 0.5 # the checkpoint after the unlock's records
for i in 1 2; do
    out=$("$PLAY" -i "$WORK/inventory.yml" "$A/health.yml" -e keyfleet_audit_anchor_file="$WORK/anchors.jsonl" 2>&1)
    rc=$?
    expect_eq "health.yml with an anchor file passes (run $i)" "$rc" "0"
done
expect_match "... and saved a signed checkpoint" "$(head -n 1 "$WORK/anchors.jsonl")" '^\{"format":"keyfleet-audit-checkpoint/v1","seq":[0-9]+'

# A key older than the policy's max_key_age (1 s here): reported until it is rotated; a node
# silent past its group's dead-man window: n2, which enrolled a volume and never sent a heartbeat
# (n1's agent status sends one in each health run).
issue "$F" node n2
expect_match "n2 enrolls a volume" "$(node "$F" n2 enroll vol-n2 data-n2)" "^code=ok"
put_policy "$F" <<'YAML'
lifecycle: {max_key_age: 1s}
groups:
  silent: {nodes: ["n2"], dead_man: {after: 1s}}
rules:
  - {name: all, match: {nodes: {names: ["n*"]}}, effect: allow}
YAML
for _ in $(seq 1 100); do ctl "$F" volume list --json | grep -q '"key_overdue":true' && break; sleep 0.1; done
out=$("$PLAY" -i "$WORK/inventory.yml" "$A/health.yml" 2>&1)
rc=$?
check "health.yml fails on a key overdue for rotation" test "$rc" -ne 0
expect_match "... naming the volume, its node and the rule" "$out" \
    "keyfleet volume $(cryptsetup luksUUID "$WORK/d.luks") of node n1: key overdue for rotation \(0 days old, max_key_age of lifecycle\); run keyfleet-agent rotate"
expect_match "health.yml names a node past its dead-man window" "$out" \
    "keyfleet node n2: no heartbeat for longer than its dead-man window \(1 s\); its agent locks its volumes"
allow_nodes "$F" "n*"

# Certificates that expire within keyfleet_health_cert_days, and revoked nodes, are unhealthy.
out=$("$PLAY" -i "$WORK/inventory.yml" "$A/health.yml" -e keyfleet_health_cert_days=100000 2>&1)
rc=$?
check "health.yml fails on a certificate that expires within keyfleet_health_cert_days" test "$rc" -ne 0
expect_match "... naming the node and the date" "$out" "keyfleet node n1: certificate expires 20[0-9-]+T"
ctl "$F" node revoke n1 "health check test" >/dev/null
out=$("$PLAY" -i "$WORK/inventory.yml" "$A/health.yml" 2>&1)
rc=$?
check "health.yml fails on a revoked node" test "$rc" -ne 0
expect_match "... as the node's agent and the coordinator say" "$out" \
    "keyfleet node n1: a coordinator reports this node revoked.*keyfleet node n1 is revoked"
expect_match "node unrevoke (one operator suffices without admin.approvers)" "$(ctl "$F" node unrevoke n1)" \
    "node n1 is no longer revoked"

# A second volume that was never enrolled.
luks_file "$WORK/e.luks" "pw"
cp "$ROOT/etc/keyfleet/agent.yaml" "$WORK/agent2.yaml"
printf '  - {"luks": "%s"}\n' "$WORK/e.luks" >>"$WORK/agent2.yaml"
out=$("$PLAY" -i "$WORK/inventory.yml" "$A/health.yml" -e keyfleet_agent_config="$WORK/agent2.yaml" 2>&1)
rc=$?
check "health.yml fails on a volume that is not enrolled" test "$rc" -ne 0
expect_match "... naming it" "$out" "keyfleet node n1: luks2 $WORK/e.luks is not-enrolled"

kill -TERM "$KFD_PID"
wait "$KFD_PID"
out=$("$PLAY" -i "$WORK/inventory.yml" "$A/health.yml" 2>&1)
rc=$?
check "health.yml fails when the coordinator is down" test "$rc" -ne 0
expect_match "... for the coordinator and for the node" "$out" \
    "keyfleet coordinator kfa \($RPC\) is not healthy.*keyfleet node n1: coordinators unreachable"
finish
