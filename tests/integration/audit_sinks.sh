#!/usr/bin/env bash
# Audit sinks (docs/audit.md): every record, checkpoints included, goes to an append-only
# JSON-lines file and to syslog as RFC 5424; the file is reopened on SIGHUP (logrotate); a copy
# verifies offline with `audit verify --stream` (from its first record when it starts late) and
# an edited copy does not. A required sink that cannot take a record fails the release closed
# (no key), makes /readyz 503 with the reason, and catches up when it can write again: tried with
# an unwritable path (a symlink, refused) and with a full tmpfs.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
mkdir -p "$WORK/full"
MOUNTED=0
if mount -t tmpfs -o size=64k tmpfs "$WORK/full" 2>/dev/null; then MOUNTED=1; fi
trap 'kill $SYSLOG_PID 2>/dev/null; [ "$MOUNTED" = 1 ] && umount "$WORK/full"; cleanup' EXIT
# A syslog daemon: a datagram socket whose messages are written one per line.
python3 - "$WORK/syslog.sock" "$WORK/syslog.out" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "ab", buffering=0) as out:
    while True:
        out.write(s.recv(65536) + b"\n")
PY
SYSLOG_PID=$!
for _ in $(seq 1 50); do [ -S "$WORK/syslog.sock" ] && break; sleep 0.05; done
cat >>"$F/keyfleetd.yaml" <<YAML
audit:
  sinks:
    - {type: file, path: audit.jsonl, required: true}
    - {type: syslog, socket: $WORK/syslog.sock}
YAML
start_kfd "$F"
allow_nodes "$F" "n*"
WRAP=$(field wrapped "$(node "$F" n1 enroll vol-1 data)")
for i in 1 2 3; do node "$F" n1 release vol-1 "$WRAP" >/dev/null; done
signed() {
    for _ in $(seq 1 50); do
        ctl "$F" audit --json | tail -n 1 | grep -q '"action":"checkpoint"' && return 0
        sleep 0.1
    done
    return 1
}
signed
N=$(ctl "$F" audit --json | wc -l)
for _ in $(seq 1 20); do [ "$(wc -l <"$F/audit.jsonl")" -ge "$N" ] && break; sleep 0.1; done
expect_eq "the file sink holds every record, checkpoints included" "$(wc -l <"$F/audit.jsonl")" "$N"
expect_match "... one JSON object each, with seq, hashes and root" "$(head -n 1 "$F/audit.jsonl")" \
    '^\{"format":"keyfleet-audit/2","seq":1,.*"prev_hash":"0{64}","hash":"[0-9a-f]{64}","root":"[0-9a-f]{64}"\}$'
expect_match "... checkpoints with their signature" "$(grep '"action":"checkpoint"' "$F/audit.jsonl" | head -n 1)" '"signature":"[A-Za-z0-9+/=]+","signer_cert":"'
for _ in $(seq 1 20); do [ "$(wc -l <"$WORK/syslog.out")" -ge "$N" ] && break; sleep 0.1; done
expect_eq "syslog got every record" "$(wc -l <"$WORK/syslog.out")" "$N"
expect_match "... as RFC 5424 messages" "$(head -n 1 "$WORK/syslog.out")" \
    '^<86>1 [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\.[0-9]{3}Z [^ ]+ keyfleetd [0-9]+ audit \[keyfleet@32473 coordinator="coordinator-1" seq="1"\] \{"format":"keyfleet-audit/2","seq":1,'
expect_match "the copy verifies offline with the fleet CA" "$("$CTL" audit verify --stream "$F/audit.jsonl" --ca "$F/ca.crt")" \
    "^audit chain ok: $N records verified, [1-9][0-9]* signed checkpoints \(by coordinator-1\)"
sed '3s/"node":"n1"/"node":"n2"/' "$F/audit.jsonl" >"$WORK/edited.jsonl"
out=$("$CTL" audit verify --stream "$WORK/edited.jsonl" --ca "$F/ca.crt"; echo "rc=$?")
expect_match "an edited copy fails" "$out" "BROKEN at record 3: its content does not match its hash \(edited\).*rc=1"

