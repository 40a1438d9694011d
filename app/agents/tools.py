"""Tools an agent may call, registered by name. Each takes a :class:`ToolContext` and JSON args.

Register your own with :func:`tool`::

    @tool("shout")
    def shout(ctx: ToolContext, text: str) -> str:
        return text.upper()

    @tool("factor", cpu_heavy=True, deadline_s=5)  # runs in a subprocess, killed at 5 s
    def factor(ctx: ToolContext, n: int) -> list[int]: ...
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.agents.calculator import evaluate
from app.constants import EFFECT_TTL_S, effect_key, kv_key
from app.errors import ToolError
from app.ops.redis_scripts import Script


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may use: the run it serves and the shared Redis client.

    A CPU-heavy tool runs in another process (:mod:`app.agents.sandbox`), where ``redis``
    is None: a client cannot cross a process boundary.
    """

    run_id: str
    step: int
    agent: str
    redis: Any


ToolFn = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A registered tool: its function, its deadline and where it runs."""

    name: str
    fn: ToolFn
    deadline_s: float | None = None  # None: the default, ``limits.tool_timeout_s``
    cpu_heavy: bool = False  # run in a subprocess with CPU and memory limits


TOOLS: dict[str, ToolSpec] = {}


def tool(
    name: str, *, deadline_s: float | None = None, cpu_heavy: bool = False
) -> Callable[[ToolFn], ToolFn]:
    """Register ``fn`` as the tool ``name``.

    ``deadline_s`` bounds one call (default ``AGENTQ_LIMITS__TOOL_TIMEOUT_S``); a
    ``cpu_heavy`` tool runs in a subprocess that is killed at its deadline, and its
    module must be importable there (see :mod:`app.agents.sandbox`).
    """
    if deadline_s is not None and deadline_s <= 0:
        raise ValueError(f"tool {name!r}: deadline_s must be positive, not {deadline_s}")

    def register(fn: ToolFn) -> ToolFn:
        TOOLS[name] = ToolSpec(name, fn, deadline_s, cpu_heavy)
        return fn

    return register


def tool_spec(name: str, args: dict[str, Any]) -> ToolSpec:
    """The tool ``name``, once ``args`` fit its signature; :class:`ToolError` if not."""
    spec = TOOLS.get(name)
    if spec is None:
        raise ToolError(f"unknown tool {name!r}")
    if not isinstance(args, dict):
        raise ToolError(f"arguments for tool {name!r} must be a JSON object")
    try:
        inspect.signature(spec.fn).bind(None, **args)
    except TypeError as exc:
        raise ToolError(f"bad arguments for tool {name!r}: {exc}") from exc
    return spec


def run_tool(name: str, args: dict[str, Any], ctx: ToolContext) -> Any:
    """Call tool ``name`` here and now (no deadline: :class:`app.agents.sandbox.ToolSandbox`
    adds it); bad arguments or a failure raise :class:`ToolError`."""
    spec = tool_spec(name, args)
    try:
        result = spec.fn(ctx, **args)
    except ToolError:
        raise
    except Exception as exc:  # a tool's own failure becomes the step's result, not a crash
        raise ToolError(f"tool {name!r} failed: {type(exc).__name__}: {exc}") from exc
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise ToolError(f"tool {name!r} returned a non-JSON value: {exc}") from exc
    return result


def bounded(result: Any, max_bytes: int) -> Any:
    """``result``, or when its JSON text is longer than ``max_bytes``, an error for the model
    with the text cut to ``max_bytes`` and a marker saying how much was kept."""
    text = json.dumps(result)
    size = len(text.encode())
    if size <= max_bytes:
        return result
    kept = text.encode()[:max_bytes].decode(errors="ignore")
    marker = f"[truncated: {len(kept.encode())} of {size} bytes]"
    return {"error": f"tool result too large {marker}", "truncated": f"{kept} {marker}"}


@tool("calculator", cpu_heavy=True)
def calculator(ctx: ToolContext, expression: str) -> float | int:
    """Evaluate an arithmetic expression (+ - * / // % ** and parentheses), each operation's
    result bounded (:mod:`app.agents.calculator`)."""
    return evaluate(str(expression))


@tool("kv_get")
def kv_get(ctx: ToolContext, key: str) -> str | None:
    """Read a value from the shared key-value store (Redis); None when absent."""
    value = ctx.redis.get(kv_key(key))
    return value.decode() if isinstance(value, bytes) else value


@tool("kv_set")
def kv_set(ctx: ToolContext, key: str, value: str) -> str:
    """Write a value to the shared key-value store (Redis)."""
    ctx.redis.set(kv_key(key), str(value))
    return "ok"


# Increment once per (run, step): a step re-run after a crash returns the first result.
INCR_ONCE = Script("app.agents", "lua/incr_once.lua")


@tool("counter_incr")
def counter_incr(ctx: ToolContext, key: str) -> int:
    """Add one to a counter in the key-value store and return it (a tool with a side effect).

    Exactly once per step: the increment and its record are one atomic Redis script.
    """
    keys = [kv_key(key), effect_key(ctx.run_id, ctx.step, f"incr:{key}")]
    return int(INCR_ONCE(ctx.redis, keys, [EFFECT_TTL_S]))


@tool("word_count")
def word_count(ctx: ToolContext, text: str) -> int:
    """Count whitespace-separated words."""
    return len(str(text).split())
