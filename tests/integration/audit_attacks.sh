#!/usr/bin/env bash
# Issue #17's attacks on one coordinator's database, each caught (docs/audit.md):
#  - edit and delete, with every hash recomputed: the signed checkpoints no longer match (verify
#    names the record; the coordinator finds it at start and serves nothing: /readyz 503);
#  - checkpoint texts rewritten to match: their signatures fail;
#  - truncation while stopped: invisible to the log alone, caught against a saved anchor;
# and what an auditor does offline: an inclusion proof of a release and a consistency proof
# between two saved checkpoints verify with the fleet CA alone, and fail when changed.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
start_kfd "$F"
allow_nodes "$F" "n*"
DB=$F/state/keyfleet.db
FORGE="python3 $(dirname "$0")/audit_forge.py"
WRAP=$(field wrapped "$(node "$F" n1 enroll vol-1 data)")
REQ=$(field request "$(node "$F" n1 release vol-1 "$WRAP")")
for i in 1 2 3; do node "$F" n1 release vol-1 "$WRAP" >/dev/null; done

# signed: waits (at most 5 s) until the newest record is a checkpoint, so every record is signed.
signed() {
    for _ in $(seq 1 50); do
        ctl "$F" audit --json | tail -n 1 | grep -q '"action":"checkpoint"' && return 0
        sleep 0.1
    done
    return 1
}
check "a signed checkpoint follows the records within a second" signed
out=$(ctl "$F" audit checkpoint)
expect_match "audit checkpoint prints the newest, verified against the fleet CA" "$out" \
    "checkpoint record [0-9]+ \(signed by coordinator-1, verified against the fleet CA\) keyfleet-audit-checkpoint/v2 cluster fleet-[0-9a-f]{32} size [0-9]+ root [0-9a-f]{64}"
ctl "$F" audit checkpoint --json >"$WORK/anchor1.json"
expect_match "audit verify checks every checkpoint's signature and the anchor" \
    "$(ctl "$F" audit verify --anchor "$WORK/anchor1.json")" \
    "audit chain ok: [0-9]+ records verified, [1-9][0-9]* signed checkpoints \(by coordinator-1\); the newest signs [0-9]+ records \(0 after it not yet signed\); 1 anchor held"

# ---- offline proofs ----------------------------------------------------------------------
ctl "$F" audit prove "$REQ" >"$WORK/proof.json"
out=$("$CTL" audit verify-proof "$WORK/proof.json" --ca "$F/ca.crt" --anchor "$WORK/anchor1.json")
expect_match "an inclusion proof of a release verifies offline against the saved checkpoint" "$out" \
    "^included: record [0-9]+ release node=n1 volume=vol-1 request=$REQ, in the [0-9]+ records coordinator coordinator-1 signed"
python3 - "$WORK/proof.json" "$WORK/proof-bad.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
h = p["proofs"][0]["path"][0]
p["proofs"][0]["path"][0] = ("0" if h[0] != "0" else "1") + h[1:]
json.dump(p, open(sys.argv[2], "w"))
PY
out=$("$CTL" audit verify-proof "$WORK/proof-bad.json" --ca "$F/ca.crt"; echo "rc=$?")
expect_match "... and fails with one hash of its path changed" "$out" "proof INVALID: record [0-9]+ is not in the tree.*rc=1"
node "$F" n1 release vol-1 "$WRAP" >/dev/null
signed
ctl "$F" audit checkpoint --json >"$WORK/anchor2.json"
# Review rev17: the newest checkpoint signs the state root at the checkpoint record before it,
# and audit verify compares the coordinator's own state digest there.
expect_match "audit verify compares the replicated state with the signed state root" "$(ctl "$F" audit verify)" \
    "audit chain ok: .*; the replicated state at checkpoint record [0-9]+ matches its signed state root"
