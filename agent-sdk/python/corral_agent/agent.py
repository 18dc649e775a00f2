"""Running an agent: the handshake on fds 3/4, heartbeats from a thread of their own (on the beat
pipe, fd 6, when corral gave one; else `Heartbeat` frames), tasks handed to the handler one at a
time, tool calls, `Cancel`, `Shutdown` and SIGTERM, and every way a handler can end turned into
exactly one `Done` or `Failed`. The same behaviour as the Rust SDK (`corral-sdk`).

    from corral_agent import Contract, run

    def handle(ctx, input):
        ctx.progress(1)
        return {"echo": input}

    run(Contract("pyecho", "1.0"), handle)
"""

from __future__ import annotations

import _thread
import fcntl
import io
import os
import sys
import time

from . import wire
from ._sync import Events, Flag, spawn
from .errors import AgentError, ToolError
from .wire import WireError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import BinaryIO, List, NoReturn, Optional

    from ._types import Event, Value
    from ._types import Handler as Handler
    from .contract import Contract
else:
    # The C half of `signal`, loaded with the interpreter: `signal` itself imports `enum`.
    import _signal


def __getattr__(name: str) -> object:
    # `Handler` (a `typing.Callable`) is made on first use: importing `typing` is not free.
    if name == "Handler":
        from ._types import Handler

        globals()[name] = Handler
        return Handler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DOWN_FD = 3
"""The fd the agent reads `Down` frames from."""
UP_FD = 4
"""The fd the agent writes `Up` frames to."""
BEAT_FD = 6
"""The beat pipe: 16-byte heartbeat records (`docs/protocol.md` section 5.2.1)."""

NOT_UNDER_CORRAL = (
    "this program is a corral agent: start it under corral "
    "(file descriptors 3 and 4 are not open)"
)
TRACEBACK_LINES = 12
"""How many of a traceback's last lines a handler exception's `Failed` message keeps."""
MAX_ERROR_MESSAGE = 4096
"""The longest message of an error the SDK makes (what the exit record keeps)."""


