"""What an agent declares in its `Ready`: a `Contract` (name, version, input and output
`Schema`, the tools it may call, its `SideEffects`). The supervisor validates every task's input
against `input` before sending it and every output against `output` on receipt.

    Contract(
        "shout",
        "1.0",
        input=Schema.object().field("text", Schema.STRING),
        output=Schema.object().field("shout", Schema.STRING),
        tools=["search"],
        side_effects=SideEffects.READ_ONLY,
    )
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Sequence, Tuple


class SideEffects(enum.IntEnum):
    """What running the agent does to the world (the wire's variant index)."""

    READ_ONLY = 0
    """Reads only; safe to repeat."""
    IDEMPOTENT = 1
    """Writes; repeating with the same input has the same effect."""
    DESTRUCTIVE = 2
    """Writes that must not be repeated blindly."""


@dataclass(frozen=True)
class Field:
    """One field of an object schema."""

    name: str
    schema: Schema
    required: bool = True


@dataclass(frozen=True)
class Schema:
    """A shape of `Value`, as the protocol's `Schema` (section 4.5 of `docs/protocol.md`).

    Scalars are class constants (`Schema.ANY`, `Schema.NULL`, `Schema.BOOL`, `Schema.INT`,
    `Schema.FLOAT`, `Schema.STRING`, `Schema.BYTES`); composites are made by `list_of`,
    `map_of`, `object` (then `.field`, `.optional`, `.allow_extra`), `optional_of`, `one_of`.
    """

    kind: str
    """`any`, `null`, `bool`, `int`, `float`, `string`, `bytes`, `list`, `map`, `object`,
    `optional` or `one_of`."""
    items: Tuple[Schema, ...] = ()
    """The inner schemas of `list`, `map`, `optional` (one) and `one_of` (any number)."""
    fields: Tuple[Field, ...] = ()
    """The fields of an `object`."""
    extra: bool = False
    """Whether an `object` accepts keys it does not declare."""

    ANY: ClassVar[Schema]
    NULL: ClassVar[Schema]
    BOOL: ClassVar[Schema]
    INT: ClassVar[Schema]
    FLOAT: ClassVar[Schema]
    STRING: ClassVar[Schema]
    BYTES: ClassVar[Schema]

    @staticmethod
    def list_of(item: Schema) -> Schema:
        """A list whose items all match `item`."""
        return Schema("list", (item,))

    @staticmethod
    def map_of(values: Schema) -> Schema:
        """A map (string keys) whose values all match `values`."""
        return Schema("map", (values,))

    @staticmethod
    def object() -> Schema:
        """An object with no fields yet, refusing undeclared keys."""
        return Schema("object")

    @staticmethod
    def optional_of(inner: Schema) -> Schema:
        """`null` or what `inner` accepts."""
        return Schema("optional", (inner,))

    @staticmethod
    def one_of(*alternatives: Schema) -> Schema:
        """What any of the alternatives accepts."""
        return Schema("one_of", tuple(alternatives))

    def field(self, name: str, schema: Schema) -> Schema:
        """This object with one more required field."""
        return self._with_field(Field(name, schema, True))

    def optional(self, name: str, schema: Schema) -> Schema:
        """This object with one more optional field (may be missing or `null`)."""
        return self._with_field(Field(name, schema, False))

    def allow_extra(self) -> Schema:
        """This object, accepting keys it does not declare."""
        self._must_be_object("allow_extra")
        return Schema("object", (), self.fields, True)

    def _with_field(self, f: Field) -> Schema:
        self._must_be_object("field")
        return Schema("object", (), self.fields + (f,), self.extra)

    def _must_be_object(self, what: str) -> None:
        if self.kind != "object":
            raise TypeError(f"Schema.{what} applies to an object schema, not to `{self.kind}`")


Schema.ANY = Schema("any")
Schema.NULL = Schema("null")
Schema.BOOL = Schema("bool")
Schema.INT = Schema("int")
Schema.FLOAT = Schema("float")
Schema.STRING = Schema("string")
Schema.BYTES = Schema("bytes")


@dataclass(frozen=True)
class Contract:
    """What the agent is, accepts, returns and may call. `tools` entry `"*"` declares every
    tool."""

    name: str
    version: str
    input: Schema = Schema.ANY
    output: Schema = Schema.ANY
    tools: Sequence[str] = field(default_factory=tuple)
    side_effects: SideEffects = SideEffects.READ_ONLY