ctl "$F" audit prove-consistency "$WORK/anchor1.json" "$WORK/anchor2.json" >"$WORK/cons.json"
out=$("$CTL" audit verify-consistency "$WORK/cons.json" --ca "$F/ca.crt")
expect_match "a consistency proof between two saved checkpoints verifies offline" "$out" \
    "^consistent: the [0-9]+ records signed at [0-9]+ are the first [0-9]+ of the [0-9]+ signed at"
python3 - "$WORK/cons.json" "$WORK/cons-bad.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
h = p["path"][-1]
p["path"][-1] = ("0" if h[0] != "0" else "1") + h[1:]
json.dump(p, open(sys.argv[2], "w"))
PY
out=$("$CTL" audit verify-consistency "$WORK/cons-bad.json" --ca "$F/ca.crt"; echo "rc=$?")
expect_match "... and fails when changed" "$out" "consistency INVALID: the tree of [0-9]+ records is not a prefix.*rc=1"
# A checkpoint of another fleet (its own CA) is refused.
fleet_init "$WORK/other"
out=$("$CTL" audit verify-proof "$WORK/proof.json" --ca "$WORK/other/ca.crt"; echo "rc=$?")
expect_match "a proof is refused against another fleet's CA" "$out" "proof INVALID: checkpoint is of cluster fleet-[0-9a-f]+, not of this fleet.*rc=1"

# A checkpoint signed with a certificate of this fleet that does not name a coordinator (here a
# node certificate named like the coordinator) is no anchor.
mkdir -p "$WORK/evil"
cp "$F/ca.crt" "$F/ca.key" "$WORK/evil/"
issue "$WORK/evil" node coordinator-1
python3 - "$WORK/anchor2.json" "$WORK/evil/coordinator-1.key" "$WORK/evil/coordinator-1.crt" "$WORK/forged.json" <<'PY'
import base64, json, subprocess, sys
a = json.load(open(sys.argv[1]))
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", sys.argv[2]], input=a["text"].encode(),
                     capture_output=True, check=True).stdout
der = subprocess.run(["openssl", "x509", "-in", sys.argv[3], "-outform", "DER"], capture_output=True, check=True).stdout
a["signature"], a["cert"] = base64.b64encode(sig).decode(), base64.b64encode(der).decode()
json.dump(a, open(sys.argv[4], "w"))
PY
out=$(ctl "$F" audit verify --anchor "$WORK/forged.json"; echo "rc=$?")
expect_match "an anchor signed by a node certificate is refused" "$out" \
    "audit anchor INVALID \(checkpoint record [0-9]+\): checkpoint signer certificate does not name a coordinator.*rc=1"

sqlite3 -cmd ".timeout 5000" "$DB" ".backup '$WORK/pristine.db'"
stop_kfd TERM
restore() {
    stop_kfd TERM
    cp "$WORK/pristine.db" "$DB"
    rm -f "$DB-wal" "$DB-shm"
}
verify_out() { ctl "$F" audit verify "$@" 2>&1; echo "rc=$?"; }
# diverged_start: keyfleetd starts, but refuses to serve (its own log fails its checkpoints).
readyz_of() { kcurl "$F" operator -w ' %{http_code}' "$URL/readyz"; }

# ---- delete a record and recompute every hash --------------------------------------------
$FORGE "$DB" delete 3
start_kfd "$F"
expect_match "delete and recompute: verify fails at the first checkpoint that signed the old records" \
    "$(verify_out)" "BROKEN at record [0-9]+: (the records (up to here )?differ from what checkpoint record [0-9]+ signed|checkpoint signs records that do not precede it).*rc=1"
expect_match "... keyfleetd finds it at start and is not ready" "$(readyz_of)" "not ready: audit log diverged at seq [0-9]+: the local log fails verification.* 503"
out=$(node "$F" n1 release vol-1 "$WRAP" 2>&1)
expect_match "... and releases nothing" "$out" "code=unavailable"
expect_eq "... keyfleet_audit_diverged is 1" "$(metric "$F" keyfleet_audit_diverged)" "1"
grep -q 'event=audit_diverged seq=' "$F/keyfleetd.log"
check "... and it is logged (audit_diverged)" test $? -eq 0
restore

