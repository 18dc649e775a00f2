"""The Python codec against the golden vectors of docs/protocol.md (each encoded and compared
with its hex, decoded from its hex and compared with the message, and looked for in the
document), and the protocol's limits on both sides. Run: `python3 -m unittest discover -s
agent-sdk/python/tests` (the Rust test `python_sdk` runs it)."""

from __future__ import annotations

import math
import os
import struct
import sys
import unittest
from typing import List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from corral_agent import AgentError, Contract, Schema, SideEffects  # noqa: E402
from corral_agent import wire  # noqa: E402
from corral_agent.wire import (  # noqa: E402
    Cancel,
    Done,
    Failed,
    Heartbeat,
    Hello,
    Log,
    Ready,
    Shutdown,
    Task,
    ToolCall,
    ToolResult,
    Value,
    WireError,
)

PROTOCOL_MD = os.path.join(HERE, "..", "..", "..", "docs", "protocol.md")

MISMATCH = (
    "protocol version mismatch: supervisor speaks corral protocol v2, agent speaks v1"
)

DOWN: List[Tuple[str, wire.Down, str]] = [
    (
        "Hello",
        Hello(1, "echo", "r1", 1, 1000, 16_777_216),
        "130000000001046563686f02723101fbe803fc00000001",
    ),
    ("Task", Task(1, {"msg": "hi"}, []), "0d00000001010701036d73670402686900"),
    ("ToolResult Ok", ToolResult(1, 42), "050000000201000254"),
    (
        "ToolResult Err",
        ToolResult(2, AgentError("denied", "not allowed", False)),
        "170000000202010664656e6965640b6e6f7420616c6c6f77656400",
    ),
    ("Cancel", Cancel(1), "020000000301"),
    ("Shutdown", Shutdown(2000), "0400000004fbd007"),
]

UP: List[Tuple[str, wire.Up, str]] = [
    (
        "Ready",
        Ready(
            1,
            Contract(
                "echo",
                "1.0.0",
                input=Schema.object().field("msg", Schema.STRING),
                output=Schema.map_of(Schema.ANY),
                tools=("search",),
                side_effects=SideEffects.IDEMPOTENT,
            ),
        ),
        "210000000001046563686f05312e302e300901036d73670501000800010673656172636801",
    ),
    ("Ready smallest", Ready(1, Contract("a", "1")), "0a00000000010161013100000000"),
    ("Heartbeat", Heartbeat(5), "020000000105"),
    ("Heartbeat 2^32", Heartbeat(1 << 32), "0a00000001fd0000000001000000"),
    ("Log", Log(2, "hi"), "050000000202026869"),
    (
        "ToolCall",
        ToolCall(1, "search", {"q": "rust"}),
        "1300000003010673656172636807010171040472757374",
    ),
    ("Done", Done(1, {"ok": True}, []), "0a00000004010701026f6b010100"),
    (
        "Failed",
        Failed(1, AgentError("invalid_input", "no msg", False)),
        "1800000005010d696e76616c69645f696e707574066e6f206d736700",
    ),
    (
        "Failed mismatch",
        Failed(0, AgentError("protocol_mismatch", MISMATCH, False)),
        "6600000005001170726f746f636f6c5f6d69736d617463685070726f746f636f6c2076657273696f6e20"
        "6d69736d617463683a2073757065727669736f7220737065616b7320636f7272616c2070726f746f636f"
        "6c2076322c206167656e7420737065616b7320763100",
    ),
]

VALUES: List[Tuple[Value, str]] = [
    (None, "00"),
    (True, "0101"),
    (0, "0200"),
    (-1, "0201"),
    (1, "0202"),
    (125, "02fa"),
    (126, "02fbfc00"),
    (300, "02fb5802"),
    (-300, "02fb5702"),
    (70000, "02fce0220200"),
    (-(1 << 63), "02fdffffffffffffffff"),
    (1.5, "03000000000000f83f"),
    (-0.0, "030000000000000080"),
    ("hi", "04026869"),
    ("é", "0402c3a9"),
    (b"\xde\xad\xbe\xef", "0504deadbeef"),
    ([1, None, "a"], "0603020200040161"),
    ({"b": False, "a": None}, "070201610001620100"),
]


