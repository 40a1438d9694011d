"""MCP server declarations (agents files and Agent(...)), the names and schemas their tools
get, and how a call's arguments and results are read; no server is started here (see
tests/integration/agents/test_mcp_pool.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.agents import mcp_servers
from app.agents.mcp import listed_tools, result_json
from app.agents.mcp_servers import McpServer, check_declarations
from app.agents.registry import AgentRegistry, AgentSpec
from app.errors import ConfigurationError, ToolArgumentsError, ToolError
from tests.fixtures.declarations import declarations_restored

ADD_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}


def listed(name: str, schema: dict | None = None, description: str | None = "Adds.") -> object:
    return SimpleNamespace(
        name=name, title=None, description=description, input_schema=schema or ADD_SCHEMA
    )


def text(value: str) -> object:
    return SimpleNamespace(type="text", text=value)


def test_an_agents_file_declares_stdio_and_http_servers(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(
        "agents:\n"
        "  - name: helper\n"
        "    tools: [calculator]\n"
        "    mcp_servers:\n"
        "      - name: files\n"
        "        command: npx\n"
        "        args: [-y, some-mcp-server]\n"
        "        env_from_env: {API_KEY: FILES_API_KEY}\n"
        "      - name: search\n"
        "        url: https://mcp.example.com/mcp\n"
        "        headers_from_env: {Authorization: SEARCH_TOKEN}\n"
        "        prefix: web_\n"
    )
    [spec] = AgentRegistry.from_file(path)
    files, search = spec.mcp_servers
    assert (files.command, files.args, files.tool_prefix) == ("npx", ("-y", "some-mcp-server"),
                                                              "files__")  # fmt: skip
    assert files.env_from_env == {"API_KEY": "FILES_API_KEY"}
    assert (search.url, search.tool_prefix) == ("https://mcp.example.com/mcp", "web_")
    assert search.headers_from_env == {"Authorization": "SEARCH_TOKEN"}


@pytest.fixture(autouse=True)
def _declarations_restored() -> Iterator[None]:
    with declarations_restored():
        yield


def test_agent_in_python_and_a_toml_file_declare_servers(tmp_path: Path) -> None:
    from app import Agent

    spec = Agent("helper", mcp_servers=[{"name": "search", "url": "http://h/mcp"}])
    assert spec.mcp_servers == (McpServer(name="search", url="http://h/mcp"),)
    with pytest.raises(ConfigurationError, match=r"mcp_servers\.0: Value error, MCP server 'x'"):
        Agent("broken", mcp_servers=[{"name": "x"}])
    path = tmp_path / "agents.toml"
    path.write_text(
        '[[agents]]\nname = "helper"\n[[agents.mcp_servers]]\nname = "files"\n'
        'command = "files-server"\nargs = ["--root", "/data"]\n'
    )
    [declared] = AgentRegistry.from_file(path)
    assert declared.mcp_servers[0].args == ("--root", "/data")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"name": "x"}, "needs either 'command' or 'url'"),
        ({"name": "x", "command": "a", "url": "http://h/mcp"}, "needs either 'command' or 'url'"),
        ({"name": "x", "url": "http://h/mcp", "args": ["-v"]}, "args/env/cwd are for a command"),
        ({"name": "x", "command": "a", "headers": {"A": "b"}}, "headers are for a url"),
        ({"name": "no spaces", "command": "a"}, "must be 1-32 letters"),
    ],
)
def test_a_bad_server_declaration_says_what_is_wrong(fields: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        AgentSpec.model_validate({"name": "helper", "mcp_servers": [fields]})


def test_two_agents_declaring_one_server_name_differently_is_a_configuration_error() -> None:
    a = McpServer(name="files", command="one")
    check_declarations({"first": [a], "second": [McpServer(name="files", command="one")]})
    with pytest.raises(ConfigurationError, match="declared differently by agents 'first' and"):
        check_declarations({"first": [a], "second": [McpServer(name="files", command="two")]})


def test_servers_declared_without_the_mcp_package_say_to_install_the_extra(monkeypatch) -> None:
    monkeypatch.setattr(mcp_servers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigurationError, match=r"install .*agentq\[mcp\]"):
        check_declarations({"helper": [McpServer(name="files", command="x")]})
    check_declarations({"helper": []})  # no server, no package needed


def test_a_worker_without_mcp_servers_never_imports_the_mcp_package() -> None:
    code = (
        "import sys; from app.agents.loader import load_registry; from app.config import "
        "Settings; load_registry(Settings(_env_file=None)); print('mcp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_listed_tools_are_named_by_prefix_and_filtered() -> None:
    server = McpServer(name="calc", command="x", tools=("add", "bad name"))
    tools = listed_tools(server, [listed("add"), listed("sub"), listed("bad name")])
    assert list(tools) == ["calc__add"]  # sub not declared; 'calc__bad name' not a valid name
    add = tools["calc__add"]
    assert (add.server, add.remote_name) == ("calc", "add")
    schema = add.schema()
    assert (schema.name, schema.description, schema.parameters) == ("calc__add", "Adds.",
                                                                    ADD_SCHEMA)  # fmt: skip
    prefixed = listed_tools(McpServer(name="calc", command="x", prefix=""), [listed("add")])
    assert list(prefixed) == ["add"]


def test_arguments_are_checked_against_the_servers_schema() -> None:
    [add] = listed_tools(McpServer(name="calc", command="x"), [listed("add")]).values()
    assert add.validate({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(ToolArgumentsError) as caught:
        add.validate({"a": "one"})
    assert str(caught.value) == (
        "invalid arguments for tool 'calc__add': arguments: 'b' is a required property; "
        "a: 'one' is not of type 'integer'"
    )
    with pytest.raises(ToolArgumentsError, match="expected a JSON object"):
        add.validate("a=1")


def test_a_tool_whose_schema_is_invalid_is_called_unchecked() -> None:
    broken = {"type": "object", "properties": {"a": {"type": "no-such-type"}}}
    [tool] = listed_tools(McpServer(name="s", command="x"), [listed("t", broken)]).values()
    assert tool.validate({"a": 1}) == {"a": 1}


def test_results_are_structured_content_else_text_and_is_error_is_a_tool_error() -> None:
    def result(content: list, structured: object = None, is_error: bool = False) -> object:
        return SimpleNamespace(content=content, structured_content=structured, is_error=is_error)

    assert result_json("t", result([text("3")], {"result": 3})) == {"result": 3}
    image = SimpleNamespace(type="image")
    assert result_json("t", result([text("a"), image, text("b")])) == "a\n[image content]\nb"
    with pytest.raises(ToolError, match="tool 't' failed: city unknown"):
        result_json("t", result([text("city unknown")], is_error=True))
