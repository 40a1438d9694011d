"""The chaos bench's agent and its tool (workers import this module: ``--include``).

``ledger`` appends one line per execution to the file ``AGENTQ_BENCH_LEDGER`` names, outside
Redis and SQL, so the bench counts how often each tool call really ran: a call run twice
(after a crash, a redelivery, a recovered message) is a side effect repeated.
"""

from __future__ import annotations

import os

from app import Agent, ToolContext, tool

LEDGER_ENV = "AGENTQ_BENCH_LEDGER"
AGENT = "chaos"


@tool("ledger", side_effects=True)
def ledger(ctx: ToolContext, key: str) -> str:
    """Record that this call ran, in the bench's ledger file; answers "ok".

    Args:
        key: A name for the entry.
    """
    line = f"{ctx.run_id} {ctx.step} {ctx.call_id} {key}\n"
    # One write of one short line with O_APPEND: lines from many processes do not interleave.
    fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return "ok"


Agent(AGENT, system_prompt="You keep a ledger.", tools=[ledger], max_steps=8)
