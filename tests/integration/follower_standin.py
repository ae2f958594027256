#!/usr/bin/env python3
"""Stand-in for a keyfleetd replica that is not the Raft leader, for testing clients' leader
hints without a cluster. Over TLS 1.3 on 127.0.0.1, with ALPN h2, it answers every request the
way the protocol (docs/protocol.md) says a follower does: HTTP 503, Connect JSON
{"code":"unavailable","message":"not the leader"} and `keyfleet-leader: HOST:PORT`. HTTP/2 as
h2_standin.py speaks it; exits by itself after 60 s.

usage: follower_standin.py CERT KEY PORT_FILE LEADER
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import h2_standin  # noqa: E402

cert, key, port_file, leader = sys.argv[1:5]
BODY = b'{"code":"unavailable","message":"not the leader"}'


def answer(stream):
    return h2_standin.response(stream, "503", "application/json", BODY, [("keyfleet-leader", leader)])


h2_standin.run(cert, key, answer, port_file=port_file)
