"""Tools from MCP servers: the per-worker :class:`McpPool` of client sessions that calls the
servers agents declare (:class:`app.agents.mcp_servers.McpServer`).

An agent names its servers under ``mcp_servers``: a stdio command (started by the worker,
stopped with it) or a streamable HTTP URL, with credentials read from the worker's
environment (``env_from_env``, ``headers_from_env``: a variable, or the file named by the
variable plus ``_FILE``), never written in the declaration. Each tool a server lists joins
the agent's allowlist as ``<prefix><tool>``, the prefix being ``<server>__`` unless declared
(a name the OpenAI rule ``^[a-zA-Z0-9_-]{1,64}$`` refuses is left out, with a warning).

One background thread runs an asyncio loop holding one session per server, opened when the
worker starts (``initialize`` and ``tools/list``). A call's arguments are checked against the
server's input schema first; the call then waits at most its deadline. A server unreachable
at start is named by ``/readyz`` and tried again by each readiness check; a server lost
mid-run is a tool error for the model, and the next call to it reconnects. The ``mcp`` package
(``agentq[mcp]``) is imported only here, only when some agent declares a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.agents.mcp_servers import McpServer
from app.config import secret_value
from app.errors import ToolArgumentsError, ToolError, ToolTimeoutError
from app.inference.chat import ToolSchema
from app.ops import metrics

if TYPE_CHECKING:
    from mcp import ClientSession

log = logging.getLogger(__name__)

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # what OpenAI-compatible servers accept
_ERRORS_SHOWN = 5  # argument errors quoted back to the model
_CLOSE_TIMEOUT_S = 10.0  # for every server to stop at worker shutdown


@dataclass(frozen=True, slots=True)
class McpTool:
    """One tool of a server, as agents call it (``name``) and as the server knows it."""

    name: str
    server: str
    remote_name: str
    description: str
    parameters: dict[str, Any]
    validator: Any  # a jsonschema validator of ``parameters``, or None when it is no schema

    def schema(self) -> ToolSchema:
        """The tool as the model is told of it."""
        return ToolSchema(self.name, self.description, self.parameters)

    def validate(self, args: object) -> dict[str, Any]:
        """``args`` when they fit the server's input schema; :class:`ToolArgumentsError`
        worded for the model otherwise."""
        if not isinstance(args, dict):
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: expected a JSON object"
            )
        if self.validator is not None:
            errors = sorted(self.validator.iter_errors(args), key=lambda e: list(e.path))
            if errors:
                problems = [
                    f"{'.'.join(map(str, e.path)) or 'arguments'}: {e.message}"
                    for e in errors[:_ERRORS_SHOWN]
                ]
                if len(errors) > _ERRORS_SHOWN:
                    problems.append(f"and {len(errors) - _ERRORS_SHOWN} more")
                raise ToolArgumentsError(
                    f"invalid arguments for tool {self.name!r}: {'; '.join(problems)}"
                )
        return args


def listed_tools(server: McpServer, listed: Iterable[Any]) -> dict[str, McpTool]:
    """The tools of ``server`` agents may call, from its ``tools/list`` answer, by name."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    tools: dict[str, McpTool] = {}
    for item in listed:
        if server.tools is not None and item.name not in server.tools:
            continue
        name = server.tool_prefix + item.name
        if not _TOOL_NAME.match(name):
            log.warning("MCP tool %r of server %r left out: name %r not allowed", item.name,
                        server.name, name)  # fmt: skip
            continue
        schema = dict(item.input_schema)
        try:
            cls = validator_for(schema)
            cls.check_schema(schema)
            validator = cls(schema)
        except SchemaError as exc:
            log.warning("MCP tool %r: input schema not checked (%s)", name, exc.message)
            validator = None
        description = item.description or item.title or item.name
        tools[name] = McpTool(name, server.name, item.name, description, schema, validator)
    return tools


def result_json(tool: str, result: Any) -> Any:
    """A ``tools/call`` result as JSON: its structured content, else its text contents joined;
    :class:`ToolError` when the server says the call failed (``isError``)."""
    texts = [
        block.text if getattr(block, "type", None) == "text" else f"[{block.type} content]"
        for block in result.content
    ]
    if result.is_error:
        raise ToolError(f"tool {tool!r} failed: {' '.join(texts) or 'the server gave no reason'}")
    if result.structured_content is not None:
        return result.structured_content
    return "\n".join(texts)


