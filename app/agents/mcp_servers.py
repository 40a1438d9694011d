"""MCP servers as an agent declares them (``mcp_servers`` of an agent type): a stdio command
or a streamable HTTP URL, credentials named by environment variable. Pure data, checked at
load; :mod:`app.agents.mcp` connects to them in a worker."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.errors import ConfigurationError

_SERVER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,31}$")
INSTALL_HINT = "install the MCP client with `pip install 'agentq[mcp]'`"


class McpServer(BaseModel):
    """An MCP server an agent takes tools from: ``command`` (stdio) or ``url`` (HTTP)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Server name; its tools are <prefix><tool>.")
    command: str | None = Field(default=None, description="Program serving MCP on stdio.")
    args: tuple[str, ...] = Field(default=(), description="Arguments of the command.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment of the command (not secrets)."
    )
    env_from_env: dict[str, str] = Field(
        default_factory=dict,
        description="Command environment variable -> the worker's variable holding its value "
        "(or <VAR>_FILE naming a file that does).",
    )
    cwd: str | None = Field(default=None, description="Working directory of the command.")
    url: str | None = Field(default=None, description="Streamable HTTP endpoint (…/mcp).")
    headers: dict[str, str] = Field(
        default_factory=dict, description="HTTP headers sent with every request (not secrets)."
    )
    headers_from_env: dict[str, str] = Field(
        default_factory=dict,
        description="HTTP header -> the worker's variable holding its value (or <VAR>_FILE).",
    )
    prefix: str | None = Field(
        default=None, description="Prefix of its tools' names (default '<name>__')."
    )
    tools: tuple[str, ...] | None = Field(
        default=None, description="Only these of its tools (default: every tool it lists)."
    )
    deadline_s: float | None = Field(
        default=None, gt=0, description="Deadline of one call (else limits.tool_timeout_s)."
    )
    connect_timeout_s: float = Field(
        default=30.0, gt=0, description="How long connecting and listing its tools may take."
    )

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if not _SERVER_NAME.match(self.name):
            raise ValueError(
                f"MCP server name {self.name!r} must be 1-32 letters, digits, '_' or '-'"
            )
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r} needs either 'command' or 'url'")
        if self.url is not None and (self.args or self.env or self.env_from_env or self.cwd):
            raise ValueError(f"MCP server {self.name!r}: args/env/cwd are for a command")
        if self.command is not None and (self.headers or self.headers_from_env):
            raise ValueError(f"MCP server {self.name!r}: headers are for a url")
        return self

    @property
    def tool_prefix(self) -> str:
        """What its tools' names start with."""
        return f"{self.name}__" if self.prefix is None else self.prefix


def check_declarations(servers_by_agent: Mapping[str, Iterable[McpServer]]) -> None:
    """:class:`ConfigurationError` when agents declare MCP servers and the ``mcp`` package is
    missing, or two agents declare one server name differently."""
    seen: dict[str, tuple[str, McpServer]] = {}
    for agent, servers in servers_by_agent.items():
        for server in servers:
            first = seen.setdefault(server.name, (agent, server))
            if first[1] != server:
                raise ConfigurationError(
                    f"MCP server {server.name!r} is declared differently by agents "
                    f"{first[0]!r} and {agent!r}; give one of them another name"
                )
    if seen and importlib.util.find_spec("mcp") is None:
        raise ConfigurationError(
            f"agent {next(iter(seen.values()))[0]!r} declares MCP servers but the mcp "
            f"package is not installed: {INSTALL_HINT}"
        )
