"""Plain record classes, light to define: what the package's value types (`Schema`, `Contract`,
the wire's messages) share. They behave as the `dataclasses` of the same fields would (the
`repr`, `==` field by field within one class, `__match_args__`; frozen records are hashable and
refuse assignment with `dataclasses.FrozenInstanceError`) without importing `dataclasses`,
whose import and class set-up cost an agent more than the rest of its start. A record class
lists its fields in `__match_args__`, in order, and sets them in its own `__init__`."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Tuple


class Record:
    """A mutable record: compared field by field, not hashable."""

    __match_args__: Tuple[str, ...] = ()
    __hash__ = None  # type: ignore[assignment]

    def _astuple(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self.__match_args__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__match_args__)
        return f"{type(self).__qualname__}({fields})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._astuple() == other._astuple()
        return NotImplemented


class Frozen(Record):
    """An immutable record: hashable; its fields are set once, by `_init`."""

    def _init(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._astuple())
