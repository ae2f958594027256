#!/usr/bin/env bash
# Review rev18c: the HTTP/1.1 head guard (front/h1guard.h) against pipelined requests. h2o 2.2.5
# parses a request that is already in the socket's buffer when the previous response completes
# (reqread_start -> handle_incoming_request), without a read, so the guard, which checks only on
# reads and only the first head in the buffer, never sees it. A pipelined second head of 90 lines
# (over KFD_H1_HEAD_LINES) or 12 KiB (over KFD_H1_HEAD_MAX), sent with the first in one write,
# must be refused (the connection closed as the read brings it, so here the first is not answered
# either), as it is when sent alone.
# Fixed on this branch: the guard checks each pipelined head in the read that brings it, up to a
# request with a body, which is answered with Connection: close (front/h1guard.c, server.c).
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
start_optional_auth_fleet "$F"

out=$(timeout 40 python3 - "$PORT" "$F/ca.crt" <<'PY'
import socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
ctx.check_hostname = False
ctx.set_alpn_protocols(["http/1.1"])
def head(lines, size):
    return (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" +
            b"".join(b"X-%d: %s\r\n" % (i, b"a" * size) for i in range(lines)) + b"\r\n")
def answers(msg):  # how many responses the server sends to msg, sent in one write
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))
    s.sendall(msg)
    data, deadline = b"", time.time() + 3
    s.settimeout(0.5)
    while time.time() < deadline:
        try:
            got = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if got == b"":
            break
        data += got
    s.close()
    return data.count(b"HTTP/1.1 ")
small = head(1, 10)
print("control: two small pipelined heads: %d" % answers(small + small))
print("control: 90 lines alone: %d" % answers(head(90, 1)))
print("pipelined 90 lines: %d" % answers(small + head(90, 1)))
print("control: 12 KiB alone: %d" % answers(head(3, 4000)))
print("pipelined 12 KiB: %d" % answers(small + head(3, 4000)))
# Behind a request with a body the guard cannot find the next head: such a request is answered
# with Connection: close, and nothing behind it is parsed.
cl = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
chunked = b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
print("behind a Content-Length body, 90 lines: %d" % answers(cl + head(90, 1)))
print("behind a chunked body, 12 KiB: %d" % answers(chunked + head(3, 4000)))
print("control: behind a body, a small head: %d" % answers(cl + small))
print("small, then a body, then 12 KiB: %d" % answers(small + cl + head(3, 4000)))
PY
)
want() { if printf '%s\n' "$out" | grep -qxF "$1: $2"; then ok "$1: $2"; else not_ok "$1: $2" "got: $out"; fi; }
want "control: two small pipelined heads" 2
want "control: 90 lines alone" 0
want "pipelined 90 lines" 0
want "control: 12 KiB alone" 0
want "pipelined 12 KiB" 0
want "behind a Content-Length body, 90 lines" 1
want "behind a chunked body, 12 KiB" 1
want "control: behind a body, a small head" 1
want "small, then a body, then 12 KiB" 2
check "keyfleetd is still running" kill -0 "$KFD_PID"
check_sanitizers
finish
