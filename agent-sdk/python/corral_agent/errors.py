"""Errors an agent raises or receives: `AgentError` to fail a task on purpose, `ToolError` when
a tool call is refused or fails. Both carry the protocol's structured error: a short
machine-readable `kind`, a human-readable `message`, and whether trying again may help
(`retryable`; `False` is never retried)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

    from ._enums import ToolErrorKind as ToolErrorKind


def __getattr__(name: str) -> object:
    # `ToolErrorKind` is an `enum.Enum`, made on first use (importing `enum` is not free).
    if name == "ToolErrorKind":
        from ._enums import ToolErrorKind

        globals()[name] = ToolErrorKind
        return ToolErrorKind
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AgentError(Exception):
    """A structured failure. Raised from a handler, it ends the task as `Failed` with exactly
    this error (the exit record's `error {kind, message, retryable}`)."""

    def __init__(self, kind: str, message: str, retryable: bool = False) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.retryable = retryable

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.kind!r}, {self.message!r}, "
            f"retryable={self.retryable!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AgentError):
            return NotImplemented
        return (self.kind, self.message, self.retryable) == (
            other.kind,
            other.message,
            other.retryable,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.message, self.retryable))


class ToolError(AgentError):
    """A tool call that did not return a value: refused by the SDK before it was sent
    (`too_large`, `invalid_args`), by the supervisor or the broker, or abandoned (`cancelled`,
    `io`). Not caught, it fails the task with this error, as the Rust SDK's `?` does."""

    @property
    def known_kind(self) -> Optional[ToolErrorKind]:
        """The kind as a `ToolErrorKind`, or `None` for a kind outside that list."""
        from ._enums import ToolErrorKind

        try:
            return ToolErrorKind(self.kind)
        except ValueError:
            return None
