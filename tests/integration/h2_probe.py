#!/usr/bin/env python3
"""A raw HTTP/2 client (RFC 9113) for the front-door tests, as the standard library has none and
curl, nghttp and h2load cannot send the frames an abusive client sends. Over TLS 1.3 with a client
certificate and ALPN h2 on 127.0.0.1.

  h2_probe.py settings    HOST PORT CA CERT KEY
      prints the server's SETTINGS: "max_concurrent_streams=N initial_window_size=N"
  h2_probe.py reset-flood HOST PORT CA CERT KEY N
      sends N pairs of HEADERS (GET /healthz, no END_STREAM, so the stream is still being
      served) then RST_STREAM(CANCEL), then one
      more GET /healthz, and prints how the connection ended: "goaway=CODE_NAME resets_sent=K"
      when the server sent GOAWAY (K: how many resets were written before the connection
      closed), or "healthz=STATUS" when the last request was answered.
  h2_probe.py provoke-flood HOST PORT CA CERT KEY N
      the same with resets the server sends ("MadeYouReset"): N pairs of HEADERS (GET /healthz
      without END_STREAM, so the stream stays open) then WINDOW_UPDATE(2^31-1) on it, which
      overflows its window, so the server resets it with FLOW_CONTROL_ERROR.
  h2_probe.py reset-after-answer HOST PORT CA CERT KEY N
      N requests (GET /healthz, END_STREAM) one after another, each reset with RST_STREAM(CANCEL)
      only once its whole answer (END_STREAM) was read, as libcurl does; then one more GET
      /healthz; prints "healthz=STATUS answered=K" or "goaway=CODE_NAME answered=K".
  h2_probe.py reset-deep HOST PORT CA CERT KEY N
      reset-flood at the bottom of the deepest priority tree a client can build (review
      rev29h2): 16 PRIORITY-only streams and then 31 open streams (HEADERS without END_STREAM),
      each depending exclusively on the one before, then N pairs of HEADERS (no END_STREAM,
      depending on the deepest) and RST_STREAM(CANCEL); prints like reset-flood.
  h2_probe.py frame-flood HOST PORT CA CERT KEY rst|priority N
      one GET /healthz answered whole (stream 1), then N RST_STREAM (or PRIORITY) frames on that
      closed stream, then one more GET /healthz; prints "healthz=STATUS" or "goaway=CODE_NAME".
  h2_probe.py reset-window0 HOST PORT CA CERT KEY N
      SETTINGS_INITIAL_WINDOW_SIZE 0, then N GET /metrics in batches of 30: each batch's answers'
      HEADERS are read (their bodies queued, held by the window), then all 30 are reset
      (RST_STREAM CANCEL); prints
      "goaway=CODE_NAME answered=K" or "healthz=STATUS answered=K" (a last GET /healthz, whose
      HEADERS alone are awaited: its body is held by the window too).
  h2_probe.py ping-flood HOST PORT CA CERT KEY STREAMS PINGS rst|read|rst-paused:PID
      SETTINGS_INITIAL_WINDOW_SIZE 0, STREAMS GET /metrics, then PINGS pings (see ping_flood).
  h2_probe.py body-streams HOST PORT CA CERT KEY STREAMS BYTES
      opens STREAMS POST streams to an RPC and sends BYTES of body on each without ending it;
      prints "refused=K answered=M healthz=STATUS" (K: streams reset with REFUSED_STREAM, M: streams
      answered; then all are reset and one more GET /healthz is sent on the connection).
  h2_probe.py header-fields HOST PORT CA CERT KEY CONNS STREAMS FIELDS
      on each of CONNS connections, STREAMS POST streams whose header block adds one 3900-byte
      field to the HPACK dynamic table and then names it again FIELDS times (one byte each), no
      body; prints "reset=K goaway=G" (K: streams the server reset or refused, G: connections it
      ended) once every stream is accounted for, or after 1.5 s per connection.
CERT "-": no client certificate.

One thread (OpenSSL does not allow two on one connection). Request headers are RFC 7541 literal fields without Huffman or the dynamic table. Of the answers it
reads only frame headers, SETTINGS, GOAWAY and the first byte of each HEADERS block (":status:
200" is static-table index 8). Bounded: every read has a 10 s timeout and the whole run 60 s.
"""
import os
import signal
import socket
import ssl
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 2, 3, 4, 6, 7, 8
PRIORITY_FLAG = 0x20
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
ERRORS = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
          7: "REFUSED_STREAM", 8: "CANCEL", 11: "ENHANCE_YOUR_CALM"}


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    name, value = name.encode(), value.encode()
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def get_headers(path):
    return (literal(":method", "GET") + literal(":scheme", "https") + literal(":path", path)
            + literal(":authority", "127.0.0.1"))


