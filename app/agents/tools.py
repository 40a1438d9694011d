"""Tools an agent may call, registered by name. Each takes a :class:`ToolContext` and JSON args.

Register your own with :func:`tool`::

    @tool("shout")
    def shout(ctx: ToolContext, text: str) -> str:
        return text.upper()
"""

from __future__ import annotations

import ast
import inspect
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.constants import EFFECT_TTL_S, effect_key, kv_key
from app.errors import ToolError
from app.ops.redis_scripts import Script


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may use: the run it serves and the shared Redis client."""

    run_id: str
    step: int
    agent: str
    redis: Any


ToolFn = Callable[..., Any]
TOOLS: dict[str, ToolFn] = {}


def tool(name: str) -> Callable[[ToolFn], ToolFn]:
    """Register ``fn`` as the tool ``name``."""

    def register(fn: ToolFn) -> ToolFn:
        TOOLS[name] = fn
        return fn

    return register


def run_tool(name: str, args: dict[str, Any], ctx: ToolContext) -> Any:
    """Call tool ``name``; bad arguments or a failure raise :class:`ToolError`."""
    fn = TOOLS.get(name)
    if fn is None:
        raise ToolError(f"unknown tool {name!r}")
    try:
        inspect.signature(fn).bind(ctx, **args)
    except TypeError as exc:
        raise ToolError(f"bad arguments for tool {name!r}: {exc}") from exc
    try:
        result = fn(ctx, **args)
    except ToolError:
        raise
    except Exception as exc:  # a tool's own failure becomes the step's result, not a crash
        raise ToolError(f"tool {name!r} failed: {type(exc).__name__}: {exc}") from exc
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise ToolError(f"tool {name!r} returned a non-JSON value: {exc}") from exc
    return result


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        if isinstance(node.value, bool):
            raise ToolError("booleans are not numbers here")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ToolError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    raise ToolError(f"unsupported expression element: {ast.dump(node)[:60]}")


@tool("calculator")
def calculator(ctx: ToolContext, expression: str) -> float | int:
    """Evaluate an arithmetic expression (+ - * / // % ** and parentheses)."""
    if len(expression) > 200:
        raise ToolError("expression longer than 200 characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from exc
    try:
        return _evaluate(tree)
    except ZeroDivisionError as exc:
        raise ToolError("division by zero") from exc


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
