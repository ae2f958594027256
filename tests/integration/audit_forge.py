#!/usr/bin/env python3
"""The attacker of issue #17: rewrites a stopped coordinator's audit table and recomputes every
hash as docs/audit.md describes (the chain, and the RFC 9162 root stored with each record), so
that nothing but a signature or another copy can tell.

  audit_forge.py DB delete SEQ [--rewrite-checkpoints]
  audit_forge.py DB edit SEQ COLUMN VALUE [--rewrite-checkpoints]
  audit_forge.py DB truncate SEQ       (deletes SEQ and everything after it; nothing recomputed)
  audit_forge.py DB append N           (appends N copies of the newest non-checkpoint record)
  audit_forge.py DB replay SEQ         (appends a copy of checkpoint record SEQ: text, signature, cert)
  audit_forge.py DB sign KEY SECONDS   (appends a checkpoint of the head signed with KEY, dated SECONDS:
                                        what a leader whose clock ran fast would sign)
  audit_forge.py DB grow N EVERY KEY   (appends N copies of the newest non-checkpoint record with a
                                        checkpoint signed with KEY after every EVERY of them: a
                                        genuine-looking log, to measure start-up; not an attack)

--rewrite-checkpoints also rewrites each checkpoint's text (size, root, chain) to match the
forged records; its signature, which the attacker cannot make, stays as it was."""
import hashlib
import sqlite3
import struct
import sys

COLS = ("seq, time_s, time_ns, action, actor_kind, actor_name, actor_auth, node, volume_id, request_id, "
        "decision, reason, source")


def canonical(r):
    def s(v):
        b = v.encode()
        return struct.pack(">I", len(b)) + b
    (seq, ts, tn, action, kind, name, auth, node, vol, req, decision, reason, source) = r
    return (b"KFA1" + struct.pack(">QQI", seq, ts, tn) + s(action) + struct.pack(">I", kind) + s(name) + s(auth)
            + s(node) + s(vol) + s(req) + struct.pack(">I", decision) + s(reason) + s(source))


def leaf(b):
    return hashlib.sha256(b"\x00" + b).digest()