def connect(host, port, ca, cert, key, client_settings=b""):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(ca)
    if cert != "-":  # "-": no client certificate (client_auth is optional at the TLS layer)
        ctx.load_cert_chain(cert, key)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((host, int(port)), timeout=10)
    s = ctx.wrap_socket(raw)
    if s.selected_alpn_protocol() != "h2":
        sys.exit("h2_probe: ALPN h2 not selected")
    s.sendall(PREFACE + frame(SETTINGS, 0, 0, client_settings))
    return s


class Reader:
    def __init__(self, sock):
        self.sock, self.buf, self.why = sock, b"", ""

    def next(self):
        """The next frame as (type, flags, stream, payload), or None at EOF."""
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    f = self.buf[:9 + n]
                    self.buf = self.buf[9 + n:]
                    return f[3], f[4], int.from_bytes(f[5:9], "big") & 0x7FFFFFFF, f[9:]
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError, socket.timeout, OSError) as e:
                self.why = type(e).__name__  # what ended it, for a failure's message
                return None
            if not chunk:
                self.why = "eof"
                return None
            self.buf += chunk


def settings(args):
    s = connect(*args[:5])
    r = Reader(s)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        f = r.next()
        if f is None:
            sys.exit("h2_probe: closed before SETTINGS")
        ftype, flags, _, payload = f
        if ftype == SETTINGS and not flags & ACK:
            values = {}
            for i in range(0, len(payload) - 5, 6):
                ident, value = struct.unpack(">HI", payload[i:i + 6])
                values[ident] = value
            print("max_concurrent_streams=%s initial_window_size=%s" % (values.get(3, "unset"), values.get(4, "unset")))
            return 0
    sys.exit("h2_probe: no SETTINGS")


def reset_flood(args, provoke=False, deep=False):
    """One thread: OpenSSL does not allow reading and writing one TLS connection from two. The
    server's SETTINGS are read and acknowledged first; the answers to the flood (80 KB at most)
    wait in the socket buffers until it is written."""
    n = int(args[5])
    s = connect(*args[:5])
    r = Reader(s)
    while True:
        f = r.next()
        if f is None:
            sys.exit("h2_probe: closed before SETTINGS")
        if f[0] == SETTINGS and not f[1] & ACK:
            s.sendall(frame(SETTINGS, ACK, 0))
            break
    sent = 0
    first, parent = 1, 0
    if deep:
        # The deepest tree: h2o keeps at most 16 PRIORITY-only streams (max_streams_for_priority)
        # and the guard 32 open ones (one left free for the flood), every stream a node.
        chain = b""
        for i in range(16):
            chain += frame(PRIORITY, 0, first, struct.pack(">IB", 0x80000000 | parent, 15))
            parent, first = first, first + 2
        for i in range(31):
            chain += frame(HEADERS, END_HEADERS | PRIORITY_FLAG, first,
                           struct.pack(">IB", 0x80000000 | parent, 15) + get_headers("/healthz"))
            parent, first = first, first + 2
        s.sendall(chain)
    try:
        for i in range(n):
            sid = first + 2 * i
            if deep:
                s.sendall(frame(HEADERS, END_HEADERS | PRIORITY_FLAG, sid,
                                struct.pack(">IB", 0x80000000 | parent, 15) + get_headers("/healthz"))
                          + frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))
            elif provoke:
                s.sendall(frame(HEADERS, END_HEADERS, sid, get_headers("/healthz"))
                          + frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", 0x7FFFFFFF)))
            else:
                # No END_STREAM: the stream is still being served (h2o waits for its end) when
                # the reset comes, as in rapid reset; a stream answered whole is not counted.
                s.sendall(frame(HEADERS, END_HEADERS, sid, get_headers("/healthz"))
                          + frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))
            sent += 1
        s.sendall(frame(HEADERS, END_STREAM | END_HEADERS, first + 2 * n, get_headers("/healthz")))
    except OSError:
        pass
    result = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "healthz" not in result:
        f = r.next()
        if f is None:
            break
        ftype, flags, stream, payload = f
        if ftype == GOAWAY:
            result["goaway"] = ERRORS.get(struct.unpack(">I", payload[4:8])[0], "unknown")
        elif ftype == HEADERS and stream == first + 2 * n:
            result["healthz"] = "200" if payload[:1] == b"\x88" else "other"
    if "healthz" in result:
        print("healthz=%s resets_sent=%d" % (result["healthz"], sent))
    elif "goaway" in result:
        print("goaway=%s resets_sent=%d" % (result["goaway"], sent))
    else:
        print("end=closed resets_sent=%d" % sent)
    return 0


