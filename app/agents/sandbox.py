"""Where tool calls run, each under a deadline, so that no tool call can freeze a worker.

Tool arguments come from the model, and through it from whoever wrote the input.

- An in-process tool runs in one of ``worker.tool_threads`` daemon threads. Python cannot
  stop a thread (nor interrupt C code that holds the GIL), so a call past its deadline is
  abandoned: the step gets a :class:`ToolTimeoutError`, ``agentq_tool_calls_abandoned_total``
  counts it, and the thread finishes on its own. A call waits for a free thread until its
  deadline, so at most ``tool_threads`` abandoned calls can be running and none queue up.
- A CPU-heavy tool (``@tool(..., cpu_heavy=True)``, the calculator) runs in one of
  ``worker.tool_processes`` subprocesses, ``python -m app.agents.sandbox``, started on first
  use (spawned, never forked from the threaded worker). Each child limits its own address
  space (RLIMIT_AS, ``limits.tool_memory_mb``) and, per call, its CPU time (RLIMIT_CPU: the
  deadline, a backstop should the worker die); the worker kills it at the deadline and
  starts another for the next call. Requests and replies cross as JSON lines on the child's
  stdin and stdout. The child's :class:`ToolContext` has no Redis client (``redis`` is None),
  and the tool's module is imported there by name, on the worker's ``sys.path`` (a module
  that ``AGENTQ_INCLUDE`` found in the worker's current directory is found there too).

A call's arguments are validated in the worker, before any thread or process is taken: bad
ones are a :class:`ToolArgumentsError` at once.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import queue
import resource
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import IO, TYPE_CHECKING, Any

from app.agents.tools import TOOLS, ToolContext, ToolSpec, run_tool, tool_spec
from app.constants import DEFAULT_TENANT
from app.errors import ToolError, ToolTimeoutError
from app.ops import metrics

if TYPE_CHECKING:  # a tool process needs no settings
    from app.agents.mcp import McpPool
    from app.agents.mcp_servers import McpServer
    from app.config import Settings
    from app.inference.chat import ToolSchema

START_TIMEOUT_S = 60.0
"""How long a new tool process may take to import and say it is ready."""
MAX_REPLY_BYTES = 64 * 1024 * 1024
"""Largest reply read from a tool process; a child sending more is killed."""


class ToolSandbox:
    """Calls tools by name under their deadlines (see the module docstring)."""

    def __init__(
        self, threads: int, processes: int, default_deadline_s: float, memory_mb: int
    ) -> None:
        self.default_deadline_s = default_deadline_s
        self.threads = ToolThreads(threads)
        self.processes = ToolProcessPool(processes, memory_mb)
        self.mcp: McpPool | None = None  # tools from MCP servers, set by the worker runtime

    @classmethod
    def from_settings(cls, settings: Settings) -> ToolSandbox:
        """A sandbox sized by ``settings.worker`` and limited by ``settings.limits``."""
        worker, limits = settings.worker, settings.limits
        return cls(
            worker.tool_threads, worker.tool_processes, limits.tool_timeout_s, limits.tool_memory_mb
        )

    def call(self, name: str, args: dict[str, Any], ctx: ToolContext) -> Any:
        """The tool's JSON result; :class:`ToolError` when it is unknown, fails or runs past
        its deadline (:class:`ToolArgumentsError` for arguments that do not fit its schema)."""
        if self.mcp is not None and name in self.mcp:
            return self.mcp.call(name, args, self.default_deadline_s)
        spec = tool_spec(name)
        values = spec.validate(args)
        deadline_s = spec.deadline_s or self.default_deadline_s
        if spec.cpu_heavy:  # the child validates again: coerced values may not be JSON
            return self.processes.call(spec, args, ctx, deadline_s)
        return self.threads.call(spec.name, lambda: spec.invoke(values, ctx), deadline_s)

    def is_mcp(self, name: str) -> bool:
        """Whether ``name`` is a tool of an MCP server (whose results are not cached)."""
        return self.mcp is not None and name in self.mcp

    def mcp_schemas(self, servers: tuple[McpServer, ...]) -> tuple[ToolSchema, ...]:
        """The tools listed by ``servers`` (an agent's MCP servers), as the model is told."""
        if self.mcp is None or not servers:
            return ()
        return tuple(t.schema() for t in self.mcp.tools_of(servers))

    def close(self) -> None:
        """Stop the tool processes and MCP servers (abandoned threads are daemons: they end
        with the process)."""
        self.processes.close()
        if self.mcp is not None:
            self.mcp.close()


class ToolThreads:
    """A fixed set of daemon threads for in-process tool calls, started on first use."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = threading.BoundedSemaphore(size)
        self._work: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()

    def call(self, name: str, fn: Callable[[], Any], deadline_s: float) -> Any:
        """``fn()`` in a tool thread; :class:`ToolTimeoutError` when it is not done in time."""
        deadline = time.monotonic() + deadline_s
        if not self._free.acquire(timeout=deadline_s):
            metrics.tool_abandoned(name)
            raise ToolTimeoutError(
                f"tool {name!r} did not start within its {deadline_s:g} s deadline: all "
                f"{self.size} tool threads are busy"
            )
        self._start()
        future: Future[Any] = Future()
        self._work.put((fn, future))
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            metrics.tool_abandoned(name)
            raise ToolTimeoutError(
                f"tool {name!r} ran past its {deadline_s:g} s deadline and was abandoned"
            ) from None

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for i in range(self.size):
                name = f"agentq-tool-{i}"
                threading.Thread(target=self._serve, name=name, daemon=True).start()
            self._started = True

    def _serve(self) -> None:
        while True:
            fn, future = self._work.get()
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, who may have left
                future.set_exception(exc)
            finally:
                self._free.release()


class ToolProcessPool:
    """Up to ``size`` tool processes, started on first use; one killed is replaced."""

    def __init__(self, size: int, memory_mb: int) -> None:
        self.size = size
        self.memory_bytes = memory_mb * 1024 * 1024
        self._free = threading.BoundedSemaphore(size)
        self._idle: list[ToolProcess] = []
        self._live: set[ToolProcess] = set()
        self._lock = threading.Lock()
        self._closed = False

    def call(
        self, spec: ToolSpec, args: dict[str, Any], ctx: ToolContext, deadline_s: float
    ) -> Any:
        """Run ``spec`` in a tool process; killed (:class:`ToolTimeoutError`) at the deadline."""
        if not self._free.acquire(timeout=deadline_s):
            metrics.tool_abandoned(spec.name)
            raise ToolTimeoutError(
                f"tool {spec.name!r} did not start within its {deadline_s:g} s deadline: all "
                f"{self.size} tool processes are busy"
            )
        try:
            child = self._take()
            request = {
                "tool": spec.name,
                "module": spec.fn.__module__,
                "args": args,
                "run_id": ctx.run_id,
                "step": ctx.step,
                "agent": ctx.agent,
                "call_id": ctx.call_id,
                "tenant": ctx.tenant,
                "session_id": ctx.session_id,
                "cpu_s": deadline_s,
            }
            try:
                child.send(request)
                reply = child.receive(deadline_s)
            except TimeoutError:
                self._discard(child)
                metrics.tool_abandoned(spec.name)
                raise ToolTimeoutError(
                    f"tool {spec.name!r} ran past its {deadline_s:g} s deadline; its process "
                    "was killed"
                ) from None
            except (OSError, EOFError, ValueError) as exc:
                code = self._discard(child)
                raise ToolError(
                    f"tool {spec.name!r} failed: its process ended ({_exit_reason(code)}; "
                    f"CPU or memory limit?): {type(exc).__name__}"
                ) from exc
            self._give_back(child)
        finally:
            self._free.release()
        if "error" in reply:
            raise ToolError(str(reply["error"]))
        return reply.get("result")

    def pids(self) -> list[int]:
        """The process ids of the running tool processes."""
        with self._lock:
            return sorted(child.pid for child in self._live)

    def close(self) -> None:
        """Stop every tool process (a busy one is killed) and start no more."""
        with self._lock:
            self._closed = True
            children, self._idle = list(self._live), []
            self._live.clear()
        for child in children:
            child.stop()

    def _take(self) -> ToolProcess:
        with self._lock:
            if self._closed:
                raise ToolError("the worker is shutting down: no tool process is available")
            if self._idle:
                return self._idle.pop()
        child = ToolProcess.start(self.memory_bytes)
        with self._lock:
            self._live.add(child)
        return child

    def _give_back(self, child: ToolProcess) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(child)
                return
        child.stop()

    def _discard(self, child: ToolProcess) -> int | None:
        """Kill ``child`` and forget it; its exit status."""
        with self._lock:
            self._live.discard(child)
        return child.kill()


class ToolProcess:
    """One child running ``python -m app.agents.sandbox``, spoken to in JSON lines."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._buffer = b""
        assert proc.stdin is not None and proc.stdout is not None
        self._stdin: IO[bytes] = proc.stdin
        self._stdout: IO[bytes] = proc.stdout

    @classmethod
    def start(cls, memory_bytes: int) -> ToolProcess:
        """A ready tool process (imports done, memory limit set); :class:`ToolError` if not."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.agents.sandbox"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C meant for the worker is the worker's to handle
        )
        child = cls(proc)
        try:
            child.send({"path": import_path(), "memory_bytes": memory_bytes})
            child.receive(START_TIMEOUT_S)
        except (OSError, EOFError, ValueError, TimeoutError) as exc:
            code = child.kill()
            raise ToolError(
                f"a tool process could not start ({_exit_reason(code)}): {type(exc).__name__}"
            ) from exc
        return child

    def send(self, message: dict[str, Any]) -> None:
        """Write one request."""
        self._stdin.write(json.dumps(message).encode() + b"\n")
        self._stdin.flush()

    def receive(self, timeout_s: float) -> dict[str, Any]:
        """Read one reply: TimeoutError when none comes in time, EOFError when the child ended."""
        deadline = time.monotonic() + timeout_s
        fd = self._stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError
            self._buffer += chunk
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise ValueError(f"reply larger than {MAX_REPLY_BYTES} bytes")
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise ValueError("reply is not a JSON object")
        return reply

    def kill(self) -> int | None:
        """Kill the child by its PID and reap it; its exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self._close_pipes()
        return code

    def stop(self) -> None:
        """Ask the child to exit (end of its input); kill it if it does not in 2 s."""
        try:
            self._stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def _close_pipes(self) -> None:
        for pipe in (self._stdin, self._stdout):
            with contextlib.suppress(OSError):
                pipe.close()


def import_path() -> list[str]:
    """This process's ``sys.path`` for a child, its current directory ('') made absolute."""
    return list(dict.fromkeys(os.path.abspath(p) if p else os.getcwd() for p in sys.path))


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def serve(stdin: IO[bytes], out: IO[bytes]) -> None:
    """The child's loop: one setup line, then one reply per request line until end of input."""
    setup = json.loads(stdin.readline())
    sys.path[:] = list(dict.fromkeys([*sys.path, *setup["path"]]))
    memory = int(setup["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    _reply(out, {"ready": True})
    for line in stdin:
        request = json.loads(line)
        _limit_cpu(float(request["cpu_s"]))
        _reply(out, _answer(request))


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    name = request["tool"]
    ctx = ToolContext(
        request["run_id"], request["step"], request["agent"], None, request.get("call_id", ""),
        request.get("tenant", DEFAULT_TENANT), request.get("session_id"),
    )  # fmt: skip
    try:
        if name not in TOOLS:  # registered in a module the worker imported, not yet here
            importlib.import_module(request["module"])
        return {"result": run_tool(name, request["args"], ctx)}
    except ToolError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # an import that fails, MemoryError: an error for the model
        return {"error": f"tool {name!r} failed: {type(exc).__name__}: {exc}"}


def _limit_cpu(seconds: float) -> None:
    """Let this call use ``seconds`` more CPU time (plus one): SIGXCPU ends the child after."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _reply(out: IO[bytes], message: dict[str, Any]) -> None:
    try:
        data = json.dumps(message).encode()
    except (TypeError, ValueError, MemoryError) as exc:
        data = json.dumps({"error": f"tool result not sent: {type(exc).__name__}"}).encode()
    out.write(data + b"\n")
    out.flush()


def main() -> None:
    """Entry point of a tool process: replies go to the original stdout, prints to stderr."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a tool's print() must not end up among the replies
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
