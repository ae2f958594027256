#!/usr/bin/env python3
"""Stand-in for Azure Key Vault (keys API, api-version 7.4) and the Entra ID token endpoint.

Azure cannot be reached from these machines, so the tests use this HTTPS server on 127.0.0.1.
It follows the public REST API as written in ../shared/api-facts.md. One server plays both
hosts: the login host is https://127.0.0.1:PORT/login and the vault URL is
https://127.0.0.1:PORT.

    POST /login/TENANT/oauth2/v2.0/token      form: client_id, client_secret,
                                               grant_type=client_credentials,
                                               scope=https://vault.azure.net/.default
                                               -> {"token_type":"Bearer","expires_in":N,"access_token":...}
                                               400 {"error":"invalid_client","error_description":"AADSTS...",...}
    GET  /keys/NAME[/VERSION]?api-version=7.4  -> {"key":{"kid","kty":"RSA","key_ops",n,e},"attributes":{...}}
    POST /keys/NAME[/VERSION]/wrapkey          {"alg":"RSA-OAEP-256","value":B64URL} -> {"kid","value"}
    POST /keys/NAME/VERSION/unwrapkey          same shape
    POST /keys/NAME/rotate                     a new version -> the key bundle

Keys are RSA-2048 per version. Errors are {"error":{"code","message"}}; 401 carries
WWW-Authenticate: Bearer authorization="...", resource="https://vault.azure.net"; 429 carries
Retry-After. A missing or other api-version is a 400 BadParameter. Faults: see standin_common.py.
"""
import base64
import json
import os
import re
import secrets
import sys
import threading
import time
import urllib.parse

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import standin_common as sc  # noqa: E402

