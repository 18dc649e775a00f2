"""The payload encoding of the corral wire (`docs/protocol.md` section 3): bincode 2's standard
configuration (varint integers, zigzag for signed), the `Value` tree mapped to Python types,
`Schema` and `AgentError`, with the protocol's limits on both sides: at most 128 levels of
`List`/`Map` (and of composite `Schema`), and lengths checked against what the payload can
hold before anything is made for them. Messages and frames are `wire`'s.

Values map as the Rust `Value` does:

| Value  | Python                                                      |
|--------|-------------------------------------------------------------|
| Null   | `None`                                                      |
| Bool   | `bool`                                                      |
| Int    | `int` within i64 (a larger `int` is refused, not rounded)   |
| Float  | `float` (every bit pattern kept)                            |
| String | `str`                                                       |
| Bytes  | `bytes` (`bytearray` and `memoryview` are written as Bytes) |
| List   | `list` (`tuple` is written as a List)                       |
| Map    | `dict` with `str` keys (written sorted by key)              |
"""

from __future__ import annotations

import struct

from .contract import Field, Schema
from .errors import AgentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List

    from ._types import Value as Value


def __getattr__(name: str) -> object:
    # `Value` (a `typing.Union`: a self-describing tree, what task inputs, outputs, memory notes
    # and tool calls carry) is made on first use: importing `typing` is not free.
    if name == "Value":
        from ._types import Value

        globals()[name] = Value
        return Value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PROTOCOL_VERSION = 1
"""The protocol version this package speaks."""
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
"""The largest payload a reader accepts until `Hello.max_frame` says otherwise."""
MAX_NESTING = 128
"""Deepest `List`/`Map` (and composite `Schema`) nesting either side accepts."""
MAX_TOOL_NAME = 256
"""Longest tool name, in bytes."""
MAX_TOOL_CALL = 1 << 20
"""Largest `ToolCall` payload, in bytes."""

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_U64_MAX = (1 << 64) - 1
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")


