"""Tools an agent may call: typed functions registered by name, with the flags later layers
act on. Declare your own with :func:`tool`::

    @tool(deadline_s=10)
    def forecast(city: str, days: int = 3) -> dict[str, Any]:
        ...  # its docstring: a first paragraph (what it does), then an ``Args:`` section

The signature and docstring give the arguments' JSON Schema (:mod:`app.agents.signatures`);
a model's arguments are checked against it before the call, and bad ones come back to the
model as a :class:`ToolArgumentsError` it can correct. A first parameter ``ctx`` (or annotated
:class:`ToolContext`) receives the call's context.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import redis
from pydantic import BaseModel, ValidationError

from app.agents.calculator import evaluate
from app.agents.signatures import qualified_name, read_signature
from app.agents.waits import Delegate, Sleep, WaitForSignal
from app.agents.waits import to_json as wait_json
from app.constants import DEFAULT_TENANT, EFFECT_TTL_S, effect_key, kv_key
from app.errors import ConfigurationError, ToolArgumentsError, ToolError
from app.inference.chat import ToolSchema
from app.ops.redis_scripts import Script

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI-compatible servers accept
_ERRORS_SHOWN = 5  # of a call's argument errors; the model fixes them one round at a time
_INPUT_SHOWN = 60  # characters of a bad value quoted back to the model


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may use: the run and call it serves and the shared Redis client.

    A CPU-heavy tool runs in another process (:mod:`app.agents.sandbox`), where ``redis``
    is None: a client cannot cross a process boundary.
    """

    run_id: str
    step: int
    agent: str
    redis: Any
    call_id: str = ""  # the id of the call within its step (several calls in one step)
    tenant: str = DEFAULT_TENANT  # whose run: a tool keeps and reads that tenant's data only
    session_id: str | None = None
    memory: Any = None  # the worker's long-term memory (app.memory.long_term.LazyMemory)

    # Waits a tool of your own returns to park its run (app.agents.waits): the call's result
    # is filled in when the wait ends.
    @staticmethod
    def delegate(tasks: Any, **options: Any) -> Any:
        """Sub-agent runs: ``tasks`` are :class:`~app.agents.waits.Task` or (agent, input)
        pairs; ``options`` as :class:`~app.agents.waits.Delegate`'s."""
        from app.agents.waits import Delegate, Task

        made = tuple(t if isinstance(t, Task) else Task(*t) for t in tasks)
        return Delegate(made, **options)

    @staticmethod
    def wait_for_signal(name: str, **options: Any) -> Any:
        """Wait for the signal ``name`` (``options``: as
        :class:`~app.agents.waits.WaitForSignal`'s)."""
        from app.agents.waits import WaitForSignal

        return WaitForSignal(name, **options)

    @staticmethod
    def sleep(seconds: float) -> Any:
        """Wait ``seconds`` (a durable timer)."""
        from app.agents.waits import Sleep

        return Sleep(seconds)