def node(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


class Frontier:
    def __init__(self):
        self.nodes, self.size = {}, 0

    def append(self, h):
        k = 0
        while self.size >> k & 1:
            h = node(self.nodes[k], h)
            k += 1
        self.nodes[k] = h
        self.size += 1

    def root(self):
        acc = None
        for k in range(64):
            if self.size >> k & 1:
                acc = self.nodes[k] if acc is None else node(self.nodes[k], acc)
        return acc


def recompute(db, shift_after=None, rewrite_checkpoints=False):
    rows = [list(r) for r in db.execute("SELECT " + COLS + " FROM audit ORDER BY seq")]
    prev, tree, roots, chains = b"\0" * 32, Frontier(), {}, {}
    for r in rows:
        if rewrite_checkpoints and r[3] == "checkpoint":
            lines = r[11].split("\n")
            size = int(lines[2].split(" ")[1])
            if shift_after is not None and size >= shift_after:
                size -= 1
            lines[2] = "size %d" % size
            lines[3] = "root " + roots[size].hex()
            lines[4] = "chain " + chains[size].hex()
            r[11] = "\n".join(lines)
        c = canonical(r)
        h = hashlib.sha256(prev + c).digest()
        tree.append(leaf(c))
        roots[r[0]], chains[r[0]] = tree.root(), h
        db.execute("UPDATE audit SET reason = ?, prev_hash = ?, hash = ?, root = ? WHERE seq = ?",
                   (r[11], prev, h, roots[r[0]], r[0]))
        prev = h


def append_row(db, row, cp=None):
    """Appends row (COLS order) at the next seq, and its checkpoint row (size, signature, cert)."""
    seq = db.execute("SELECT max(seq) FROM audit").fetchone()[0] + 1
    row = [seq] + list(row[1:])
    db.execute("INSERT INTO audit (" + COLS + ", prev_hash, hash, root) VALUES (" + ", ".join("?" * 16) + ")",
               row + [b"", b"", b""])
    if cp is not None:
        db.execute("INSERT INTO audit_checkpoints (seq, size, signature, cert) VALUES (?, ?, ?, ?)", [seq] + list(cp))


def sign(db, key, seconds):
    import subprocess
    import tempfile
    recompute(db)
    seq, chain, root = db.execute("SELECT seq, hash, root FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    last = db.execute("SELECT " + COLS + " FROM audit WHERE action = 'checkpoint' ORDER BY seq DESC LIMIT 1").fetchone()
    cert = db.execute("SELECT cert FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()[0]
    lines = last[11].split("\n")
    text = "\n".join([lines[0], lines[1], "size %d" % seq, "root " + root.hex(), "chain " + chain.hex(),
                      "time %d.000000000" % seconds] + lines[6:])  # signer, and v2's cert and state
    with tempfile.NamedTemporaryFile() as f:
        f.write(text.encode())
        f.flush()
        kind = subprocess.run(["openssl", "pkey", "-in", key, "-noout", "-text"], capture_output=True, text=True).stdout
        cmd = (["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", f.name] if "ED25519" in kind
               else ["openssl", "dgst", "-sha256", "-sign", key, f.name])
        sig = subprocess.run(cmd, capture_output=True, check=True).stdout
    row = list(last)
    row[1], row[2], row[11] = seconds, 0, text
    append_row(db, row, (seq, sig, cert))


def grow(db, n, every, key_path):
    """Appends n records, and after every `every` of them a checkpoint in the format of the newest
    one (v1 or v2; v2 with "state none"), signed with key_path (the coordinator's key)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = serialization.load_pem_private_key(open(key_path, "rb").read(), None)
    prev, tree = b"\0" * 32, Frontier()
    for r in db.execute("SELECT " + COLS + " FROM audit ORDER BY seq"):
        c = canonical(r)
        prev = hashlib.sha256(prev + c).digest()
        tree.append(leaf(c))
    seq = db.execute("SELECT max(seq) FROM audit").fetchone()[0]
    rec = list(db.execute("SELECT " + COLS + " FROM audit WHERE action != 'checkpoint' ORDER BY seq DESC LIMIT 1").fetchone())
    cpr = list(db.execute("SELECT " + COLS + " FROM audit WHERE action = 'checkpoint' ORDER BY seq DESC LIMIT 1").fetchone())
    cert = db.execute("SELECT cert FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()[0]
    lines = cpr[11].split("\n")
    t_s, t_ns = cpr[1], cpr[2]

    def add(row, cp=None):
        nonlocal prev, seq, t_ns, t_s
        seq += 1
        t_ns += 1000
        if t_ns > 999999999:
            t_s, t_ns = t_s + 1, t_ns - 1000000000
        row = [seq, t_s, t_ns] + list(row[3:])
        c = canonical(row)
        h = hashlib.sha256(prev + c).digest()
        tree.append(leaf(c))
        db.execute("INSERT INTO audit (" + COLS + ", prev_hash, hash, root) VALUES (" + ", ".join("?" * 16) + ")",
                   row + [prev, h, tree.root()])
        if cp is not None:
            db.execute("INSERT INTO audit_checkpoints (seq, size, signature, cert) VALUES (?, ?, ?, ?)", [seq] + cp)
        prev = h

    for i in range(1, n + 1):
        add(rec)
        if i % every:
            continue
        t = "%d.%09d" % (t_s, t_ns + 1000 if t_ns + 1000 <= 999999999 else t_ns)
        extra = [ln if not ln.startswith("state ") else "state none" for ln in lines[7:]]
        text = "\n".join(lines[:2] + ["size %d" % seq, "root " + tree.root().hex(), "chain " + prev.hex(),
                                      "time " + t, lines[6]] + extra)
        sig = (key.sign(text.encode(), ec.ECDSA(hashes.SHA256())) if isinstance(key, ec.EllipticCurvePrivateKey)
               else key.sign(text.encode()))
        row = list(cpr)
        row[11] = text
        t_s, t_ns = int(t.split(".")[0]), int(t.split(".")[1]) - 1000
        add(row, [seq, sig, cert])


def main():
    db = sqlite3.connect(sys.argv[1], timeout=10)
    op = sys.argv[2]
    seq = int(sys.argv[3]) if op not in ("sign", "grow") else 0
    rewrite = "--rewrite-checkpoints" in sys.argv
    if op == "truncate":
        db.execute("DELETE FROM audit WHERE seq >= ?", (seq,))
        db.execute("DELETE FROM audit_checkpoints WHERE seq >= ?", (seq,))
    elif op == "delete":
        db.execute("DELETE FROM audit WHERE seq = ?", (seq,))
        db.execute("DELETE FROM audit_checkpoints WHERE seq = ?", (seq,))
        # Close the gap, so that seq runs 1, 2, 3, ... again.
        for t in ("audit", "audit_checkpoints"):
            db.execute("UPDATE %s SET seq = -seq WHERE seq > ?" % t, (seq,))
            db.execute("UPDATE %s SET seq = -seq - 1 WHERE seq < 0" % t)
        recompute(db, seq, rewrite)
    elif op == "edit":
        col, value = sys.argv[4], sys.argv[5]
        assert col in ("reason", "node", "source", "actor_auth", "volume_id", "action", "time_s")
        db.execute("UPDATE audit SET %s = ? WHERE seq = ?" % col, (value, seq))
        recompute(db, None, rewrite)
    elif op == "append":
        row = db.execute("SELECT " + COLS + " FROM audit WHERE action != 'checkpoint' ORDER BY seq DESC LIMIT 1").fetchone()
        for _ in range(seq):
            append_row(db, row)
        recompute(db)
    elif op == "replay":
        row = db.execute("SELECT " + COLS + " FROM audit WHERE seq = ?", (seq,)).fetchone()
        cp = db.execute("SELECT size, signature, cert FROM audit_checkpoints WHERE seq = ?", (seq,)).fetchone()
        append_row(db, row, cp)
        recompute(db)
    elif op == "grow":
        grow(db, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    elif op == "sign":
        sign(db, sys.argv[3], int(sys.argv[4]))
        recompute(db)
    else:
        sys.exit("unknown operation " + op)
    db.commit()


main()
