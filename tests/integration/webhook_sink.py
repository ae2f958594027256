#!/usr/bin/env python3
"""Webhook receiver for the tests: plays an approver-notification endpoint (Slack/ntfy bridge,
PagerDuty gateway...) on 127.0.0.1. It checks keyfleet's signature the way a receiver should,
HMAC-SHA256(secret, TIMESTAMP "." BODY) against X-Keyfleet-Signature, and appends one JSON line
per request to the log: {"valid": bool, "status": int, "body": {...}}.
The first FAIL_FIRST requests are answered 500 to exercise retries.

usage: webhook_sink.py SECRET_FILE PORT_FILE LOG_FILE [FAIL_FIRST]
"""
import hashlib
import hmac
import http.server
import json
import sys

secret = open(sys.argv[1], "rb").read().rstrip(b"\r\n")
port_file, log_file = sys.argv[2], sys.argv[3]
fail_first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
seen = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        seen += 1
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        ts = self.headers.get("X-Keyfleet-Timestamp", "")
        sig = self.headers.get("X-Keyfleet-Signature", "")
        want = "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        status = 500 if seen <= fail_first else 200
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        with open(log_file, "a") as f:
            f.write(json.dumps({"valid": hmac.compare_digest(sig, want), "status": status, "body": parsed}) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_port))
import os

os.rename(port_file + ".tmp", port_file)
server.timeout = 0.5
# Bounded: the sink exits by itself after two minutes.
import time

deadline = time.time() + 120
while time.time() < deadline:
    server.handle_request()
