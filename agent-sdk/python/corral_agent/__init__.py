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

from .agent import Ctx, Handler, LogLevel, Misbehave, run, serve
from .contract import Contract, Field, Schema, SideEffects
from .errors import AgentError, ToolError, ToolErrorKind
from .wire import PROTOCOL_VERSION, Value, WireError

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
