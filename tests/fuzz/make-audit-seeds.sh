#!/usr/bin/env bash
# Regenerates fuzz_audit_verify's seeds and its fleet CA (tests/fuzz/audit-ca.pem) from a real
# fleet: keyfleetd with a file sink, an enrollment, releases, two signed checkpoints, an inclusion
# and a consistency proof. Seeds start with the mode byte fuzz_audit_verify.c reads.
#   KF_BUILD_DIR=build tests/fuzz/make-audit-seeds.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../integration/lib.sh"
out=$here/corpus/fuzz_audit_verify
F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
printf 'audit:\n  sinks:\n    - {type: file, path: audit.jsonl}\n' >>"$F/keyfleetd.yaml"
start_kfd "$F"
allow_nodes "$F" "n*"
WRAP=$(field wrapped "$(node "$F" n1 enroll vol-1 data)")
REQ=$(field request "$(node "$F" n1 release vol-1 "$WRAP")")
audit_signed "$F" || { echo "no checkpoint"; exit 1; }
ctl "$F" audit checkpoint --json >"$WORK/anchor1.json"
ctl "$F" audit prove "$REQ" >"$WORK/proof.json"
node "$F" n1 release vol-1 "$WRAP" >/dev/null
audit_signed "$F" || { echo "no second checkpoint"; exit 1; }
ctl "$F" audit checkpoint --json >"$WORK/anchor2.json"
ctl "$F" audit prove-consistency "$WORK/anchor1.json" "$WORK/anchor2.json" >"$WORK/cons.json"
mkdir -p "$out"
cp "$F/ca.crt" "$here/audit-ca.pem"
python3 - "$WORK" "$F" "$out" <<'PY'
import json, sys
work, fleet, out = sys.argv[1:]
anchor = json.load(open(work + "/anchor1.json"))
seeds = {
    "checkpoint-text": b"\x00" + anchor["text"].encode(),
    "checkpoint-json": b"\x01" + open(work + "/anchor1.json", "rb").read(),
    "stream": b"\x02" + open(fleet + "/audit.jsonl", "rb").read(),
    "stream-partial": b"\x03" + b"".join(open(fleet + "/audit.jsonl", "rb").readlines()[2:]),
    "proof": b"\x04" + open(work + "/proof.json", "rb").read(),
    "consistency": b"\x05" + open(work + "/cons.json", "rb").read(),
}
for name, data in seeds.items():
    open(out + "/" + name, "wb").write(data)
PY
ls -l "$out"
finish
