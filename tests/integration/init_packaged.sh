#!/usr/bin/env bash
# keyfleetctl init for a packaged coordinator (issue #19, section 2): the config directory is
# readable by the user keyfleetd runs as (root:GROUP 0750, the coordinator key 0640), the state
# directory and its KEK are that user's, the CA key lives apart (--ca-dir), and keyfleetd run as
# that user starts from it. `nobody` stands in for the packaged `keyfleet` user (root needed).
. "$(dirname "$0")/lib.sh"

if [ "$(id -u)" != 0 ] || ! id nobody >/dev/null 2>&1; then echo "skip: needs root and the user nobody"; exit 77; fi
chmod 755 "$WORK"   # nobody must reach the fleet below it, as it reaches /etc and /var/lib
R=$WORK/root
mkdir -p "$R/etc" "$R/var/lib" "$R/root"
chmod 755 "$R" "$R/etc" "$R/var" "$R/var/lib"
GROUP=$(id -gn nobody)

out=$("$CTL" init "$R/etc/keyfleet" --state-dir "$R/var/lib/keyfleet" --owner nobody --ca-dir "$R/root/ca" \
      --listen 127.0.0.1:0 2>&1)
rc=$?
expect_eq "init with --state-dir, --owner and --ca-dir succeeds" "$rc" 0
expect_match "... and says where the CA key is kept" "$out" "ca key: +$R/root/ca/ca.key"
mode() { stat -c '%a %U:%G' "$1" 2>&1; }
expect_eq "the config directory is root:$GROUP 0750" "$(mode "$R/etc/keyfleet")" "750 root:$GROUP"
expect_eq "the coordinator key is root:$GROUP 0640" "$(mode "$R/etc/keyfleet/coordinator.key")" "640 root:$GROUP"
expect_eq "the operator key stays root's alone" "$(mode "$R/etc/keyfleet/operator.key")" "600 root:root"
expect_eq "keyfleetd.yaml is readable" "$(mode "$R/etc/keyfleet/keyfleetd.yaml")" "644 root:root"
expect_eq "the state directory is nobody's, 0700" "$(mode "$R/var/lib/keyfleet")" "700 nobody:$GROUP"
expect_eq "... and so is the first KEK, 0600" "$(mode "$R/var/lib/keyfleet/kek/kek-1.key")" "600 nobody:$GROUP"
check "the CA key is not in the config directory" test ! -e "$R/etc/keyfleet/ca.key"
expect_eq "it is in --ca-dir, root's alone" "$(mode "$R/root/ca/ca.key")" "600 root:root"
check "the config directory has the CA certificate" cmp -s "$R/etc/keyfleet/ca.crt" "$R/root/ca/ca.crt"
cfg=$(cat "$R/etc/keyfleet/keyfleetd.yaml")
expect_match "keyfleetd.yaml names the state directory" "$cfg" "state_dir: $R/var/lib/keyfleet"
expect_match "... and keeps its port file there (keyfleetd may not write its config directory)" "$cfg" \
    "port_file: $R/var/lib/keyfleet/keyfleetd.port"

as_nobody() { setpriv --reuid nobody --regid "$GROUP" --clear-groups "$@"; }
expect_match "keyfleetd --check-config passes as nobody" "$(as_nobody "$KFD" --check-config -c "$R/etc/keyfleet/keyfleetd.yaml" 2>&1)" ": ok$"
# setpriv itself, not the function: a function in the background is a subshell, whose PID a
# TERM would reach while keyfleetd went on running as nobody.
setpriv --reuid nobody --regid "$GROUP" --clear-groups "$KFD" -c "$R/etc/keyfleet/keyfleetd.yaml" >"$WORK/keyfleetd.log" 2>&1 &
KFD_PID=$!
PIDS+=("$KFD_PID")
for _ in $(seq 1 200); do [ -s "$R/var/lib/keyfleet/keyfleetd.port" ] && break; sleep 0.05; done
PORT=$(head -n 1 "$R/var/lib/keyfleet/keyfleetd.port" 2>/dev/null)
sed -i "s/127.0.0.1:0\"/127.0.0.1:$PORT\"/" "$R/etc/keyfleet/keyfleetctl.yaml"
expect_match "keyfleetd started as nobody serves: keyfleetctl status" \
    "$("$CTL" -c "$R/etc/keyfleet/keyfleetctl.yaml" status 2>&1)" "ready: yes"
expect_eq "... and its database is nobody's" "$(stat -c %U "$R"/var/lib/keyfleet/*.db 2>&1 | sort -u)" "nobody"
stop_kfd

# A node certificate comes from the CA kept apart.
check "cert issue --dir CA_DIR issues a node certificate" "$CTL" cert issue node web-01 --dir "$R/root/ca" --out "$WORK/web-01"
check "... that the coordinator's CA certificate verifies" \
    openssl verify -CAfile "$R/etc/keyfleet/ca.crt" "$WORK/web-01.crt"

# Refusals, before anything is written.
out=$("$CTL" init "$WORK/x" --owner no-such-user-kf 2>&1); rc=$?
expect_match "an unknown --owner is refused (exit 2)" "$out rc=$rc" "no-such-user-kf: no such user.* rc=2"
check "... and nothing was written" test ! -e "$WORK/x"
out=$("$CTL" init "$WORK/x" --state-dir var/lib/keyfleet 2>&1); rc=$?
expect_match "a relative --state-dir is refused (exit 2)" "$out rc=$rc" "--state-dir must be an absolute path.* rc=2"
out=$("$CTL" init "$WORK/x" --owner nobody --peer a=10.0.0.1 --peer b=10.0.0.2 --peer c=10.0.0.3 2>&1); rc=$?
expect_match "--owner with --peer is refused (exit 2)" "$out rc=$rc" "as are --state-dir and --owner.* rc=2"
out=$("$CTL" init "$R/etc/keyfleet" --ca-dir "$WORK/ca2" 2>&1); rc=$?
expect_match "init over an existing fleet is refused" "$out rc=$rc" "already holds a fleet CA.* rc=1"
finish
