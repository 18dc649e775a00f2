"""The smallest agent on the Python SDK (the README's): it echoes its input. Run it under corral
with `agent-sdk/python` on PYTHONPATH (and readable by the agent: `readonly_paths`), or with the
SDK pip-installed into the interpreter's environment."""

from corral_agent import Contract, run


def handle(ctx, input):  # type: ignore[no-untyped-def]
    ctx.progress(1)
    return {"echo": input}


run(Contract("pyecho", "1.0"), handle)
