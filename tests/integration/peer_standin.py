#!/usr/bin/env python3
"""Stand-in at a coordinator's RPC address that answers every HTTP/2 request with 200,
application/proto and a fixed body: someone on the network path who holds a fleet certificate
for that host (tests of who may answer PeerService.AuditHead). HTTP/2 as little as
follower_standin.py speaks. Exits by itself after 60 s.

usage: peer_standin.py CERT KEY PORT BODY_HEX
"""
import socket
import ssl
import struct
import sys
import time

cert, key, port, body = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM, ACK = 0x1, 0x1


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def literal(name_index, value):
    """A literal header field without indexing (RFC 7541 6.2.2) with an indexed name."""
    v = value.encode()
    head = bytes([name_index]) if name_index < 15 else bytes([0x0F, name_index - 15])
    return head + bytes([len(v)]) + v


def answer(stream):
    block = literal(8, "200") + literal(31, "application/proto") + literal(28, str(len(body)))
    return frame(HEADERS, 0x4, stream, block) + frame(DATA, END_STREAM, stream, body)


def read_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def serve(conn):
    if read_exact(conn, len(PREFACE)) != PREFACE:
        return
    conn.sendall(frame(SETTINGS, 0, 0))
    while True:
        head = read_exact(conn, 9)
        length = int.from_bytes(head[0:3], "big")
        ftype, flags = head[3], head[4]
        stream = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
        payload = read_exact(conn, length)
        if ftype == SETTINGS and not flags & ACK:
            conn.sendall(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            conn.sendall(frame(PING, ACK, 0, payload))
        elif ftype == GOAWAY:
            return
        elif ftype in (HEADERS, DATA) and flags & END_STREAM:
            conn.sendall(answer(stream))


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["h2"])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(16)
listener.settimeout(0.5)
deadline = time.time() + 60
while time.time() < deadline:
    try:
        raw, _ = listener.accept()
    except socket.timeout:
        continue
    raw.settimeout(5)
    try:
        with ctx.wrap_socket(raw, server_side=True) as conn:
            serve(conn)
    except (OSError, ConnectionError, ssl.SSLError):
        pass
