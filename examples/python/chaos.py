#!/usr/bin/env python3
"""`chaos.py`: the `chaos` agent (examples/src/bin/chaos.rs) on the Python SDK, for tests that
hold both SDKs to the same behaviour. The input selects a misbehaviour:

| input | behaviour |
|---|---|
| `{"do":"ok"}` | output `{"ok":true}` |
| `{"do":"crash"}` | `abort()`: dies by SIGABRT |
| `{"do":"exit","code":N}` | exits with code N mid-task |
| `{"do":"fail","retryable":B}` | raises a structured agent error |
| `{"do":"hang"}` | stops beating and sleeps |
| `{"do":"stall"}` | keeps beating, never progresses |
| `{"do":"spin"}` | burns CPU, beating and progressing |
| `{"do":"ignore_term"}` | ignores SIGTERM and Shutdown, then hangs |
| `{"do":"garbage"}` | writes a frame that does not decode on fd 4 |
| `{"do":"huge_frame"}` | announces a 4 GiB frame |
| `{"do":"huge_output","mb":N}` | returns N MiB of text (past `max_frame`: refused) |
| `{"do":"deep_output"}` | returns lists nested 200 deep (past the nesting limit: refused) |
| `{"do":"tool","name":T,"args":V}` | the tool's result, or its error |
| `{"do":"sleep_ms","ms":N}` | sleeps N ms, progressing, then `{"ok":true}` |
| `{"do":"wait_cancel"}` | progresses until cancelled, then fails `cancelled` |
| `{"do":"env"}` | `{"env":{NAME:VALUE,…}}` |
| `{"do":"panic"}` | raises an exception (the SDK reports `Failed {kind: "panic"}`) |
| `{"do":"frames","n":N}` | sends N small `Log` frames as fast as it can, then `{"ok":true}` |
| `{"do":"id"}` | `{"uid":U,"gid":G,"pid":P}` |
"""

import os
import sys
import time

# Run from the repository without installing: the SDK is two directories up (PYTHONPATH or an
# installed package come first).
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "agent-sdk", "python"))

from corral_agent import AgentError, Contract, Ctx, LogLevel, Schema, SideEffects, Value, run  # noqa: E402


def forever() -> None:
    while True:
        time.sleep(3600)


def arg_int(input: dict, key: str) -> int:  # type: ignore[type-arg]
    v = input.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise AgentError("invalid_input", f"`{key}` must be an integer", False)
    return v


def handle(ctx: Ctx, input: Value) -> Value:
    if not isinstance(input, dict) or not isinstance(input.get("do"), str):
        raise AgentError("invalid_input", "`do` must be a string", False)
    what = str(input["do"])
    ctx.log(f"chaos: {what}")
    if what == "ok":
        return {"ok": True}
    if what == "crash":
        os.abort()
    if what == "exit":
        sys.stdout.flush()
        os._exit(arg_int(input, "code"))
    if what == "fail":
        retryable = input.get("retryable", True)
        raise AgentError("chaos", "failed on request", bool(retryable))
    if what == "hang":
        ctx.misbehave().stop_heartbeats()
        forever()
    if what == "stall":
        forever()
    if what == "spin":
        x = 0
        while True:
            for _ in range(100_000):
                x = (x * 6364136223846793005 + 1) & 0xFFFFFFFFFFFFFFFF
            ctx.progress()
    if what == "ignore_term":
        ctx.misbehave().ignore_shutdown()
        ctx.misbehave().stop_heartbeats()
        forever()
    if what == "garbage":
        ctx.misbehave().write_raw(bytes([8, 0, 0, 0]) + b"\xff" * 8)
        forever()
    if what == "huge_frame":
        ctx.misbehave().write_raw(b"\xff\xff\xff\xff")
        forever()
    if what == "huge_output":
        return {"text": "x" * (arg_int(input, "mb") << 20)}
    if what == "deep_output":
        deep: Value = None
        for _ in range(200):
            deep = [deep]
        return deep
    if what == "tool":
        name = input.get("name")
        if not isinstance(name, str):
            raise AgentError("invalid_input", "`name` must be a string", False)
        return ctx.tool(name, input.get("args"))
    if what == "sleep_ms":
        until = time.monotonic() + max(arg_int(input, "ms"), 0) / 1000
        while (left := until - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
            ctx.progress()
        return {"ok": True}
    if what == "wait_cancel":
        while not ctx.cancelled:
            time.sleep(0.01)
            ctx.progress()
        raise AgentError("cancelled", "task cancelled", False)
    if what == "env":
        return {"env": dict(os.environ)}
    if what == "panic":
        raise RuntimeError("chaos: panicking on request")
    if what == "frames":
        for _ in range(max(arg_int(input, "n"), 0)):
            ctx.log("x", LogLevel.TRACE)
        return {"ok": True}
    if what == "id":
        return {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}
    raise AgentError("invalid_input", f"unknown misbehaviour `{what}`", False)


if __name__ == "__main__":
    run(
        Contract(
            "chaos",
            "0.1.0",
            input=Schema.object().field("do", Schema.STRING).allow_extra(),
            output=Schema.ANY,
            tools=["*"],
            side_effects=SideEffects.DESTRUCTIVE,
        ),
        handle,
    )
