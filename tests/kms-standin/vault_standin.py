#!/usr/bin/env python3
"""Stand-in for HashiCorp Vault (and OpenBao): the Transit secrets engine and AppRole login.

Vault cannot run on these machines, so the tests use this HTTPS server on 127.0.0.1. It follows
the public HTTP API as written in ../shared/api-facts.md: base path /v1, the X-Vault-Token header
(or Authorization: Bearer), {"errors":[...]} bodies on every status >= 400, 400 for bad
credentials and bad ciphertexts, 403 for a missing or expired token, 404 for unknown paths.
Transit keys are aes256-gcm96 with versions; ciphertexts are "vault:vN:" + base64(nonce ||
AES-256-GCM ciphertext+tag), as Vault writes them. Implemented endpoints:

    POST /v1/auth/approle/login               {"role_id","secret_id"} -> auth.client_token, lease_duration
    POST /v1/auth/token/renew-self            -> auth (400 "lease is not renewable" for the root token)
    GET  /v1/auth/token/lookup-self           -> data.{id,ttl,policies,...}; 403 for a token Vault
                                                 does not know (expired, revoked)
    POST /v1/transit/keys/NAME                create {"type":"aes256-gcm96"}
    GET  /v1/transit/keys/NAME                data.{name,type,keys,latest_version,min_decryption_version,...}
    POST /v1/transit/keys/NAME/rotate         200 with the key read's body (Vault 1.10 and later)
    POST /v1/transit/keys/NAME/config         {"min_decryption_version":N}
    POST /v1/transit/encrypt/NAME             {"plaintext"} -> data.{ciphertext,key_version}
    POST /v1/transit/decrypt/NAME             {"ciphertext"} -> data.plaintext
    POST /v1/transit/rewrap/NAME              {"ciphertext"} -> data.{ciphertext,key_version}
    POST /v1/transit/datakey/plaintext/NAME   {"bits":256} -> data.{plaintext,ciphertext,key_version}

Stricter than the shared facts, where issue #30 needs it (real Vault behaves this way too):

- secret_id_num_uses (--secret-id-num-uses N, 0 = unlimited, the default): each successful login
  spends a use; after the last the secret id is deleted and logins get 400 "invalid role or secret
  ID", as in Vault.
- Policies: the fault line "deny PATH" (e.g. "deny transit/keys/keyfleet") makes every AppRole
  token's policy lack all capabilities on PATH: 403 "permission denied" with a valid token, the
  same answer an expired token gets, so only lookup-self tells them apart. The root token is not
  limited. lookup-self is allowed by the "default" policy, as in Vault, and faults never apply
  to it.
- Derived keys (--derived-key NAME): the key read says derived: true; encrypt, decrypt, rewrap and
  datakey without a context get 400 "missing 'context' for key derivation; the key was marked
  for derivation" (Vault's text); with one, the key is derived from it (HKDF-SHA256).
- "status 429|503 S" sends Retry-After: S ("status 429 -": none); "redirect" answers 307 with a
  Location and no body (a standby node), never followed by a correct client; "status 412" is a
  performance standby that has not seen a write yet (Enterprise), which clients retry.
- Namespaces (--namespace NS, Vault Enterprise and HCP Vault, where it is "admin"): the mounts and
  the AppRole role live in NS only. A request reaches them with X-Vault-Namespace: NS or a path
  /v1/NS/...; without either it is served by the root namespace, which has no such mounts (404
  "no handler for route") and knows none of NS's tokens (403).
- --approle-mount M: AppRole is mounted at auth/M (default approle), as `vault auth enable
  -path=M approle` does.
- --signing-key NAME: an ed25519 key (supports_encryption: false): encrypt, decrypt and datakey
  get 400 "... does not support encryption".
- "rotate-lost": a rotation that happens and whose answer is lost (503 after rotating), to show
  that a client that retries rotations rotates twice. "rotate-204-read-fails": a rotation
  answered 204 (Vault before 1.10), and every key read 503 while the fault stands.

Faults: see standin_common.py. Every request is logged to stderr ("POST /v1/auth/approle/login"
lines count the logins).
"""
import base64
import binascii
import os
import re
import secrets
import sys
import threading
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import standin_common as sc  # noqa: E402


