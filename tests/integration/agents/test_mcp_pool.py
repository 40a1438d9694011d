"""The MCP pool against real MCP servers (tests.fixtures.mcp_server, built with the SDK), over
stdio and streamable HTTP: tools listed at start, called with their schemas checked, errors
and deadlines for the model, a lost server reconnected, stdio servers stopped at close."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("mcp")

from app.agents.mcp import McpPool
from app.agents.mcp_servers import McpServer
from app.errors import ToolArgumentsError, ToolError, ToolTimeoutError
from tests.fixtures.mcp_server import STDIO, http_server
from tests.fixtures.waiting import alive, wait_for

DEADLINE_S = 20.0


@pytest.fixture
def stdio_pool() -> Iterator[McpPool]:
    pool = McpPool.start([McpServer(name="test", **STDIO, env={"MCP_TEST_SECRET": "s3"})])
    yield pool
    pool.close()


def test_a_stdio_servers_tools_are_listed_with_their_schemas_and_called(stdio_pool) -> None:
    server = McpServer(name="test", **STDIO)
    names = [t.name for t in stdio_pool.tools_of([server])]
    assert names == ["test__add", "test__shout", "test__fail", "test__sleep", "test__whoami",
                     "test__crash"]  # fmt: skip
    [add] = [t.schema() for t in stdio_pool.tools_of([server]) if t.name == "test__add"]
    assert add.description == "Add two integers."
    assert add.parameters["required"] == ["a", "b"]
    assert add.parameters["properties"]["a"]["type"] == "integer"
    assert stdio_pool.call("test__add", {"a": 2, "b": 3}, DEADLINE_S) == {"result": 5}
    assert stdio_pool.call("test__shout", {"text": "hi"}, DEADLINE_S) == {"result": "HI"}
    whoami = stdio_pool.call("test__whoami", {}, DEADLINE_S)
    assert whoami["secret"] == "s3"  # the declared environment reached the server
    assert stdio_pool.unreachable() == {}


def test_arguments_that_do_not_fit_the_servers_schema_never_reach_it(stdio_pool) -> None:
    with pytest.raises(ToolArgumentsError) as caught:
        stdio_pool.call("test__add", {"a": "two"}, DEADLINE_S)
    message = str(caught.value)
    assert message.startswith("invalid arguments for tool 'test__add': ")
    assert "a: 'two' is not of type 'integer'" in message
    assert "'b' is a required property" in message
    with pytest.raises(ToolArgumentsError, match="expected a JSON object"):
        stdio_pool.call("test__add", [1, 2], DEADLINE_S)


def test_a_failed_call_is_a_tool_error_with_the_servers_reason(stdio_pool) -> None:
    with pytest.raises(ToolError, match=r"tool 'test__fail' failed: .*no such city"):
        stdio_pool.call("test__fail", {"message": "no such city"}, DEADLINE_S)
    with pytest.raises(ToolError, match="unknown tool 'test__nope'"):
        stdio_pool.call("test__nope", {}, DEADLINE_S)


def test_a_call_past_its_deadline_is_cancelled_and_the_session_stays(stdio_pool) -> None:
    with pytest.raises(ToolTimeoutError, match=r"ran past its 0\.5 s deadline"):
        stdio_pool.call("test__sleep", {"seconds": 5}, 0.5)
    assert stdio_pool.call("test__add", {"a": 1, "b": 1}, DEADLINE_S) == {"result": 2}


def test_a_server_lost_mid_run_is_a_tool_error_then_reconnected(stdio_pool) -> None:
    first = stdio_pool.call("test__whoami", {}, DEADLINE_S)["pid"]
    with pytest.raises(ToolError, match="MCP server 'test' was lost"):
        stdio_pool.call("test__crash", {}, DEADLINE_S)
    wait_for(lambda: not alive(first), 10, "the lost server to exit")
    assert "test" in stdio_pool.unreachable()
    second = stdio_pool.call("test__whoami", {}, DEADLINE_S)["pid"]  # a new server process
    assert second != first


def test_close_stops_every_stdio_server_process() -> None:
    pool = McpPool.start([McpServer(name="test", **STDIO)])
    pid = pool.call("test__whoami", {}, DEADLINE_S)["pid"]
    assert alive(pid)
    pool.close()
    wait_for(lambda: not alive(pid), 10, "the stdio server to stop")


def test_a_server_unreachable_at_start_is_named_and_the_others_serve() -> None:
    missing = McpServer(name="gone", command="/nonexistent/mcp-server", connect_timeout_s=5)
    pool = McpPool.start([missing, McpServer(name="test", **STDIO, tools=("add",))])
    try:
        down = pool.unreachable()
        assert list(down) == ["gone"]
        assert [t.name for t in pool.tools_of([missing])] == []
        with pytest.raises(ToolError, match="unknown tool 'gone__add'"):
            pool.call("gone__add", {}, DEADLINE_S)
        # Only the declared tools of 'test', under a declared prefix would be listed.
        assert [t.name for t in pool.tools_of([McpServer(name="test", **STDIO)])] == ["test__add"]
    finally:
        pool.close()


def test_an_http_server_is_called_with_the_token_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("AGENTQ_TEST_MCP_TOKEN", "t0ken")
    with http_server(token="t0ken") as (url, _):
        server = McpServer(
            name="remote", url=url, prefix="r_",
            headers_from_env={"Authorization": "AGENTQ_TEST_MCP_BEARER"},
        )  # fmt: skip
        monkeypatch.setenv("AGENTQ_TEST_MCP_BEARER", "Bearer t0ken")
        pool = McpPool.start([server])
        try:
            assert "r_add" in [t.name for t in pool.tools_of([server])]
            assert pool.call("r_add", {"a": 20, "b": 22}, DEADLINE_S) == {"result": 42}
            with pytest.raises(ToolError, match=r"tool 'r_fail' failed: .*bad"):
                pool.call("r_fail", {"message": "bad"}, DEADLINE_S)
        finally:
            pool.close()
        # Without the token the server refuses: unreachable, with the reason.
        monkeypatch.setenv("AGENTQ_TEST_MCP_BEARER", "Bearer wrong")
        refused = McpPool.start([server.model_copy(update={"connect_timeout_s": 10})])
        try:
            assert "remote" in refused.unreachable()
        finally:
            refused.close()


def test_an_http_server_lost_mid_run_is_a_tool_error() -> None:
    with http_server() as (url, proc):
        pool = McpPool.start([McpServer(name="remote", url=url)])
        try:
            assert pool.call("remote__add", {"a": 1, "b": 2}, DEADLINE_S) == {"result": 3}
            with pytest.raises(ToolError, match="tool 'remote__crash' failed"):
                pool.call("remote__crash", {}, DEADLINE_S)
            proc.wait(10)
            with pytest.raises(ToolError):
                pool.call("remote__add", {"a": 1, "b": 2}, DEADLINE_S)
        finally:
            pool.close()


def test_a_server_that_never_answers_is_given_up_at_its_connect_timeout() -> None:
    silent = McpServer(
        name="silent", command=sys.executable, args=("-c", "import time; time.sleep(60)"),
        connect_timeout_s=1,
    )  # fmt: skip
    started = time.monotonic()
    pool = McpPool.start([silent])
    try:
        assert time.monotonic() - started < 10
        assert pool.unreachable()["silent"].startswith("no answer within 1 s")
    finally:
        pool.close()