class _Connection:
    """One server's session, held open by a task on the pool's loop."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self.session: ClientSession | None = None
        self.tools: dict[str, McpTool] = {}
        self.error: str | None = "not connected yet"
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Open the session unless it is open; ``error`` says why when it could not be."""
        async with self._lock:
            if self.session is not None:
                return
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._hold(ready))
            await asyncio.shield(ready)  # a caller past its deadline leaves it connecting
            if self.error is not None:
                log.warning("MCP server %r unreachable: %s", self.server.name, self.error)

    async def _hold(self, ready: asyncio.Future[None]) -> None:
        import anyio
        from mcp import ClientSession

        timeout = self.server.connect_timeout_s
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(read, write))
                with anyio.fail_after(timeout):  # anyio's own scope: the SDK's tasks are anyio's
                    await session.initialize()
                    listed = await _list_all(session)
                self.tools = listed_tools(self.server, listed)
                self.session, self.error = session, None
                ready.set_result(None)
                await self._stop.wait()
        except Exception as exc:  # whatever the transport raises: the server's state
            timed_out = isinstance(_leaf(exc), TimeoutError)
            self.error = f"no answer within {timeout:g} s" if timed_out else _reason(exc)
        finally:
            self.session = None
            if not ready.done():
                ready.set_result(None)

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        server = self.server
        if server.command is not None:
            from mcp import StdioServerParameters, stdio_client

            env = {**server.env, **{k: secret_value(v) for k, v in server.env_from_env.items()}}
            params = StdioServerParameters(
                command=server.command, args=list(server.args), env=env, cwd=server.cwd
            )
            # The process's own stderr: a Celery task's sys.stderr is a proxy with no fileno.
            return stdio_client(params, errlog=sys.__stderr__ or sys.stderr)
        return _http_transport(server)

    async def call(self, tool: McpTool, args: dict[str, Any]) -> Any:
        """Call ``tool`` (reconnecting first if the session was lost): its JSON result."""
        from mcp import MCPError
        from mcp_types import CONNECTION_CLOSED

        await self.connect()
        session = self.session
        if session is None:
            raise ToolError(f"MCP server {self.server.name!r} is unreachable: {self.error}")
        try:
            result = await session.call_tool(tool.remote_name, args)
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:
                raise ToolError(f"tool {tool.name!r} failed: {exc.message}") from None
            lost = exc.message
        except Exception as exc:  # the transport failed under the call
            lost = _reason(exc)
        else:
            return result_json(tool.name, result)
        self.error = f"connection lost: {lost}"
        await self._drop()
        raise ToolError(
            f"tool {tool.name!r} failed: MCP server {self.server.name!r} was lost ({lost}); "
            "it is reconnected on the next call"
        )

    async def _drop(self) -> None:
        """Close the session (a stdio server process is stopped); one still connecting, or
        not closed within its connect timeout (a server that stopped answering), is cancelled."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=self.server.connect_timeout_s)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT_S)
        self.session = None


class McpPool:
    """The MCP sessions of one worker process (see the module docstring)."""

    def __init__(self, servers: Iterable[McpServer]) -> None:
        self.servers = {server.name: server for server in servers}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="agentq-mcp", daemon=True
        )
        self._connections: dict[str, _Connection] = {}
        self._tools: dict[str, McpTool] = {}

    @classmethod
    def start(cls, servers: Iterable[McpServer]) -> McpPool:
        """A pool connected to every server it could reach (the others are retried later)."""
        pool = cls(servers)
        pool._thread.start()
        longest = max((s.connect_timeout_s for s in pool.servers.values()), default=0.0)
        pool._run(pool._open(), longest + _CLOSE_TIMEOUT_S)
        return pool

    async def _open(self) -> None:
        self._connections = {name: _Connection(s) for name, s in self.servers.items()}
        await asyncio.gather(*(c.connect() for c in self._connections.values()))
        self._index()

    def _index(self) -> None:
        self._tools = {n: t for c in self._connections.values() for n, t in c.tools.items()}

    def tools_of(self, servers: Iterable[McpServer]) -> tuple[McpTool, ...]:
        """The listed tools of ``servers`` (an agent's), in listing order."""
        names = {server.name for server in servers}
        return tuple(t for t in self._tools.values() if t.server in names)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def call(self, name: str, args: object, default_deadline_s: float) -> Any:
        """Call tool ``name`` within its server's deadline (else ``default_deadline_s``): its
        JSON result; :class:`ToolArgumentsError`, :class:`ToolTimeoutError` or
        :class:`ToolError` for the model otherwise."""
        tool = self._tools.get(name)
        if tool is None:
            raise ToolError(f"unknown tool {name!r}")
        values = tool.validate(args)
        connection = self._connections[tool.server]
        deadline_s = connection.server.deadline_s or default_deadline_s
        future = asyncio.run_coroutine_threadsafe(connection.call(tool, values), self._loop)
        try:
            result = future.result(timeout=deadline_s)
        except TimeoutError:
            future.cancel()
            metrics.tool_abandoned(name)
            raise ToolTimeoutError(
                f"tool {name!r} ran past its {deadline_s:g} s deadline and was cancelled"
            ) from None
        self._loop.call_soon_threadsafe(self._index)  # a reconnection may list other tools
        return result

    def unreachable(self) -> dict[str, str]:
        """Server -> why it is not connected, for ``/readyz``; each is tried again now, in
        the background."""
        down = {
            name: c.error or "not connected"
            for name, c in self._connections.items()
            if c.session is None
        }
        for name in down:
            asyncio.run_coroutine_threadsafe(self._reconnect(name), self._loop)
        return down

    async def _reconnect(self, name: str) -> None:
        await self._connections[name].connect()
        self._index()

    def close(self) -> None:
        """Close every session (stdio server processes are stopped) and the loop."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._run(self._close_all(), _CLOSE_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CLOSE_TIMEOUT_S)

    async def _close_all(self) -> None:
        await asyncio.gather(*(c._drop() for c in self._connections.values()))

    def _run(self, coroutine: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)


@contextlib.asynccontextmanager
async def _http_transport(server: McpServer) -> Any:
    """The streamable HTTP transport to ``server.url``, with its headers (secrets resolved)."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    assert server.url is not None
    headers = {**server.headers, **{h: secret_value(v) for h, v in server.headers_from_env.items()}}
    timeout = httpx2.Timeout(server.connect_timeout_s, read=300.0)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as client,
        streamable_http_client(server.url, http_client=client) as streams,
    ):
        yield streams


async def _list_all(session: ClientSession) -> list[Any]:
    """Every tool the server lists, page after page."""
    from mcp_types import PaginatedRequestParams

    listed = await session.list_tools()
    tools = list(listed.tools)
    while listed.next_cursor is not None:
        listed = await session.list_tools(params=PaginatedRequestParams(cursor=listed.next_cursor))
        tools += listed.tools
    return tools


def _leaf(exc: BaseException) -> BaseException:
    """The first exception of a (nested) exception group, or ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _reason(exc: BaseException) -> str:
    """The first leaf of an exception (group), in one line."""
    exc = _leaf(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