class WireError(Exception):
    """Bytes that are not a valid frame or message, or a message that cannot be encoded.
    `kind` is the protocol's name for it: `frame_too_large`, `truncated_frame`,
    `undecodable_frame` or `unencodable_message`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _unencodable(message: str) -> WireError:
    return WireError("unencodable_message", message)


def _undecodable(message: str) -> WireError:
    return WireError("undecodable_frame", message)


# ---------------------------------------------------------------------------------------------
# Writing


def _varint(out: bytearray, v: int) -> None:
    if 0 <= v <= 250:
        out.append(v)
    elif 251 <= v <= 0xFFFF:
        out.append(0xFB)
        out += v.to_bytes(2, "little")
    elif 0x10000 <= v <= 0xFFFFFFFF:
        out.append(0xFC)
        out += v.to_bytes(4, "little")
    elif 0x100000000 <= v <= _U64_MAX:
        out.append(0xFD)
        out += v.to_bytes(8, "little")
    else:
        raise _unencodable(f"{v} does not fit an unsigned 64-bit integer")


def _u32(out: bytearray, v: int) -> None:
    if not 0 <= v <= 0xFFFFFFFF:
        raise _unencodable(f"{v} does not fit an unsigned 32-bit integer")
    _varint(out, v)


def _str(out: bytearray, s: str) -> None:
    try:
        b = s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _unencodable(f"a string is not valid Unicode: {e}") from None
    _varint(out, len(b))
    out += b


def _value(out: bytearray, v: object, depth: int) -> None:
    if v is None:
        out.append(0)
    elif isinstance(v, bool):
        out.append(1)
        out.append(1 if v else 0)
    elif isinstance(v, int):
        if not _I64_MIN <= v <= _I64_MAX:
            raise _unencodable(f"the integer {v} does not fit a signed 64-bit Int")
        out.append(2)
        _varint(out, ((v << 1) ^ (v >> 63)) & _U64_MAX)
    elif isinstance(v, float):
        out.append(3)
        out += _F64.pack(v)
    elif isinstance(v, str):
        out.append(4)
        _str(out, v)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        out.append(5)
        _varint(out, len(b))
        out += b
    elif isinstance(v, (list, tuple)):
        if depth >= MAX_NESTING:
            raise _unencodable(f"nesting deeper than {MAX_NESTING} levels")
        out.append(6)
        _varint(out, len(v))
        for x in v:
            _value(out, x, depth + 1)
    elif isinstance(v, dict):
        if depth >= MAX_NESTING:
            raise _unencodable(f"nesting deeper than {MAX_NESTING} levels")
        for k in v:
            if type(k) is not str:
                raise _unencodable(f"a map key must be a str, not {type(k).__name__}")
        out.append(7)
        _varint(out, len(v))
        for k in sorted(v):
            _str(out, k)
            _value(out, v[k], depth + 1)
    else:
        raise _unencodable(f"a {type(v).__name__} is not a Value")


def encode_value(v: object) -> bytes:
    """The bare encoding of one `Value` (as it appears inside a message)."""
    out = bytearray()
    _value(out, v, 0)
    return bytes(out)


_SCHEMA_TAGS = {
    "any": 0,
    "null": 1,
    "bool": 2,
    "int": 3,
    "float": 4,
    "string": 5,
    "bytes": 6,
    "list": 7,
    "map": 8,
    "object": 9,
    "optional": 10,
    "one_of": 11,
}
_SCHEMA_KINDS = {tag: kind for kind, tag in _SCHEMA_TAGS.items()}


def _schema(out: bytearray, s: Schema, depth: int) -> None:
    tag = _SCHEMA_TAGS.get(s.kind)
    if tag is None:
        raise _unencodable(f"unknown schema kind `{s.kind}`")
    if tag >= 7 and depth >= MAX_NESTING:
        raise _unencodable(f"schema nesting deeper than {MAX_NESTING} levels")
    out.append(tag)
    if tag in (7, 8, 10):
        if len(s.items) != 1:
            raise _unencodable(f"a `{s.kind}` schema has exactly one inner schema")
        _schema(out, s.items[0], depth + 1)
    elif tag == 9:
        _varint(out, len(s.fields))
        for f in s.fields:
            _str(out, f.name)
            _schema(out, f.schema, depth + 1)
            out.append(1 if f.required else 0)
        out.append(1 if s.extra else 0)
    elif tag == 11:
        _varint(out, len(s.items))
        for alt in s.items:
            _schema(out, alt, depth + 1)


def _error(out: bytearray, e: AgentError) -> None:
    _str(out, e.kind)
    _str(out, e.message)
    out.append(1 if e.retryable else 0)


# ---------------------------------------------------------------------------------------------
# Reading


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _undecodable("a length runs past the end of the payload")
        b = self.data[self.pos : end]
        self.pos = end
        return b

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _undecodable("the payload ends early")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self, bits: int = 64) -> int:
        b = self.byte()
        if b <= 250:
            return b
        size = {0xFB: 2, 0xFC: 4, 0xFD: 8}.get(b)
        if size is None or size * 8 > bits:
            raise _undecodable(f"invalid varint marker {b:#04x} for a {bits}-bit integer")
        return int.from_bytes(self.take(size), "little")

    def count(self) -> int:
        """A length of elements each at least one byte long: never more than what is left."""
        n = self.varint()
        if n > len(self.data) - self.pos:
            raise _undecodable(f"a length of {n} runs past the end of the payload")
        return n

    def boolean(self) -> bool:
        b = self.byte()
        if b > 1:
            raise _undecodable(f"invalid bool {b:#04x}")
        return b == 1

    def string(self) -> str:
        raw = self.take(self.varint())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _undecodable(f"invalid UTF-8 in a string: {e}") from None

    def value(self, depth: int) -> Value:
        tag = self.varint(32)
        if tag == 0:
            return None
        if tag == 1:
            return self.boolean()
        if tag == 2:
            u = self.varint()
            return (u >> 1) ^ -(u & 1)
        if tag == 3:
            (f,) = _F64.unpack(self.take(8))
            return float(f)
        if tag == 4:
            return self.string()
        if tag == 5:
            return self.take(self.varint())
        if tag in (6, 7):
            if depth >= MAX_NESTING:
                raise _undecodable(f"nesting deeper than {MAX_NESTING} levels")
            n = self.count()
            if tag == 6:
                return [self.value(depth + 1) for _ in range(n)]
            m: Dict[str, Value] = {}
            for _ in range(n):
                k = self.string()
                m[k] = self.value(depth + 1)
            return m
        raise _undecodable(f"invalid Value tag {tag}")

    def values(self) -> List[Value]:
        return [self.value(0) for _ in range(self.count())]

    def schema(self, depth: int) -> Schema:
        tag = self.varint(32)
        kind = _SCHEMA_KINDS.get(tag)
        if kind is None:
            raise _undecodable(f"invalid Schema tag {tag}")
        if tag < 7:
            return Schema(kind)
        if depth >= MAX_NESTING:
            raise _undecodable(f"schema nesting deeper than {MAX_NESTING} levels")
        if tag in (7, 8, 10):
            return Schema(kind, (self.schema(depth + 1),))
        if tag == 9:
            fields = []
            for _ in range(self.count()):
                name = self.string()
                s = self.schema(depth + 1)
                fields.append(Field(name, s, self.boolean()))
            return Schema(kind, (), tuple(fields), self.boolean())
        return Schema(kind, tuple(self.schema(depth + 1) for _ in range(self.count())))

    def error(self) -> AgentError:
        kind = self.string()
        message = self.string()
        return AgentError(kind, message, self.boolean())

    def end(self) -> None:
        if self.pos != len(self.data):
            raise _undecodable(f"{len(self.data) - self.pos} bytes left over after the message")


def decode_value(payload: bytes) -> Value:
    """One bare `Value`, consuming `payload` exactly."""
    r = _Reader(bytes(payload))
    v = r.value(0)
    r.end()
    return v


