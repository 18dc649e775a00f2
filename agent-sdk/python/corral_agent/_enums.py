"""The package's enumerations, `SideEffects` (of `contract`) and `ToolErrorKind` (of `errors`).
They live here, made on first use, because importing `enum` costs an agent's start more than
the rest of the package: an agent that never names them never pays for them."""

from __future__ import annotations

import enum


class SideEffects(enum.IntEnum):
    """What running the agent does to the world (the wire's variant index)."""

    __module__ = "corral_agent.contract"

    READ_ONLY = 0
    """Reads only; safe to repeat."""
    IDEMPOTENT = 1
    """Writes; repeating with the same input has the same effect."""
    DESTRUCTIVE = 2
    """Writes that must not be repeated blindly."""


class ToolErrorKind(str, enum.Enum):
    """The kinds of tool failure the tool broker reports. A `ToolError.kind` may also be a kind
    not listed here (the supervisor's own, such as `denied` or `too_many_calls`, or one a newer
    broker adds): it is kept as the string it was."""

    __module__ = "corral_agent.errors"

    PERMISSION_DENIED = "permission_denied"
    UNKNOWN_TOOL = "unknown_tool"
    TIMEOUT = "timeout"
    CIRCUIT_OPEN = "circuit_open"
    TOO_LARGE = "too_large"
    TOOL_FAILED = "tool_failed"
    UNKNOWN_OUTCOME = "unknown_outcome"
    APPROVAL_DENIED = "approval_denied"
    REPLAY_DIVERGENCE = "replay_divergence"
