#!/usr/bin/env bash
# Review rev18c: the HTTP/1.1 guard's per-connection state and the per-source HTTP/1.1 count
# (front/h1guard.c, server.c on_handshake/on_conn_close) across every way a connection ends:
# a reset mid-handshake, a reset right after the handshake, a reset while a response is being
# written (keep-alive), a close after Expect: 100-continue, a refusal, an h2 connection, a
# pipelined burst, a reset with a partial head. Afterwards, the count must be exactly what it
# was: 16 HTTP/1.1 connections held from one source and the 17th refused (a leak lets fewer in,
# a double release lets more in). Run it on an ASan build for the use-after-free side.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
start_optional_auth_fleet "$F"

out=$(timeout 60 python3 - "$PORT" "$F/ca.crt" <<'PY'
import socket, ssl, struct, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
def ctx_for(alpn):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.load_verify_locations(ca)
    c.check_hostname = False
    if alpn:
        c.set_alpn_protocols(alpn)
    return c
h1, h2, none = ctx_for(["http/1.1"]), ctx_for(["h2"]), ctx_for(None)
SRC = "127.0.0.9"
def raw():
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(SRC, 0))
def reset(s):
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()
def head(lines=1, size=10, end=True):
    h = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * size) for i in range(lines))
    return h + (b"\r\n" if end else b"")
def state(s):
    s.setblocking(False)
    data = b""
    try:
        while True:
            got = s.recv(4096)
            if got == b"":
                return "closed"
            data += got
    except (ssl.SSLWantReadError, BlockingIOError):
        return "held" if not data else "answered"
    except OSError:
        return "closed"
for rnd in range(3):
    # reset mid-handshake
    s = raw(); s.sendall(b"\x16\x03\x01\x00\x05hello"); reset(s)
    # reset right after the handshake, over ALPN http/1.1 and with no ALPN
    for c in (h1, none):
        s = c.wrap_socket(raw()); reset(s)
    # keep-alive: a response being written (metrics is large; 401 without a cert, so /healthz
    # pipelined 40 times) and a reset while it is sent
    s = h1.wrap_socket(raw()); s.sendall(head() * 40); reset(s)
    # Expect: 100-continue, then a close before the body
    s = h1.wrap_socket(raw())
    s.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
    time.sleep(0.05); reset(s)
    # chunked body cut off
    s = h1.wrap_socket(raw())
    s.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"); reset(s)
    # a refusal (over 8 KiB), then the client's reset
    s = h1.wrap_socket(raw()); s.sendall(head(3, 4000, False)); time.sleep(0.05); reset(s)
    # a partial head, reset
    s = h1.wrap_socket(raw()); s.sendall(head(2, 10, False)); reset(s)
    # an HTTP/2 connection, reset
    s = h2.wrap_socket(raw()); s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); reset(s)
    # a pipelined burst, closed cleanly after the answers
    s = h1.wrap_socket(raw()); s.sendall(head() * 3); time.sleep(0.1); s.close()
    # 20 at once past the limit, all reset
    many = []
    for _ in range(20):
        try:
            t = h1.wrap_socket(raw()); t.sendall(head(1, 10, False)); many.append(t)
        except OSError:
            pass
    for t in many:
        reset(t)
time.sleep(1.0)  # the server sees the resets
many = []
for _ in range(18):
    try:
        t = h1.wrap_socket(raw()); t.sendall(head(1, 10, False)); many.append(t)
    except OSError:
        many.append(None)
time.sleep(0.7)
states = [state(t) if t is not None else "closed" for t in many]
print("afterwards: %d held, %d closed" % (states.count("held"), states.count("closed")))
for t in many:
    if t is not None:
        t.close()
PY
)
want() { if printf '%s\n' "$out" | grep -qxF "$1: $2"; then ok "$1: $2"; else not_ok "$1: $2" "got: $out"; fi; }
want "afterwards" "16 held, 2 closed"
check "keyfleetd is still running" kill -0 "$KFD_PID"
check_sanitizers
finish
