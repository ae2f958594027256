#!/usr/bin/env python3
"""Stand-in at a coordinator's RPC address that answers every HTTP/2 request with 200,
application/proto and a fixed body: someone on the network path who holds a fleet certificate
for that host (tests of who may answer PeerService.AuditHead). HTTP/2 as h2_standin.py speaks
it; exits by itself after 60 s.

usage: peer_standin.py CERT KEY PORT BODY_HEX [READY_FILE]   (READY_FILE: written once it listens)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import h2_standin  # noqa: E402

cert, key, port, body = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])


def answer(stream):
    return h2_standin.response(stream, "200", "application/proto", body)


h2_standin.run(cert, key, answer, port=port, port_file=sys.argv[5] if len(sys.argv) > 5 else None)
