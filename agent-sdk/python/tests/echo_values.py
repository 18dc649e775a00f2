"""Reads frames whose payloads are bare Values on stdin, decodes each with the Python codec and
writes it back encoded again as a frame on stdout: the Python half of the property test that
round-trips random Values between the Rust and the Python codecs (tests/tests/python_sdk.rs).
A frame that does not decode ends it with status 1 and the reason on stderr."""

from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from corral_agent import wire  # noqa: E402


def main() -> int:
    src, dst = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = src.read(4)
        if not head:
            return 0
        (n,) = struct.unpack("<I", head)
        payload = src.read(n)
        try:
            if len(head) < 4 or len(payload) < n:
                raise wire.WireError("truncated_frame", "the stream ends inside a frame")
            dst.write(wire.frame(wire.encode_value(wire.decode_value(payload))))
            dst.flush()
        except wire.WireError as e:
            print(f"echo_values: {e.kind}: {e}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
