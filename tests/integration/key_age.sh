#!/usr/bin/env bash
# Key lifecycle, max_key_age (docs/policy.md): keyfleetctl volume list shows each key's limit
# and whether it is overdue (table and JSON); an overdue key is still released, but the release's
# audit record, the coordinator's log and the agent's log say so; a rotation makes it current.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node node-a
start_kfd "$F"
put_policy "$F" <<'YAML'
lifecycle: {max_key_age: 1095d}
rules:
  - name: short-lived
    match: {volumes: {names: ["tank/old"]}, nodes: {cidrs: ["192.0.2.0/24"]}}
    effect: allow
    max_key_age: 3s
  - name: rest
    match: {nodes: {names: [node-a]}}
    effect: allow
YAML
check "a policy with max_key_age and lifecycle is accepted" test $? -eq 0

"$ZFS_STANDIN" __zpool_create tank
agent_config "$WORK/a.yaml" node-a
A() { "$AGENT" -c "$WORK/a.yaml" "$@"; }
check "enroll tank/old" A enroll zfs:tank/old
check "enroll tank/new" A enroll zfs:tank/new
OLD=$("$ZFS_STANDIN" get -H -p -o value guid tank/old)
NEW=$("$ZFS_STANDIN" get -H -p -o value guid tank/new)

# tank/old's rule matches it (its CIDR selector left out: a key's age does not depend on where a
# request comes from) and allows 3 s; wait, at most 20 s, until its key is older.
for _ in $(seq 1 200); do
    vl=$(ctl "$F" volume list --json)
    printf '%s' "$vl" | grep -q "\"volume\":\"$OLD\".*\"key_overdue\":true" && break
    sleep 0.1
done
expect_match "volume list --json: tank/old's key is overdue under its rule's max_key_age" "$vl" \
    "\"volume\":\"$OLD\",[^}]*\"max_key_age_s\":3,\"max_key_age_from\":\"short-lived\",\"key_overdue\":true"
expect_match "... tank/new's is within the lifecycle default" "$vl" \
    "\"volume\":\"$NEW\",[^}]*\"max_key_age_s\":94608000,\"max_key_age_from\":\"lifecycle\",\"key_overdue\":false"
vl=$(ctl "$F" volume list)
expect_match "volume list: MAX AGE and OVERDUE columns" "$vl" "^VOLUME +KIND +NODE +KEY MADE +KEY AGE +MAX AGE +OVERDUE +ROTATION"
expect_match "... tank/old OVERDUE" "$vl" "$OLD +zfs +node-a +[0-9T:-]+Z +0d +3s +OVERDUE +-"
expect_match "... tank/new not" "$vl" "$NEW +zfs +node-a +[0-9T:-]+Z +0d +1095d +- +-"

# Released all the same (a node must still boot), flagged.
"$ZFS_STANDIN" unmount tank/old
"$ZFS_STANDIN" unload-key tank/old
out=$(A unlock zfs:tank/old 2>&1)
expect_match "an overdue key is still released and unlocks" "$out" "zfs tank/old: unlocked"
expect_match "... the agent warns" "$out" "key_overdue.*hint=\"older than the policy's max_key_age"
expect_match "... the coordinator logs it" "$(cat "$F/keyfleetd.log")" "key_overdue node=node-a volume=\"?$OLD\"? .*max_key_age_s=3 from=\"?short-lived"
audit=$(ctl "$F" audit --volume "$OLD" --action release --json)
expect_match "... the release's audit record says so" "$audit" \
    "\"decision\":\"allow\".*key overdue: [0-9]+s old, max_key_age 3s \(short-lived\); rotate it"
"$ZFS_STANDIN" unmount tank/new
"$ZFS_STANDIN" unload-key tank/new
out=$(A unlock zfs:tank/new 2>&1)
expect_match "a current key unlocks without a warning" "$out" "zfs tank/new: unlocked"
check "... none" sh -c "! printf '%s' '$out' | grep -q key_overdue"
audit=$(ctl "$F" audit --volume "$NEW" --action release --json)
check "... and its record says nothing of age" sh -c "! printf '%s' '$audit' | grep -q 'key overdue'"

# A rotation makes the key new: its key_created_at moves on, and it is not overdue right after
# (checked when the list came within the 3 s, as a loaded machine may take longer).
before=$(date +%s)
out=$(A rotate zfs:tank/old 2>&1)
expect_match "rotate the overdue key" "$? $out" "^0 .*zfs tank/old: rotated"
vl=$(ctl "$F" volume list --json | grep "\"volume\":\"$OLD\"")
made=$(printf '%s' "$vl" | sed -n 's/.*"key_created_at":\([0-9]*\).*/\1/p')
check "... its key_created_at is the rotation's" test "${made:-0}" -ge "$before"
if [ $(($(date +%s) - made)) -le 3 ]; then
    expect_match "... and it is no longer overdue" "$vl" "\"key_overdue\":false"
fi

# Validation: a bad max_key_age changes nothing.
printf 'rules:\n  - {name: a, effect: allow, max_key_age: 3y}\n' >"$WORK/bad.yaml"
out=$(ctl "$F" policy put "$WORK/bad.yaml" 2>&1)
expect_match "a bad max_key_age is refused with its position" "$out" "policy:2:43: expected a duration"
expect_match "... and the policy in force is unchanged" "$(ctl "$F" policy get)" "short-lived"

finish