# ---- ... and rewrite the checkpoints to match --------------------------------------------
$FORGE "$DB" delete 3 --rewrite-checkpoints
start_kfd "$F"
expect_match "with the checkpoint texts rewritten too, their signatures fail" "$(verify_out)" \
    "BROKEN at record [0-9]+: checkpoint: checkpoint signature does not verify.*rc=1"
expect_match "... keyfleetd is not ready" "$(readyz_of)" "audit log diverged at seq [0-9]+: checkpoint record [0-9]+: checkpoint signature does not verify.*503"
restore

# ---- an older checkpoint's signature or certificate blob changed (review rev17, R6) ----------
# Not part of any hash: before, only the newest checkpoint's signature was verified at start.
OLD=$(sqlite3 "$DB" "SELECT min(seq) FROM audit_checkpoints")
python3 - "$DB" "$OLD" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
sig = bytearray(db.execute("SELECT signature FROM audit_checkpoints WHERE seq = ?", (int(sys.argv[2]),)).fetchone()[0])
sig[8] ^= 1
db.execute("UPDATE audit_checkpoints SET signature = ? WHERE seq = ?", (bytes(sig), int(sys.argv[2])))
db.commit()
PY
start_kfd "$F"
expect_match "an older checkpoint's signature changed while stopped: keyfleetd is not ready" "$(readyz_of)" \
    "audit log diverged at seq $OLD: checkpoint record $OLD: checkpoint signature does not verify.*503"
expect_match "... and audit verify names it" "$(verify_out)" \
    "BROKEN at record $OLD: checkpoint: checkpoint signature does not verify.*rc=1"
restore
# Its certificate blob replaced by another certificate of the same coordinator (from this CA).
mkdir -p "$WORK/other-cert"
cp "$F/ca.crt" "$F/ca.key" "$WORK/other-cert/"
issue "$WORK/other-cert" coordinator coordinator-1 --san IP:127.0.0.1
openssl x509 -in "$WORK/other-cert/coordinator-1.crt" -outform DER -out "$WORK/other-cert/c1.der"
sqlite3 "$DB" "UPDATE audit_checkpoints SET cert = readfile('$WORK/other-cert/c1.der') WHERE seq = $OLD"
start_kfd "$F"
expect_match "an older checkpoint's certificate replaced while stopped: keyfleetd is not ready" "$(readyz_of)" \
    "audit log diverged at seq $OLD: checkpoint record $OLD: checkpoint signer certificate is not the one its text names.*503"
expect_match "... and audit verify names it" "$(verify_out)" \
    "BROKEN at record $OLD: checkpoint: checkpoint signer certificate is not the one its text names.*rc=1"
restore

# ---- edit a record while stopped, recomputed -----------------------------------------------
$FORGE "$DB" edit 2 node n9
start_kfd "$F"
expect_match "an edited, recomputed record fails against the checkpoints" "$(verify_out)" "BROKEN at record [0-9]+: .*differ from what checkpoint.*rc=1"
restore

# ---- truncate while stopped ----------------------------------------------------------------
CP2=$(sed -n 's/.*"seq":\([0-9]*\).*/\1/p' "$WORK/anchor2.json")
$FORGE "$DB" truncate "$CP2"
start_kfd "$F"
expect_match "truncated while stopped: the log alone still verifies (nothing in it is wrong)" "$(verify_out)" "audit chain ok.*rc=0"
expect_match "... but not against the saved anchor" "$(verify_out --anchor "$WORK/anchor2.json")" \
    "BROKEN at record [0-9]+: the log (ends at record [0-9]+, before the anchored checkpoint|no longer holds the anchored checkpoint).*rc=1"
expect_match "... an older anchor still holds" "$(verify_out --anchor "$WORK/anchor1.json")" "audit chain ok.*rc=0"
stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
check_sanitizers
finish