ToolFn = Callable[..., Any]
F = TypeVar("F", bound=ToolFn)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A registered tool: its function, its arguments, its deadline and what it may be
    trusted with (the flags)."""

    name: str
    fn: ToolFn
    description: str  # what the model is told it does
    parameters: dict[str, Any]  # JSON Schema of its arguments
    arguments: type[BaseModel]  # the same, as the model that validates them
    takes_context: bool = True
    deadline_s: float | None = None  # None: the default, ``limits.tool_timeout_s``
    cpu_heavy: bool = False  # run in a subprocess with CPU and memory limits
    deterministic: bool = False  # same arguments, same result: results may be cached
    side_effects: bool = False  # changes the world: shadow runs call it in dry-run mode
    version: str = "1"  # bump when results change meaning (cached results are per version)
    cache_ttl_s: int | None = None  # how long its cached results live (None: cache.tool_ttl_s)

    def schema(self) -> ToolSchema:
        """The tool as the model is told of it."""
        return ToolSchema(self.name, self.description, self.parameters)

    def validate(self, args: object) -> dict[str, Any]:
        """The model's ``args``, checked and coerced (defaults filled in);
        :class:`ToolArgumentsError`, worded for the model, when they do not fit."""
        if not isinstance(args, dict):
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: expected a JSON object "
                f"(got {_shown(args)})"
            )
        try:
            return dict(self.arguments.model_validate(args))
        except ValidationError as exc:
            problems = _problems(exc, list(self.arguments.model_fields))
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: {problems}"
            ) from None

    def invoke(self, values: dict[str, Any], ctx: ToolContext) -> Any:
        """Call the function with validated ``values``: its JSON result (a pydantic model is
        dumped); :class:`ToolError` when it fails or returns something that is not JSON."""
        try:
            result = self.fn(ctx, **values) if self.takes_context else self.fn(**values)
        except (ToolError, redis.ConnectionError, redis.TimeoutError):
            # Redis unreachable (the worker's own, ``ctx.redis``) is an outage, not the tool's
            # answer: the step is retried later, as every step is while Redis is down.
            raise
        except Exception as exc:  # a tool's own failure becomes the call's result, not a crash
            raise ToolError(f"tool {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        elif isinstance(result, WAITS):
            result = wait_json(result)
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            raise ToolError(f"tool {self.name!r} returned a non-JSON value: {exc}") from exc
        return result


TOOLS: dict[str, ToolSpec] = {}
WAITS = (Delegate, WaitForSignal, Sleep)


@overload
def tool(fn: F, /) -> F: ...


@overload
def tool(
    name: str | None = None,
    /,
    *,
    deadline_s: float | None = None,
    cpu_heavy: bool = False,
    deterministic: bool = False,
    side_effects: bool = False,
    version: str = "1",
    description: str | None = None,
    cache_ttl_s: int | None = None,
) -> Callable[[F], F]: ...


def tool(
    name: str | ToolFn | None = None,
    /,
    *,
    deadline_s: float | None = None,
    cpu_heavy: bool = False,
    deterministic: bool = False,
    side_effects: bool = False,
    version: str = "1",
    description: str | None = None,
    cache_ttl_s: int | None = None,
) -> Any:
    """Register a function as a tool: ``@tool`` (named after the function) or
    ``@tool("name", ...)``; the function is returned unchanged.

    ``deadline_s`` bounds one call (default ``AGENTQ_LIMITS__TOOL_TIMEOUT_S``); a ``cpu_heavy``
    tool runs in a subprocess killed at its deadline, so its module must be importable there
    (see :mod:`app.agents.sandbox`). ``deterministic``: its results may be cached across runs;
    ``side_effects``: shadow runs call it in dry-run mode; ``version`` names its behaviour
    (change it when results change; cached results are per version); ``cache_ttl_s``: how long
    a deterministic tool's cached results live (default ``AGENTQ_CACHE__TOOL_TTL_S``; see
    :mod:`app.memory.tool_cache`). ``description`` replaces the docstring's first paragraph.
    A bad declaration, or another function under a taken name, is a
    :class:`ConfigurationError`.
    """
    if callable(name):
        return tool()(name)
    if deadline_s is not None and deadline_s <= 0:
        raise ConfigurationError(f"tool {name!r}: deadline_s must be positive, not {deadline_s}")
    if cache_ttl_s is not None and cache_ttl_s <= 0:
        raise ConfigurationError(
            f"tool {name!r}: cache_ttl_s must be a positive number of seconds, not {cache_ttl_s}"
        )

    def register(fn: F) -> F:
        named = name or fn.__name__
        if not _NAME.match(named):
            raise ConfigurationError(f"tool name {named!r} must be 1-64 letters, digits, _ or -")
        known = TOOLS.get(named)
        # The same function again (its module imported twice) replaces itself; another is refused.
        if known is not None and qualified_name(known.fn) != qualified_name(fn):
            raise ConfigurationError(
                f"tool {named!r} is registered twice: by {qualified_name(known.fn)} and by "
                f"{qualified_name(fn)}; give one of them another name"
            )
        signature = read_signature(named, fn, ToolContext, description)
        TOOLS[named] = ToolSpec(
            name=named,
            fn=fn,
            description=signature.description,
            parameters=signature.parameters,
            arguments=signature.arguments,
            takes_context=signature.takes_context,
            deadline_s=deadline_s,
            cpu_heavy=cpu_heavy,
            deterministic=deterministic,
            side_effects=side_effects,
            version=version,
            cache_ttl_s=cache_ttl_s,
        )
        return fn

    return register


def tool_spec(name: str) -> ToolSpec:
    """The tool registered as ``name``; :class:`ToolError` when there is none."""
    spec = TOOLS.get(name)
    if spec is None:
        raise ToolError(f"unknown tool {name!r}")
    return spec


def tool_name(fn: ToolFn) -> str:
    """The name ``fn`` is registered under; :class:`ConfigurationError` if it is no tool."""
    for spec in TOOLS.values():
        if spec.fn is fn:
            return spec.name
    raise ConfigurationError(
        f"{qualified_name(fn)} is not a registered tool: decorate it with @tool"
    )


def run_tool(name: str, args: dict[str, Any], ctx: ToolContext) -> Any:
    """Call tool ``name`` here and now (no deadline: :class:`app.agents.sandbox.ToolSandbox`
    adds it): :class:`ToolArgumentsError` for bad arguments, :class:`ToolError` for a failure."""
    spec = tool_spec(name)
    return spec.invoke(spec.validate(args), ctx)


def _problems(exc: ValidationError, fields: list[str]) -> str:
    """A validation error as the model should read it: ``where: what (got value)``."""
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors[:_ERRORS_SHOWN]:
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        if error["type"] == "missing":
            parts.append(f"{where}: required argument missing")
        elif error["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown argument (known: {', '.join(fields) or 'none'})")
        else:
            parts.append(f"{where}: {error['msg']} (got {_shown(error['input'])})")
    if len(errors) > _ERRORS_SHOWN:
        parts.append(f"and {len(errors) - _ERRORS_SHOWN} more")
    return "; ".join(parts)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _INPUT_SHOWN else text[: _INPUT_SHOWN - 3] + "..."


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


@tool("calculator", cpu_heavy=True, deterministic=True)
def calculator(ctx: ToolContext, expression: str) -> float | int:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses (no names).

    Args:
        expression: The expression, e.g. "(17 + 4) * 23".
    """
    return evaluate(expression)


