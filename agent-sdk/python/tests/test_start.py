"""What an agent pays to start: importing corral_agent loads nothing of the standard library
beyond a short list (not `typing`, `enum`, `dataclasses`, `threading`, `queue`, `traceback`,
`signal`), and neither does an agent on its way through the handshake to its first task; the
names made on first use (`Value`, `Handler`, `SideEffects`, `ToolErrorKind`) are the same
objects wherever they are reached; the light records behave as the dataclasses they replace.
Run by `python3 -m unittest discover -s agent-sdk/python/tests`."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import pickle
import subprocess
import sys
import unittest
from typing import List, Set

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.join(HERE, "..")
sys.path.insert(0, SDK)

import corral_agent  # noqa: E402
from corral_agent import (  # noqa: E402
    Contract,
    Field,
    Schema,
    SideEffects,
    ToolError,
    ToolErrorKind,
    wire,
)

WAIT = 30  # seconds: a safety net against a test that would hang, never a measurement

HEAVY = {"dataclasses", "enum", "typing", "threading", "queue", "traceback", "signal", "inspect"}
"""Modules whose import costs an agent's start more than the whole package does."""

ALLOWED = {"__future__", "struct", "_struct", "fcntl"}
"""What importing the package may load beside its own modules (each small)."""


def modules_after(code: str) -> Set[str]:
    """The modules a fresh interpreter has loaded after running `code`."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        env=dict(os.environ, PYTHONPATH=SDK),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    return set(out.stdout.split())


class Imports(unittest.TestCase):
    def test_importing_the_package_loads_only_a_short_list(self) -> None:
        bare = modules_after("pass")
        added = modules_after("import corral_agent") - bare
        ours = {m for m in added if m == "corral_agent" or m.startswith("corral_agent.")}
        self.assertIn("corral_agent.agent", ours)
        self.assertEqual(added - ours - ALLOWED, set(), "loaded by `import corral_agent`")
        self.assertEqual(added & HEAVY, set())
        for lazy in ("corral_agent._enums", "corral_agent._types"):
            self.assertNotIn(lazy, added)

    def test_an_agent_reaches_its_first_task_without_the_heavy_modules(self) -> None:
        # The handler answers with what the process has loaded by then (after the handshake,
        # with the heartbeat and reader threads running).
        agent = (
            "import sys\n"
            "from corral_agent import Contract, run\n"
            "run(Contract('mods', '1'), lambda ctx, input: sorted(sys.modules))\n"
        )
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()

        def wire_fds() -> None:
            import fcntl

            targets = ((down_r, 3), (up_w, 4))
            moved = [(fcntl.fcntl(fd, fcntl.F_DUPFD, 100), to) for fd, to in targets]
            for fd, to in moved:
                os.dup2(fd, to)

        proc = subprocess.Popen(
            [sys.executable, "-c", agent],
            preexec_fn=wire_fds,
            close_fds=False,
            env=dict(os.environ, PYTHONPATH=SDK),
        )
        os.close(down_r)
        os.close(up_w)
        try:
            with os.fdopen(up_r, "rb") as up:

                def read_up() -> wire.Up:
                    head = up.read(4)
                    self.assertEqual(len(head), 4, "the agent ended early")
                    return wire.decode_up(up.read(int.from_bytes(head, "little")))

                os.write(down_w, wire.encode_down(wire.Hello(1, "mods", "r1", 1, 60_000, 1 << 24)))
                self.assertIsInstance(read_up(), wire.Ready)
                os.write(down_w, wire.encode_down(wire.Task(1, None)))
                done = read_up()
                assert isinstance(done, wire.Done), done
                loaded = done.output
                assert isinstance(loaded, list)
                self.assertIn("corral_agent.agent", loaded)
                self.assertEqual(HEAVY & set(map(str, loaded)), set())
                os.write(down_w, wire.encode_down(wire.Shutdown(1000)))
                self.assertEqual(proc.wait(WAIT), 0)
        finally:
            os.close(down_w)
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)


class NamesMadeOnFirstUse(unittest.TestCase):
    def test_they_are_one_object_wherever_reached(self) -> None:
        from corral_agent import agent, codec, contract, errors

        self.assertIs(corral_agent.Value, wire.Value)
        self.assertIs(corral_agent.Value, codec.Value)
        self.assertIs(corral_agent.Handler, agent.Handler)
        self.assertIs(SideEffects, contract.SideEffects)
        self.assertIs(ToolErrorKind, errors.ToolErrorKind)
        self.assertTrue(issubclass(SideEffects, enum.IntEnum))
        self.assertTrue(issubclass(ToolErrorKind, enum.Enum))
        self.assertEqual(SideEffects.__module__, "corral_agent.contract")
        self.assertEqual(ToolErrorKind.__module__, "corral_agent.errors")
        self.assertIs(ToolError("timeout", "m").known_kind, ToolErrorKind.TIMEOUT)
        self.assertIsNone(ToolError("denied", "m").known_kind)

    def test_every_exported_name_is_there(self) -> None:
        names: List[str] = list(corral_agent.__all__)
        for name in names:
            with self.subTest(name):
                self.assertTrue(hasattr(corral_agent, name))
                self.assertIn(name, dir(corral_agent))
        with self.assertRaises(AttributeError):
            corral_agent.nothing_of_the_kind  # noqa: B018
        for module in (wire, corral_agent.contract, corral_agent.errors):
            with self.assertRaises(AttributeError):
                getattr(module, "nothing_of_the_kind")


class Records(unittest.TestCase):
    def contract(self, **kw: object) -> Contract:
        schema = Schema.object().field("a", Schema.STRING)
        schema = schema.optional("b", Schema.list_of(Schema.INT))
        return Contract("x", "1", input=schema, tools=("t",), **kw)  # type: ignore[arg-type]

    def test_contracts_compare_hash_and_print_as_frozen_dataclasses(self) -> None:
        a, b = self.contract(), self.contract(side_effects=SideEffects.READ_ONLY)
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertIs(a.side_effects, SideEffects.READ_ONLY)
        self.assertNotEqual(a, self.contract(side_effects=SideEffects.DESTRUCTIVE))
        self.assertEqual(repr(a), repr(b))
        self.assertTrue(repr(a).startswith("Contract(name='x', version='1', input=Schema(kind="))
        self.assertTrue(
            repr(a).endswith("tools=('t',), side_effects=<SideEffects.READ_ONLY: 0>)")
        )
        self.assertEqual(pickle.loads(pickle.dumps(a)), a)
        self.assertEqual(
            repr(Field("f", Schema.ANY)),
            "Field(name='f', schema=Schema(kind='any', items=(), fields=(), extra=False), "
            "required=True)",
        )
        self.assertNotEqual(Schema.ANY, Field("any", Schema.ANY))

    def test_frozen_records_refuse_assignment(self) -> None:
        records = [
            (self.contract(), "name"),
            (Schema.ANY, "kind"),
            (Field("f", Schema.ANY), "required"),
        ]
        for record, field in records:
            with self.subTest(type(record).__name__):
                with self.assertRaises(dataclasses.FrozenInstanceError):
                    setattr(record, field, None)
                with self.assertRaises(AttributeError):
                    delattr(record, field)
        self.assertEqual(Schema.ANY.kind, "any")

    def test_messages_compare_by_field_and_are_not_hashable(self) -> None:
        self.assertEqual(wire.Task(1, {"a": 1}), wire.Task(1, {"a": 1}, []))
        self.assertNotEqual(wire.Task(1, None), wire.Task(2, None))
        self.assertNotEqual(wire.Cancel(1), wire.Heartbeat(1))
        self.assertEqual(repr(wire.Shutdown(5)), "Shutdown(grace_ms=5)")
        self.assertEqual(wire.Done(1, None).__match_args__, ("task_id", "output", "memory"))
        with self.assertRaises(TypeError):
            hash(wire.Log(2, "x"))
        memory = wire.Task(1, None).memory
        memory.append(1)
        self.assertEqual(wire.Task(1, None).memory, [], "each message has a list of its own")

    def test_a_contract_round_trips_with_its_side_effects(self) -> None:
        for se in (None, SideEffects.IDEMPOTENT, SideEffects.DESTRUCTIVE):
            with self.subTest(se):
                ready = wire.Ready(1, self.contract(side_effects=se))
                back = wire.decode_up(wire.encode_up_payload(ready))
                self.assertEqual(back, ready)
                assert isinstance(back, wire.Ready)
                self.assertIs(back.contract.side_effects, ready.contract.side_effects)
        self.assertEqual(json.dumps(list(SideEffects)), "[0, 1, 2]")


if __name__ == "__main__":
    unittest.main()