def reset_after_answer(args):
    n = int(args[5])
    s = connect(*args[:5])
    r = Reader(s)
    answered = 0
    for i in range(n + 1):
        sid = 2 * i + 1
        s.sendall(frame(HEADERS, END_STREAM | END_HEADERS, sid, get_headers("/healthz")))
        status = None
        while True:
            f = r.next()
            if f is None:
                print("end=closed answered=%d" % answered)
                return 0
            ftype, flags, stream, payload = f
            if ftype == SETTINGS and not flags & ACK:
                s.sendall(frame(SETTINGS, ACK, 0))
            elif ftype == GOAWAY:
                print("goaway=%s answered=%d" % (ERRORS.get(struct.unpack(">I", payload[4:8])[0], "unknown"), answered))
                return 0
            elif ftype == HEADERS and stream == sid and status is None:
                status = "200" if payload[:1] == b"\x88" else "other"
            if stream == sid and ftype in (HEADERS, DATA) and flags & END_STREAM:
                break
        if i == n:
            print("healthz=%s answered=%d" % (status, answered))
            return 0
        answered += 1
        s.sendall(frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))
    return 0


def reset_window0(args):
    """Batches of 30 streams (the guard lets 32 be open at once): their HEADERS, then every
    answer's HEADERS read (the bodies wait on the window), then their 30 resets at once."""
    n = int(args[5])
    s = connect(*args[:5], client_settings=struct.pack(">HI", 4, 0))
    r = Reader(s)
    answered, sid = 0, 1
    while True:
        batch = min(30, n - answered) if answered < n else 1
        last = answered >= n
        sids = list(range(sid, sid + 2 * batch, 2))
        sid += 2 * batch
        s.sendall(b"".join(frame(HEADERS, END_STREAM | END_HEADERS, i, get_headers("/healthz" if last else "/metrics"))
                           for i in sids))
        waiting, status = set(sids), None
        while waiting:
            f = r.next()
            if f is None:
                print("end=closed answered=%d" % answered)
                return 0
            ftype, flags, stream, payload = f
            if ftype == SETTINGS and not flags & ACK:
                s.sendall(frame(SETTINGS, ACK, 0))
            elif ftype == GOAWAY:
                print("goaway=%s answered=%d" % (ERRORS.get(struct.unpack(">I", payload[4:8])[0], "unknown"), answered))
                return 0
            elif ftype == HEADERS and stream in waiting:
                waiting.discard(stream)
                status = "200" if payload[:1] == b"\x88" else "other"
        if last:
            print("healthz=%s answered=%d" % (status, answered))
            return 0
        answered += batch
        s.sendall(b"".join(frame(RST_STREAM, 0, i, struct.pack(">I", 8)) for i in sids))