class LogLevel:
    """Levels of `Ctx.log` (the wire's `LogLevel` indexes)."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


def _version_mismatch(supervisor: int, agent: int) -> str:
    return (
        f"protocol version mismatch: supervisor speaks corral protocol v{supervisor}, "
        f"agent speaks v{agent}"
    )


def _fd_is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        return True
    except OSError:
        return False


def _exit_now(code: int) -> NoReturn:
    """End the process from any thread (a thread's `sys.exit` ends only the thread)."""
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    os._exit(code)


def _forever() -> NoReturn:
    while True:
        time.sleep(3600)


class _Link:
    """What the threads share: the writer (one lock around each whole frame), the progress
    counter and the flags."""

    def __init__(self, up_fd: int, max_frame: int, beat_fd: Optional[int]) -> None:
        self.up_fd = up_fd
        self.max_frame = max_frame
        self.beat_fd = beat_fd
        self.lock = _thread.allocate_lock()
        self.progress = 0
        self.busy = False
        self.stopping = False
        """`Shutdown` or SIGTERM arrived."""
        self.cancel_id: Optional[int] = None
        """The task the last `Cancel` named (task ids are unique on a connection, so a `Cancel`
        that crossed its task's start on the way is not lost)."""
        self.ignore_shutdown = False
        self.beats_stopped = Flag()

    def send(self, msg: wire.Up) -> None:
        self.write(wire.encode_up(msg, self.max_frame))

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        with self.lock:
            while view:
                n = os.write(self.up_fd, view)
                view = view[n:]


class Ctx:
    """The handler's view of the world during one task."""

    def __init__(self, link: _Link, events: Events, hello: wire.Hello) -> None:
        self._link = link
        self._events = events
        self._hello = hello
        self._task_id = 0
        self._memory_in: List[Value] = []
        self._memory_out: List[Value] = []
        self._next_call = 0
        self._deferred: List[Event] = []

    def progress(self, step: int = 1) -> int:
        """Move the progress counter carried by heartbeats on by `step` (at least 1) and return
        it. A counter that stops moving while heartbeats go on is what the supervisor calls a
        stall: call this whenever work advances."""
        self._link.progress = (self._link.progress + max(1, step)) & ((1 << 64) - 1)
        return self._link.progress

    @property
    def progress_count(self) -> int:
        """The current progress counter."""
        return self._link.progress

    def phase(self, name: str) -> None:
        """Say that the work entered a named phase: a log line `phase: NAME` that also counts
        as progress."""
        self.progress()
        self.log(f"phase: {name}")

    def log(self, message: str, level: int = LogLevel.INFO) -> None:
        """Send a log line to the supervisor (shown escaped, one line, within `log_limit`)."""
        try:
            self._link.send(wire.Log(level, message))
        except (OSError, WireError):
            pass

    def tool(self, name: str, args: Value = None) -> Value:
        """Call a tool through the supervisor and wait for its result. The tool must be declared
        in the contract and allowed by the config. Raises `ToolError` with the structured kind
        when the call is refused or fails; a name over 256 bytes or a call over 1 MiB encoded
        (or over `max_frame`) is refused here (`too_large`) instead of being sent."""
        if self.cancelled:
            raise ToolError("cancelled", "task cancelled", False)
        size = len(name.encode("utf-8", "surrogatepass"))
        if size > wire.MAX_TOOL_NAME:
            raise ToolError(
                "too_large",
                f"a tool name is at most {wire.MAX_TOOL_NAME} bytes; this one is {size}",
                False,
            )
        self._next_call += 1
        call_id = self._next_call
        try:
            payload = wire.encode_up_payload(wire.ToolCall(call_id, name, args))
        except WireError as e:
            raise ToolError("invalid_args", str(e), False) from None
        limit = min(wire.MAX_TOOL_CALL, self._link.max_frame)
        if len(payload) > limit:
            raise ToolError(
                "too_large",
                f"a tool call is at most {limit} bytes encoded; this one is {len(payload)}",
                False,
            )
        try:
            self._link.write(wire.frame(payload))
        except OSError as e:
            raise ToolError("io", str(e), True) from None
        while True:
            ev = self._events.get()
            if isinstance(ev, wire.ToolResult):
                if ev.call_id != call_id:
                    continue  # the answer to an abandoned call
                if isinstance(ev.result, AgentError):
                    r = ev.result
                    raise ToolError(r.kind, r.message, r.retryable)
                return ev.result
            if isinstance(ev, wire.Cancel) and ev.task_id == self._task_id:
                raise ToolError("cancelled", "task cancelled", False)
            self._deferred.append(ev)

    def call_agent(self, name: str, input: Value) -> Value:
        """Run a task on agent `name` as a step of this one and return its output: the
        supervisor runs it as a child of this task, in the same run, within this agent's
        quotas (`max_depth`, `max_children`). The tool `agent:NAME` must be in the contract and
        granted in the config. Raises `ToolError` (`agent_failed`, `quota_exceeded`,
        `permission_denied`, ...)."""
        return self.tool("agent:" + name, input)

    @property
    def memory(self) -> List[Value]:
        """Notes handed down with this task (read them; add with `remember`)."""
        return list(self._memory_in)

    def remember(self, note: Value) -> None:
        """Add a note to hand downstream (after the notes received)."""
        self._memory_out.append(note)

    @property
    def cancelled(self) -> bool:
        """Whether the supervisor asked to cancel this task or shut down."""
        return self._link.stopping or self._link.cancel_id == self._task_id

    @property
    def agent_id(self) -> str:
        """The agent's configured name."""
        return self._hello.agent_id

    @property
    def run_id(self) -> str:
        """The run this attempt belongs to."""
        return self._hello.run_id

    @property
    def attempt(self) -> int:
        """Attempt number, from 1."""
        return self._hello.attempt

    @property
    def task_id(self) -> int:
        """This task's id."""
        return self._task_id

    @property
    def max_frame(self) -> int:
        """The largest frame the supervisor accepts (`Hello.max_frame`)."""
        return self._link.max_frame

    def misbehave(self) -> Misbehave:
        """Hooks for agents that test supervisors by misbehaving on purpose. Not for real
        agents."""
        return Misbehave(self._link)


class Misbehave:
    """Deliberate misbehaviour, for testing supervisors (see `examples/python/chaos.py`)."""

    def __init__(self, link: _Link) -> None:
        self._link = link

    def stop_heartbeats(self) -> None:
        """Stop sending heartbeats for good."""
        self._link.beats_stopped.set()

    def ignore_shutdown(self) -> None:
        """Ignore `Shutdown` and SIGTERM from now on."""
        self._link.ignore_shutdown = True
        _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)

    def write_raw(self, data: bytes) -> None:
        """Write raw bytes on fd 4, bypassing framing."""
        self._link.write(data)


