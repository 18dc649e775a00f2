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

from ._record import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar, Optional, Sequence, Tuple

    from ._enums import SideEffects as SideEffects


def __getattr__(name: str) -> object:
    # `SideEffects` is an `enum.IntEnum`, made on first use (importing `enum` is not free).
    if name == "SideEffects":
        from ._enums import SideEffects

        globals()[name] = SideEffects
        return SideEffects
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Field(Frozen):
    """One field of an object schema."""

    __match_args__ = ("name", "schema", "required")
    name: str
    schema: Schema
    required: bool

    def __init__(self, name: str, schema: Schema, required: bool = True) -> None:
        self._init("name", name)
        self._init("schema", schema)
        self._init("required", required)


class Schema(Frozen):
    """A shape of `Value`, as the protocol's `Schema` (section 4.5 of `docs/protocol.md`).

    Scalars are class constants (`Schema.ANY`, `Schema.NULL`, `Schema.BOOL`, `Schema.INT`,
    `Schema.FLOAT`, `Schema.STRING`, `Schema.BYTES`); composites are made by `list_of`,
    `map_of`, `object` (then `.field`, `.optional`, `.allow_extra`), `optional_of`, `one_of`.
    """

    __match_args__ = ("kind", "items", "fields", "extra")
    kind: str
    """`any`, `null`, `bool`, `int`, `float`, `string`, `bytes`, `list`, `map`, `object`,
    `optional` or `one_of`."""
    items: Tuple[Schema, ...]
    """The inner schemas of `list`, `map`, `optional` (one) and `one_of` (any number)."""
    fields: Tuple[Field, ...]
    """The fields of an `object`."""
    extra: bool
    """Whether an `object` accepts keys it does not declare."""

    ANY: ClassVar[Schema]
    NULL: ClassVar[Schema]
    BOOL: ClassVar[Schema]
    INT: ClassVar[Schema]
    FLOAT: ClassVar[Schema]
    STRING: ClassVar[Schema]
    BYTES: ClassVar[Schema]

    def __init__(
        self,
        kind: str,
        items: Tuple[Schema, ...] = (),
        fields: Tuple[Field, ...] = (),
        extra: bool = False,
    ) -> None:
        self._init("kind", kind)
        self._init("items", items)
        self._init("fields", fields)
        self._init("extra", extra)

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


class Contract(Frozen):
    """What the agent is, accepts, returns and may call. `tools` entry `"*"` declares every
    tool. `side_effects` left out (or `None`) is `SideEffects.READ_ONLY`."""

    __match_args__ = ("name", "version", "input", "output", "tools", "side_effects")
    name: str
    version: str
    input: Schema
    output: Schema
    tools: Sequence[str]
    _side_effects: Optional[SideEffects]

    def __init__(
        self,
        name: str,
        version: str,
        input: Schema = Schema.ANY,
        output: Schema = Schema.ANY,
        tools: Sequence[str] = (),
        side_effects: Optional[SideEffects] = None,
    ) -> None:
        self._init("name", name)
        self._init("version", version)
        self._init("input", input)
        self._init("output", output)
        self._init("tools", tools)
        self._init("_side_effects", side_effects)

    @property
    def side_effects(self) -> SideEffects:
        """What running the agent does to the world."""
        if self._side_effects is None:
            from ._enums import SideEffects

            return SideEffects.READ_ONLY
        return self._side_effects

    def _side_effects_index(self) -> int:
        """The wire's variant index of `side_effects`, without making the enum."""
        return 0 if self._side_effects is None else int(self._side_effects)

    def _astuple(self) -> Tuple[object, ...]:
        # Left out, it compares and hashes as `SideEffects.READ_ONLY` (an int 0) does.
        se = 0 if self._side_effects is None else self._side_effects
        return (self.name, self.version, self.input, self.output, self.tools, se)