def frame_flood(args):
    kind, n = args[5], int(args[6])
    s = connect(*args[:5])
    r = Reader(s)
    s.sendall(frame(HEADERS, END_STREAM | END_HEADERS, 1, get_headers("/healthz")))
    while True:
        f = r.next()
        if f is None:
            sys.exit("h2_probe: closed before the first answer")
        if f[0] == SETTINGS and not f[1] & ACK:
            s.sendall(frame(SETTINGS, ACK, 0))
        if f[2] == 1 and f[0] in (HEADERS, DATA) and f[1] & END_STREAM:
            break
    one = (frame(RST_STREAM, 0, 1, struct.pack(">I", 8)) if kind == "rst"
           else frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 15)))
    try:
        for i in range(0, n, 1000):
            s.sendall(one * min(1000, n - i))
        s.sendall(frame(HEADERS, END_STREAM | END_HEADERS, 3, get_headers("/healthz")))
    except OSError:
        pass
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        f = r.next()
        if f is None:
            print("end=closed")
            return 0
        ftype, flags, stream, payload = f
        if ftype == GOAWAY:
            print("goaway=%s" % ERRORS.get(struct.unpack(">I", payload[4:8])[0], "unknown"))
            return 0
        if ftype == HEADERS and stream == 3:
            print("healthz=%s" % ("200" if payload[:1] == b"\x88" else "other"))
            return 0
    print("end=timeout")
    return 0


def ping_flood(args):
    """SETTINGS_INITIAL_WINDOW_SIZE 0, STREAMS requests (GET /metrics: their answers wait on the
    flow-control window), then PINGS pings without reading the answers. THEN is "rst" (close at
    once with a TCP reset, the answers unread: h2o's write fails while it still has input),
    "rst-paused:PID" (the same while the server, process PID, is stopped with SIGSTOP from the
    SETTINGS exchange until the reset is sent: it then reads the pings and the reset in one go,
    as a loaded server does; keep PINGS small enough for the socket buffers) or "read" (read
    what came back). Prints "goaway=CODE", "end=acked" (every PING answered, the
    connection still open) or "end=closed", then pings_sent=K refused=N (streams the server
    reset with REFUSED_STREAM)."""
    streams, pings, then = int(args[5]), int(args[6]), args[7]
    s = connect(*args[:5], client_settings=struct.pack(">HI", 4, 0))
    r = Reader(s)
    while True:
        f = r.next()
        if f is None:
            sys.exit("h2_probe: closed before SETTINGS")
        if f[0] == SETTINGS and not f[1] & ACK:
            s.sendall(frame(SETTINGS, ACK, 0))
            break
    paused = int(then.split(":")[1]) if then.startswith("rst-paused:") else None
    if paused is not None:
        os.kill(paused, signal.SIGSTOP)
    sent = 0
    deadline = time.monotonic() + 60
    try:
        s.sendall(b"".join(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, get_headers("/metrics"))
                           for i in range(streams)))
        while sent < pings and time.monotonic() < deadline:
            n = min(1000, pings - sent)
            s.sendall(b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(n)))
            sent += n
    except OSError:
        pass
    if then == "rst" or paused is not None:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        finally:
            if paused is not None:
                os.kill(paused, signal.SIGCONT)
        print("end=reset pings_sent=%d" % sent)
        return 0
    result, refused, acks = "end=closed", 0, 0
    while time.monotonic() < deadline:
        f = r.next()
        if f is None:
            break
        ftype, flags, _, payload = f
        if ftype == GOAWAY:
            result = "goaway=" + ERRORS.get(struct.unpack(">I", payload[4:8])[0], "unknown")
        elif ftype == RST_STREAM and struct.unpack(">I", payload[:4])[0] == 7:
            refused += 1
        elif ftype == PING and flags & ACK:
            acks += 1
            if acks == sent and result == "end=closed":
                result = "end=acked"
                break
    print("%s pings_sent=%d refused=%d" % (result, sent, refused))
    return 0


def post_headers(path):
    return (literal(":method", "POST") + literal(":scheme", "https") + literal(":path", path)
            + literal(":authority", "127.0.0.1") + literal("content-type", "application/proto"))