def same(a: Value, b: Value) -> bool:
    """Equality that tells -0.0 from 0.0 and 1 from True (as the wire does)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


class GoldenVectors(unittest.TestCase):
    def setUp(self) -> None:
        with open(PROTOCOL_MD, encoding="utf-8") as f:
            self.doc = f.read()

    def test_down_frames(self) -> None:
        for name, msg, hexed in DOWN:
            with self.subTest(name):
                self.assertEqual(wire.encode_down(msg).hex(), hexed)
                payload, rest = wire.split_frame(bytes.fromhex(hexed))
                self.assertEqual(rest, b"")
                self.assertEqual(wire.decode_down(payload), msg)
                self.assertIn(hexed, self.doc)

    def test_up_frames(self) -> None:
        for name, msg, hexed in UP:
            with self.subTest(name):
                self.assertEqual(wire.encode_up(msg).hex(), hexed)
                payload, _ = wire.split_frame(bytes.fromhex(hexed))
                self.assertEqual(wire.decode_up(payload), msg)
                self.assertIn(hexed, self.doc)

    def test_values(self) -> None:
        for value, hexed in VALUES:
            with self.subTest(hexed):
                self.assertEqual(wire.encode_value(value).hex(), hexed)
                self.assertTrue(same(wire.decode_value(bytes.fromhex(hexed)), value))
                self.assertIn(f"```\n{hexed}\n```", self.doc)

    def test_the_smallest_contract_bytes(self) -> None:
        payload = wire.encode_up_payload(Ready(1, Contract("a", "1")))
        self.assertEqual(payload[2:].hex(" "), "01 61 01 31 00 00 00 00")


class Limits(unittest.TestCase):
    def nested(self, levels: int) -> Value:
        v: Value = None
        for _ in range(levels):
            v = [v]
        return v

    def test_nesting_of_128_passes_and_129_is_refused_both_ways(self) -> None:
        ok = wire.encode_value(self.nested(128))
        self.assertTrue(same(wire.decode_value(ok), self.nested(128)))
        with self.assertRaises(WireError) as e:
            wire.encode_value(self.nested(129))
        self.assertEqual(e.exception.kind, "unencodable_message")
        deep = b"\x06\x01" * 129 + b"\x00"
        with self.assertRaises(WireError) as d:
            wire.decode_value(deep)
        self.assertEqual(d.exception.kind, "undecodable_frame")
        self.assertIn("nesting deeper than 128", str(d.exception))

    def test_a_deep_schema_is_refused(self) -> None:
        s = Schema.ANY
        for _ in range(129):
            s = Schema.list_of(s)
        with self.assertRaises(WireError):
            wire.encode_up(Ready(1, Contract("a", "1", input=s)))
        payload = b"\x00\x01\x01a\x011" + b"\x07" * 129 + b"\x00\x00\x00\x00"
        with self.assertRaises(WireError):
            wire.decode_up(payload)

    def test_a_length_past_the_payload_reserves_nothing(self) -> None:
        # A list announcing 2^32 items in a 7-byte payload fails at once.
        with self.assertRaises(WireError):
            wire.decode_value(bytes.fromhex("06fc00000000") + b"\x00")
        with self.assertRaises(WireError):
            wire.decode_value(bytes.fromhex("04fdffffffffffffff7f"))

    def test_strict_decoding(self) -> None:
        for bad, why in [
            ("0102", "bool other than 0/1"),
            ("0402c3", "length past the end"),
            ("0402c328", "invalid UTF-8"),
            ("08", "unknown tag"),
            ("0000", "trailing bytes"),
            ("02fe", "u128 marker"),
            ("fd0000000000000000", "a tag wider than u32"),
        ]:
            with self.subTest(why), self.assertRaises(WireError) as e:
                wire.decode_value(bytes.fromhex(bad))
            self.assertEqual(e.exception.kind, "undecodable_frame")

    def test_values_outside_the_mapping_are_refused(self) -> None:
        for bad in [1 << 63, -(1 << 63) - 1, {1: "x"}, object(), {"k": {3.0}}, "\ud800"]:
            with self.subTest(repr(bad)), self.assertRaises(WireError):
                wire.encode_value(bad)

    def test_floats_keep_their_bits(self) -> None:
        for bits in [0x7FF8000000000001, 0xFFF0000000000000, 0x0000000000000001]:
            raw = struct.pack("<Q", bits)
            (f,) = struct.unpack("<d", raw)
            self.assertEqual(wire.encode_value(f)[1:], raw)
            back = wire.decode_value(b"\x03" + raw)
            assert isinstance(back, float)
            self.assertEqual(struct.pack("<d", back), raw)
        self.assertTrue(math.isinf(float("inf")))

    def test_frames_over_the_maximum(self) -> None:
        with self.assertRaises(WireError) as e:
            wire.split_frame(struct.pack("<I", 1025) + b"x" * 1025, 1024)
        self.assertEqual(e.exception.kind, "frame_too_large")
        with self.assertRaises(WireError) as t:
            wire.split_frame(struct.pack("<I", 10) + b"x")
        self.assertEqual(t.exception.kind, "truncated_frame")
        with self.assertRaises(WireError) as o:
            wire.encode_up(Done(1, "x" * 2000), 1024)
        self.assertEqual(o.exception.kind, "frame_too_large")

    def test_tuples_and_bytearrays_are_written_as_lists_and_bytes(self) -> None:
        self.assertEqual(wire.encode_value((1, None, "a")).hex(), "0603020200040161")
        self.assertEqual(wire.encode_value(bytearray(b"\xde\xad\xbe\xef")).hex(), "0504deadbeef")


if __name__ == "__main__":
    unittest.main()
