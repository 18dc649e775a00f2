#!/usr/bin/env python3
"""A corral agent in Python, written from docs/protocol.md alone: no corral library.

It answers every task with {"lang": "python", "task": <task id>}. With the argument
`--protocol N` it claims protocol version N in its Ready (to show a version mismatch).
"""
import os
import struct
import sys

DOWN, UP = 3, 4


def varint(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32:
        return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)


def read_varint(buf, i):
    b = buf[i]
    if b < 251:
        return b, i + 1
    width = {251: 2, 252: 4, 253: 8}[b]
    return int.from_bytes(buf[i + 1:i + 1 + width], "little"), i + 1 + width


def string(s):
    data = s.encode()
    return varint(len(data)) + data


def read_exact(fd, n):
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            sys.exit(0)  # the supervisor closed our input
        out += chunk
    return out


def read_frame():
    length = struct.unpack("<I", read_exact(DOWN, 4))[0]
    return read_exact(DOWN, length)


def send(payload):
    os.write(UP, struct.pack("<I", len(payload)) + payload)


def main():
    protocol = 1
    if "--protocol" in sys.argv:
        protocol = int(sys.argv[sys.argv.index("--protocol") + 1])
    hello = read_frame()
    assert hello[0] == 0, "first message must be Hello"
    # Up::Ready (0) { protocol, contract { name, version, input Any, output Any, tools [], ReadOnly } }
    contract = string("py-agent") + string("0.1") + varint(0) + varint(0) + varint(0) + varint(0)
    send(varint(0) + varint(protocol) + contract)
    while True:
        msg = read_frame()
        if msg[0] == 1:  # Task { task_id, input, memory }
            task_id, _ = read_varint(msg, 1)
            # Value::Map (7) with 2 entries, keys sorted: "lang" -> String (4), "task" -> Int (2)
            zigzag = task_id << 1
            output = varint(7) + varint(2) + string("lang") + varint(4) + string("python")
            output += string("task") + varint(2) + varint(zigzag)
            # Up::Done (4) { task_id, output, memory: [] }
            send(varint(4) + varint(task_id) + output + varint(0))
        elif msg[0] == 4:  # Shutdown
            return


if __name__ == "__main__":
    main()