def body_streams(args):
    streams, size = int(args[5]), int(args[6])
    s = connect(*args[:5])
    r = Reader(s)
    while True:
        f = r.next()
        if f is None:
            sys.exit("h2_probe: closed before SETTINGS")
        if f[0] == SETTINGS and not f[1] & ACK:
            s.sendall(frame(SETTINGS, ACK, 0))
            break
    path = "/keyfleet.v1.AdminService/ClusterStatus"
    for i in range(streams):
        sid = 2 * i + 1
        out = [frame(HEADERS, END_HEADERS, sid, post_headers(path))]
        left = size
        while left > 0:
            n = min(left, 16384)
            out.append(frame(DATA, 0, sid, b"\0" * n))
            left -= n
        s.sendall(b"".join(out))
    # Every stream still open is reset by the client, then one more request on the connection.
    s.sendall(b"".join(frame(RST_STREAM, 0, 2 * i + 1, struct.pack(">I", 8)) for i in range(streams))
              + frame(HEADERS, END_STREAM | END_HEADERS, 2 * streams + 1, get_headers("/healthz")))
    refused, answered, result = set(), set(), "healthz=none"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        f = r.next()
        if f is None:
            result = "end=closed why=" + r.why
            break
        ftype, _, stream, payload = f
        if ftype == RST_STREAM and struct.unpack(">I", payload[:4])[0] == 7:
            refused.add(stream)
        elif ftype == HEADERS and stream == 2 * streams + 1:
            result = "healthz=200" if payload[:1] == b"\x88" else "healthz=other"
            break
        elif ftype == HEADERS:
            answered.add(stream)
        elif ftype == GOAWAY:
            result = "goaway=" + ERRORS.get(struct.unpack(">I", payload[4:8])[0], "unknown")
            break
    print("refused=%d answered=%d %s" % (len(refused), len(answered), result))
    return 0


def indexed_literal(name, value):
    """A literal field with incremental indexing and a new name (RFC 7541 6.2.1), lengths as
    7-bit prefixed integers (5.1)."""
    def length(n):
        if n < 127:
            return bytes([n])
        out, n = [127], n - 127
        while n >= 128:
            out.append((n & 127) | 128)
            n >>= 7
        return bytes(out + [n])
    name, value = name.encode(), value.encode()
    return b"\x40" + length(len(name)) + name + length(len(value)) + value


def header_fields(args):
    conns, streams, fields = int(args[5]), int(args[6]), int(args[7])
    socks = []
    for _ in range(conns):
        s = connect(*args[:5])
        r = Reader(s)
        while True:
            f = r.next()
            if f is None:
                sys.exit("h2_probe: closed before SETTINGS")
            if f[0] == SETTINGS and not f[1] & ACK:
                s.sendall(frame(SETTINGS, ACK, 0))
                break
        out = []
        for i in range(streams):
            block = post_headers("/keyfleet.v1.AdminService/ClusterStatus")
            if i == 0:
                block += indexed_literal("x-fill", "v" * 3900)
            block += b"\xbe" * fields  # index 62: the newest dynamic-table entry, x-fill
            out.append(frame(HEADERS, END_HEADERS, 2 * i + 1, block))
        s.sendall(b"".join(out))
        socks.append((s, r))
    reset, goaway = 0, 0
    for s, r in socks:
        s.settimeout(1)
        seen = set()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and len(seen) < streams:
            f = r.next()
            if f is None:
                break
            if f[0] == RST_STREAM:
                seen.add(f[2])
            elif f[0] == GOAWAY:
                goaway += 1
                break
        reset += len(seen)
    print("reset=%d goaway=%d" % (reset, goaway))
    for s, r in socks:  # end cleanly: no TCP reset with the server's frames unread
        try:
            s.shutdown(socket.SHUT_WR)
            while r.next() is not None:
                pass
        except OSError:
            pass
        s.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 7:
        sys.exit(__doc__)
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "settings":
        sys.exit(settings(rest))
    if cmd == "reset-flood" and len(rest) == 6:
        sys.exit(reset_flood(rest))
    if cmd == "reset-after-answer" and len(rest) == 6:
        sys.exit(reset_after_answer(rest))
    if cmd == "reset-deep" and len(rest) == 6:
        sys.exit(reset_flood(rest, deep=True))
    if cmd == "reset-window0" and len(rest) == 6:
        sys.exit(reset_window0(rest))
    if cmd == "frame-flood" and len(rest) == 7:
        sys.exit(frame_flood(rest))
    if cmd == "provoke-flood" and len(rest) == 6:
        sys.exit(reset_flood(rest, provoke=True))
    if cmd == "body-streams" and len(rest) == 7:
        sys.exit(body_streams(rest))
    if cmd == "header-fields" and len(rest) == 8:
        sys.exit(header_fields(rest))
    if cmd == "ping-flood" and len(rest) == 8:
        sys.exit(ping_flood(rest))
    sys.exit(__doc__)