def errors(*msgs):
    return {"errors": list(msgs)}


class Vault:
    def add_args(self, p):
        p.add_argument("--root-token-file", required=True)
        p.add_argument("--role-id", required=True)
        p.add_argument("--secret-id-file", required=True)
        p.add_argument("--token-ttl", type=int, default=1200)
        p.add_argument("--key", action="append", default=[], help="transit key to create at start")
        p.add_argument("--derived-key", action="append", default=[], help="derived transit key to create at start")
        p.add_argument("--secret-id-num-uses", type=int, default=0)
        p.add_argument("--namespace", default=None)
        p.add_argument("--approle-mount", default="approle")
        p.add_argument("--signing-key", action="append", default=[], help="ed25519 key to create at start")

    def configure(self, a):
        self.lock = threading.Lock()
        self.root = open(a.root_token_file).read().strip()
        self.role_id = a.role_id
        self.secret_id = open(a.secret_id_file).read().strip()
        self.ttl = a.token_ttl
        self.tokens = {}  # token -> expiry (unix seconds)
        self.revoked_before = 0.0
        self.keys = {}
        for name in a.key:
            self.create_key(name)
        for name in a.derived_key:
            self.create_key(name, derived=True)
        for name in a.signing_key:
            self.create_key(name, ktype="ed25519")
        self.namespace = a.namespace.strip("/") if a.namespace else None
        self.approle_login = "/v1/auth/%s/login" % a.approle_mount
        self.logins = 0
        self.uses_left = a.secret_id_num_uses if a.secret_id_num_uses > 0 else None

    def create_key(self, name, derived=False, ktype="aes256-gcm96"):
        self.keys[name] = {"versions": {1: (AESGCM.generate_key(256), int(time.time()))}, "min_dec": 1,
                           "derived": derived, "type": ktype}

    def key_read(self, name, key):
        return {"data": {
            "name": name, "type": key["type"], "derived": key["derived"], "exportable": False,
            "keys": {str(v): t for v, (_, t) in key["versions"].items()},
            "latest_version": max(key["versions"]), "min_decryption_version": key["min_dec"],
            "min_encryption_version": 0, "supports_encryption": key["type"] != "ed25519",
            "supports_decryption": key["type"] != "ed25519", "supports_signing": key["type"] == "ed25519"}}

    def in_namespace(self, h, path):
        """The request's path within the configured namespace, or None when it is not in it."""
        if self.namespace is None:
            return path
        if h.headers.get("X-Vault-Namespace", "").strip("/") == self.namespace:
            return path
        prefix = "/v1/" + self.namespace + "/"
        if path.startswith(prefix):
            return "/v1/" + path[len(prefix):]
        return None

    def key_bytes(self, key, version, context):
        raw = key["versions"][version][0]
        if not key["derived"]:
            return raw
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(raw)

    # --- auth ---
    def token_of(self, h):
        t = h.headers.get("X-Vault-Token")
        if t is None:
            auth = h.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                t = auth[7:]
        return t

    def authorized(self, h):
        t = self.token_of(h)
        if t is None:
            return False
        if secrets.compare_digest(t, self.root):
            return True
        with self.lock:
            exp = self.tokens.get(t)
            issued = exp - self.ttl if exp else 0
        return exp is not None and time.time() < exp and issued >= self.revoked_before

    def auth_block(self, client_token):
        return {"client_token": client_token, "accessor": secrets.token_hex(12), "token_policies": ["default"],
                "metadata": {}, "lease_duration": self.ttl, "renewable": True}

    def answer_auth(self, h, client_token):
        h.send(200, {"request_id": secrets.token_hex(8), "auth": self.auth_block(client_token), "data": None,
                     "wrap_info": None, "warnings": None, "lease_id": "", "renewable": False, "lease_duration": 0})

    # --- ciphertexts ---
    def seal(self, key, version, plaintext, context=b""):
        nonce = os.urandom(12)
        ct = AESGCM(self.key_bytes(key, version, context)).encrypt(nonce, plaintext, None)
        return "vault:v%d:%s" % (version, base64.b64encode(nonce + ct).decode())

    def open(self, key, ciphertext, context=b""):
        m = re.fullmatch(r"vault:v(\d+):(.*)", ciphertext or "")
        if not m:
            return None, "invalid ciphertext: version number could not be decoded"
        version = int(m.group(1))
        if version > max(key["versions"]):
            return None, "invalid ciphertext: version is too new"
        if version < key["min_dec"] or version not in key["versions"]:
            return None, "ciphertext or signature version is disallowed by policy (too old)"
        try:
            raw = base64.b64decode(m.group(2), validate=True)
            return AESGCM(self.key_bytes(key, version, context)).decrypt(raw[:12], raw[12:], None), None
        except (binascii.Error, ValueError, Exception):
            return None, "cipher: message authentication failed"

    def handle(self, h, method, path, query):
        body = h.body_json() if method == "POST" else {}
        if body is None:
            return h.send(400, errors("failed to parse JSON input"))
        ns_path = self.in_namespace(h, path)
        if ns_path is None:
            # The root namespace: none of NS's mounts, roles or tokens.
            if path.startswith("/v1/auth/token/"):
                return h.send(403, errors("permission denied"))
            return h.send(404, errors("no handler for route \"%s\". route entry not found." % path[4:]))
        path = ns_path
        if path == self.approle_login and method == "POST":
            f = sc.apply_fault(h, self.fault, True, lambda c: errors("login fault %d" % c))
            if f is None:
                return
            rid, sid = str(body.get("role_id", "")), str(body.get("secret_id", ""))
            with self.lock:
                good = (secrets.compare_digest(rid, self.role_id) and secrets.compare_digest(sid, self.secret_id)
                        and self.uses_left != 0)
                if good and self.uses_left is not None:
                    self.uses_left -= 1  # the last use deletes the secret id
            if not good:
                return h.send(400, errors("invalid role or secret ID"))
            tok = "hvs." + secrets.token_urlsafe(24)
            with self.lock:
                self.tokens[tok] = time.time() + self.ttl
                self.logins += 1
            return self.answer_auth(h, tok)
        if path == "/v1/auth/token/lookup-self" and method in ("GET", "POST"):
            if not self.authorized(h):
                return h.send(403, errors("permission denied"))
            t = self.token_of(h)
            with self.lock:
                exp = self.tokens.get(t)
            ttl = 0 if exp is None else max(0, int(exp - time.time()))
            return h.send(200, {"data": {"id": t, "ttl": ttl, "policies": ["default", "keyfleetd"],
                                         "renewable": exp is not None}})
        if path == "/v1/auth/token/renew-self" and method == "POST":
            t = self.token_of(h)
            if t is not None and secrets.compare_digest(t, self.root):
                return h.send(400, errors("lease is not renewable"))
            if not self.authorized(h):
                return h.send(403, errors("permission denied"))
            with self.lock:
                self.tokens[t] = time.time() + self.ttl
            return self.answer_auth(h, t)
        f = sc.apply_fault(h, self.fault, False, lambda c: errors("injected fault %d" % c))
        if f is None:
            return
        fault = f[0]
        if fault == "revoke-tokens":
            self.revoked_before = time.time() + 1
        if not self.authorized(h):
            return h.send(403, errors("permission denied"))
        if fault == "rotate-lost" and not path.endswith("/rotate"):
            fault = None
        if fault == "rotate-204-read-fails" and method == "GET":
            return h.send(503, errors("Vault is sealed"))
        if fault == "deny" and path == "/v1/" + f[1] and not secrets.compare_digest(self.token_of(h), self.root):
            return h.send(403, errors("1 error occurred:\n\t* permission denied\n\n"))
        # Vault routes key names by GenericNameRegex: word characters at both ends.
        m = re.fullmatch(r"/v1/transit/(keys|encrypt|decrypt|rewrap|datakey/plaintext)/(\w(?:[\w.-]*\w)?)"
                         r"(/rotate|/config)?", path)
        if not m:
            return h.send(404, errors())
        op, name, sub = m.group(1), m.group(2), m.group(3)
        with self.lock:
            key = self.keys.get(name)
            if op == "keys" and sub is None and method == "POST":
                if key is None:
                    self.create_key(name)
                return h.send(204)
            if op == "keys" and sub is None and method == "GET":
                if key is None:
                    return h.send(404, errors())
                return self.reply(h, fault, self.key_read(name, key))
            if key is None:
                return h.send(400, errors("encryption key not found"))
            if method != "POST":
                return h.send(405, errors())
            latest = max(key["versions"])
            context = b""
            if key["derived"] and sub is None:
                try:
                    context = base64.b64decode(body.get("context", ""), validate=True)
                except (binascii.Error, ValueError):
                    return h.send(400, errors("failed to base64-decode context"))
                if not context:
                    return h.send(400, errors("missing 'context' for key derivation; the key was marked for derivation"))
            if sub == "/rotate":
                key["versions"][latest + 1] = (AESGCM.generate_key(256), int(time.time()))
                if fault == "rotate-lost":
                    return h.send(503, errors("the answer was lost"))
                if fault == "rotate-204-read-fails":  # Vault before 1.10: no body; then reads fail
                    return h.send(204)
                return h.send(200, self.key_read(name, key))
            if key["type"] == "ed25519" and sub is None:
                return h.send(400, errors("key type ed25519 does not support encryption"))
            if sub == "/config":
                mdv = body.get("min_decryption_version")
                if isinstance(mdv, int) and 1 <= mdv <= latest:
                    key["min_dec"] = mdv
                    for v in [v for v in key["versions"] if v < mdv]:
                        del key["versions"][v]
                return h.send(204)
            if op == "encrypt":
                try:
                    pt = base64.b64decode(body.get("plaintext", ""), validate=True)
                except (binascii.Error, ValueError):
                    return h.send(400, errors("failed to base64-decode plaintext"))
                return self.reply(h, fault, {"data": {"ciphertext": self.seal(key, latest, pt, context),
                                                      "key_version": latest}})
            if op == "datakey/plaintext":
                if body.get("bits", 256) not in (128, 256, 512):
                    return h.send(400, errors("invalid bit length"))
                pt = os.urandom(body.get("bits", 256) // 8)
                return self.reply(h, fault, {"data": {"plaintext": base64.b64encode(pt).decode(),
                                                      "ciphertext": self.seal(key, latest, pt, context),
                                                      "key_version": latest}})
            pt, err = self.open(key, body.get("ciphertext"), context)
            if err:
                return h.send(400, errors(err))
            if op == "decrypt":
                if fault == "wrong-key":
                    pt = os.urandom(len(pt))
                return self.reply(h, fault, {"data": {"plaintext": base64.b64encode(pt).decode()}})
            return self.reply(h, fault, {"data": {"ciphertext": self.seal(key, latest, pt, context),
                                                  "key_version": latest}})

    def reply(self, h, fault, obj):
        if fault == "bad-version" and "ciphertext" in obj.get("data", {}):
            obj["data"]["ciphertext"] = re.sub(r"^vault:v\d+:", "vault:vX:", obj["data"]["ciphertext"])
        if fault == "truncate":
            return h.send_truncated(obj)
        return h.send(200, obj)


if __name__ == "__main__":
    sc.serve(Vault(), sys.argv[1:])
