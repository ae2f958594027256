#!/usr/bin/env python3
"""Stand-in for a keyfleetd replica that is not the Raft leader, for testing clients' leader
hints before replication exists. Over TLS on 127.0.0.1 it answers every request the way the
protocol (docs/protocol.md) says a follower does: HTTP 503, Connect JSON
{"code":"unavailable","message":"not the leader"} and `keyfleet-leader: HOST:PORT`. It speaks
HTTP/1.1 (the standard library has no HTTP/2), which libcurl falls back to. Exits by itself
after 60 s.

usage: follower_standin.py CERT KEY PORT_FILE LEADER
"""
import http.server
import os
import ssl
import sys
import time

cert, key, port_file, leader = sys.argv[1:5]


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length", "0") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"code":"unavailable","message":"not the leader"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("keyfleet-leader", leader)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = answer
    do_GET = answer

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_port))
os.rename(port_file + ".tmp", port_file)
server.timeout = 0.5
deadline = time.time() + 60
while time.time() < deadline:
    server.handle_request()
