#!/usr/bin/env bash
# HTTP/1.1 request heads over TLS without a client certificate (tls.client_auth: optional; review
# rev19 P2, front/h1guard.h): h2o 2.2.5 alone holds a head of up to about 417 KB per connection
# until idle_timeout (30 s here). A head over 8 KiB or 64 lines without its final blank line is
# closed as it arrives, and one source address has at most 16 HTTP/1.1 TLS connections open.
# Each refusal has a control next to it: a head within the limits is answered.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
start_optional_auth_fleet "$F"

out=$(timeout 30 python3 - "$PORT" "$F/ca.crt" <<'PY'
import socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
ctx.check_hostname = False
ctx.set_alpn_protocols(["http/1.1"])  # and no client certificate
def conn(src="127.0.0.1"):
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0))
    return ctx.wrap_socket(s)
def state(s):  # after the caller waited: "closed" (EOF or reset), "answered" (and kept) or "held"
    s.setblocking(False)
    data = b""
    try:
        while True:
            got = s.recv(4096)
            if got == b"":
                return "closed"
            data += got
    except (ssl.SSLWantReadError, BlockingIOError):
        return "held" if not data else "answered" if data.startswith(b"HTTP/1.1 200") else "other"
    except OSError:
        return "closed"
def head(lines, size, end):
    h = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * size) for i in range(lines))
    return h + (b"\r\n" if end else b"")
cases = [("control: a complete 7.7 KiB head", head(2, 3900, True)),
         ("control: 62 lines, complete", head(60, 10, True)),
         ("control: a partial head of 2 KiB", head(2, 1000, False)),
         ("over 8 KiB, partial", head(3, 4000, False)),
         ("over 8 KiB, in one head with its end", head(3, 4000, True)),
         ("70 lines, partial", head(68, 10, False))]
socks = []
for name, msg in cases:
    s = conn()
    s.sendall(msg)
    socks.append(s)
# Keep-alive: the guard is on the reads of the next request too (h2o sets its reader again after
# each response), not only the first.
s = conn()
s.sendall(head(1, 10, True))
first = s.recv(4096)
s.sendall(head(3, 4000, False))
time.sleep(1)
for (name, _), s2 in zip(cases, socks):
    print("%s: %s" % (name, state(s2)))
    s2.close()
print("keep-alive, then over 8 KiB: %s %s" % ("answered" if first.startswith(b"HTTP/1.1 200") else "first:%r" % first[:12],
                                              state(s)))
s.close()
# Per source: 20 connections from 127.0.0.7, each with a partial head; 127.0.0.8 is served.
many = []
for _ in range(20):
    try:
        s = conn("127.0.0.7")
        s.sendall(head(1, 10, False))
        many.append(s)
    except OSError:
        many.append(None)
time.sleep(0.7)
states = [state(s) if s is not None else "closed" for s in many]
print("127.0.0.7: %d held, %d closed" % (states.count("held"), states.count("closed")))
s = conn("127.0.0.8")
s.sendall(head(1, 10, True))
time.sleep(0.3)
print("127.0.0.8 meanwhile: %s" % state(s))
for s in many:
    if s is not None:
        s.close()
# Once they are gone, 127.0.0.7 is served again (the server sees the closes within a moment).
for _ in range(20):
    time.sleep(0.1)
    s = conn("127.0.0.7")
    s.sendall(head(1, 10, True))
    time.sleep(0.2)
    got = state(s)
    s.close()
    if got == "answered":
        break
print("127.0.0.7 afterwards: %s" % got)
PY
)
want() { if printf '%s\n' "$out" | grep -qxF "$1: $2"; then ok "$1: $2"; else not_ok "$1: $2" "got: $out"; fi; }
want "control: a complete 7.7 KiB head" answered
want "control: 62 lines, complete" answered
want "control: a partial head of 2 KiB" held
want "over 8 KiB, partial" closed
want "over 8 KiB, in one head with its end" closed
want "70 lines, partial" closed
want "keep-alive, then over 8 KiB" "answered closed"
want "127.0.0.7" "16 held, 4 closed"
want "127.0.0.8 meanwhile" answered
want "127.0.0.7 afterwards" answered
expect_match "refused heads are logged (at most once a second)" "$(cat "$F/keyfleetd.log")" \
    "event=http1_head_refused source=127.0.0.1 limit=(bytes|lines) "
expect_eq "... and counted, each" "$(metric "$F" keyfleet_http1_heads_refused_total)" "4"
expect_match "the 17th connection from a source is logged" "$(cat "$F/keyfleetd.log")" \
    "event=connection_rejected source=127.0.0.7 reason=http1_per_source limit=16"
check "keyfleetd is still running" kill -0 "$KFD_PID"
check_sanitizers
finish
