"""The agent runtime of corral_agent against a supervisor played by the test: a real agent
process (examples/python/chaos.py) on real pipes at fds 3, 4 (and 6), real signals. What a
hostile or broken peer sends (oversized, deep, truncated frames, a second Hello, another
protocol version) ends the agent with status 2; what a handler does wrong becomes a structured
`Failed`. Run by `python3 -m unittest discover -s agent-sdk/python/tests`."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import unittest
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.join(HERE, "..")
sys.path.insert(0, SDK)

from corral_agent import AgentError  # noqa: E402
from corral_agent import wire  # noqa: E402

CHAOS = os.path.join(HERE, "..", "..", "..", "examples", "python", "chaos.py")
WAIT = 30  # seconds: a safety net against a test that would hang, never a measurement


class Peer:
    """One agent process and the supervisor's ends of its pipes."""

    def __init__(self, beat: bool = False) -> None:
        down_r, self.down = os.pipe()
        self.up, up_w = os.pipe()
        self.beat: Optional[int] = None
        beat_w = -1
        if beat:
            self.beat, beat_w = os.pipe()
            os.set_blocking(beat_w, False)

        def wire_fds() -> None:
            # Out of the way first: a pipe's own fd may be 3, 4 or 6 already.
            moved = [(fcntl.fcntl(fd, fcntl.F_DUPFD, 100), to) for fd, to in targets]
            for fd, to in moved:
                os.dup2(fd, to)

        targets = [(down_r, 3), (up_w, 4)] + ([(beat_w, 6)] if beat_w >= 0 else [])

        env = dict(os.environ, PYTHONPATH=SDK)
        self.proc = subprocess.Popen(
            [sys.executable, CHAOS],
            preexec_fn=wire_fds,
            close_fds=False,
            env=env,
            stderr=subprocess.PIPE,
        )
        for fd in (down_r, up_w, beat_w):
            if fd >= 0:
                os.close(fd)
        self.up_file = os.fdopen(self.up, "rb")

    def send(self, msg: wire.Down) -> None:
        os.write(self.down, wire.encode_down(msg))

    def raw(self, data: bytes) -> None:
        os.write(self.down, data)

    def recv(self) -> Optional[wire.Up]:
        head = self.up_file.read(4)
        if len(head) < 4:
            return None
        (n,) = struct.unpack("<I", head)
        return wire.decode_up(self.up_file.read(n))

    def recv_not_beat(self) -> Optional[wire.Up]:
        """The next frame that is not a Heartbeat or a Log."""
        while True:
            m = self.recv()
            if not isinstance(m, (wire.Heartbeat, wire.Log)):
                return m

    def hello(self, interval_ms: int = 60_000, max_frame: int = 16 << 20) -> wire.Ready:
        self.send(wire.Hello(1, "chaos", "r1", 1, interval_ms, max_frame))
        ready = self.recv_not_beat()
        assert isinstance(ready, wire.Ready), ready
        return ready

    def task(self, input: wire.Value, task_id: int = 1) -> None:
        self.send(wire.Task(task_id, input, []))

    def exit_code(self) -> int:
        code = self.proc.wait(WAIT)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.down, self.beat):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.up_file.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class Agent(unittest.TestCase):
    def peer(self, beat: bool = False) -> Peer:
        p = Peer(beat)
        self.addCleanup(p.close)
        return p

    def test_outside_corral_it_says_so_and_exits_2(self) -> None:
        out = subprocess.run(
            [sys.executable, CHAOS], capture_output=True, env=dict(os.environ, PYTHONPATH=SDK), timeout=WAIT
        )
        self.assertEqual(out.returncode, 2)
        self.assertIn(b"start it under corral", out.stderr)

    def test_a_task_is_answered_and_shutdown_ends_it(self) -> None:
        p = self.peer()
        ready = p.hello()
        self.assertEqual(ready.contract.name, "chaos")
        self.assertEqual(ready.contract.tools, ("*",))
        p.task({"do": "ok"}, 7)
        done = p.recv_not_beat()
        self.assertEqual(done, wire.Done(7, {"ok": True}, []))
        p.send(wire.Shutdown(1000))
        self.assertEqual(p.exit_code(), 0)

    def test_memory_is_passed_through(self) -> None:
        p = self.peer()
        p.hello()
        p.send(wire.Task(1, {"do": "ok"}, ["note", {"k": 1}]))
        done = p.recv_not_beat()
        assert isinstance(done, wire.Done)
        self.assertEqual(done.memory, ["note", {"k": 1}])

    def test_heartbeats_are_frames_without_a_beat_pipe(self) -> None:
        p = self.peer()
        p.hello(interval_ms=10)
        self.assertIsInstance(p.recv(), wire.Heartbeat)

    def test_heartbeats_go_to_the_beat_pipe_when_there_is_one(self) -> None:
        p = self.peer(beat=True)
        p.hello(interval_ms=10)
        assert p.beat is not None
        os.set_blocking(p.beat, True)
        record = os.read(p.beat, 16)
        self.assertEqual(len(record), 16)
        progress, at = struct.unpack("<QQ", record)
        self.assertEqual(progress, 0)
        self.assertGreater(at, 0)

    def test_another_protocol_version_is_refused_by_name(self) -> None:
        p = self.peer()
        p.send(wire.Hello(2, "chaos", "r1", 1, 1000, 1 << 20))
        failed = p.recv()
        expected = "protocol version mismatch: supervisor speaks corral protocol v2, agent speaks v1"
        self.assertEqual(failed, wire.Failed(0, AgentError("protocol_mismatch", expected, False)))
        self.assertEqual(p.exit_code(), 2)

    def test_hostile_down_frames_end_it_with_status_2(self) -> None:
        deep = b"\x01\x01" + b"\x06\x01" * 200 + b"\x00\x00"
        cases: List[bytes] = [
            struct.pack("<I", 4096) + b"\x01",  # over the max_frame of 1024 it was told
            wire.frame(deep),  # nesting past 128
            wire.encode_down(wire.Hello(1, "again", "r", 1, 1, 1024)),  # a second Hello
            wire.frame(b"\x09"),  # no such message
            wire.frame(b"\x03\x01\x00"),  # trailing bytes
            struct.pack("<I", 100) + b"\x01\x01",  # cut short by the end of the stream
        ]
        for i, data in enumerate(cases):
            with self.subTest(i):
                p = self.peer()
                p.hello(max_frame=1024)
                p.raw(data)
                os.close(p.down)
                p.down = -1
                self.assertEqual(p.exit_code(), 2)

    def test_the_end_of_fd_3_ends_an_idle_agent_with_status_0(self) -> None:
        p = self.peer()
        p.hello()
        os.close(p.down)
        p.down = -1
        self.assertEqual(p.exit_code(), 0)

    def test_tool_calls_match_answers_by_call_id(self) -> None:
        p = self.peer()
        p.hello()
        p.task({"do": "tool", "name": "upper", "args": {"text": "hi"}})
        call = p.recv_not_beat()
        assert isinstance(call, wire.ToolCall)
        self.assertEqual((call.tool, call.args), ("upper", {"text": "hi"}))
        p.send(wire.ToolResult(call.call_id + 100, "not mine"))
        p.send(wire.ToolResult(call.call_id, "HI"))
        self.assertEqual(p.recv_not_beat(), wire.Done(1, "HI", []))

    def test_a_tool_error_keeps_its_kind(self) -> None:
        p = self.peer()
        p.hello()
        p.task({"do": "tool", "name": "nope", "args": None})
        call = p.recv_not_beat()
        assert isinstance(call, wire.ToolCall)
        err = AgentError("circuit_open", "the breaker is open", True)
        p.send(wire.ToolResult(call.call_id, err))
        self.assertEqual(p.recv_not_beat(), wire.Failed(1, err))

    def test_a_tool_name_past_256_bytes_is_refused_before_sending(self) -> None:
        p = self.peer()
        p.hello()
        p.task({"do": "tool", "name": "t" * 257, "args": None})
        failed = p.recv_not_beat()
        assert isinstance(failed, wire.Failed)
        self.assertEqual(failed.error.kind, "too_large")

    def test_cancel_while_waiting_for_a_tool(self) -> None:
        p = self.peer()
        p.hello()
        p.task({"do": "tool", "name": "slow", "args": None})
        self.assertIsInstance(p.recv_not_beat(), wire.ToolCall)
        p.send(wire.Cancel(1))
        failed = p.recv_not_beat()
        assert isinstance(failed, wire.Failed)
        self.assertEqual((failed.error.kind, failed.error.retryable), ("cancelled", False))

    def test_cancel_is_seen_by_the_handler(self) -> None:
        p = self.peer()
        p.hello()
        p.task({"do": "wait_cancel"})
        p.send(wire.Cancel(1))
        failed = p.recv_not_beat()
        assert isinstance(failed, wire.Failed)
        self.assertEqual(failed.error.kind, "cancelled")

    def test_an_exception_is_a_failed_with_its_traceback(self) -> None:
        p = self.peer()
        p.hello()
        p.task({"do": "panic"})
        failed = p.recv_not_beat()
        assert isinstance(failed, wire.Failed)
        self.assertEqual((failed.error.kind, failed.error.retryable), ("panic", True))
        self.assertIn("RuntimeError: chaos: panicking on request", failed.error.message)
        self.assertIn("in handle", failed.error.message)
        # The agent goes on: another task is answered.
        p.task({"do": "ok"}, 2)
        self.assertEqual(p.recv_not_beat(), wire.Done(2, {"ok": True}, []))

    def test_outputs_that_cannot_be_sent_are_refused_with_a_reason(self) -> None:
        p = self.peer()
        p.hello(max_frame=1 << 20)
        p.task({"do": "huge_output", "mb": 2})
        failed = p.recv_not_beat()
        assert isinstance(failed, wire.Failed)
        self.assertEqual((failed.error.kind, failed.error.retryable), ("too_large", False))
        p.task({"do": "deep_output"}, 2)
        failed = p.recv_not_beat()
        assert isinstance(failed, wire.Failed)
        self.assertEqual(failed.error.kind, "invalid_output")
        self.assertIn("nesting deeper than 128", failed.error.message)

    def test_sigterm_ends_a_busy_agent(self) -> None:
        p = self.peer()
        p.hello()
        p.task({"do": "stall"})
        log = p.recv()
        self.assertEqual(log, wire.Log(2, "chaos: stall"))
        p.proc.send_signal(signal.SIGTERM)
        self.assertEqual(p.exit_code(), 0)

    def test_shutdown_while_busy_ends_it_after_the_grace(self) -> None:
        p = self.peer()
        p.hello()
        p.task({"do": "stall"})
        self.assertEqual(p.recv(), wire.Log(2, "chaos: stall"))
        p.send(wire.Shutdown(200))
        self.assertEqual(p.exit_code(), 0)


if __name__ == "__main__":
    unittest.main()
