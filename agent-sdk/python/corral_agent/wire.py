"""The corral wire, version 1 (`docs/protocol.md`): frames (a u32 LE length, then the payload)
and the messages of both directions, over the payload encoding of `codec`.

It does no I/O: `encode_up`/`decode_down` (what an agent needs) and `encode_down`/`decode_up`
(for tests and tools) work on bytes; a frame is never longer than the maximum given.
"""

from __future__ import annotations

import struct

from ._record import Record
from .codec import (
    DEFAULT_MAX_FRAME,
    MAX_NESTING,
    MAX_TOOL_CALL,
    MAX_TOOL_NAME,
    PROTOCOL_VERSION,
    WireError,
    _error,
    _Reader,
    _schema,
    _str,
    _u32,
    _undecodable,
    _unencodable,
    _value,
    _varint,
    decode_value,
    encode_value,
)
from .contract import Contract
from .errors import AgentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional, Sequence, Tuple, Union

    from ._types import Down as Down
    from ._types import Up as Up
    from ._types import Value as Value

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_NESTING",
    "MAX_TOOL_CALL",
    "MAX_TOOL_NAME",
    "PROTOCOL_VERSION",
    "Value",
    "WireError",
    "decode_value",
    "encode_value",
]

_U32 = struct.Struct("<I")


