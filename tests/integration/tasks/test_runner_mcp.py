"""The step runner with tools from a real MCP server (tests.fixtures.mcp_server over stdio):
the model is told of them with the server's schemas, they pass the allowlist, bad arguments
and tools the declaration leaves out are tool errors, a good call's result is committed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest

pytest.importorskip("mcp")

from app.agents.mcp import McpPool
from app.agents.mcp_servers import McpServer
from app.agents.registry import AgentRegistry, AgentSpec
from app.agents.sandbox import ToolSandbox
from app.config import Settings
from app.memory.sessions import SessionStore
from app.tasks.runner import Outcome, StepMessage, StepRunner
from tests.fixtures import steps as recorded
from tests.fixtures.backends import ReplyList
from tests.fixtures.mcp_server import STDIO

SERVER = McpServer(name="calc", **STDIO, tools=("add", "shout"))
REGISTRY = AgentRegistry(
    [AgentSpec(name="mcp_user", tools=("word_count",), mcp_servers=(SERVER,), max_steps=5)]
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    s = SessionStore.from_url(f"sqlite:///{tmp_path / 'db.sqlite3'}", migrate=True)
    yield s
    s.close()


@pytest.fixture
def sandbox() -> Iterator[ToolSandbox]:
    box = ToolSandbox(threads=1, processes=1, default_deadline_s=30, memory_mb=256)
    box.mcp = McpPool.start([SERVER])
    yield box
    box.close()


def call(tool: str, **args: object) -> str:
    return json.dumps({"tool": tool, "args": args})


def test_mcp_tools_are_offered_allowed_checked_and_called(store, sandbox) -> None:
    backend = ReplyList(
        call("calc__add", a="two", b=2),
        call("calc__crash"),  # listed by the server, left out by the declaration
        call("calc__add", a=40, b=2),
        "Answer: 42",
    )
    runner = StepRunner(
        Settings(_env_file=None), REGISTRY, store, fakeredis.FakeRedis(), {"triton": backend},
        "w1", sandbox,
    )  # fmt: skip
    outcomes = [runner.run_step(StepMessage("run", "mcp_user", i, "go")).outcome for i in range(4)]
    assert outcomes == [Outcome.NEXT, Outcome.NEXT, Outcome.NEXT, Outcome.DONE]
    told = {tool.name: tool for tool in backend.requests[0].tools}
    assert list(told) == ["word_count", "calc__add", "calc__shout"]
    assert told["calc__add"].description == "Add two integers."
    assert told["calc__add"].parameters["required"] == ["a", "b"]
    bad, denied, good, _ = (recorded.result(s) for s in store.load_run("run").steps)
    assert bad["error"].startswith("invalid arguments for tool 'calc__add': a: 'two' is not")
    assert "calc__crash" in denied["error"] and "not allowed" in denied["error"]
    assert good == {"result": 42}