def _failure_of(e: BaseException) -> AgentError:
    """A handler's exception as the structured error of its `Failed`."""
    if isinstance(e, AgentError):
        return AgentError(e.kind, e.message, e.retryable)
    import traceback

    lines = traceback.format_exception(type(e), e, e.__traceback__)
    text = "".join(lines).rstrip("\n").splitlines()
    tail = "\n".join(text[-TRACEBACK_LINES:])
    if len(tail) > MAX_ERROR_MESSAGE:
        tail = "…" + tail[-(MAX_ERROR_MESSAGE - 1) :]
    return AgentError("panic", tail, True)


def serve(contract: Contract, handler: Handler) -> int:
    """Run the agent until the supervisor is done with it; the process's exit status (0, or 2
    when it cannot speak the protocol). `run` is this, then exit."""
    if not (_fd_is_open(DOWN_FD) and _fd_is_open(UP_FD)):
        print(NOT_UNDER_CORRAL, file=sys.stderr)
        return 2
    down = io.open(DOWN_FD, "rb", buffering=1 << 16, closefd=False)
    try:
        payload = _read_payload(down, wire.DEFAULT_MAX_FRAME)
    except WireError as e:
        print(f"corral_agent: {e}", file=sys.stderr)
        return 2
    if payload is None:
        print("corral_agent: protocol error: supervisor closed before Hello", file=sys.stderr)
        return 2
    offered = wire.decode_hello_protocol(payload)
    beat = BEAT_FD if _fd_is_open(BEAT_FD) else None
    if offered is None:
        print("corral_agent: protocol error: expected Hello first", file=sys.stderr)
        return 2
    if offered != wire.PROTOCOL_VERSION:
        link = _Link(UP_FD, wire.DEFAULT_MAX_FRAME, beat)
        msg = _version_mismatch(offered, wire.PROTOCOL_VERSION)
        try:
            link.send(wire.Failed(0, AgentError("protocol_mismatch", msg, False)))
        except (OSError, WireError):
            pass
        print(f"corral_agent: {msg}", file=sys.stderr)
        return 2
    try:
        hello = wire.decode_down(payload)
    except WireError as e:
        print(f"corral_agent: {e}", file=sys.stderr)
        return 2
    if not isinstance(hello, wire.Hello):
        print("corral_agent: protocol error: expected Hello first", file=sys.stderr)
        return 2
    link = _Link(UP_FD, max(hello.max_frame, 1024), beat)
    try:
        link.send(wire.Ready(wire.PROTOCOL_VERSION, contract))
    except WireError as e:
        print(f"corral_agent: the contract cannot be sent: {e}", file=sys.stderr)
        return 2
    events = Events()
    _start_heartbeats(link, max(hello.heartbeat_interval_ms, 1))
    _watch_sigterm(link, events)
    _start_reader(down, link, events)
    ctx = Ctx(link, events, hello)
    return _loop(ctx, link, handler)


def _loop(ctx: Ctx, link: _Link, handler: Handler) -> int:
    while True:
        ev = ctx._deferred.pop(0) if ctx._deferred else ctx._events.get()
        if isinstance(ev, wire.Shutdown):
            return 0
        if not isinstance(ev, wire.Task):
            continue  # nothing running: nothing to cancel, no call waiting
        ctx._task_id = ev.task_id
        ctx._memory_in = ev.memory
        ctx._memory_out = []
        link.busy = True
        msg: wire.Up
        try:
            output = handler(ctx, ev.input)
            msg = wire.Done(ev.task_id, output, ctx._memory_in + ctx._memory_out)
        except Exception as e:  # every handler failure is reported, none kills the agent
            msg = wire.Failed(ev.task_id, _failure_of(e))
        link.busy = False
        _answer(link, msg)


