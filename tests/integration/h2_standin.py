"""The HTTP/2 the test stand-ins speak (follower_standin.py, peer_standin.py), as the standard
library has none: over TLS 1.3 with ALPN h2 on 127.0.0.1, the client preface, SETTINGS and their
ACK, PING, and for every request stream that ends, the answer the stand-in makes (HEADERS with
RFC 7541 literal fields, no Huffman, no dynamic table, then DATA ending the stream). The request's
header block is ignored. One connection at a time; run() returns after 60 s."""
import os
import socket
import ssl
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def literal(name_index, name, value):
    """A literal header field without indexing (RFC 7541 6.2.2), with an indexed name or a new one."""
    v = value.encode()
    if name_index:
        head = bytes([name_index]) if name_index < 15 else bytes([0x0F, name_index - 15])
        return head + bytes([len(v)]) + v
    n = name.encode()
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def response(stream, status, content_type, body, extra=()):
    """HEADERS (:status, content-type, EXTRA (name, value) pairs, content-length) and DATA."""
    block = literal(8, ":status", status) + literal(31, "content-type", content_type)
    for name, value in extra:
        block += literal(0, name, value)
    block += literal(28, "content-length", str(len(body)))
    return frame(HEADERS, END_HEADERS, stream, block) + frame(DATA, END_STREAM, stream, body)


def read_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def serve(conn, answer):
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


def run(cert, key, answer, port=0, port_file=None):
    """Serves on 127.0.0.1:PORT (0: any, written to PORT_FILE) for 60 s."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    listener.settimeout(0.5)
    if port_file is not None:
        with open(port_file + ".tmp", "w") as f:
            f.write(str(listener.getsockname()[1]))
        os.rename(port_file + ".tmp", port_file)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            raw, _ = listener.accept()
        except socket.timeout:
            continue
        raw.settimeout(5)
        try:
            with ctx.wrap_socket(raw, server_side=True) as conn:
                serve(conn, answer)
        except (OSError, ConnectionError, ssl.SSLError):
            pass