# logrotate: move the file, SIGHUP, and the next records go to a new one.
mv "$F/audit.jsonl" "$F/audit.jsonl.1"
kill -HUP "$KFD_PID"
for _ in $(seq 1 50); do grep -q "audit_sink_reopened" "$F/keyfleetd.log" && break; sleep 0.05; done
node "$F" n1 release vol-1 "$WRAP" >/dev/null
signed
check "SIGHUP reopens the file" test -s "$F/audit.jsonl"
expect_match "the new file verifies from its first record" "$("$CTL" audit verify --stream "$F/audit.jsonl" --ca "$F/ca.crt")" \
    "^audit chain ok: [0-9]+ records verified \(records [0-9]+\.\.[0-9]+\), [1-9][0-9]* signed checkpoints"

# Required and unwritable: keyfleetd opens with O_NOFOLLOW, so a symlink is refused.
mv "$F/audit.jsonl" "$F/audit.jsonl.2"
ln -s "$WORK/elsewhere" "$F/audit.jsonl"
kill -HUP "$KFD_PID"
out=$(node "$F" n1 release vol-1 "$WRAP" 2>&1)
expect_match "a required sink that cannot take the record fails the release closed" "$out" "code=unavailable"
check "... and no key went out" test -z "$(field key "$out")"
expect_match "... /readyz says why" "$(kcurl "$F" operator -w ' %{http_code}' "$URL/readyz")" "required audit sink .*audit.jsonl failing: .*503"
out=$(node "$F" n1 release vol-1 "$WRAP" 2>&1)
expect_match "... and the next release is refused before the KMS is asked" "$out" "code=unavailable.*required audit sink"
rm "$F/audit.jsonl"
kill -HUP "$KFD_PID"
for _ in $(seq 1 40); do [ "$(kcurl "$F" operator "$URL/readyz")" = ok ] && break; sleep 0.1; done
expect_eq "writable again, the sink takes the backlog within a second and keyfleetd is ready" "$(kcurl "$F" operator "$URL/readyz")" "ok"
expect_match "releases work again" "$(node "$F" n1 release vol-1 "$WRAP")" "code=ok"
expect_match "the backlog is in the new file: it verifies" "$("$CTL" audit verify --stream "$F/audit.jsonl" --ca "$F/ca.crt")" "^audit chain ok"

# A full disk: the sink on a 64 KiB tmpfs, filled up.
if [ "$MOUNTED" = 1 ]; then
    stop_kfd TERM
    sed -i "s|path: audit.jsonl|path: $WORK/full/audit.jsonl|" "$F/keyfleetd.yaml"
    start_kfd "$F"
    dd if=/dev/zero of="$WORK/full/filler" bs=1k count=64 2>/dev/null
    # The file's last page may still have room for a record or two (tmpfs allocates pages), so
    # releases go on until one needs a page the disk no longer has.
    for _ in $(seq 1 30); do
        out=$(node "$F" n1 release vol-1 "$WRAP" 2>&1)
        case $out in *code=ok*) ;; *) break ;; esac
    done
    expect_match "on a full tmpfs, the release fails closed" "$out" "code=unavailable"
    expect_match "... /readyz names the full disk" "$(kcurl "$F" operator -w ' %{http_code}' "$URL/readyz")" "No space left on device.*503"
    rm "$WORK/full/filler"
    for _ in $(seq 1 40); do [ "$(kcurl "$F" operator "$URL/readyz")" = ok ] && break; sleep 0.1; done
    expect_match "space freed, releases work again" "$(node "$F" n1 release vol-1 "$WRAP")" "code=ok"
else
    echo "# skipped: cannot mount a tmpfs here"
fi
expect_match "the whole log still verifies" "$(ctl "$F" audit verify)" "audit chain ok"
stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
check_sanitizers
finish
