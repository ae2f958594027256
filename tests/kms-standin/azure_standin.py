#!/usr/bin/env python3
"""Stand-in for Azure Key Vault or Managed HSM (the keys API), the Entra ID token endpoint and the
Azure Instance Metadata Service (IMDS) managed-identity token endpoint.

Azure cannot be reached from these machines, so the tests use this HTTPS server on 127.0.0.1. It
follows the public REST API (../shared/api-facts.md, learn.microsoft.com) at least as strictly as
the services: what Azure refuses, this refuses the same way. One server plays every host: the
login host is https://127.0.0.1:PORT/login, IMDS (with --imds-plain-port-file) is
http://127.0.0.1:PORT2/metadata/identity/oauth2/token, plain HTTP only, like Azure's, and the vault
URL is https://127.0.0.1:PORT. It plays one cloud (--cloud public|usgov|china, default public):
Entra ID and IMDS refuse a scope or resource of another cloud with 400 invalid_resource
AADSTS500011 "The resource principal named ... was not found in the tenant named ...".

    POST /login/TENANT/oauth2/v2.0/token      form: client_id, grant_type=client_credentials,
                                               scope=RESOURCE/.default, and client_secret, or
                                               client_assertion (the federated token, a JWT with
                                               aud api://AzureADTokenExchange, unexpired, equal to
                                               --federated-token-file) with client_assertion_type
                                               urn:ietf:params:oauth:client-assertion-type:jwt-bearer
                                               -> {"token_type":"Bearer","expires_in":N,"access_token":...}
                                               400 {"error":"invalid_client"|"invalid_scope"|...,
                                                    "error_description":"AADSTS...","error_codes":[...]}
    GET  /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R[&client_id=ID]
                                               needs "Metadata: true" and no X-Forwarded-For;
                                               -> {"access_token","expires_in":"N" (a string),
                                                   "resource","token_type":"Bearer",...}
                                               400 {"error":"invalid_request"|"invalid_resource"|...}
    GET  /keys/NAME[/VERSION]?api-version=V    -> {"key":{"kid","kty","key_ops",n,e},"attributes":{...}}
    POST /keys/NAME[/VERSION]/wrapkey          {"alg":"RSA-OAEP-256","value":B64URL} -> {"kid","value"}
    POST /keys/NAME/VERSION/unwrapkey          same shape
    POST /keys/NAME/rotate                     a new version -> the key bundle (api-version 7.3 on)
    PATCH /keys/NAME[/VERSION]                 {"attributes":{"enabled","exp","nbf"}} (null removes)
                                               -> the key bundle (Update Key; RBAC action keys/write)

A disabled version refuses every key operation, and a version outside its nbf/exp window refuses
wrapkey (unwrapkey still works), with 403 {"error":{"code":"Forbidden","message":"Operation
wrapKey is not allowed on a disabled key." (or "on an expired key.", "on a not yet valid key.")}}
and no innererror (not RBAC, policy or firewall).

Tokens are bound to their audience (the scope's resource, or IMDS's resource): the vault accepts
only tokens for --resource (https://vault.azure.net by default; https://managedhsm.azure.net for
a Managed HSM), and answers any other, a missing, expired or revoked one with 401 and the
challenge WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/TENANT",
resource="RESOURCE". Any api-version of the keys API's GA list is accepted, others are a 400.
Operations a key's key_ops lack are a 403 KeyOperationForbidden; operations the identity has no
role for (--deny OP: get, wrapkey, unwrapkey, rotate) are a 403 ForbiddenByRbac. Errors are
{"error":{"code","message"[,"innererror":{"code"}]}}; 429 carries Retry-After. Faults: see
standin_common.py, plus "firewall" (403 ForbiddenByFirewall on key operations).

    --key NAME[:KTY[:OP,OP...[:STATE]]]  a key created at start: RSA-2048 by default with every
                                  RSA op; KTY RSA, RSA-HSM or EC (an EC key is described, never
                                  used); STATE disabled, expired (exp a minute ago) or
                                  not-yet-valid (nbf in an hour)
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
from http.server import ThreadingHTTPServer

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


API_VERSIONS = {"2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01"}
ROTATE_SINCE = ("7.3", "7.4", "7.5", "7.6", "2025-07-01")
# Each cloud's Entra ID issues tokens for its own cloud's resources only.
CLOUD_RESOURCES = {
    "public": {"https://vault.azure.net", "https://managedhsm.azure.net"},
    "usgov": {"https://vault.usgovcloudapi.net", "https://managedhsm.usgovcloudapi.net"},
    "china": {"https://vault.azure.cn", "https://managedhsm.azure.cn"},
}
IMDS_API_VERSIONS = {"2018-02-01", "2019-08-01"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALL_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]


def aad_error(code, number, text):
    return {"error": code, "error_description": "AADSTS%d: %s" % (number, text), "error_codes": [number]}


def jwt_claims(tok):
    parts = tok.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    return json.loads(unb64url(parts[1]))


class Azure:
    def add_args(self, p):
        p.add_argument("--tenant", required=True)
        p.add_argument("--client-id", required=True)
        p.add_argument("--client-secret-file", default=None)
        p.add_argument("--federated-token-file", default=None, help="the workload identity token Entra accepts")
        p.add_argument("--msi-client-id", default="msi-system", help="the managed identity's client id")
        p.add_argument("--resource", default="https://vault.azure.net", help="the audience the vault accepts")
        p.add_argument("--deny", action="append", default=[], help="an operation the identity has no role for")
        p.add_argument("--token-ttl", type=int, default=3599)
        p.add_argument("--key", action="append", default=[], help="NAME[:KTY[:OPS]] created at start")
        p.add_argument("--issued-file", default=None, help="appends each token issued (tests grep logs for them)")
        p.add_argument("--imds-plain-port-file", default=None,
                       help="serve IMDS over plain HTTP, as Azure does (and only there), on a port written here")
        p.add_argument("--cloud", choices=sorted(CLOUD_RESOURCES), default="public",
                       help="the cloud whose Entra ID and IMDS this plays: other clouds' resources are unknown")

    def configure(self, a):
        self.lock = threading.Lock()
        self.tenant, self.client_id = a.tenant, a.client_id
        self.secret = open(a.client_secret_file).read().strip() if a.client_secret_file else None
        self.federated_file = a.federated_token_file
        self.msi_client_id = a.msi_client_id
        self.resource = a.resource
        self.resources = CLOUD_RESOURCES[a.cloud]
        self.deny = set(a.deny)
        self.ttl = a.token_ttl
        self.issued_file = a.issued_file
        self.plain = None
        if a.imds_plain_port_file:
            self.plain = ThreadingHTTPServer(("127.0.0.1", 0), sc.Handler)
            self.plain.daemon_threads = True
            with open(a.imds_plain_port_file + ".tmp", "w") as f:
                f.write(str(self.plain.server_address[1]))
            os.rename(a.imds_plain_port_file + ".tmp", a.imds_plain_port_file)
            threading.Thread(target=self.plain.serve_forever, daemon=True).start()
        self.tokens = {}  # token -> (expiry, audience)
        self.revoked_before = 0.0
        self.keys = {}  # name -> {"kty", "ops", "versions": [(version, private key)]}
        self.attrs = {}  # (name, version) -> {"enabled": bool[, "exp": int][, "nbf": int]}
        for spec in a.key:
            parts = spec.split(":")
            kty = parts[1] if len(parts) > 1 and parts[1] else "RSA"
            ops = parts[2].split(",") if len(parts) > 2 and parts[2] else list(ALL_OPS)
            self.keys[parts[0]] = {"kty": kty, "ops": ops, "versions": []}
            v, _ = self.new_version(parts[0])
            state = parts[3] if len(parts) > 3 else ""
            at = self.attrs[(parts[0], v)]
            if state == "disabled":
                at["enabled"] = False
            elif state == "expired":
                at["exp"] = int(time.time()) - 60
            elif state == "not-yet-valid":
                at["nbf"] = int(time.time()) + 3600
            elif state:
                raise SystemExit("--key %s: state must be disabled, expired or not-yet-valid" % spec)

    def new_version(self, name):
        versions = self.keys[name]["versions"]
        versions.append((secrets.token_hex(16), rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        self.attrs[(name, versions[-1][0])] = {"enabled": True}
        return versions[-1]

    def refusal(self, name, version, want):
        """Key Vault's 403 message for operation want on this version's attributes, or None. Every
        operation on a disabled key is refused; outside nbf/exp only those that make new ciphertext
        (wrapKey, encrypt, sign): unwrapKey, decrypt and verify keep working (Key Vault's
        date-time controlled operations)."""
        at = self.attrs[(name, version)]
        now = time.time()
        if not at.get("enabled", True):
            return "Operation %s is not allowed on a disabled key." % want
        if want in ("wrapKey", "encrypt", "sign"):
            if "exp" in at and now >= at["exp"]:
                return "Operation %s is not allowed on an expired key." % want
            if "nbf" in at and now < at["nbf"]:
                return "Operation %s is not allowed on a not yet valid key." % want
        return None

    def base(self, h):
        return "https://127.0.0.1:%d" % h.server.server_address[1]

    def bundle(self, h, name, version, priv):
        pub = priv.public_key().public_numbers()
        n = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
        k = self.keys[name]
        return {"key": {"kid": "%s/keys/%s/%s" % (self.base(h), name, version), "kty": k["kty"],
                        "key_ops": list(k["ops"]), "n": b64url(n), "e": b64url(pub.e.to_bytes(3, "big"))},
                "attributes": dict(self.attrs[(name, version)], created=int(time.time()), recoveryLevel="Recoverable")}

    def issue(self, audience):
        tok = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[tok] = (time.time() + self.ttl, audience)
            if self.issued_file:
                with open(self.issued_file, "a") as f:
                    f.write(tok + "\n")
        return tok

    def token(self, h, path):
        if path != "/login/%s/oauth2/v2.0/token" % self.tenant:
            return h.send(400, aad_error("invalid_request", 90002, "Tenant not found."))
        f = sc.apply_fault(h, self.fault, True, lambda c: aad_error("temporarily_unavailable", 90033, "injected"))
        if f is None:
            return
        n = int(h.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(h.rfile.read(n).decode(), keep_blank_values=True)
        get = lambda k: (form.get(k) or [""])[0]  # noqa: E731
        if get("grant_type") != "client_credentials":
            return h.send(400, aad_error("unsupported_grant_type", 70003, "The app requested an unsupported grant type."))
        scope = get("scope")
        if not scope.endswith("/.default") or scope[: -len("/.default")] not in self.resources:
            return h.send(400, aad_error("invalid_resource", 500011,
                                         "The resource principal named %s was not found in the tenant named %s. This "
                                         "can happen if the application has not been installed by the administrator "
                                         "of the tenant or consented to by any user in the tenant. You might have sent "
                                         "your authentication request to the wrong tenant."
                                         % (scope[: -len("/.default")], self.tenant)))
        if not secrets.compare_digest(get("client_id"), self.client_id):
            return h.send(400, aad_error("unauthorized_client", 700016, "Application not found in the directory."))
        if "client_assertion" in form or "client_assertion_type" in form:
            if get("client_assertion_type") != ASSERTION_TYPE or "client_secret" in form:
                return h.send(400, aad_error("invalid_request", 50027, "Invalid client assertion type."))
            if not self.assertion_ok(get("client_assertion")):
                return h.send(400, aad_error("invalid_client", 700024, "Client assertion is not within its valid time "
                                             "range, or does not match a federated identity credential."))
        elif self.secret is None or not secrets.compare_digest(get("client_secret"), self.secret):
            return h.send(400, aad_error("invalid_client", 7000215, "Invalid client secret provided."))
        tok = self.issue(scope[: -len("/.default")])
        h.send(200, {"token_type": "Bearer", "expires_in": self.ttl, "ext_expires_in": self.ttl, "access_token": tok})

    def assertion_ok(self, assertion):
        if self.federated_file is None:
            return False
        try:
            want = open(self.federated_file).read().strip()
            claims = jwt_claims(assertion)
        except (OSError, ValueError):
            return False
        return (secrets.compare_digest(assertion, want) and claims.get("aud") == "api://AzureADTokenExchange"
                and isinstance(claims.get("exp"), int) and claims["exp"] > time.time())

    def imds(self, h, method, query):
        if method != "GET":
            return h.send(405, {"error": "invalid_request", "error_description": "Only GET is allowed"})
        if h.headers.get("Metadata") != "true" or h.headers.get("X-Forwarded-For") is not None:
            return h.send(400, {"error": "invalid_request", "error_description": "Required metadata header not specified"})
        f = sc.apply_fault(h, self.fault, True, lambda c: {"error": "temporarily_unavailable", "error_description": "injected"})
        if f is None:
            return
        q = urllib.parse.parse_qs(query)
        if q.get("api-version", [""])[0] not in IMDS_API_VERSIONS:
            return h.send(400, {"error": "invalid_request", "error_description": "Invalid or missing api-version"})
        resource = q.get("resource", [""])[0]
        if resource.rstrip("/") not in self.resources:
            return h.send(400, {"error": "invalid_resource", "error_description":
                                "AADSTS500011: The resource principal named %s was not found" % resource})
        cid = q.get("client_id", [None])[0]
        if cid is not None and cid != self.msi_client_id:
            return h.send(400, {"error": "invalid_request", "error_description": "Identity not found"})
        tok = self.issue(resource.rstrip("/"))
        now = int(time.time())
        h.send(200, {"access_token": tok, "refresh_token": "", "expires_in": str(self.ttl),
                     "expires_on": str(now + self.ttl), "not_before": str(now), "resource": resource,
                     "token_type": "Bearer", "client_id": self.msi_client_id})

    def refuse_token(self, h, why):
        return h.send(401, kv_error("Unauthorized", why),
                      {"WWW-Authenticate": 'Bearer authorization="https://login.microsoftonline.com/%s", '
                                           'resource="%s"' % (self.tenant, self.resource)})

    def check_token(self, h, arrived):
        """None when the bearer token was good for this vault when the request arrived, else the 401 text."""
        auth = h.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return "AKV10000: Request is missing a Bearer or PoP token."
        with self.lock:
            exp, aud = self.tokens.get(auth[7:], (None, None))
        if exp is None or arrived >= exp or exp - self.ttl < self.revoked_before:
            return "AKV10032: Invalid issuer, or the token expired or was revoked."
        if aud != self.resource:
            return "AKV10022: Invalid audience. Expected %s, found: %s." % (self.resource, aud)
        return None

    def forbidden(self, h, inner, message):
        return h.send(403, {"error": {"code": "Forbidden", "message": message, "innererror": {"code": inner}}})

    def handle(self, h, method, path, query):
        if (h.server is self.plain) != (path == "/metadata/identity/oauth2/token"):
            # IMDS is plain HTTP on 169.254.169.254 only; Key Vault and Entra ID are HTTPS only.
            return h.send(404, kv_error("NotFound", "IMDS is served over plain HTTP only, the rest over HTTPS only"))
        if path.startswith("/login/") and method == "POST":
            return self.token(h, path)
        if path == "/metadata/identity/oauth2/token":
            return self.imds(h, method, query)
        body = h.body_json() if method in ("POST", "PATCH") else {}
        # The service authenticates a request when it arrives; a slow answer (the "slow" fault)
        # does not turn a token that was valid then into a 401.
        arrived = time.time()
        f = sc.apply_fault(h, self.fault, False, lambda c: kv_error("Throttled" if c == 429 else "Fault", "injected"))
        if f is None:
            return
        fault = f[0]
        if fault == "revoke-tokens":
            self.revoked_before = time.time() + 1
        why = self.check_token(h, arrived)
        if why is not None:
            return self.refuse_token(h, why)
        if fault == "firewall":
            return self.forbidden(h, "ForbiddenByFirewall", "Client address is not authorized and caller is not a "
                                  "trusted service.\r\nClient address: 127.0.0.1")
        api = urllib.parse.parse_qs(query).get("api-version")
        if api is None or len(api) != 1 or api[0] not in API_VERSIONS:
            return h.send(400, kv_error("BadParameter", "The specified version (%s) of the API is not supported."
                                        % (api[0] if api else "none")))
        if body is None:
            return h.send(400, kv_error("BadParameter", "The request body is not valid JSON."))
        m = re.fullmatch(r"/keys/([A-Za-z0-9-]+)(?:/([0-9a-f]{32}))?(?:/(wrapkey|unwrapkey|rotate))?", path)
        if not m:
            return h.send(404, kv_error("NotFound", "Not found"))
        name, version, op = m.groups()
        action = op or ("update" if method == "PATCH" else "get")
        if action in self.deny:
            return self.forbidden(h, "ForbiddenByRbac", "Caller is not authorized to perform action on resource.\r\n"
                                  "Action: 'Microsoft.KeyVault/vaults/keys/%s'" %
                                  {"get": "read", "wrapkey": "wrap/action", "unwrapkey": "unwrap/action",
                                   "rotate": "rotate/action", "update": "write"}[action])
        with self.lock:
            k = self.keys.get(name)
            if k is None:
                return h.send(404, kv_error("KeyNotFound", "A key with (name/id) %s was not found in this key vault." % name))
            if op == "rotate" and method == "POST" and version is None:
                if api[0] not in ROTATE_SINCE:
                    return h.send(400, kv_error("BadParameter", "Rotate needs api-version 7.3 or later."))
                v, priv = self.new_version(name)
                sys.stderr.write("standin: rotated %s to %s\n" % (name, v))  # counted by tests, answer or not
                return h.send(200, self.bundle(h, name, v, priv))
            versions = k["versions"]
            found = [kv for kv in versions if kv[0] == version] if version else [versions[-1]]
            if not found:
                return h.send(404, kv_error("KeyNotFound", "A key with (name/id) %s/%s was not found." % (name, version)))
            v, priv = found[0]
        if op is None and method == "GET":
            return h.send(200, self.bundle(h, name, v, priv))
        if op is None and method == "PATCH":  # Update Key: attributes (enabled, exp, nbf) of a version
            at = body.get("attributes", {})
            if not isinstance(at, dict) or any(
                    (kk == "enabled" and not isinstance(vv, bool)) or (kk in ("exp", "nbf") and
                                                                       not isinstance(vv, (int, type(None))))
                    or kk not in ("enabled", "exp", "nbf") for kk, vv in at.items()):
                return h.send(400, kv_error("BadParameter", "Property attributes has invalid value"))
            with self.lock:
                cur = self.attrs[(name, v)]
                for kk, vv in at.items():
                    if vv is None:
                        cur.pop(kk, None)
                    else:
                        cur[kk] = vv
            return h.send(200, self.bundle(h, name, v, priv))
        if op not in ("wrapkey", "unwrapkey") or method != "POST" or (op == "unwrapkey" and version is None):
            return h.send(405 if op else 404, kv_error("BadParameter", "Unsupported operation"))
        want = {"wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}[op]
        if want not in k["ops"] or not k["kty"].startswith("RSA"):
            return self.forbidden(h, "KeyOperationForbidden", "Operation %s is not permitted on this key." % want)
        refused = self.refusal(name, v, want)
        if refused is not None:  # Key Vault's own refusal: no RBAC or firewall inner code
            return h.send(403, kv_error("Forbidden", refused))
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