OAEP256 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64url(s):
    if not isinstance(s, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", s):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def kv_error(code, message):
    return {"error": {"code": code, "message": message}}


class Azure:
    def add_args(self, p):
        p.add_argument("--tenant", required=True)
        p.add_argument("--client-id", required=True)
        p.add_argument("--client-secret-file", required=True)
        p.add_argument("--token-ttl", type=int, default=3599)
        p.add_argument("--key", action="append", default=[], help="RSA key to create at start")

    def configure(self, a):
        self.lock = threading.Lock()
        self.tenant, self.client_id = a.tenant, a.client_id
        self.secret = open(a.client_secret_file).read().strip()
        self.ttl = a.token_ttl
        self.tokens = {}
        self.revoked_before = 0.0
        self.keys = {}
        for name in a.key:
            self.new_version(name)

    def new_version(self, name):
        versions = self.keys.setdefault(name, [])
        versions.append((secrets.token_hex(16), rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        return versions[-1]

    def base(self, h):
        return "https://127.0.0.1:%d" % h.server.server_address[1]

    def bundle(self, h, name, version, priv):
        pub = priv.public_key().public_numbers()
        n = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
        return {"key": {"kid": "%s/keys/%s/%s" % (self.base(h), name, version), "kty": "RSA",
                        "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"], "n": b64url(n),
                        "e": b64url(pub.e.to_bytes(3, "big"))},
                "attributes": {"enabled": True, "created": int(time.time()), "recoveryLevel": "Recoverable"}}

    def token(self, h, path):
        if path != "/login/%s/oauth2/v2.0/token" % self.tenant:
            return h.send(400, {"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found.",
                                "error_codes": [90002]})
        f = sc.apply_fault(h, self.fault, True, lambda c: {"error": "temporarily_unavailable",
                                                            "error_description": "AADSTS90033", "error_codes": [90033]})
        if f is None:
            return
        n = int(h.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(h.rfile.read(n).decode(), keep_blank_values=True)
        get = lambda k: (form.get(k) or [""])[0]  # noqa: E731
        if get("grant_type") != "client_credentials" or get("scope") != "https://vault.azure.net/.default":
            return h.send(400, {"error": "invalid_request", "error_description": "AADSTS900144: bad grant or scope",
                                "error_codes": [900144]})
        if not (secrets.compare_digest(get("client_id"), self.client_id)
                and secrets.compare_digest(get("client_secret"), self.secret)):
            return h.send(400, {"error": "invalid_client",
                                                  "error_description": "AADSTS7000215: Invalid client secret provided.",
                                                  "error_codes": [7000215]})
        tok = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[tok] = time.time() + self.ttl
        h.send(200, {"token_type": "Bearer", "expires_in": self.ttl, "ext_expires_in": self.ttl, "access_token": tok})

    def authorized(self, h):
        auth = h.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        with self.lock:
            exp = self.tokens.get(auth[7:])
        return exp is not None and time.time() < exp and exp - self.ttl >= self.revoked_before

    def handle(self, h, method, path, query):
        if path.startswith("/login/") and method == "POST":
            return self.token(h, path)
        body = h.body_json() if method == "POST" else {}
        f = sc.apply_fault(h, self.fault, False, lambda c: kv_error("Throttled" if c == 429 else "Fault", "injected"))
        if f is None:
            return
        fault = f[0]
        if fault == "revoke-tokens":
            self.revoked_before = time.time() + 1
        if not self.authorized(h):
            return h.send(401, kv_error("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."),
                          {"WWW-Authenticate": 'Bearer authorization="https://login.microsoftonline.com/%s", '
                                               'resource="https://vault.azure.net"' % self.tenant})
        if urllib.parse.parse_qs(query).get("api-version") != ["7.4"]:
            return h.send(400, kv_error("BadParameter", "The specified version of the API is not supported."))
        if body is None:
            return h.send(400, kv_error("BadParameter", "The request body is not valid JSON."))
        m = re.fullmatch(r"/keys/([A-Za-z0-9-]+)(?:/([0-9a-f]{32}))?(?:/(wrapkey|unwrapkey|rotate))?", path)
        if not m:
            return h.send(404, kv_error("NotFound", "Not found"))
        name, version, op = m.groups()
        with self.lock:
            versions = self.keys.get(name)
            if versions is None:
                return h.send(404, kv_error("KeyNotFound", "A key with (name/id) %s was not found in this key vault." % name))
            if op == "rotate" and method == "POST" and version is None:
                v, priv = self.new_version(name)
                return h.send(200, self.bundle(h, name, v, priv))
            found = [kv for kv in versions if kv[0] == version] if version else [versions[-1]]
            if not found:
                return h.send(404, kv_error("KeyNotFound", "A key with (name/id) %s/%s was not found." % (name, version)))
            v, priv = found[0]
        if op is None and method == "GET":
            return h.send(200, self.bundle(h, name, v, priv))
        if op not in ("wrapkey", "unwrapkey") or method != "POST" or (op == "unwrapkey" and version is None):
            return h.send(405 if op else 404, kv_error("BadParameter", "Unsupported operation"))
        if body.get("alg") != "RSA-OAEP-256":
            return h.send(400, kv_error("BadParameter", "Invalid algorithm"))
        try:
            value = unb64url(body.get("value"))
        except (ValueError, TypeError):
            return h.send(400, kv_error("BadParameter", "Property value has invalid value"))
        kid = "%s/keys/%s/%s" % (self.base(h), name, v)
        if fault == "bad-version":
            kid = "%s/keys/%s/%s" % (self.base(h), name, "zz-not-a-version")
        if op == "wrapkey":
            out = priv.public_key().encrypt(value, OAEP256)
        else:
            try:
                out = priv.decrypt(value, OAEP256)
            except ValueError:
                return h.send(400, kv_error("BadParameter", "Error decrypting the value."))
            if fault == "wrong-key":
                out = os.urandom(len(out))
        obj = {"kid": kid, "value": b64url(out)}
        if fault == "truncate":
            return h.send_truncated(obj)
        return h.send(200, obj)


if __name__ == "__main__":
    sc.serve(Azure(), sys.argv[1:])