def _answer(link: _Link, msg: wire.Up) -> None:
    """Send a task's answer. An output that cannot be sent (not a `Value`, nested too deep,
    over `max_frame`) becomes a `Failed` saying why instead."""
    try:
        data = wire.encode_up(msg, link.max_frame)
    except WireError as e:
        if not isinstance(msg, wire.Done):
            raise
        kind = "too_large" if e.kind == "frame_too_large" else "invalid_output"
        what = "the output (with its memory)" if kind == "too_large" else "the output"
        error = AgentError(kind, f"{what} cannot be sent: {e}", False)
        data = wire.encode_up(wire.Failed(msg.task_id, error), link.max_frame)
    link.write(data)


def run(contract: Contract, handler: Handler) -> NoReturn:
    """Run the agent (see `serve`) and exit with its status."""
    sys.exit(serve(contract, handler))


def _read_exact(down: BinaryIO, n: int) -> bytes:
    data = down.read(n)
    return data if data is not None else b""


def _read_payload(down: BinaryIO, max_frame: int) -> Optional[bytes]:
    """One payload, or `None` at a clean end of stream; the length is checked before the
    payload is read."""
    head = _read_exact(down, 4)
    if not head:
        return None
    if len(head) < 4:
        raise WireError("truncated_frame", "the stream ends inside a frame header")
    n = int.from_bytes(head, "little")
    if n > max_frame:
        raise WireError("frame_too_large", f"a frame of {n} bytes is over the maximum of {max_frame}")
    payload = _read_exact(down, n)
    if len(payload) < n:
        raise WireError("truncated_frame", f"the stream ends inside a frame of {n} bytes")
    return payload


def _until_next_tick(every_ns: int) -> float:
    """Seconds until the next multiple of the interval on the monotonic clock: agents with the
    same interval beat in step, so the supervisor handles their beats in batches."""
    now = time.monotonic_ns()
    return ((now // every_ns + 1) * every_ns - now) / 1e9


def _start_heartbeats(link: _Link, every_ms: int) -> None:
    every_ns = every_ms * 1_000_000

    def beat() -> None:
        while not link.beats_stopped.wait(_until_next_tick(every_ns)):
            progress = link.progress
            if link.beat_fd is not None:
                record = progress.to_bytes(8, "little") + time.monotonic_ns().to_bytes(8, "little")
                try:
                    # One write shorter than PIPE_BUF: all or nothing (EAGAIN when full: then
                    # a frame says it instead).
                    if os.write(link.beat_fd, record) == len(record):
                        continue
                except OSError:
                    pass
            try:
                link.send(wire.Heartbeat(progress))
            except OSError:
                return  # supervisor gone

    spawn(beat)


def _shutdown_now(link: _Link, events: Events, grace_ms: int) -> None:
    """Idle: exit. Busy: flag cancellation, let the main loop end after the handler, and exit
    `grace_ms` from now at the latest."""
    link.stopping = True
    if not link.busy:
        _exit_now(0)
    events.put(wire.Shutdown(grace_ms))

    def exit_later() -> None:
        time.sleep(grace_ms / 1000)
        _exit_now(0)

    spawn(exit_later)


def _watch_sigterm(link: _Link, events: Events) -> None:
    def on_term(signum: int, frame: object) -> None:
        if not link.ignore_shutdown:
            _shutdown_now(link, events, 1000)

    try:
        _signal.signal(_signal.SIGTERM, on_term)
    except ValueError:
        pass  # not the main thread: SIGTERM keeps its default (exit)


def _start_reader(down: BinaryIO, link: _Link, events: Events) -> None:
    def read() -> None:
        while True:
            try:
                payload = _read_payload(down, link.max_frame)
                msg = None if payload is None else wire.decode_down(payload)
            except (WireError, OSError) as e:
                print(f"corral_agent: {e}", file=sys.stderr)
                _exit_now(2)
            if msg is None:
                if link.ignore_shutdown:
                    _forever()
                _exit_now(0)  # the supervisor closed our input: nobody to answer
            if isinstance(msg, wire.Hello):
                print("corral_agent: protocol error: second Hello", file=sys.stderr)
                _exit_now(2)
            if isinstance(msg, wire.Shutdown):
                if not link.ignore_shutdown:
                    _shutdown_now(link, events, msg.grace_ms // 2)
                continue
            if isinstance(msg, wire.Cancel):
                link.stopping = True
            events.put(msg)

    spawn(read)
