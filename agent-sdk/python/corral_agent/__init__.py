"""corral_agent: write an agent that corral can supervise, in Python (standard library only).

An agent declares a `Contract` (what it accepts, returns and may call) and hands a handler to
`run`. The package does the rest: the handshake on fds 3/4, heartbeats from a thread of its own,
values decoded to Python types and outputs encoded, tool calls (`ctx.tool`, raising `ToolError`
with a structured kind), `Cancel` (`ctx.cancelled`), `Shutdown` and SIGTERM, and a handler's
exception turned into a structured `Failed` (kind `panic`, the traceback's last lines).

    from corral_agent import Contract, run

    def handle(ctx, input):
        ctx.progress(1)
        return {"echo": input}

    run(Contract("pyecho", "1.0"), handle)

Started outside corral (no fds 3 and 4), an agent prints one line saying so and exits 2. The
wire itself (`corral_agent.wire`) is usable alone, without I/O.
"""

from __future__ import annotations

from .agent import Ctx, LogLevel, Misbehave, run, serve
from .contract import Contract, Field, Schema
from .errors import AgentError, ToolError
from .wire import PROTOCOL_VERSION, WireError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List

    from ._enums import SideEffects, ToolErrorKind
    from ._types import Handler, Value


_LAZY = ("Handler", "SideEffects", "ToolErrorKind", "Value")


def __getattr__(name: str) -> object:
    # Made on first use (see `_enums` and `_types`): an agent that never names them does not
    # pay for importing `enum` and `typing`.
    if name in ("SideEffects", "ToolErrorKind"):
        from . import _enums as where
    elif name in ("Handler", "Value"):
        from . import _types as where  # type: ignore[no-redef]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(where, name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "PROTOCOL_VERSION",
    "AgentError",
    "Contract",
    "Ctx",
    "Field",
    "Handler",
    "LogLevel",
    "Misbehave",
    "Schema",
    "SideEffects",
    "ToolError",
    "ToolErrorKind",
    "Value",
    "WireError",
    "run",
    "serve",
]

__version__ = "0.1.0"