def __getattr__(name: str) -> object:
    # The `typing.Union`s `Value`, `Down` and `Up` are made on first use: importing `typing` is
    # not free.
    if name in ("Value", "Down", "Up"):
        from . import _types

        value = getattr(_types, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# Messages (records: compared field by field, as dataclasses of the same fields would be)


class Hello(Record):
    """Down 0: the first frame of every connection."""

    __match_args__ = (
        "protocol",
        "agent_id",
        "run_id",
        "attempt",
        "heartbeat_interval_ms",
        "max_frame",
    )

    def __init__(
        self,
        protocol: int,
        agent_id: str,
        run_id: str,
        attempt: int,
        heartbeat_interval_ms: int,
        max_frame: int,
    ) -> None:
        self.protocol = protocol
        self.agent_id = agent_id
        self.run_id = run_id
        self.attempt = attempt
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_frame = max_frame


class Task(Record):
    """Down 1: one task to run."""

    __match_args__ = ("task_id", "input", "memory")

    def __init__(self, task_id: int, input: Value, memory: Optional[List[Value]] = None) -> None:
        self.task_id = task_id
        self.input = input
        self.memory: List[Value] = [] if memory is None else memory


class ToolResult(Record):
    """Down 2: the answer to a `ToolCall`: a `Value`, or the error (an `AgentError`)."""

    __match_args__ = ("call_id", "result")

    def __init__(self, call_id: int, result: Union[Value, AgentError]) -> None:
        self.call_id = call_id
        self.result = result


class Cancel(Record):
    """Down 3: abandon this task."""

    __match_args__ = ("task_id",)

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id


class Shutdown(Record):
    """Down 4: exit within `grace_ms`."""

    __match_args__ = ("grace_ms",)

    def __init__(self, grace_ms: int) -> None:
        self.grace_ms = grace_ms


class Ready(Record):
    """Up 0: the answer to `Hello`."""

    __match_args__ = ("protocol", "contract")

    def __init__(self, protocol: int, contract: Contract) -> None:
        self.protocol = protocol
        self.contract = contract


class Heartbeat(Record):
    """Up 1: alive, with the progress counter."""

    __match_args__ = ("progress",)

    def __init__(self, progress: int) -> None:
        self.progress = progress


class Log(Record):
    """Up 2: one log line (`level` 0 trace … 4 error)."""

    __match_args__ = ("level", "message")

    def __init__(self, level: int, message: str) -> None:
        self.level = level
        self.message = message


class ToolCall(Record):
    """Up 3: call a tool."""

    __match_args__ = ("call_id", "tool", "args")

    def __init__(self, call_id: int, tool: str, args: Value) -> None:
        self.call_id = call_id
        self.tool = tool
        self.args = args


class Done(Record):
    """Up 4: the task's output, and the notes handed downstream."""

    __match_args__ = ("task_id", "output", "memory")

    def __init__(self, task_id: int, output: Value, memory: Optional[List[Value]] = None) -> None:
        self.task_id = task_id
        self.output = output
        self.memory: List[Value] = [] if memory is None else memory


class Failed(Record):
    """Up 5: the task (or, with `task_id` 0, the handshake) failed."""

    __match_args__ = ("task_id", "error")

    def __init__(self, task_id: int, error: AgentError) -> None:
        self.task_id = task_id
        self.error = error


def _values(out: bytearray, vs: Sequence[Value]) -> None:
    _varint(out, len(vs))
    for v in vs:
        _value(out, v, 0)


def encode_up_payload(msg: Up) -> bytes:
    """The payload (no header) of an agent → supervisor message."""
    out = bytearray()
    if isinstance(msg, Ready):
        out.append(0)
        _u32(out, msg.protocol)
        c = msg.contract
        _str(out, c.name)
        _str(out, c.version)
        _schema(out, c.input, 0)
        _schema(out, c.output, 0)
        _varint(out, len(c.tools))
        for t in c.tools:
            _str(out, t)
        out.append(c._side_effects_index())
    elif isinstance(msg, Heartbeat):
        out.append(1)
        _varint(out, msg.progress)
    elif isinstance(msg, Log):
        if not 0 <= msg.level <= 4:
            raise _unencodable(f"log level {msg.level} is not 0..4")
        out.append(2)
        out.append(msg.level)
        _str(out, msg.message)
    elif isinstance(msg, ToolCall):
        out.append(3)
        _varint(out, msg.call_id)
        _str(out, msg.tool)
        _value(out, msg.args, 0)
    elif isinstance(msg, Done):
        out.append(4)
        _varint(out, msg.task_id)
        _value(out, msg.output, 0)
        _values(out, msg.memory)
    elif isinstance(msg, Failed):
        out.append(5)
        _varint(out, msg.task_id)
        _error(out, msg.error)
    else:
        raise _unencodable(f"{type(msg).__name__} is not an Up message")
    return bytes(out)


def encode_down_payload(msg: Down) -> bytes:
    """The payload (no header) of a supervisor → agent message."""
    out = bytearray()
    if isinstance(msg, Hello):
        out.append(0)
        _u32(out, msg.protocol)
        _str(out, msg.agent_id)
        _str(out, msg.run_id)
        _u32(out, msg.attempt)
        _varint(out, msg.heartbeat_interval_ms)
        _u32(out, msg.max_frame)
    elif isinstance(msg, Task):
        out.append(1)
        _varint(out, msg.task_id)
        _value(out, msg.input, 0)
        _values(out, msg.memory)
    elif isinstance(msg, ToolResult):
        out.append(2)
        _varint(out, msg.call_id)
        if isinstance(msg.result, AgentError):
            out.append(1)
            _error(out, msg.result)
        else:
            out.append(0)
            _value(out, msg.result, 0)
    elif isinstance(msg, Cancel):
        out.append(3)
        _varint(out, msg.task_id)
    elif isinstance(msg, Shutdown):
        out.append(4)
        _varint(out, msg.grace_ms)
    else:
        raise _unencodable(f"{type(msg).__name__} is not a Down message")
    return bytes(out)


def frame(payload: bytes, max_frame: int = 0xFFFFFFFF) -> bytes:
    """A whole frame: the u32 LE length, then `payload`; a payload over `max_frame` bytes is
    refused (`frame_too_large`)."""
    if len(payload) > max_frame:
        raise WireError(
            "frame_too_large",
            f"a frame of {len(payload)} bytes is over the maximum of {max_frame}",
        )
    return _U32.pack(len(payload)) + payload


def encode_up(msg: Up, max_frame: int = 0xFFFFFFFF) -> bytes:
    """A whole frame of an agent → supervisor message."""
    return frame(encode_up_payload(msg), max_frame)


def encode_down(msg: Down, max_frame: int = 0xFFFFFFFF) -> bytes:
    """A whole frame of a supervisor → agent message."""
    return frame(encode_down_payload(msg), max_frame)


def decode_hello_protocol(payload: bytes) -> Optional[int]:
    """The protocol version a `Hello` offers, read before its other fields (which a different
    version may lay out differently); `None` when the payload is not a `Hello`."""
    r = _Reader(bytes(payload))
    try:
        if r.varint(32) != 0:
            return None
        return r.varint(32)
    except WireError:
        return None


def decode_down(payload: bytes) -> Down:
    """A supervisor → agent message from its payload."""
    r = _Reader(bytes(payload))
    tag = r.varint(32)
    msg: Down
    if tag == 0:
        msg = Hello(r.varint(32), r.string(), r.string(), r.varint(32), r.varint(), r.varint(32))
    elif tag == 1:
        task_id = r.varint()
        inp = r.value(0)
        msg = Task(task_id, inp, r.values())
    elif tag == 2:
        call_id = r.varint()
        which = r.varint(32)
        if which == 0:
            msg = ToolResult(call_id, r.value(0))
        elif which == 1:
            msg = ToolResult(call_id, r.error())
        else:
            raise _undecodable(f"invalid Result variant {which}")
    elif tag == 3:
        msg = Cancel(r.varint())
    elif tag == 4:
        msg = Shutdown(r.varint())
    else:
        raise _undecodable(f"invalid Down variant {tag}")
    r.end()
    return msg


def decode_up(payload: bytes) -> Up:
    """An agent → supervisor message from its payload."""
    r = _Reader(bytes(payload))
    tag = r.varint(32)
    msg: Up
    if tag == 0:
        protocol = r.varint(32)
        name, version = r.string(), r.string()
        inp, outp = r.schema(0), r.schema(0)
        tools = tuple(r.string() for _ in range(r.count()))
        se = r.varint(32)
        if se > 2:
            raise _undecodable(f"invalid SideEffects variant {se}")
        from ._enums import SideEffects

        msg = Ready(protocol, Contract(name, version, inp, outp, tools, SideEffects(se)))
    elif tag == 1:
        msg = Heartbeat(r.varint())
    elif tag == 2:
        level = r.varint(32)
        if level > 4:
            raise _undecodable(f"invalid LogLevel variant {level}")
        msg = Log(level, r.string())
    elif tag == 3:
        call_id = r.varint()
        msg = ToolCall(call_id, r.string(), r.value(0))
    elif tag == 4:
        task_id = r.varint()
        out = r.value(0)
        msg = Done(task_id, out, r.values())
    elif tag == 5:
        task_id = r.varint()
        msg = Failed(task_id, r.error())
    else:
        raise _undecodable(f"invalid Up variant {tag}")
    r.end()
    return msg


def split_frame(data: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Tuple[bytes, bytes]:
    """The first frame's payload in `data`, and the bytes after it. The length is checked
    against `max_frame` before anything else (`frame_too_large`); a cut frame is
    `truncated_frame`."""
    if len(data) < 4:
        raise WireError("truncated_frame", "the stream ends inside a frame header")
    (n,) = _U32.unpack_from(data)
    if n > max_frame:
        raise WireError("frame_too_large", f"a frame of {n} bytes is over the maximum of {max_frame}")
    if len(data) < 4 + n:
        raise WireError("truncated_frame", f"the stream ends inside a frame of {n} bytes")
    return bytes(data[4 : 4 + n]), bytes(data[4 + n :])