@tool("kv_get")
def kv_get(ctx: ToolContext, key: str) -> str | None:
    """Read a value from the shared key-value store; null when the key is absent.

    Args:
        key: The key to read.
    """
    value = ctx.redis.get(kv_key(key, ctx.tenant))
    return value.decode() if isinstance(value, bytes) else value


@tool("kv_set", side_effects=True)
def kv_set(ctx: ToolContext, key: str, value: str) -> str:
    """Write a value to the shared key-value store; answers "ok".

    Args:
        key: The key to write.
        value: The text to store under it.
    """
    ctx.redis.set(kv_key(key, ctx.tenant), value)
    return "ok"


# Increment once per (run, step, call): a step re-run after a crash returns the first result.
INCR_ONCE = Script("app.agents", "lua/incr_once.lua")


@tool("counter_incr", side_effects=True)
def counter_incr(ctx: ToolContext, key: str) -> int:
    """Add one to a counter in the shared key-value store and return its new value.

    Args:
        key: The counter's key.
    """
    # The increment and its record are one atomic Redis script: exactly once per call.
    effect = effect_key(ctx.run_id, ctx.step, f"incr:{ctx.call_id}:{key}")
    return int(INCR_ONCE(ctx.redis, [kv_key(key, ctx.tenant), effect], [EFFECT_TTL_S]))


@tool("word_count", deterministic=True)
def word_count(ctx: ToolContext, text: str) -> int:
    """Count the whitespace-separated words of a text.

    Args:
        text: The text to count.
    """
    return len(text.split())


# The memory tools: their module imports nothing heavy (the memory is made on first use).
# The orchestration tools: delegate, wait_for_signal, sleep (they park the run).
from app.agents import memory_tools, orchestration_tools  # noqa: E402, F401
