"""Shared plumbing for the KMS stand-ins (vault_standin.py, azure_standin.py).

An HTTPS server on 127.0.0.1 (a port chosen by the kernel, written to a file), one thread per
request so a slow answer never holds the others, and fault injection for the tests: before
each request the server reads FAULT_FILE, whose first line is one of

    slow MS            answer after MS milliseconds
    hang               never answer (until the client gives up)
    status CODE [S]    answer CODE with the service's error body, with Retry-After: S when S is
                       given (429 carries one unless S is "-": S defaults to 1)
    redirect           307 with a Location naming the same path on another node (a standby
                       Vault's answer) and no body
    garbage            200 with a body that is not JSON
    truncate           200 whose body stops half-way (Content-Length promises more)
    bad-version        ciphertexts in answers carry a version the key does not have
    wrong-key          decrypt/unwrap answers with a different 256-bit key
    revoke-tokens      every token issued so far is refused from now on

An empty or missing file means no fault. Faults apply to the key operations, not to logins,
unless the line ends with " +login". Uses only the standard library and Debian's
python3-cryptography.
"""
import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Fault:
    def __init__(self, path):
        self.path = path

    def current(self, is_login):
        try:
            with open(self.path) as f:
                line = f.readline().strip()
        except OSError:
            return None, None
        if not line:
            return None, None
        if line.endswith(" +login"):
            line = line[: -len(" +login")]
        elif is_login:
            return None, None
        parts = line.split()
        return parts[0], (" ".join(parts[1:]) if len(parts) > 1 else None)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    service = None  # set by serve(): an object with handle(handler, method, path, query, body)

    def log_message(self, fmt, *args):
        sys.stderr.write("standin: " + (fmt % args) + "\n")

    def body_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        self.raw_body = raw
        if not raw:
            return {}
        try:
            v = json.loads(raw)
        except ValueError:
            return None
        return v if isinstance(v, dict) else None

    def send(self, code, obj=None, headers=None, raw=None):
        data = raw if raw is not None else (b"" if obj is None else json.dumps(obj).encode())
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if data or code != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_truncated(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def _dispatch(self, method):
        path, _, query = self.path.partition("?")
        self.service.handle(self, method, path, query)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")


def apply_fault(handler, fault, is_login, error_body):
    """Returns (kind, arg) for faults the service must apply itself, or None when handled."""
    kind, arg = fault.current(is_login)
    if kind is None:
        return (None, None)
    if kind == "slow":
        time.sleep(int(arg) / 1000.0)
        return (None, None)
    if kind == "hang":
        time.sleep(120)
        handler.close_connection = True
        return None
    if kind == "status":
        words = arg.split()
        code = int(words[0])
        after = words[1] if len(words) > 1 else ("1" if code == 429 else None)
        if after == "-":  # "status 429 -": no Retry-After at all
            after = None
        headers = {"Retry-After": after} if after is not None else {}
        handler.send(code, error_body(code), headers)
        return None
    if kind == "redirect":
        handler.send(307, headers={"Location": "https://127.0.0.1:9" + handler.path}, raw=b"")
        return None
    if kind == "garbage":
        handler.send(200, raw=b"<html>not json{")
        return None
    return (kind, arg)


def serve(service, argv):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--tls-key", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--fault-file", required=True)
    p.add_argument("--log", default=None)
    service.add_args(p)
    args = p.parse_args(argv)
    service.configure(args)
    service.fault = Fault(args.fault_file)
    Handler.service = service
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.tls_key)
    ctx.set_alpn_protocols(["http/1.1"])
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(httpd.server_address[1]))
    os.rename(tmp, args.port_file)
    # Bounded: tests kill us, and we never outlive a forgotten test by more than an hour.
    threading.Timer(3600, lambda: os._exit(0)).start()
    httpd.serve_forever()
