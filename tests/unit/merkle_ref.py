#!/usr/bin/env python3
"""RFC 9162 reference hashing, written from the RFC's text (section 2.1) with hashlib alone, so
that test_merkle checks keyfleet's C against an independent implementation. Prints one line per
vector: "root N HEX", "incl I N HEX,HEX,...", "cons M N HEX,HEX,...". Leaf i is b"leaf-%d" % i."""
import hashlib
import sys


def leaf(d):
    return hashlib.sha256(b"\x00" + d).digest()


def node(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


def k_of(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d):
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return leaf(d[0])
    k = k_of(len(d))
    return node(mth(d[:k]), mth(d[k:]))


def path(m, d):
    if len(d) <= 1:
        return []
    k = k_of(len(d))
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m, d, b):
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = k_of(n)
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


def main():
    big = int(sys.argv[1]) if len(sys.argv) > 1 else 70
    small = int(sys.argv[2]) if len(sys.argv) > 2 else 33
    data = [b"leaf-%d" % i for i in range(big)]
    for n in range(big + 1):
        print("root", n, mth(data[:n]).hex())
    for n in range(1, small + 1):
        for i in range(n):
            print("incl", i, n, ",".join(h.hex() for h in path(i, data[:n])))
        for m in range(1, n + 1):
            print("cons", m, n, ",".join(h.hex() for h in subproof(m, data[:n], True)))


main()
