"""The package's type aliases: `Value` (of `codec`, `wire` and the package), `Down` and `Up` (of
`wire`), `Handler` (of `agent`) and `Event` (inside the agent). Type checkers read them from
here; at run time they are made on first use (the modules that name them forward to this one),
because importing `typing` costs an agent's start more than the rest of the package."""

from __future__ import annotations

from typing import Callable, Dict, List, Union

from .agent import Ctx
from .wire import (
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
)

Value = Union[None, bool, int, float, str, bytes, List["Value"], Dict[str, "Value"]]
"""A self-describing tree: what task inputs, outputs, memory notes and tool calls carry."""

Down = Union[Hello, Task, ToolResult, Cancel, Shutdown]
"""A supervisor → agent message."""

Up = Union[Ready, Heartbeat, Log, ToolCall, Done, Failed]
"""An agent → supervisor message."""

Event = Union[Task, ToolResult, Cancel, Shutdown]
"""What the agent's reader thread hands its main thread."""

Handler = Callable[[Ctx, Value], Value]
"""`handler(ctx, input) -> output`."""
