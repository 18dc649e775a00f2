"""Random Values made in Python, sent as frames through a real pipe to the Rust codec (the
`value_echo` example, path given as the first argument) and back: each must come back as the
same bytes and decode to the same Value. Usage: roundtrip_rust.py VALUE_ECHO [SEED [COUNT]].
Prints the first difference and exits 1; exits 0 when every Value came back."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import threading
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from corral_agent import wire  # noqa: E402
from corral_agent.wire import Value  # noqa: E402
from test_wire import same  # noqa: E402

EDGES = [0, -1, 1, 125, 126, 250, 251, 65535, 65536, (1 << 32), (1 << 63) - 1, -(1 << 63)]


def text(rng: random.Random) -> str:
    alphabet = "aZ_ é€𝄞\n\x00"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))


def value(rng: random.Random, depth: int) -> Value:
    kind = rng.randrange(0, 10 if depth < 4 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(EDGES) if rng.random() < 0.3 else rng.randrange(-(1 << 63), 1 << 63)
    if kind == 3:
        bits = rng.getrandbits(64)
        (f,) = struct.unpack("<d", struct.pack("<Q", bits))
        return float(f)
    if kind == 4:
        return text(rng)
    if kind == 5:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 16)))
    if kind == 6:
        return rng.choice([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1.5])
    if kind in (7, 8):
        return [value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    return {text(rng): value(rng, depth + 1) for _ in range(rng.randrange(0, 6))}


def main() -> int:
    echo = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    rng = random.Random(seed)
    values: List[Value] = [value(rng, 0) for _ in range(count)]
    # The deepest nesting both accept, at the limit.
    deep: Value = None
    for _ in range(wire.MAX_NESTING):
        deep = [deep]
    values.append(deep)
    frames = [wire.frame(wire.encode_value(v)) for v in values]
    proc = subprocess.Popen([echo], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None

    def feed() -> None:
        assert proc.stdin is not None
        for f in frames:
            proc.stdin.write(f)
        proc.stdin.close()

    writer = threading.Thread(target=feed)
    writer.start()
    for i, (v, f) in enumerate(zip(values, frames)):
        head = proc.stdout.read(4)
        if len(head) < 4:
            print(f"value {i}: the Rust codec ended early ({v!r})")
            return 1
        (n,) = struct.unpack("<I", head)
        back = head + proc.stdout.read(n)
        if back != f:
            print(f"value {i}: {v!r}\n sent {f.hex()}\n back {back.hex()}")
            return 1
        if not same(wire.decode_value(back[4:]), v):
            print(f"value {i}: decodes differently: {v!r}")
            return 1
    writer.join()
    code = proc.wait()
    print(f"{len(values)} values round-tripped through the Rust codec (seed {seed})")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
