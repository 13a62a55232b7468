#!/usr/bin/env python3
"""Writes the checked-in seed corpus of the shim fuzz target (corpus/agent_reply/).

Each seed is `[selector] [protobuf bytes]` (see fuzz_targets/agent_reply.rs):
the selector picks the agent message (bits 0-2) and whether it comes inside
ttrpc's Response envelope (bit 7); the bytes are what a well-behaved agent
sends, encoded here with a minimal protobuf writer. Run from anywhere:
`shim/fuzz/gen_corpus.py`.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def num(field, value):
    return varint(field << 3) + varint(value)


def msg(field, body):
    return varint((field << 3) | 2) + varint(len(body)) + body


def string(field, s):
    return msg(field, s.encode() if isinstance(s, str) else s)


def envelope(payload, code=0, message=""):
    status = (num(1, code) if code else b"") + (string(2, message) if message else b"")
    return msg(1, status) + msg(2, payload)


def write(name, data):
    d = os.path.join(HERE, "corpus", "agent_reply")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))


WAIT, STATS, LIST, OOM, PID, SANDBOX, STATUS, ATTACH = range(8)
ENV = 0x80

if __name__ == "__main__":
    wait = num(1, 137) + num(2, 1_700_000_000_123_456_789) + num(3, 42)
    write("wait-killed", bytes([WAIT]) + wait)
    write("wait-in-envelope", bytes([WAIT | ENV]) + envelope(wait))
    write("wait-negative", bytes([WAIT]) + num(1, -1) + num(2, -5))
    cpu = b"".join(num(i, 1000 * i) for i in range(1, 7))
    mem = b"".join(num(i, (1 << 20) * i) for i in range(1, 8))
    stats = msg(1, cpu) + msg(2, mem) + msg(3, num(1, 3) + num(2, 64)) + msg(4, num(1, 4096) + num(2, 8192) + num(3, 1) + num(4, 2))
    write("stats", bytes([STATS]) + stats)
    write("stats-in-envelope", bytes([STATS | ENV]) + envelope(stats))
    procs = msg(1, num(1, 1)) + msg(1, num(1, 7) + string(2, "exec-1"))
    write("processes", bytes([LIST]) + procs)
    write("oom-known", bytes([OOM]) + string(1, "c1"))
    write("oom-foreign", bytes([OOM]) + string(1, "someone-else\n\x1b[2J"))
    write("pid", bytes([PID]) + num(1, 4242))
    write("sandbox", bytes([SANDBOX]) + string(1, "/run/cocoon/shared"))
    write("status-not-found", bytes([STATUS]) + num(1, 5) + string(2, "container c1: not found"))
    write("error-in-envelope", bytes([STATS | ENV]) + envelope(b"", code=14, message="agent gone"))
    write("attach", bytes([ATTACH, 0]))
